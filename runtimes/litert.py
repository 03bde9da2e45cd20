"""LiteRT (TFLite) adapter: `ai-edge-litert`'s interpreter, falling back to `tflite-runtime` on
devices that only have that. XNNPACK is on by default (the interpreter's default delegate)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        from tflite_runtime.interpreter import Interpreter  # the older runtime package

        return Interpreter


def available() -> bool:
    """Whether a LiteRT interpreter package (ai-edge-litert or tflite-runtime) is installed."""
    import importlib.util

    return importlib.util.find_spec("ai_edge_litert") is not None or importlib.util.find_spec("tflite_runtime") is not None


def _op_resolver_type() -> Any:
    try:
        from ai_edge_litert.interpreter import OpResolverType
    except ImportError:
        from tflite_runtime.interpreter import OpResolverType

    return OpResolverType


class LiteRtSession:
    def __init__(self, interpreter: Any) -> None:
        self._it = interpreter
        self._it.allocate_tensors()
        self._inputs = self._it.get_input_details()
        self._outputs = self._it.get_output_details()
        self.input_names = [d["name"] for d in self._inputs]
        self.output_names = [d["name"] for d in self._outputs]
        self.inputs = [{"name": d["name"], "shape": [int(x) for x in d.get("shape_signature", d["shape"])],
                        "dtype": np.dtype(d["dtype"]).name} for d in self._inputs]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        resized = False
        for d in self._inputs:  # a model with dynamic dimensions is resized to the feed's shape
            shape = np.shape(feeds[d["name"]])
            if tuple(shape) != tuple(d["shape"]):
                self._it.resize_tensor_input(d["index"], list(shape))
                resized = True
        if resized:
            self._it.allocate_tensors()
            self._inputs = self._it.get_input_details()
            self._outputs = self._it.get_output_details()
        for d in self._inputs:
            # np.array, not np.ascontiguousarray: that makes a rank-0 (scalar) feed 1-D
            self._it.set_tensor(d["index"], np.array(feeds[d["name"]], dtype=d["dtype"], order="C"))
        self._it.invoke()
        return {d["name"]: self._it.get_tensor(d["index"]).copy() for d in self._outputs}


def check_loads(artifact: str | Path) -> None:
    """LiteRT builds an interpreter for `artifact` and allocates its tensors (its verifier and every
    kernel's prepare step). Run in a child by edgepack.runtimes.isolated: LiteRT may crash on a
    damaged file."""
    LiteRt().load(artifact)


class LiteRt:
    name = "litert"

    def version(self) -> str:
        """Imports the interpreter; names the package it came from (the fallback on older devices)."""
        from importlib import metadata

        dist = "tflite-runtime" if _interpreter_class().__module__.startswith("tflite_runtime") else "ai-edge-litert"
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            return f"{dist} unknown"

    def load(self, artifact: Any, *, threads: int | None = None, optimize: bool = True) -> LiteRtSession:
        """optimize=False turns the XNNPACK delegate off (reference kernels)."""
        kwargs: dict[str, Any] = {"num_threads": threads or 1}
        if not optimize:
            kwargs["experimental_op_resolver_type"] = _op_resolver_type().BUILTIN_WITHOUT_DEFAULT_DELEGATES
        return LiteRtSession(_interpreter_class()(model_path=str(Path(artifact)), **kwargs))
