"""Lowerings for convolution, fully connected and pooling layers (NHWC inside)."""
from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from edgepack.converters.export_tflite.graph import NHWC, TVal, identity, unsupported
from edgepack.converters.export_tflite.registry import Ctx, lowering

NHWC4 = NHWC[4]


def _ints(node: ir.Node, name: str, default: list[int]) -> list[int]:
    return list(node.attributes.get_ints(name, default) or default)


def _padding(node: ir.Node, in_hw: tuple[int, int], kernel: list[int], strides: list[int], dilations: list[int],
             out_hw: tuple[int, int]) -> tuple[str, list[tuple[int, int]]]:
    """("SAME"|"VALID", explicit [(before, after)] per spatial dim still needed before the op)."""
    auto = node.attributes.get_string("auto_pad", "NOTSET")
    pads = _ints(node, "pads", [0] * 4)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for i in range(2):
            total = max((out_hw[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_hw[i], 0)
            small = total // 2
            pads.append((small, total - small) if auto == "SAME_UPPER" else (total - small, small))
        pairs = pads
    else:
        pairs = [(pads[0], pads[2]), (pads[1], pads[3])]
    if all(p == (0, 0) for p in pairs):
        return "VALID", []
    same = []
    for i in range(2):
        out = math.ceil(in_hw[i] / strides[i])
        total = max((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_hw[i], 0)
        same.append((total // 2, total - total // 2))
    if pairs == same and tuple(out_hw) == tuple(math.ceil(in_hw[i] / strides[i]) for i in range(2)):
        return "SAME", []
    return "VALID", pairs


def _pad_input(ctx: Ctx, x: TVal, pairs: list[tuple[int, int]], name: str, value: float = 0.0) -> TVal:
    if not pairs:
        return x
    shape = ctx.g.shape_of(x.index)
    paddings = np.array([[0, 0], list(pairs[0]), list(pairs[1]), [0, 0]], np.int32)
    out = ctx.g.tensor(name + "_pad", [shape[0], shape[1] + sum(pairs[0]), shape[2] + sum(pairs[1]), shape[3]])
    if value == 0.0:
        ctx.g.op("PAD", [x.index, ctx.g.const(paddings, name + "_paddings")], [out], ctx.g.options("PadOptions"))
    else:
        ctx.g.op("PADV2", [x.index, ctx.g.const(paddings, name + "_paddings"),
                           ctx.g.const(np.array(value, np.float32), name + "_padvalue")], [out], ctx.g.options("PadV2Options"))
    return TVal(out, NHWC4)


def _act(ctx: Ctx, node: ir.Node) -> tuple[int, ir.Value]:
    """Fused activation code and the ONNX value the fused op produces."""
    fused = ctx.fusable_activation(node)
    codes = ctx.g.s.ActivationFunctionType
    if fused is None:
        return codes.NONE, node.outputs[0]
    kind, act_node = fused
    ctx.skip.add(id(act_node))
    return getattr(codes, kind), act_node.outputs[0]


@lowering("Conv")
def conv(ctx: Ctx, node: ir.Node) -> None:
    w = ctx.const(node.inputs[1])
    if w is None:
        raise unsupported(node, "has non-constant weights")
    b = ctx.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if w.ndim == 3:
        return _conv1d(ctx, node, w, b)
    if w.ndim != 4:
        raise unsupported(node, f"is a {w.ndim - 2}-D convolution (1-D and 2-D are supported)")
    x = ctx.as_perm(ctx.val(node.inputs[0], node), NHWC4, node.inputs[0].name + "_nhwc")
    group = node.attributes.get_int("group", 1)
    cin = ctx.g.shape_of(x.index)[3]
    cout = w.shape[0]
    b = np.zeros(cout, np.float32) if b is None else b.astype(np.float32)
    kernel, strides, dil = list(w.shape[2:]), _ints(node, "strides", [1, 1]), _ints(node, "dilations", [1, 1])
    out_shape = ctx.shape(node.outputs[0])
    in_shape = ctx.shape(node.inputs[0])
    padding, pairs = _padding(node, in_shape[2:], kernel, strides, dil, out_shape[2:])
    x = _pad_input(ctx, x, pairs, node.name)
    act, produced = _act(ctx, node)
    pad_code = getattr(ctx.g.s.Padding, padding)
    out = ctx.out(produced, NHWC4)
    if group == 1:
        opts = ctx.g.options("Conv2DOptions", padding=pad_code, strideH=strides[0], strideW=strides[1],
                             dilationHFactor=dil[0], dilationWFactor=dil[1], fusedActivationFunction=act)
        ctx.g.op("CONV_2D", [x.index, ctx.weight(w.transpose(0, 2, 3, 1), node.name + "_weights"),
                             ctx.g.const(b, node.name + "_bias")], [out.index], opts)
    elif group == cin and cout % cin == 0 and w.shape[1] == 1:
        opts = ctx.g.options("DepthwiseConv2DOptions", padding=pad_code, strideH=strides[0], strideW=strides[1],
                             depthMultiplier=cout // cin, dilationHFactor=dil[0], dilationWFactor=dil[1],
                             fusedActivationFunction=act)
        ctx.g.op("DEPTHWISE_CONV_2D", [x.index, ctx.weight(w.transpose(1, 2, 3, 0), node.name + "_weights"),
                                       ctx.g.const(b, node.name + "_bias")], [out.index], opts)
    else:  # grouped: SPLIT into groups, one CONV_2D each, CONCATENATION
        _grouped(ctx, node, x, w, b, group, pad_code, strides, dil, act, out)


def _grouped(ctx, node, x, w, b, group, pad_code, strides, dil, act, out) -> None:
    g = ctx.g
    shape = g.shape_of(x.index)
    parts = [g.tensor(f"{node.name}_group{i}_in", shape[:3] + [shape[3] // group]) for i in range(group)]
    g.op("SPLIT", [ctx.int_const(3, node.name + "_axis"), x.index], parts, g.options("SplitOptions", numSplits=group))
    oshape = g.shape_of(out.index)
    og = w.shape[0] // group
    outs = []
    for i, part in enumerate(parts):
        o = g.tensor(f"{node.name}_group{i}", oshape[:3] + [og])
        opts = g.options("Conv2DOptions", padding=pad_code, strideH=strides[0], strideW=strides[1],
                         dilationHFactor=dil[0], dilationWFactor=dil[1], fusedActivationFunction=act)
        g.op("CONV_2D", [part, ctx.weight(w[i * og:(i + 1) * og].transpose(0, 2, 3, 1), f"{node.name}_weights{i}"),
                         g.const(b[i * og:(i + 1) * og], f"{node.name}_bias{i}")], [o], opts)
        outs.append(o)
    g.op("CONCATENATION", outs, [out.index], g.options("ConcatenationOptions", axis=3))


def _conv1d(ctx: Ctx, node: ir.Node, w: np.ndarray, b: np.ndarray | None) -> None:
    """(N, C, W) stored NWC -> RESHAPE (N, 1, W, C) -> CONV_2D (1 x k) -> RESHAPE (N, W', O)."""
    g = ctx.g
    x = ctx.as_perm(ctx.val(node.inputs[0], node), NHWC[3], node.inputs[0].name + "_nwc")
    n, width, c = g.shape_of(x.index)
    x4 = g.tensor(node.name + "_as2d", [n, 1, width, c])
    g.op("RESHAPE", [x.index, ctx.int_const([n, 1, width, c], node.name + "_shape_in")], [x4], g.options("ReshapeOptions", newShape=[n, 1, width, c]))
    group = node.attributes.get_int("group", 1)
    if group != 1 and not (group == c and w.shape[1] == 1):
        raise unsupported(node, "is a grouped 1-D convolution")
    pads = _ints(node, "pads", [0, 0])
    strides, dil = _ints(node, "strides", [1]), _ints(node, "dilations", [1])
    cout = w.shape[0]
    b = np.zeros(cout, np.float32) if b is None else b.astype(np.float32)
    act, produced = _act(ctx, node)
    out_w = ctx.shape(produced)[2]
    if pads[0] or pads[1]:
        padded = g.tensor(node.name + "_pad", [n, 1, width + pads[0] + pads[1], c])
        g.op("PAD", [x4, g.const(np.array([[0, 0], [0, 0], [pads[0], pads[1]], [0, 0]], np.int32), node.name + "_paddings")],
             [padded], g.options("PadOptions"))
        x4 = padded
    y4 = g.tensor(node.name + "_out2d", [n, 1, out_w, cout])
    w4 = w[:, :, None, :]  # (O, I, 1, k)
    if group == 1:
        opts = g.options("Conv2DOptions", padding=g.s.Padding.VALID, strideH=1, strideW=strides[0],
                         dilationHFactor=1, dilationWFactor=dil[0], fusedActivationFunction=act)
        g.op("CONV_2D", [x4, ctx.weight(w4.transpose(0, 2, 3, 1), node.name + "_weights"), g.const(b, node.name + "_bias")], [y4], opts)
    else:
        opts = g.options("DepthwiseConv2DOptions", padding=g.s.Padding.VALID, strideH=1, strideW=strides[0],
                         depthMultiplier=cout // c, dilationHFactor=1, dilationWFactor=dil[0], fusedActivationFunction=act)
        g.op("DEPTHWISE_CONV_2D", [x4, ctx.weight(w4.transpose(1, 2, 3, 0), node.name + "_weights"), g.const(b, node.name + "_bias")], [y4], opts)
    out = ctx.out(produced, NHWC[3])
    g.op("RESHAPE", [y4, ctx.int_const(g.shape_of(out.index), node.name + "_shape_out")], [out.index],
         g.options("ReshapeOptions", newShape=g.shape_of(out.index)))


@lowering("ConvTranspose")
def conv_transpose(ctx: Ctx, node: ir.Node) -> None:
    g = ctx.g
    w = ctx.const(node.inputs[1])
    if w is None or w.ndim != 4 or node.attributes.get_int("group", 1) != 1:
        raise unsupported(node, "is not a 2-D ConvTranspose with constant weights and group 1")
    if any(d != 1 for d in _ints(node, "dilations", [1, 1])):
        raise unsupported(node, "has dilations")
    b = ctx.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    x = ctx.as_perm(ctx.val(node.inputs[0], node), NHWC4, node.inputs[0].name + "_nhwc")
    n, h, wd, _ = g.shape_of(x.index)
    strides = _ints(node, "strides", [1, 1])
    k = w.shape[2:]
    opad = _ints(node, "output_padding", [0, 0])
    full = [n, (h - 1) * strides[0] + k[0] + opad[0], (wd - 1) * strides[1] + k[1] + opad[1], w.shape[1]]
    onnx_out = ctx.shape(node.outputs[0])
    pads = _ints(node, "pads", [0, 0, 0, 0])
    if node.attributes.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        total = [full[1] - onnx_out[2], full[2] - onnx_out[3]]
        pads = [total[0] // 2, total[1] // 2, total[0] - total[0] // 2, total[1] - total[1] // 2]
    cropped = pads[0] or pads[1] or full[1:3] != list(onnx_out[2:])
    y = g.tensor(node.name + "_full", full) if cropped or b is not None else None
    out = ctx.out(node.outputs[0], NHWC4)
    target = y if y is not None else out.index
    g.op("TRANSPOSE_CONV", [ctx.int_const(full, node.name + "_output_shape"),
                            ctx.weight(w.transpose(1, 2, 3, 0), node.name + "_weights"), x.index], [target],
         g.options("TransposeConvOptions", padding=g.s.Padding.VALID, strideH=strides[0], strideW=strides[1]))
    if y is None:
        return
    if cropped:
        sliced = g.tensor(node.name + "_crop", g.shape_of(out.index)) if b is not None else out.index
        begin = [0, pads[0], pads[1], 0]
        size = g.shape_of(out.index)
        g.op("SLICE", [y, ctx.int_const(begin, node.name + "_begin"), ctx.int_const(size, node.name + "_size")], [sliced],
             g.options("SliceOptions"))
        y = sliced
    if b is not None:
        g.op("ADD", [y, g.const(b.astype(np.float32), node.name + "_bias")], [out.index], g.options("AddOptions"))


@lowering("Gemm")
def gemm(ctx: Ctx, node: ir.Node) -> None:
    w = ctx.const(node.inputs[1])
    if w is None or node.attributes.get_int("transA", 0):
        raise unsupported(node, "has non-constant weights or transA")
    alpha, beta = node.attributes.get_float("alpha", 1.0), node.attributes.get_float("beta", 1.0)
    w = (w if node.attributes.get_int("transB", 0) else w.T) * alpha  # (out, in)
    c = ctx.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if c is not None and c.size not in (1, w.shape[0]):
        raise unsupported(node, f"has a bias of shape {list(c.shape)} (per-output bias only)")
    bias = np.broadcast_to(beta * c.reshape(-1), (w.shape[0],)) if c is not None else np.zeros(w.shape[0])
    _fully_connected(ctx, node, ctx.val(node.inputs[0], node), w, bias.astype(np.float32))


@lowering("MatMul")
def matmul(ctx: Ctx, node: ir.Node) -> None:
    w = ctx.const(node.inputs[1])
    a = ctx.val(node.inputs[0], node)
    if w is not None and w.ndim == 2:
        return _fully_connected(ctx, node, a, w.T, None)
    b = ctx.val(node.inputs[1], node)
    rank = len(ctx.shape(node.outputs[0]))
    a = ctx.as_perm(a, identity(len(a.perm)), node.inputs[0].name + "_plain")
    b = ctx.as_perm(b, identity(len(b.perm)), node.inputs[1].name + "_plain")
    out = ctx.out(node.outputs[0], identity(rank))
    ctx.g.op("BATCH_MATMUL", [a.index, b.index], [out.index], ctx.g.options("BatchMatMulOptions", adjX=False, adjY=False))


def _fully_connected(ctx: Ctx, node: ir.Node, a: TVal, w: np.ndarray, bias: np.ndarray | None) -> None:
    """w: (out, in) in ONNX feature order; reordered when `a` stores its features permuted."""
    rank = len(a.perm)
    if rank == 2 and a.feature_perm is not None:
        w = w[:, list(a.feature_perm)]
    elif a.perm != identity(rank):
        if a.perm[-1] != rank - 1:
            a = ctx.as_perm(a, identity(rank), node.inputs[0].name + "_plain")
    act, produced = _act(ctx, node)
    out_perm = a.perm if rank > 2 else identity(2)
    out = ctx.out(produced, out_perm)
    inputs = [a.index, ctx.weight(w, node.name + "_weights")]
    inputs.append(ctx.g.const(bias, node.name + "_bias") if bias is not None else -1)
    ctx.g.op("FULLY_CONNECTED", inputs, [out.index],
             ctx.g.options("FullyConnectedOptions", fusedActivationFunction=act, keepNumDims=rank > 2))


def _pool(ctx: Ctx, node: ir.Node, builtin: str) -> None:
    if node.attributes.get_int("ceil_mode", 0):
        raise unsupported(node, "uses ceil_mode=1")
    kernel = _ints(node, "kernel_shape", [1, 1])
    if len(kernel) != 2:
        raise unsupported(node, "is not a 2-D pool")
    strides, dil = _ints(node, "strides", [1, 1]), _ints(node, "dilations", [1, 1])
    if any(d != 1 for d in dil):
        raise unsupported(node, "has dilations")
    x = ctx.as_perm(ctx.val(node.inputs[0], node), NHWC4, node.inputs[0].name + "_nhwc")
    padding, pairs = _padding(node, ctx.shape(node.inputs[0])[2:], kernel, strides, [1, 1], ctx.shape(node.outputs[0])[2:])
    if pairs and builtin == "AVERAGE_POOL_2D" and not node.attributes.get_int("count_include_pad", 0):
        raise unsupported(node, "pads asymmetrically with count_include_pad=0 (TFLite averages SAME padding only)")
    x = _pad_input(ctx, x, pairs, node.name, value=-3.4e38 if builtin == "MAX_POOL_2D" else 0.0)
    act, produced = _act(ctx, node)
    out = ctx.out(produced, NHWC4)
    ctx.g.op(builtin, [x.index], [out.index],
             ctx.g.options("Pool2DOptions", padding=getattr(ctx.g.s.Padding, padding), strideH=strides[0], strideW=strides[1],
                           filterHeight=kernel[0], filterWidth=kernel[1], fusedActivationFunction=act))


@lowering("MaxPool")
def max_pool(ctx: Ctx, node: ir.Node) -> None:
    if len(node.outputs) > 1 and node.outputs[1].uses():
        raise unsupported(node, "uses the Indices output")
    _pool(ctx, node, "MAX_POOL_2D")


@lowering("AveragePool")
def average_pool(ctx: Ctx, node: ir.Node) -> None:
    _pool(ctx, node, "AVERAGE_POOL_2D")


@lowering("GlobalAveragePool", "GlobalMaxPool")
def global_pool(ctx: Ctx, node: ir.Node) -> None:
    x = ctx.val(node.inputs[0], node)
    rank = len(x.perm)
    axes = [x.stored_axis(a) for a in range(2, rank)]
    out = ctx.out(node.outputs[0], x.perm)
    builtin = "MEAN" if node.op_type == "GlobalAveragePool" else "REDUCE_MAX"
    ctx.g.op(builtin, [x.index, ctx.int_const(axes, node.name + "_axes")], [out.index],
             ctx.g.options("ReducerOptions", keepDims=True))
