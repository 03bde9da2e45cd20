"""ONNX Runtime adapter (CPU execution provider)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


class OrtSession:
    def __init__(self, session: Any) -> None:
        self._session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._session.run(None, dict(feeds))
        return dict(zip(self.output_names, outputs))


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
