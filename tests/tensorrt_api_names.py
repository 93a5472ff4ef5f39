"""Regenerate tests/data/tensorrt_api_names.json from NVIDIA's TensorRT Python bindings.

The bindings cannot be imported without libnvinfer (a GPU machine's library), but their ``tensorrt.so``
holds every attribute name pybind11 registers as a NUL-terminated string, and every docstring::

    pip download --no-deps --only-binary=:all: --python-version 3.11 \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d wheels \\
        tensorrt-bindings==8.6.1 tensorrt-cu12-bindings==10.3.0 tensorrt-cu13-bindings==11.4.0.106
    python tests/tensorrt_api_names.py wheels/*.whl > tests/data/tensorrt_api_names.json

Per version, each name in NAMES is:

* ``present``: a string of its own in ``tensorrt.so``;
* ``absent``: nowhere in it, not even inside another string;
* ``documented``: neither, because the linker stored it as the tail of a longer string ("Logger" inside
  "ILogger", "Runtime" inside "IRuntime"); the evidence is the bindings' own docstring that names it
  as API (":class:`Runtime`", "DataType.INT8"), else NVIDIA's Python API reference (DOCUMENTED).

The strings do not say which class a name belongs to, so ABSENT_FROM records, from NVIDIA's API
reference, the names one class lost while another class keeps them.
"""

from __future__ import annotations

import json
import re
import sys
import zipfile

# Every TensorRT name that edgetile's builder and backend use, or that the tests' stand-in offers.
NAMES = sorted(
    {
        # module level
        "Builder",
        "BuilderFlag",
        "DataType",
        "DeviceType",
        "IInt8EntropyCalibrator2",
        "IInt8MinMaxCalibrator",
        "ILogger",
        "Logger",
        "MemoryPoolType",
        "NetworkDefinitionCreationFlag",
        "OnnxParser",
        "Runtime",
        "TensorIOMode",
        # enum members
        "DLA",
        "ERROR",
        "EXPLICIT_BATCH",
        "FLOAT",
        "FP16",
        "GPU",
        "GPU_FALLBACK",
        "HALF",
        "INFO",
        "INPUT",
        "INT32",
        "INT8",
        "INTERNAL_ERROR",
        "NONE",
        "OUTPUT",
        "STRONGLY_TYPED",
        "Severity",
        "VERBOSE",
        "WARNING",
        "WORKSPACE",
        # builder, config, profile, timing cache, parser
        "add_optimization_profile",
        "build_serialized_network",
        "create_builder_config",
        "create_network",
        "create_optimization_profile",
        "create_timing_cache",
        "default_device_type",
        "DLA_core",
        "desc",
        "get_error",
        "get_timing_cache",
        "int8_calibrator",
        "node",
        "node_name",
        "node_operator",
        "num_DLA_cores",
        "num_errors",
        "parse_from_file",
        "platform_has_fast_fp16",
        "serialize",
        "set_calibration_profile",
        "set_flag",
        "set_memory_pool_limit",
        "set_shape",
        "set_timing_cache",
        # runtime, engine, execution context
        "binding_is_input",
        "create_execution_context",
        "deserialize_cuda_engine",
        "device_memory_size",
        "device_memory_size_v2",
        "execute_async_v2",
        "execute_async_v3",
        "get_binding_index",
        "get_tensor_dtype",
        "get_tensor_mode",
        "get_tensor_name",
        "get_tensor_profile_shape",
        "get_tensor_shape",
        "has_implicit_batch_dimension",
        "log",
        "num_bindings",
        "num_io_tensors",
        "set_input_shape",
        "set_tensor_address",
    }
)

