"""Lowerings for the normalization layers left in the graph (BatchNormalization is folded into the
convolutions before export): LayerNormalization and InstanceNormalization, written out over the
stored axes (mean, centred square mean, RSQRT, scale, shift), so no TRANSPOSE is needed."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgepack.converters.export_tflite.graph import TVal, unsupported
from edgepack.converters.export_tflite.ops_elementwise import _const_in_layout
from edgepack.converters.export_tflite.ops_shape import plain_features
from edgepack.converters.export_tflite.registry import Ctx, lowering


@lowering("LayerNormalization")
def layer_norm(ctx: Ctx, node: ir.Node) -> None:
    if any(o.uses() or o.name in ctx.outputs for o in node.outputs[1:]):
        raise unsupported(node, "uses the Mean / InvStdDev outputs")
    x = plain_features(ctx, ctx.val(node.inputs[0], node), node.inputs[0].name)
    rank = len(x.perm)
    axis = node.attributes.get_int("axis", -1) % rank
    scale, bias = _const_input(ctx, node, 1), _const_input(ctx, node, 2)
    _normalize(ctx, node, x, list(range(axis, rank)), node.attributes.get_float("epsilon", 1e-5), scale, bias)


@lowering("InstanceNormalization")
def instance_norm(ctx: Ctx, node: ir.Node) -> None:
    x = plain_features(ctx, ctx.val(node.inputs[0], node), node.inputs[0].name)
    rank = len(x.perm)
    per_channel = (-1,) + (1,) * (rank - 2)  # (C,) -> (C, 1, ..., 1): broadcast on axis 1
    scale, bias = _const_input(ctx, node, 1), _const_input(ctx, node, 2)
    _normalize(ctx, node, x, list(range(2, rank)), node.attributes.get_float("epsilon", 1e-5),
               None if scale is None else scale.reshape(per_channel), None if bias is None else bias.reshape(per_channel))


def _const_input(ctx: Ctx, node: ir.Node, i: int) -> np.ndarray | None:
    if len(node.inputs) <= i or node.inputs[i] is None:
        return None
    array = ctx.const(node.inputs[i])
    if array is None:
        raise unsupported(node, f"has a non-constant {'scale' if i == 1 else 'bias'}")
    return array.astype(np.float32)


def _normalize(ctx: Ctx, node: ir.Node, x: TVal, onnx_axes: list[int], eps: float,
               scale: np.ndarray | None, bias: np.ndarray | None) -> None:
    """(x - mean) * rsqrt(var + eps) * scale + bias over `onnx_axes`; scale and bias broadcast like ONNX."""
    g = ctx.g
    rank = len(x.perm)
    shape = g.shape_of(x.index)
    stored = sorted(x.stored_axis(a) for a in onnx_axes)
    reduced = [1 if i in stored else d for i, d in enumerate(shape)]
    axes = ctx.int_const(stored, node.name + "_axes")
    name = node.name
    mean, centred, square, var, var_eps, inv = (g.tensor(f"{name}_{k}", s) for k, s in (
        ("mean", reduced), ("centred", shape), ("square", shape), ("var", reduced), ("var_eps", reduced), ("rsqrt", reduced)))
    g.op("MEAN", [x.index, axes], [mean], g.options("ReducerOptions", keepDims=True))
    g.op("SUB", [x.index, mean], [centred], g.options("SubOptions"))
    g.op("MUL", [centred, centred], [square], g.options("MulOptions"))
    g.op("MEAN", [square, axes], [var], g.options("ReducerOptions", keepDims=True))
    g.op("ADD", [var, g.const(np.array([eps], np.float32), name + "_epsilon")], [var_eps], g.options("AddOptions"))
    g.op("RSQRT", [var_eps], [inv])
    steps = [("MUL", None)]
    if scale is not None and not (scale == 1).all():
        steps.append(("MUL", scale))
    if bias is not None and (bias != 0).any():
        steps.append(("ADD", bias))
    out = ctx.out(node.outputs[0], x.perm)
    cur = centred
    for i, (builtin, array) in enumerate(steps):
        other = inv if array is None else g.const(_const_in_layout(array, rank, x.perm), f"{name}_{builtin.lower()}{i}")
        nxt = out.index if i == len(steps) - 1 else g.tensor(f"{name}_step{i}", shape)
        g.op(builtin, [cur, other], [nxt], g.options("MulOptions" if builtin == "MUL" else "AddOptions"))
        cur = nxt
