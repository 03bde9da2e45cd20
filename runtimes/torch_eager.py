"""PyTorch eager adapter: the reference every artifact is compared with."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


class TorchSession:
    def __init__(self, module: Any, input_names: list[str]) -> None:
        self._module = module
        self.input_names = list(input_names)
        self.output_names: list[str] = []

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.input_names]
        with torch.no_grad():
            out = self._module(*args)
        flat = flatten_outputs(out)
        if not self.output_names:
            self.output_names = [f"output_{i}" for i in range(len(flat))]
        return {n: t.detach().cpu().numpy() for n, t in zip(self.output_names, flat)}


def flatten_outputs(out: Any) -> list[Any]:
    """Tensors of a (nested) tuple/list/dict output, in the order torch.onnx.export emits them."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in flatten_outputs(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in flatten_outputs(v)]
    raise TypeError(f"model output of type {type(out).__name__} is not a tensor, tuple, list or dict")


class TorchEager:
    name = "torch"

    def version(self) -> str:
        import torch

        return torch.__version__

    def load(self, artifact: Any, *, threads: int | None = None, optimize: bool = True, input_names: list[str] | None = None) -> TorchSession:
        """`artifact`: an nn.Module, ScriptModule or ExportedProgram already in memory."""
        import torch

        if threads:
            torch.set_num_threads(threads)
        module = artifact.module() if isinstance(artifact, torch.export.ExportedProgram) else artifact
        return TorchSession(module, input_names or [])
