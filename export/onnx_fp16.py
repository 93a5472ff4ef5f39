"""FP32 ONNX -> FP16 ONNX by graph surgery, for TensorRT 11, which builds FP16 only from FP16 types.

TensorRT up to 10 takes an FP32 ONNX and a precision flag; TensorRT 11 is strongly typed and takes
precision from the graph, so the engine builder converts the graph first (see
:func:`edgetile.export.engine.build_engine`). onnx is imported inside the function, so importing this
module costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .artifacts import ExportError

# Inputs that ONNX requires in float32 whatever the type of the data (Resize's scales).
_FLOAT32_INPUTS = {("Resize", 2), ("Upsample", 1)}


def convert_to_fp16(onnx_path: str | Path, out: str | Path, keep_float: Sequence[str] | None = None) -> Path:  # noqa: C901 - one graph rewrite whose passes share the maps of renamed and cast tensors
    """Convert an FP32 ONNX to FP16 compute, with FP32 inputs and outputs and an FP32 head tail.

    TensorRT 11 takes precision from the graph's types, so an FP16 engine needs FP16 in the graph.
    Every node outside ``keep_float`` computes in FP16: its float weights become FP16, the input is
    cast to FP16 once, and every tensor that crosses into the FP32 part is cast back. The detection
    head's box-decoding tail stays FP32 by default: box coordinates of up to 1024 px have only 0.5 px
    resolution in FP16 above 512.

    (ONNX Runtime's and onnxconverter-common's converters were tried first: with a block list they
    write graphs that break ONNX's single-assignment rule for Ultralytics heads.)

    Args:
        onnx_path: The FP32 ONNX.
        out: Where to write the FP16 ONNX.
        keep_float: Node names to keep in FP32 (default: the head's tail, see int8.head_tail_nodes).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from .int8 import _named, head_tail_nodes

    model = onnx.load(str(onnx_path))
    _named(model)
    graph = model.graph
    keep = set(keep_float) if keep_float is not None else set(head_tail_nodes(model))
    half = [n for n in graph.node if n.name not in keep]
    inits = {i.name: i for i in graph.initializer}
    float_inputs = {i.name for i in graph.input if i.type.tensor_type.elem_type == TensorProto.FLOAT}
    produced_half = {o for n in half for o in n.output}
    new_inits, casts_in, casts_out = [], [], []
    renamed: dict[str, str] = {}

    def half_init(name: str) -> str:
        if name not in renamed:
            arr = numpy_helper.to_array(inits[name])
            fp16 = np.clip(arr, -65504, 65504).astype(np.float16)
            renamed[name] = f"{name}__fp16"
            new_inits.append(numpy_helper.from_array(fp16, renamed[name]))
        return renamed[name]

    input_casts: dict[str, str] = {}
    for node in half:
        for k, name in enumerate(node.input):
            if (node.op_type, k) in _FLOAT32_INPUTS or not name:
                continue
            if name in inits and inits[name].data_type == TensorProto.FLOAT:
                node.input[k] = half_init(name)
            elif name in float_inputs:
                if name not in input_casts:
                    input_casts[name] = f"{name}__fp16"
                    casts_in.append(
                        helper.make_node(
                            "Cast",
                            [name],
                            [input_casts[name]],
                            name=f"{name}__to_fp16",
                            to=TensorProto.FLOAT16,
                        )
                    )
                node.input[k] = input_casts[name]
        if node.op_type == "Cast":
            for a in node.attribute:
                if a.name == "to" and a.i == TensorProto.FLOAT:
                    a.i = TensorProto.FLOAT16
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                    a.t.CopyFrom(
                        numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name)
                    )
    # Every FP16 tensor read by an FP32 node or returned as an output is cast back to FP32.
    back: dict[str, str] = {}

    def to_float(name: str) -> str:
        if name not in back:
            back[name] = f"{name}__fp32"
            casts_out.append(
                helper.make_node("Cast", [name], [back[name]], name=f"{name}__to_fp32", to=TensorProto.FLOAT)
            )
        return back[name]

    for node in graph.node:
        if node.name in keep:
            for k, name in enumerate(node.input):
                if name in produced_half:
                    node.input[k] = to_float(name)
    for o in graph.output:
        if o.name in produced_half:
            # keep the output's name: the FP16 producer writes to a new name, a cast restores the old one
            src = f"{o.name}__fp16"
            for node in half:
                for k, name in enumerate(node.output):
                    if name == o.name:
                        node.output[k] = src
            for node in half:
                for k, name in enumerate(node.input):
                    if name == o.name:
                        node.input[k] = src
            casts_out.append(
                helper.make_node("Cast", [src], [o.name], name=f"{o.name}__to_fp32", to=TensorProto.FLOAT)
            )
    graph.initializer.extend(new_inits)
    used = {i for n in graph.node for i in n.input} | {i for n in casts_out for i in n.input}
    for name in list(renamed):
        if name not in used:
            graph.initializer.remove(inits[name])
    nodes = casts_in + list(graph.node) + casts_out
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # types changed; let the consumers infer them again
    _topological_sort(graph)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return Path(out)


def _topological_sort(graph) -> None:
    """Reorder graph.node so that every node comes after the producers of its inputs (stable)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ExportError(f"FP16 conversion left a dangling input at node {rest[0].name!r}")
        pending = rest
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)
