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
    """Over the axes from `axis` on; the optional Mean and InvStdDev outputs are the reduced tensors
    the normalisation computes anyway."""
    x = plain_features(ctx, ctx.val(node.inputs[0], node), node.inputs[0].name)
    rank = len(x.perm)
    axis = node.attributes.get_int("axis", -1) % rank
    extra = [o if o is not None and (o.uses() or o.name in ctx.outputs) else None for o in list(node.outputs[1:3])]
    _normalize(ctx, node, x, list(range(axis, rank)), node.attributes.get_float("epsilon", 1e-5),
               _affine(ctx, node, 1), _affine(ctx, node, 2), extra=extra)


@lowering("RMSNormalization")
def rms_norm(ctx: Ctx, node: ir.Node) -> None:
    """x * rsqrt(mean(x^2) + eps) * scale over the axes from `axis` on."""
    x = plain_features(ctx, ctx.val(node.inputs[0], node), node.inputs[0].name)
    rank = len(x.perm)
    axis = node.attributes.get_int("axis", -1) % rank
    _normalize(ctx, node, x, list(range(axis, rank)), node.attributes.get_float("epsilon", 1e-5),
               _affine(ctx, node, 1), None, centre=False)


@lowering("InstanceNormalization")
def instance_norm(ctx: Ctx, node: ir.Node) -> None:
    x = plain_features(ctx, ctx.val(node.inputs[0], node), node.inputs[0].name)
    rank = len(x.perm)
    per_channel = (-1,) + (1,) * (rank - 2)  # (C,) -> (C, 1, ..., 1): broadcast on axis 1
    scale, bias = _affine(ctx, node, 1), _affine(ctx, node, 2)
    if isinstance(scale, ir.Value) or isinstance(bias, ir.Value):
        raise unsupported(node, "has a scale or bias computed at run time")
    _normalize(ctx, node, x, list(range(2, rank)), node.attributes.get_float("epsilon", 1e-5),
               None if scale is None else scale.reshape(per_channel), None if bias is None else bias.reshape(per_channel))


def _affine(ctx: Ctx, node: ir.Node, i: int) -> np.ndarray | ir.Value | None:
    """A scale / bias input: its array when constant, else the ONNX value (an activation)."""
    if len(node.inputs) <= i or node.inputs[i] is None:
        return None
    array = ctx.const(node.inputs[i])
    return node.inputs[i] if array is None else array.astype(np.float32)


def _normalize(ctx: Ctx, node: ir.Node, x: TVal, onnx_axes: list[int], eps: float,
               scale: np.ndarray | ir.Value | None, bias: np.ndarray | ir.Value | None, *,
               extra: list[ir.Value | None] = (), centre: bool = True) -> None:
    """(x - mean) * rsqrt(var + eps) * scale + bias over `onnx_axes` (without centring: RMS norm);
    scale and bias broadcast like ONNX. `extra`: ONNX values to receive the mean and the rsqrt."""
    from edgepack.converters.export_tflite.ops_elementwise import _operand

    g = ctx.g
    rank = len(x.perm)
    shape = g.shape_of(x.index)
    stored = sorted(x.stored_axis(a) for a in onnx_axes)
    reduced = [1 if i in stored else d for i, d in enumerate(shape)]
    axes = ctx.int_const(stored, node.name + "_axes")
    name = node.name or node.outputs[0].name
    extra = list(extra) + [None, None]
    mean = ctx.out(extra[0], x.perm).index if extra[0] is not None else g.tensor(f"{name}_mean", reduced)
    inv = ctx.out(extra[1], x.perm).index if extra[1] is not None else g.tensor(f"{name}_rsqrt", reduced)
    centred, square, var, var_eps = (g.tensor(f"{name}_{k}", s) for k, s in (
        ("centred", shape), ("square", shape), ("var", reduced), ("var_eps", reduced)))
    if centre:
        g.op("MEAN", [x.index, axes], [mean], g.options("ReducerOptions", keepDims=True))
        g.op("SUB", [x.index, mean], [centred], g.options("SubOptions"))
    else:
        centred = x.index
    g.op("MUL", [centred, centred], [square], g.options("MulOptions"))
    g.op("MEAN", [square, axes], [var], g.options("ReducerOptions", keepDims=True))
    g.op("ADD", [var, g.const(np.array([eps], np.float32), name + "_epsilon")], [var_eps], g.options("AddOptions"))
    g.op("RSQRT", [var_eps], [inv])
    steps = [("MUL", None)]
    if isinstance(scale, ir.Value) or (scale is not None and not (scale == 1).all()):
        steps.append(("MUL", scale))
    if isinstance(bias, ir.Value) or (bias is not None and (bias != 0).any()):
        steps.append(("ADD", bias))
    out = ctx.out(node.outputs[0], x.perm)
    cur = centred
    for i, (builtin, operand) in enumerate(steps):
        if operand is None:
            other = inv
        elif isinstance(operand, ir.Value):
            other = _operand(ctx, node, operand, rank, x.perm, None)
        else:
            other = g.const(_const_in_layout(operand, rank, x.perm), f"{name}_{builtin.lower()}{i}")
        nxt = out.index if i == len(steps) - 1 else g.tensor(f"{name}_step{i}", shape)
        g.op(builtin, [cur, other], [nxt], g.options("MulOptions" if builtin == "MUL" else "AddOptions"))
        cur = nxt


