"""Element-wise gathers and scatters with constant indices: GatherElements, and Scatter /
ScatterElements / ScatterND whose indices and updates are constants (the data is the run-time
input). TFLite's SCATTER_ND writes into zeros and cannot reduce, so a constant scatter is worked out
at export time: which elements it writes (a mask) and what they become from the updates (added,
multiplied, max, min or replaced), then one SELECT_V2(mask, data <op> updates, data) in the data's
own stored layout (the constants are laid out to match: no TRANSPOSE)."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgepack.converters.export_tflite.chain import Chain
from edgepack.converters.export_tflite.graph import identity, unsupported
from edgepack.converters.export_tflite.ops_shape import plain_features
from edgepack.converters.export_tflite.registry import Ctx, lowering

# reduction -> (numpy accumulation, its identity, the TFLite op applying it to the data)
REDUCTIONS = {"add": (np.add, 0.0, "ADD"), "mul": (np.multiply, 1.0, "MUL"), "max": (np.maximum, -np.inf, "MAXIMUM"),
              "min": (np.minimum, np.inf, "MINIMUM")}


@lowering("GatherElements")
def gather_elements(ctx: Ctx, node: ir.Node) -> None:
    """Constant indices: one GATHER of the flattened data (ONNX order) at the flat positions."""
    indices = ctx.const(node.inputs[1])
    if indices is None:
        raise unsupported(node, "gathers with indices computed at run time")
    dims = ctx.shape(node.inputs[0])
    axis = node.attributes.get_int("axis", 0) % len(dims)
    where = list(np.indices(indices.shape))
    where[axis] = indices.astype(np.int64) % dims[axis]
    flat_index = np.ravel_multi_index(tuple(where), dims)
    x = ctx.as_perm(plain_features(ctx, ctx.val(node.inputs[0], node), node.inputs[0].name), identity(len(dims)),
                    f"{node.name}_onnx_layout")
    c = Chain(ctx, node)
    flat = ctx.g.tensor(f"{c.name}_flat", [int(np.prod(dims))])
    ctx.g.reshape(x.index, flat)
    out = ctx.out(node.outputs[0], identity(indices.ndim))
    c.op("GATHER", flat, ctx.int_const(flat_index, f"{c.name}_flat_indices"), out=out.index, axis=0)


@lowering("Scatter", "ScatterElements", "ScatterND")
def scatter(ctx: Ctx, node: ir.Node) -> None:
    indices, updates = ctx.const(node.inputs[1]), ctx.const(node.inputs[2])
    if indices is None or updates is None:
        raise unsupported(node, "has indices or updates computed at run time (TFLite needs them constant here)")
    dims = ctx.shape(node.inputs[0])
    reduction = node.attributes.get_string("reduction", "none")
    if reduction != "none" and reduction not in REDUCTIONS:
        raise unsupported(node, f"uses reduction {reduction!r}")
    targets = (_nd_targets(indices, dims) if node.op_type == "ScatterND"
               else _element_targets(indices, dims, node.attributes.get_int("axis", 0)))
    values = updates.astype(np.float32).reshape(len(targets[0]), -1)  # one row per target (a slice for ScatterND)
    count = values.shape[1]
    slots = (np.ravel_multi_index(targets, dims[: len(targets)]) * count)[:, None] + np.arange(count)
    mask = np.zeros(int(np.prod(dims)), bool)
    mask[slots.reshape(-1)] = True
    if reduction == "none":
        result = np.zeros(mask.size, np.float32)
        result[slots.reshape(-1)] = values.reshape(-1)  # in order: a repeated index keeps the last update
    else:
        accumulate, start, _ = REDUCTIONS[reduction]
        result = np.full(mask.size, start, np.float64)
        accumulate.at(result, slots.reshape(-1), values.reshape(-1).astype(np.float64))
        result = np.where(mask, result, 0.0).astype(np.float32)
    x = plain_features(ctx, ctx.val(node.inputs[0], node), node.inputs[0].name)
    stored = [int(a) for a in x.perm]  # the constants in the data's stored layout
    c = Chain(ctx, node)
    picked = c.const(result.reshape(dims).transpose(stored))
    if reduction != "none":
        picked = c.op(REDUCTIONS[reduction][2], x.index, picked)
    out = ctx.out(node.outputs[0], x.perm)
    c.op("SELECT_V2", c.const(mask.reshape(dims).transpose(stored), np.bool_), picked, x.index, out=out.index)


def _element_targets(indices: np.ndarray, dims, axis: int) -> tuple[np.ndarray, ...]:
    """Scatter/ScatterElements: the data index each update element goes to (flattened in order)."""
    axis %= len(dims)
    where = list(np.indices(indices.shape))
    where[axis] = indices.astype(np.int64) % dims[axis]
    return tuple(w.reshape(-1) for w in where)


def _nd_targets(indices: np.ndarray, dims) -> tuple[np.ndarray, ...]:
    """ScatterND: the leading data index of each update slice (one per index tuple, in order)."""
    k = indices.shape[-1]
    rows = indices.reshape(-1, k).astype(np.int64) % np.array(dims[:k])
    return tuple(rows[:, i] for i in range(k))
