"""Runtimes behind one small protocol: load an artifact with options, run feeds, say name and
version. One adapter module per runtime; each imports its runtime inside the adapter, so a board
without torch (or without ncnn) can still use the others."""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from edgepack.errors import UnsupportedError


class Session(Protocol):
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Runtime(Protocol):
    name: str

    def version(self) -> str: ...

    def load(self, artifact: Any, *, threads: int | None = None, optimize: bool = True) -> Session: ...


# runtime name -> "module:class"; imported only when asked for.
ADAPTERS: dict[str, str] = {
    "onnxruntime": "edgepack.runtimes.ort:OnnxRuntime",
    "torch": "edgepack.runtimes.torch_eager:TorchEager",
    "litert": "edgepack.runtimes.litert:LiteRt",
    "ncnn": "edgepack.runtimes.ncnn:Ncnn",
}


def get_runtime(name: str) -> Runtime:
    if name not in ADAPTERS:
        raise UnsupportedError(f"unknown runtime {name!r}; available: {', '.join(ADAPTERS)}")
    module_name, _, cls = ADAPTERS[name].partition(":")
    return getattr(importlib.import_module(module_name), cls)()
