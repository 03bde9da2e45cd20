"""Runtimes behind one small protocol: load an artifact with options, run feeds, say name and
version. One adapter module per runtime; each imports its runtime inside the adapter, so a board
without torch (or without ncnn) can still use the others.

The protocol (every adapter implements it; `edgepack bench` and verification use nothing else):

- `Runtime.name`: the key in ADAPTERS ("onnxruntime", "litert", "ncnn", "torch").
- `Runtime.version() -> str`: imports the runtime (raising ImportError when it is not installed)
  and returns its version, so "the runtime is imported" is one call for memory baselines.
- `Runtime.load(artifact, *, threads=None, optimize=True, **runtime_options) -> Session`:
  `threads` None = the runtime's default; `optimize=False` is the reference mode (ONNX Runtime:
  graph optimizations off; LiteRT: XNNPACK off). Adapters may add keyword options; these stay.
- `Session.inputs: list[dict]`: one dict per input, in order: `name`, `shape` (list of int with -1
  for a dynamic dimension, or None when the runtime does not store it) and `dtype` (numpy dtype
  name). `Session.input_names` / `output_names` are the names in order.
- `Session.run(feeds: {name: ndarray}) -> {output name: ndarray}`.

This module imports only numpy and edgepack.errors: `edgepack bench --remote` ships it, the
adapters and the bench runner to a board as a zip (see `bench_runner.build_runner_zip`)."""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgepack.errors import UnsupportedError


class Session(Protocol):
    inputs: list[dict]
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

# artifact file suffix -> the runtime that runs it (an ncnn model is its .param file + .bin beside it).
RUNTIME_FOR_SUFFIX: dict[str, str] = {".onnx": "onnxruntime", ".tflite": "litert", ".param": "ncnn", ".pt2": "torch"}


def get_runtime(name: str) -> Runtime:
    if name not in ADAPTERS:
        raise UnsupportedError(f"unknown runtime {name!r}; available in this edgepack: {', '.join(ADAPTERS)}")
    module_name, _, cls = ADAPTERS[name].partition(":")
    return getattr(importlib.import_module(module_name), cls)()


def runtime_for(path: str | Path) -> str:
    """The runtime name for an artifact file, from its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in RUNTIME_FOR_SUFFIX:
        raise UnsupportedError(
            f"{Path(path).name}: no runtime for {suffix or 'files without a suffix'!r}; "
            f"known: {', '.join(f'{s} ({r})' for s, r in RUNTIME_FOR_SUFFIX.items())}"
        )
    return RUNTIME_FOR_SUFFIX[suffix]


def work_threads() -> int:
    """Threads for export-time work (the PyTorch reference, verification runs): the CPUs this process
    may use less the load other processes put on them now (1-minute load average), at least 1. On a
    busy machine OpenMP-style thread pools that ask for every core spin against other processes and
    a run takes 10-50x longer; one thread per free core keeps the slowdown in proportion."""
    import os

    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):
        busy = 0.0
    return max(1, min(cpus, int(cpus - busy + 0.5)))
