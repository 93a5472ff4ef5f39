"""ONNX Runtime backend: the CPU path, and the reference the other backends are checked against."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import Backend, BackendUnavailable

_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class OnnxRuntimeBackend(Backend):
    """Runs an ONNX model with ONNX Runtime.

    Args:
        model_path: The .onnx file.
        providers: Execution providers in order of preference; CPU by default.
        threads: Intra-op threads; 0 lets ONNX Runtime choose (one per physical core).
    """

    name = "onnxruntime"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import onnxruntime
        except ImportError as exc:
            return False, f"onnxruntime is not installed ({exc}); pip install 'edgetile[onnx]'"
        return True, f"onnxruntime {onnxruntime.__version__}"

    def __init__(self, model_path: str | Path, providers: list[str] | None = None, threads: int = 0) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable(f"onnxruntime is not installed: {exc}") from exc
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"model: file not found: {model_path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.log_severity_level = 3  # errors only: graph-cleanup warnings are noise in a field log
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(
                str(path), opts, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise ValueError(
                f"model: not a loadable ONNX model: {model_path}: {str(exc).splitlines()[0]}"
            ) from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(
                f"model: expected one image input, found {len(inputs)}: {[i.name for i in inputs]}"
            )
        inp = inputs[0]
        if len(inp.shape) != 4:
            raise ValueError(f"model input {inp.name!r}: expected shape (B, 3, H, W), found {inp.shape}")
        if inp.type not in _DTYPES:
            raise ValueError(f"model input {inp.name!r}: expected float32 or float16, found {inp.type}")
        b, c, h, w = inp.shape
        self.input_name = inp.name
        self.input_dtype = np.dtype(_DTYPES[inp.type])
        self.metadata = dict(self._session.get_modelmeta().custom_metadata_map)
        self.input_shape = (
            b if isinstance(b, int) else None,
            c if isinstance(c, int) else 3,
            h if isinstance(h, int) else -1,
            w if isinstance(w, int) else -1,
        )
        self.output_names = [o.name for o in self._session.get_outputs()]
        self.infers_on_cpu = self._session.get_providers()[0] == "CPUExecutionProvider"

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        if self._session is None:
            raise RuntimeError("backend is closed")
        return self._session.run(self.output_names, {self.input_name: batch})

    def close(self) -> None:
        self._session = None