@lowering("LpNormalization")
def lp_norm(ctx: Ctx, node: ir.Node) -> None:
    """x / ||x||_p along `axis` (p = 1: sum of |x|; p = 2: square root of the sum of squares); 0 where the norm is 0."""
    from edgepack.converters.export_tflite.chain import Chain

    p = node.attributes.get_int("p", 2)
    if p not in (1, 2):
        raise unsupported(node, f"has p={p} (1 and 2 are supported)")
    x = plain_features(ctx, ctx.val(node.inputs[0], node), node.inputs[0].name)
    c = Chain(ctx, node)
    stored = x.stored_axis(node.attributes.get_int("axis", -1))
    shape = ctx.g.shape_of(x.index)
    reduced = [1 if i == stored else d for i, d in enumerate(shape)]
    part = c.op("ABS", x.index) if p == 1 else c.op("MUL", x.index, x.index)  # no int8 SQUARE kernel in LiteRT
    norm = c.op("SUM", part, ctx.int_const([stored], node.name + "_axis"), shape=reduced, keepDims=True)
    if p == 2:
        norm = c.op("SQRT", norm)
    norm = c.op("SELECT_V2", c.op("EQUAL", norm, c.const(0.0)), c.const(1.0), norm)  # 0 / 0 = 0, as ONNX
    c.op("DIV", x.index, norm, out=ctx.out(node.outputs[0], x.perm).index)


@lowering("Hardmax")
def hardmax(ctx: Ctx, node: ir.Node) -> None:
    """1 at the first maximum along `axis`, 0 elsewhere: ARG_MAX, then ONE_HOT on the same axis."""
    from edgepack.converters.export_tflite.chain import Chain

    x = plain_features(ctx, ctx.val(node.inputs[0], node), node.inputs[0].name)
    c = Chain(ctx, node)
    stored = x.stored_axis(node.attributes.get_int("axis", -1))
    shape = ctx.g.shape_of(x.index)
    index = c.op("ARG_MAX", x.index, ctx.int_const([stored], node.name + "_axis"),
                 shape=shape[:stored] + shape[stored + 1:], dtype=np.int32, outputType=ctx.g.s.TensorType.INT32)
    c.op("ONE_HOT", index, ctx.int_const(shape[stored], node.name + "_depth"), c.const(1.0), c.const(0.0),
         out=ctx.out(node.outputs[0], x.perm).index, axis=stored)


@lowering("MeanVarianceNormalization")
def mean_variance_norm(ctx: Ctx, node: ir.Node) -> None:
    """(x - mean) / (sqrt(var) + 1e-9) over `axes` (default N, H, W), as ONNX's function body; written
    (x - mean) * rsqrt(var + 1e-18): the same where var >> 1e-18, and 1e9 * 0 = 0 where var is 0."""
    x = plain_features(ctx, ctx.val(node.inputs[0], node), node.inputs[0].name)
    rank = len(x.perm)
    axes = sorted({a % rank for a in node.attributes.get_ints("axes", [0, 2, 3])})
    _normalize(ctx, node, x, axes, 1e-18, None, None)


@lowering("LRN")
def lrn(ctx: Ctx, node: ir.Node) -> None:
    """Across channels: TFLite's LOCAL_RESPONSE_NORMALIZATION on the NHWC tensor (radius = (size - 1) / 2,
    alpha / size), for a 4-D input and an odd size (ONNX's window is symmetric then)."""
    from edgepack.converters.export_tflite.graph import NHWC

    size = node.attributes.get_int("size", 1)
    if len(ctx.shape(node.inputs[0])) != 4 or size % 2 == 0:
        raise unsupported(node, f"has size {size} on a {len(ctx.shape(node.inputs[0]))}-D input (4-D with an odd size only)")
    x = ctx.as_perm(plain_features(ctx, ctx.val(node.inputs[0], node), node.inputs[0].name), NHWC[4],
                    f"{node.name or node.outputs[0].name}_nhwc")
    out = ctx.out(node.outputs[0], NHWC[4])
    attr = node.attributes
    ctx.g.op("LOCAL_RESPONSE_NORMALIZATION", [x.index], [out.index], ctx.g.options(
        "LocalResponseNormalizationOptions", radius=(size - 1) // 2, bias=attr.get_float("bias", 1.0),
        alpha=attr.get_float("alpha", 1e-4) / size, beta=attr.get_float("beta", 0.75)))


@lowering("BatchNormalization")
def batch_norm(ctx: Ctx, node: ir.Node) -> None:
    """Inference-mode BatchNormalization left in the graph (fold_batchnorm folds the ones after a
    convolution; this one has statistics computed at run time, or no convolution before it):
    (x - mean) * rsqrt(var + eps) * scale + bias, x stored channels-last so the (C,) vectors broadcast."""
    from edgepack.converters.export_tflite.chain import Chain
    from edgepack.converters.export_tflite.graph import NHWC

    if node.attributes.get_int("training_mode", 0) or len([o for o in node.outputs if o is not None and o.name]) > 1:
        raise unsupported(node, "is in training mode (batch statistics, running-mean outputs)")
    rank = len(ctx.shape(node.inputs[0]))
    perm = NHWC.get(rank, tuple(range(rank)))
    x = ctx.as_perm(plain_features(ctx, ctx.val(node.inputs[0], node), node.inputs[0].name), perm,
                    f"{node.name or node.outputs[0].name}_channels_last")
    scale, bias, mean, var = (ctx.val(node.inputs[i], node).index for i in (1, 2, 3, 4))
    c = Chain(ctx, node)
    inv = c.op("RSQRT", c.op("ADD", var, c.const(node.attributes.get_float("epsilon", 1e-5))))
    centred = c.op("SUB", x.index, mean)
    c.op("ADD", c.op("MUL", c.op("MUL", centred, inv), scale), bias, out=ctx.out(node.outputs[0], perm).index)
