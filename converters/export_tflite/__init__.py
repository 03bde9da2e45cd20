"""TFLite exporter, written without TensorFlow: the processed ONNX graph is lowered op by op
(`registry.LOWERINGS`, one small function per ONNX op) into a flatbuffer built with the schema
that ships in ai-edge-litert. Written by hand because the alternatives (TensorFlow's converter,
litert-torch, onnx2tf) cost gigabytes, pin old versions and leave TRANSPOSE / QUANTIZE ops inside
the graph.

Layout: image tensors are NHWC inside; weights are converted at export time; axis attributes are
remapped; Transpose only relabels; a Flatten before Gemm/MatMul permutes that layer's weights.
Image inputs and 4-D outputs are NHWC unless `nchw_io` (one TRANSPOSE at each)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from edgepack.converters.export_tflite.graph import NHWC, TfliteGraph, TVal, identity, unsupported
from edgepack.converters.export_tflite.registry import LOWERINGS, Ctx, _load_all, supported_ops
from edgepack.fsutil import atomic_path

__all__ = ["export_tflite", "supported_ops", "TfliteExport"]


@dataclass
class TfliteExport:
    files: list[Path]
    inputs: list[dict]  # name, shape (as stored), layout, perm (stored axis i = ONNX axis perm[i])
    outputs: list[dict]
    op_census: dict[str, int]
    transposes: int


def export_tflite(model: ir.Model, path: Path, precision: str, *, nchw_io: bool = False) -> TfliteExport:
    _load_all()
    graph = TfliteGraph(fp16_weights=precision == "fp16")
    ctx = Ctx(model, graph)
    ins = []
    for value in model.graph.inputs:
        shape = ctx.shape(value)
        perm = NHWC[4] if len(shape) == 4 and not nchw_io else identity(len(shape))
        tv = ctx.out(value, perm)
        graph.inputs.append(tv.index)
        ins.append(_describe(value.name, graph.shape_of(tv.index), perm))
    for node in model.graph:
        if id(node) in ctx.skip:
            continue
        lower = LOWERINGS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if lower is None:
            raise unsupported(node, "has no TFLite lowering")
        lower(ctx, node)
    outs = []
    for value in model.graph.outputs:
        tv = _output_value(ctx, value, nchw_io)
        graph.outputs.append(tv.index)
        outs.append(_describe(value.name, graph.shape_of(tv.index), tv.perm))
    data = graph.serialize(description="edgepack")
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    census = Counter(_op_name(graph, op) for op in graph.operators)
    return TfliteExport([path], ins, outs, dict(sorted(census.items())), graph.transposes)


def _output_value(ctx: Ctx, value: ir.Value, nchw_io: bool) -> TVal:
    from edgepack.converters.export_tflite.ops_shape import plain_features

    tv = ctx.values.get(value.name)
    if tv is None:
        raise unsupported(value.producer() or _Fake(value), "produces a graph output that was not lowered")
    rank = len(tv.perm)
    want = NHWC[4] if rank == 4 and not nchw_io else identity(rank)
    fixed = plain_features(ctx, tv, value.name)
    fixed = ctx.as_perm(fixed, want, value.name + "_out")
    if fixed.index != tv.index:  # the graph output keeps the ONNX name
        old = ctx.g.tensors[tv.index]
        ctx.g.names.discard(value.name)
        old.name = ctx.g._unique(value.name + "_internal")
        ctx.g.tensors[fixed.index].name = value.name
    return fixed


class _Fake:
    def __init__(self, value: ir.Value) -> None:
        self.op_type, self.name = "graph output", value.name


def _describe(name: str, shape: list[int], perm: tuple[int, ...]) -> dict:
    layout = {4: {NHWC[4]: "NHWC", (0, 1, 2, 3): "NCHW"}}.get(len(perm), {}).get(tuple(perm))
    return {"name": name, "shape": shape, "layout": layout, "perm": list(perm), "dtype": "float32"}


def _op_name(graph: TfliteGraph, op) -> str:
    code = next(c for c, i in graph.opcodes.items() if i == op.opcodeIndex)
    names = {v: k for k, v in vars(graph.s.BuiltinOperator).items() if not k.startswith("_")}
    return names[code]


def to_stored(array: np.ndarray, perm: list[int]) -> np.ndarray:
    """An ONNX-layout array (batch of samples) in a TFLite tensor's stored layout."""
    return np.ascontiguousarray(array.transpose(perm))


def to_onnx_layout(array: np.ndarray, perm: list[int]) -> np.ndarray:
    return np.ascontiguousarray(array.transpose(np.argsort(perm)))
