"""TFLite exporter, written without TensorFlow: the processed ONNX graph is lowered op by op
(`registry.LOWERINGS`, one small function per ONNX op) into a flatbuffer built with the schema
that ships in ai-edge-litert. Written by hand because the alternatives (TensorFlow's converter,
litert-torch, onnx2tf) cost gigabytes, pin old versions and leave TRANSPOSE / QUANTIZE ops inside
the graph.

Layout: image tensors are NHWC inside; weights are converted at export time; axis attributes are
remapped; Transpose only relabels; a Flatten before Gemm/MatMul permutes that layer's weights.
Image inputs are NHWC, and so are the 4-D outputs of convolutional graphs, unless `nchw_io` (then
one TRANSPOSE at each); 3-D signals that 1-D convolutions read or write are NWC; an output already
in ONNX order (`x.permute(0, 2, 3, 1)` at the end of a head, say) stays so; every other input and
output keeps its ONNX shape. The report records each one's layout and perm."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx_ir as ir

from edgepack.converters.export_tflite.graph import NHWC, TfliteGraph, TVal, _np_type, identity, unsupported
from edgepack.converters.export_tflite.registry import LOWERINGS, Ctx
from edgepack.errors import ConversionError
from edgepack.fsutil import atomic_path
from edgepack.runtimes.artifact import to_onnx_layout, to_stored  # noqa: F401  (re-exported)
from edgepack.tflite_schema import builtin_names

__all__ = ["export_tflite", "supported_ops", "TfliteExport"]


def _load_all() -> None:
    """Import the lowering modules: each registers its ops in LOWERINGS as it loads."""
    from edgepack.converters.export_tflite import (  # noqa: F401  (each registers its lowerings)
        ops_attention, ops_conv, ops_elementwise, ops_logic, ops_math, ops_movement, ops_norm, ops_recurrent, ops_resize,
        ops_rearrange, ops_scatter,
        ops_shape,
    )


def supported_ops() -> list[str]:
    _load_all()
    return sorted(LOWERINGS)


@dataclass
class TfliteExport:
    files: list[Path]
    inputs: list[dict]  # name, shape (as stored), layout, perm (stored axis i = ONNX axis perm[i])
    outputs: list[dict]
    op_census: dict[str, int]
    transposes: int
    constrained: list[dict] = field(default_factory=list)  # int8: ranges a kernel constraint changed
    weights_only: dict = field(default_factory=dict)  # int8-weights: ops quantized / kept float and why
    float_ops: list[dict] = field(default_factory=list)  # int8: ops without an int8 kernel, kept float


def export_tflite(model: ir.Model, path: Path, precision: str, *, nchw_io: bool = False,
                  int8: "Int8Ranges | None" = None) -> TfliteExport:
    """precision: fp32, fp16 (float16 weights), int8 (full integer; `int8` gives the calibrated
    ranges) or int8-weights (dynamic range: int8 weights, float activations). See quantize.py."""
    _load_all()
    if precision == "int8" and int8 is None:
        raise ValueError("int8 TFLite needs calibrated ranges")
    graph = TfliteGraph(fp16_weights=precision == "fp16")
    ctx = Ctx(model, graph)
    ins = []
    for value in model.graph.inputs:
        perm = _input_perm(ctx, value, nchw_io)
        tv = ctx.out(value, perm)
        graph.inputs.append(tv.index)
        ins.append(_describe(value.name, graph.shape_of(tv.index), perm))
    by_id = {id(n): n for n in model.graph}
    for node in model.graph:
        if id(node) in ctx.skip:
            continue
        lower = LOWERINGS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if lower is None:
            raise unsupported(node, "has no TFLite lowering")
        first, skipped = len(graph.operators), set(ctx.skip)
        lower(ctx, node)
        # which ONNX nodes each new operator came from (fused activations included): the int8 pass
        # keeps the operators of the accuracy guard's float nodes in float
        names = {node.name} | {by_id[i].name for i in ctx.skip - skipped if i in by_id}
        for op in graph.operators[first:]:
            graph.origin[id(op)] = names
    outs = []
    for value in model.graph.outputs:
        tv = _output_value(ctx, value, nchw_io)
        graph.outputs.append(tv.index)
        outs.append(_describe(value.name, graph.shape_of(tv.index), tv.perm))
    constrained: list[dict] = []
    float_ops: list[dict] = []
    weights_only: dict = {}
    if precision == "int8-weights":
        from edgepack.converters.export_tflite.quantize import quantize_weights_only

        weights_only = quantize_weights_only(graph)
    if precision == "int8":
        from edgepack.converters.export_tflite.quantize import quantize_graph

        graph.drop_unused()  # tensors a fused pattern left behind have no calibrated range
        qreport = quantize_graph(graph, int8.onnx, int8.measured, int8_io=int8.int8_io, float_nodes=set(int8.float_nodes))
        constrained, float_ops = qreport.constrained, qreport.float_ops
        for row in ins + outs:
            if not int8.int8_io:
                continue
            q = graph.tensors[_index_by_name(graph, row["name"])].quantization
            row.update({"dtype": "int8", "scale": q.scale[0], "zero_point": q.zeroPoint[0]})
    graph.drop_unused()
    data = graph.serialize(description="edgepack")
    _check_runnable(data)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    census = Counter(_op_name(graph, op) for op in graph.operators)
    return TfliteExport([path], ins, outs, dict(sorted(census.items())), graph.transposes, constrained, weights_only,
                        float_ops)


def _check_runnable(data: bytes) -> None:
    """LiteRT prepares every operator of the flatbuffer (shapes, types, operand counts): a graph its
    kernels refuse is a conversion error here, never an artifact written as if it were fine. Skipped
    when no LiteRT interpreter is installed (the export still verifies the artifact where it can)."""
    try:
        from edgepack.runtimes.litert import _interpreter_class
    except ImportError:
        return
    try:
        interpreter_class = _interpreter_class()
    except Exception:  # noqa: BLE001  (no interpreter package: nothing to check with)
        return
    try:
        interpreter_class(model_content=data).allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        why = " ".join(str(exc).split())[:300]
        raise ConversionError(f"TFLite export: LiteRT cannot run the graph written for this model ({why}); "
                              "use --format onnx for this model") from None


@dataclass(frozen=True)
class Int8Ranges:
    onnx: dict[str, tuple[float, float]]  # calibration.json: ONNX tensor name -> (min, max)
    measured: dict[str, tuple[float, float]]  # TFLite-only tensors, measured on the float TFLite graph
    int8_io: bool = False
    float_nodes: tuple[str, ...] = ()  # ONNX nodes kept in float (the accuracy guard's choice)


def _index_by_name(graph: TfliteGraph, name: str) -> int:
    return next(i for i, t in enumerate(graph.tensors) if t.name == name and (i in graph.inputs or i in graph.outputs))


def _input_perm(ctx: Ctx, value: ir.Value, nchw_io: bool) -> tuple[int, ...]:
    """Images (4-D) are NHWC; a 3-D input with channels that a 1-D convolution reads is NWC; any
    other input keeps its ONNX shape. `nchw_io` keeps every input in ONNX layout."""
    shape = ctx.shape(value)
    if nchw_io:
        return identity(len(shape))
    if len(shape) == 4:
        return NHWC[4]
    if len(shape) == 3 and shape[1] > 1 and any(use.node.op_type == "Conv" for use in value.uses()):
        return NHWC[3]
    return identity(len(shape))


def _output_value(ctx: Ctx, value: ir.Value, nchw_io: bool) -> TVal:
    """An output already stored channels-last (NHWC, NWC) or in ONNX order stays so (no TRANSPOSE);
    any other is made NHWC if 4-D, else ONNX order. With `nchw_io` every output is in ONNX order."""
    from edgepack.converters.export_tflite.ops_shape import plain_features

    tv = ctx.values.get(value.name)
    if tv is None and ctx.const(value) is not None:  # a constant output (folded): RESHAPE-copied below
        tv = ctx.val(value, value.producer() or _Fake(value))
    if tv is None:
        raise unsupported(value.producer() or _Fake(value), "produces a graph output that was not lowered")
    rank = len(tv.perm)
    if nchw_io:
        want = identity(rank)
    elif tv.perm in (identity(rank), NHWC.get(rank)):
        want = tv.perm
    else:
        want = NHWC[4] if rank == 4 else identity(rank)
    fixed = plain_features(ctx, tv, value.name)
    fixed = ctx.as_perm(fixed, want, value.name + "_out")
    g = ctx.g
    if g.name_of(fixed.index) == value.name:
        return fixed
    # The graph output keeps the ONNX name. The tensor holding it may be named otherwise (a
    # relayout, or an alias: Identity, a relabelling Transpose), and may be a graph input or
    # another output already: then a RESHAPE copies it.
    if fixed.index in g.inputs or fixed.index in g.outputs or g.data_of(fixed.index) is not None:
        copy = g.tensor(value.name + "_copy", g.shape_of(fixed.index), _np_type(g.tensors[fixed.index].type))
        g.reshape(fixed.index, copy)
        fixed = TVal(copy, fixed.perm)
    for i, t in enumerate(g.tensors):
        if t.name == value.name and i not in g.inputs:  # the ONNX value's own tensor, now internal
            t.name = g._unique(value.name + "_internal")
    g.tensors[fixed.index].name = value.name
    g.names.add(value.name)
    return fixed


class _Fake:
    def __init__(self, value: ir.Value) -> None:
        self.op_type, self.name = "graph output", value.name


_LAYOUTS = {2: {(0, 1): "NC"}, 3: {NHWC[3]: "NWC", (0, 1, 2): "NCW"}, 4: {NHWC[4]: "NHWC", (0, 1, 2, 3): "NCHW"}}


def _describe(name: str, shape: list[int], perm: tuple[int, ...]) -> dict:
    layout = _LAYOUTS.get(len(perm), {}).get(tuple(perm))
    return {"name": name, "shape": shape, "layout": layout, "perm": list(perm), "dtype": "float32"}


def _op_name(graph: TfliteGraph, op) -> str:
    code = next(c for c, i in graph.opcodes.items() if i == op.opcodeIndex)
    return builtin_names()[code]