DOCS = "https://docs.nvidia.com/deeplearning/tensorrt/"
ENGINE_PAGE = {  # ICudaEngine and TensorIOMode; 8.6's bindings hold TensorIOMode as a string of its own
    "8": DOCS + "archives/tensorrt-1001/api/python_api/infer/Core/Engine.html",
    "10": DOCS + "archives/tensorrt-1001/api/python_api/infer/Core/Engine.html",
    "11": DOCS + "11.0.0/_static/python-api/infer/Core/Engine.html",
}
MAJORS = ("8", "10", "11")
# Names whose docstring evidence the bindings lack, by major version: where NVIDIA documents them.
DOCUMENTED = {
    "INPUT": {m: f"TensorIOMode member, {ENGINE_PAGE[m]}" for m in MAJORS},
    "OUTPUT": {m: f"TensorIOMode member, {ENGINE_PAGE[m]}" for m in MAJORS},
    "ERROR": {
        m: "ILogger.Severity member, " + DOCS + "api/python_api/infer/Core/Logger.html" for m in MAJORS
    },
    "INT8": {
        "8": "DataType member, "
        + DOCS
        + "archives/tensorrt-861/api/python_api/infer/FoundationalTypes/DataType.html"
    },
    "desc": {
        m: "ParserError.desc(), IParserError::desc() in "
        + DOCS
        + "archives/tensorrt-825/api/c_api/classnvonnxparser_1_1_i_parser_error.html"
        for m in MAJORS
    },
    "serialize": {
        "8": "ITimingCache.serialize(), "
        + DOCS
        + "archives/tensorrt-825/api/python_api/infer/Core/TimingCache.html"
    },
}
# Per major version: class -> names that class lacks although the strings hold them (another class
# keeps the name, or a stale docstring still mentions it).
ABSENT_FROM = {
    "11": {
        "ICudaEngine": {
            "names": ["device_memory_size", "has_implicit_batch_dimension"],
            "source": ENGINE_PAGE["11"]
            + " lists device_memory_size_v2 only and no has_implicit_batch_dimension; "
            "11.4's strings keep INetworkDefinition.has_implicit_batch_dimension and a mention of "
            "engine.device_memory_size in IExecutionContext's docstring",
        }
    }
}
EVIDENCE = r":(?:class|attr|func|meth):`[~\w.]*\b{0}\b[\w.]*`|\b[A-Z]\w+\.{0}\b|\b{0}\(|::{0}\b"


def table(so: bytes, major: str) -> dict:
    strings = [s.decode() for s in re.findall(rb"[\x09\x0a\x20-\x7e]+(?=\x00)", so)]
    alone = set(strings)
    present, absent, documented = [], [], {}
    lost = {n for cls in ABSENT_FROM.get(major, {}).values() for n in cls["names"]}
    for name in NAMES:
        if name in alone:
            present.append(name)
        elif name.encode() not in so:
            absent.append(name)
        elif name not in lost:
            pattern = re.compile(EVIDENCE.format(re.escape(name)))
            found = next((m.group(0) for s in strings for m in [pattern.search(s)] if m), None)
            if found is not None:
                documented[name] = f"tensorrt.so docstring: {found}"
            elif major in DOCUMENTED.get(name, {}):
                documented[name] = DOCUMENTED[name][major]
    entry = {"present": present, "absent": absent, "documented": documented}
    if major in ABSENT_FROM:
        entry["absent_from"] = ABSENT_FROM[major]
    return entry


def main(wheels: list[str]) -> None:
    versions = {}
    for wheel in wheels:
        version = re.search(r"bindings-(\d+\.\d+\.\d+)", wheel).group(1)
        with zipfile.ZipFile(wheel) as z:
            so = z.read(next(n for n in z.namelist() if re.search(r"/tensorrt[^/]*\.so$", n)))
        versions[version] = table(so, version.split(".")[0])
    record = {
        "_source": "the tensorrt.so of the PyPI wheels tensorrt-bindings 8.6.1, tensorrt-cu12-bindings 10.3.0 "
        "and tensorrt-cu13-bindings 11.4.0.106 (cp311, manylinux x86_64), read by tests/tensorrt_api_names.py: "
        "present = a string of its own there, absent = nowhere, not even inside another string, documented = "
        "stored inside a longer string, with the docstring or NVIDIA API reference page that shows it. "
        "absent_from: what one class lacks although another keeps the name.",
        "versions": dict(sorted(versions.items(), key=lambda kv: [int(p) for p in kv[0].split(".")])),
    }
    json.dump(record, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1:])
