"""PyTorch eager adapter: the reference every artifact is compared with."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


class TorchSession:
    def __init__(self, module: Any, input_names: list[str], inputs: list[dict] | None = None) -> None:
        self._module = module
        self.input_names = list(input_names)
        self.output_names: list[str] = []
        # An in-memory module does not store its input shapes: shape None unless given.
        self.inputs = inputs or [{"name": n, "shape": None, "dtype": "float32"} for n in self.input_names]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        args = [torch.from_numpy(np.array(feeds[n], order="C")) for n in self.input_names]
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

    def load(self, artifact: Any, *, threads: int | None = None, optimize: bool = True, input_names: list[str] | None = None,
             allow_pickle: bool = False) -> TorchSession:
        """`artifact`: an nn.Module, ScriptModule or ExportedProgram in memory, or the path of a saved
        ExportedProgram (.pt2), whose example inputs give the input names, shapes and dtypes. A .pt2
        that would run code from the file when loaded is refused unless `allow_pickle`."""
        from pathlib import Path

        import torch

        if threads:
            torch.set_num_threads(threads)
        if isinstance(artifact, (str, Path)):
            from edgepack.load import load_exported_program

            artifact = load_exported_program(Path(artifact), torch, allow_pickle=allow_pickle)
        inputs = None
        if isinstance(artifact, torch.export.ExportedProgram):
            inputs = _exported_inputs(artifact)
            input_names = input_names or [d["name"] for d in inputs]
            artifact = artifact.module()
        return TorchSession(artifact, input_names or [], inputs)


def _exported_inputs(program: Any) -> list[dict] | None:
    """Names, shapes and dtypes of an ExportedProgram's user inputs, from its example inputs."""
    import torch

    names = [s.arg.name for s in program.graph_signature.input_specs if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    args = (program.example_inputs or ((), {}))[0]
    if len(args) != len(names) or not all(isinstance(a, torch.Tensor) for a in args):
        return None
    return [{"name": n, "shape": list(a.shape), "dtype": str(a.dtype).removeprefix("torch.")} for n, a in zip(names, args)]
