"""ONNX Runtime adapter (CPU execution provider)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int32)": np.int32, "tensor(int64)": np.int64}


class OrtSession:
    def __init__(self, session: Any) -> None:
        self._session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        self._dtypes = {i.name: _ORT_TYPES.get(i.type) for i in session.get_inputs()}
        self.inputs = [
            {"name": i.name, "shape": [d if isinstance(d, int) and d >= 0 else -1 for d in i.shape] if i.shape is not None else None,
             "dtype": np.dtype(self._dtypes[i.name]).name if self._dtypes.get(i.name) is not None else i.type}
            for i in session.get_inputs()
        ]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Feeds are cast to the model's input types (e.g. fp32 data into an fp16-IO model)."""
        cast = {k: v.astype(self._dtypes[k]) if self._dtypes.get(k) is not None and v.dtype != self._dtypes[k] else v
                for k, v in feeds.items()}
        outputs = self._session.run(None, cast)
        return dict(zip(self.output_names, outputs))


def ort_message(exc: BaseException) -> str:
    """ONNX Runtime errors carry the C++ source location and signature before the reason; drop them."""
    import re

    text = re.sub(r"/onnxruntime_src/\S+ (?:onnxruntime::)?[\w:~]*\(.*?\) ", "", str(exc)).strip()
    line = (text.splitlines() or [type(exc).__name__])[0]
    return line[:300]


class OnnxRuntime:
    name = "onnxruntime"

    def version(self) -> str:
        import onnxruntime

        return onnxruntime.__version__

    def load(self, artifact: Any, *, threads: int | None = None, optimize: bool = True) -> OrtSession:
        """`artifact`: a path or serialized ModelProto bytes. optimize=False is the reference mode."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        if not optimize:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        source = str(artifact) if isinstance(artifact, (str, Path)) else artifact
        return OrtSession(ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"]))


def int8_products_saturate() -> bool:
    """True on x86-64 CPUs without VNNI (AVX2 / plain AVX-512): ONNX Runtime's int8 kernels there
    multiply with VPMADDUBSW, whose pairwise int16 sums saturate for full-range 8-bit weights, so
    an int8 model with 8-bit weights computes wrong values (its docs advise 7-bit weights,
    `reduce_range`). ARM cores and x86 with VNNI have no such limit."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return not any(f in flags.split() for f in ("avx512_vnni", "avx_vnni", "amx_int8"))
