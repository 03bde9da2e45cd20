"""Lowerings for convolution, fully connected and pooling layers (NHWC inside)."""
from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from edgepack.converters.onnx_checks import transposed_conv_grows
from edgepack.converters.export_tflite.graph import NHWC, TVal, identity, unsupported
from edgepack.converters.export_tflite.ops_shape import plain_features
from edgepack.converters.export_tflite.registry import Ctx, lowering

NHWC4 = NHWC[4]


def _ints(node: ir.Node, name: str, default: list[int]) -> list[int]:
    return list(node.attributes.get_ints(name, default) or default)


def _explicit_pads(node: ir.Node, in_hw: tuple[int, int], kernel: list[int], strides: list[int],
                   dilations: list[int], out_hw: tuple[int, int]) -> list[tuple[int, int]]:
    """(before, after) per spatial dim so that a VALID op gives the ONNX output size; the after side
    grows when ceil_mode needs a last, partial window."""
    auto = node.attributes.get_string("auto_pad", "NOTSET")
    pads = _ints(node, "pads", [0] * 4)
    pairs = []
    for i in range(2):
        need = (out_hw[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_hw[i]
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            total = max(need, 0)
            small = total // 2
            pairs.append((small, total - small) if auto == "SAME_UPPER" else (total - small, small))
        else:
            pairs.append((pads[i], max(pads[i + 2], need - pads[i])))
    return pairs


def _is_same(pairs: list[tuple[int, int]], in_hw: tuple[int, int], kernel: list[int], strides: list[int],
             dilations: list[int], out_hw: tuple[int, int]) -> bool:
    """True when TFLite's SAME padding pads exactly `pairs` and gives the ONNX output size."""
    for i in range(2):
        out = math.ceil(in_hw[i] / strides[i])
        total = max((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_hw[i], 0)
        if out != out_hw[i] or tuple(pairs[i]) != (total // 2, total - total // 2):
            return False
    return True


def _padding(node: ir.Node, in_hw: tuple[int, int], kernel: list[int], strides: list[int], dilations: list[int],
             out_hw: tuple[int, int]) -> tuple[str, list[tuple[int, int]]]:
    """("SAME"|"VALID", explicit [(before, after)] per spatial dim still needed before the op)."""
    pairs = _explicit_pads(node, in_hw, kernel, strides, dilations, out_hw)
    if all(p == (0, 0) for p in pairs):
        return "VALID", []
    if _is_same(pairs, in_hw, kernel, strides, dilations, out_hw):
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
        return _conv_runtime_weights(ctx, node)
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


def _conv_runtime_weights(ctx: Ctx, node: ir.Node) -> None:
    """A 2-D, ungrouped convolution whose weights are computed at run time: the (O, I, kH, kW) weights
    stored NHWC are TFLite's (O, kH, kW, I) filter layout, fed to CONV_2D as they are."""
    w_shape = ctx.shape(node.inputs[1])
    if len(w_shape) != 4 or node.attributes.get_int("group", 1) != 1:
        raise unsupported(node, "has non-constant weights (supported for ungrouped 2-D convolutions only)")
    g = ctx.g
    x = ctx.as_perm(ctx.val(node.inputs[0], node), NHWC4, node.inputs[0].name + "_nhwc")
    w = ctx.as_perm(ctx.val(node.inputs[1], node), NHWC4, node.inputs[1].name + "_ohwi")
    bias_value = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] is not None else None
    b = ctx.const(bias_value)
    if bias_value is None or b is not None:
        bias = g.const((np.zeros(w_shape[0]) if b is None else b).astype(np.float32), node.name + "_bias")
    else:
        bias = ctx.as_perm(ctx.val(bias_value, node), (0,), bias_value.name + "_plain").index
    kernel, strides, dil = list(w_shape[2:]), _ints(node, "strides", [1, 1]), _ints(node, "dilations", [1, 1])
    padding, pairs = _padding(node, ctx.shape(node.inputs[0])[2:], kernel, strides, dil, ctx.shape(node.outputs[0])[2:])
    x = _pad_input(ctx, x, pairs, node.name)
    act, produced = _act(ctx, node)
    out = ctx.out(produced, NHWC4)
    opts = g.options("Conv2DOptions", padding=getattr(g.s.Padding, padding), strideH=strides[0], strideW=strides[1],
                     dilationHFactor=dil[0], dilationWFactor=dil[1], fusedActivationFunction=act)
    g.op("CONV_2D", [x.index, w.index, bias], [out.index], opts)


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
    """TRANSPOSE_CONV with VALID padding to the full size, then SLICE off the pads and ADD the bias.
    Grouped: SPLIT the channels, one TRANSPOSE_CONV per group, CONCATENATION."""
    g = ctx.g
    w = ctx.const(node.inputs[1])
    runtime_w = None
    if w is None and len(ctx.shape(node.inputs[1])) == 4 and node.attributes.get_int("group", 1) == 1:
        # weights computed at run time: (I, O, kH, kW) relaid to TFLite's (O, kH, kW, I)
        runtime_w = ctx.as_perm(ctx.val(node.inputs[1], node), (1, 2, 3, 0), node.inputs[1].name + "_ohwi").index
        w = np.zeros(ctx.shape(node.inputs[1]), np.float32)  # its shape only
    if w is None or w.ndim != 4:
        raise unsupported(node, "is not a 2-D ConvTranspose with constant weights (or ungrouped run-time ones)")
    if any(d != 1 for d in _ints(node, "dilations", [1, 1])):
        raise unsupported(node, "has dilations")
    if transposed_conv_grows(node):
        raise unsupported(node, "is larger than its full transposed convolution (output_shape pads it)")
    group = node.attributes.get_int("group", 1)
    b = ctx.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if b is None and len(node.inputs) > 2 and node.inputs[2] is not None:
        raise unsupported(node, "has a bias computed at run time")
    x = ctx.as_perm(ctx.val(node.inputs[0], node), NHWC4, node.inputs[0].name + "_nhwc")
    n, h, wd, cin = g.shape_of(x.index)
    strides = _ints(node, "strides", [1, 1])
    k = w.shape[2:]
    opad = _ints(node, "output_padding", [0, 0])
    full = [n, (h - 1) * strides[0] + k[0] + opad[0], (wd - 1) * strides[1] + k[1] + opad[1], w.shape[1] * group]
    onnx_out = ctx.shape(node.outputs[0])
    pads = _ints(node, "pads", [0, 0, 0, 0])
    auto = node.attributes.get_string("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        total = [full[1] - onnx_out[2], full[2] - onnx_out[3]]
        small = [t // 2 for t in total]
        begin = small if auto == "SAME_UPPER" else [t - s for t, s in zip(total, small)]
        pads = begin + [t - b for t, b in zip(total, begin)]
    cropped = pads[0] or pads[1] or full[1:3] != list(onnx_out[2:])
    y = g.tensor(node.name + "_full", full) if cropped or b is not None else None
    out = ctx.out(node.outputs[0], NHWC4)
    target = y if y is not None else out.index
    opts = g.options("TransposeConvOptions", padding=g.s.Padding.VALID, strideH=strides[0], strideW=strides[1])
    if group == 1:
        g.op("TRANSPOSE_CONV", [ctx.int_const(full, node.name + "_output_shape"),
                                runtime_w if runtime_w is not None else ctx.weight(w.transpose(1, 2, 3, 0), node.name + "_weights"),
                                x.index], [target], opts)
    else:
        cin_g, cout_g = cin // group, w.shape[1]
        parts = [g.tensor(f"{node.name}_group{i}_in", [n, h, wd, cin_g]) for i in range(group)]
        g.op("SPLIT", [ctx.int_const(3, node.name + "_axis"), x.index], parts, g.options("SplitOptions", numSplits=group))
        outs = []
        for i, part in enumerate(parts):
            o = g.tensor(f"{node.name}_group{i}", full[:3] + [cout_g])
            g.op("TRANSPOSE_CONV", [ctx.int_const(full[:3] + [cout_g], f"{node.name}_output_shape{i}"),
                                    ctx.weight(w[i * cin_g:(i + 1) * cin_g].transpose(1, 2, 3, 0), f"{node.name}_weights{i}"),
                                    part], [o], opts)
            outs.append(o)
        g.op("CONCATENATION", outs, [target], g.options("ConcatenationOptions", axis=3))
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
    """Constant B, no transA, a per-output (or no) bias: one FULLY_CONNECTED. Otherwise
    BATCH_MATMUL (adjX/adjY for transA/transB), then alpha and beta * C broadcast like ONNX."""
    w = ctx.const(node.inputs[1])
    alpha, beta = node.attributes.get_float("alpha", 1.0), node.attributes.get_float("beta", 1.0)
    trans_a, trans_b = node.attributes.get_int("transA", 0), node.attributes.get_int("transB", 0)
    c_value = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] is not None else None
    c = ctx.const(c_value)
    if w is not None and not trans_a and (c_value is None or (c is not None and c.size in (1, w.shape[1 - trans_b]))):
        w = (w if trans_b else w.T) * alpha  # (out, in)
        bias = np.broadcast_to(beta * c.reshape(-1), (w.shape[0],)) if c is not None else np.zeros(w.shape[0])
        return _fully_connected(ctx, node, ctx.val(node.inputs[0], node), w, bias.astype(np.float32))
    _gemm_general(ctx, node, alpha, beta, bool(trans_a), bool(trans_b), c_value)


def _gemm_general(ctx: Ctx, node: ir.Node, alpha: float, beta: float, trans_a: bool, trans_b: bool,
                  c_value: ir.Value | None) -> None:
    from edgepack.converters.export_tflite.chain import Chain
    from edgepack.converters.export_tflite.ops_elementwise import _operand

    g, chain = ctx.g, Chain(ctx, node)
    a, b = (ctx.as_perm(plain_features(ctx, ctx.val(v, node), v.name), identity(2), v.name + "_plain") for v in node.inputs[:2])
    out = ctx.out(node.outputs[0], identity(2)).index
    steps = (alpha != 1.0) + (c_value is not None and beta != 0.0)
    product = chain.op("BATCH_MATMUL", a.index, b.index, out=out if not steps else None, shape=g.shape_of(out),
                       adjX=trans_a, adjY=trans_b)
    if alpha != 1.0:
        steps -= 1
        product = chain.op("MUL", product, chain.const(alpha), out=None if steps else out)
    if c_value is not None and beta != 0.0:
        bias = _operand(ctx, node, c_value, 2, identity(2), None)
        if beta != 1.0:
            bias = chain.op("MUL", bias, chain.const(beta))
        chain.op("ADD", product, bias, out=out)


@lowering("MatMul")
def matmul(ctx: Ctx, node: ir.Node) -> None:
    """A constant 2-D right operand: FULLY_CONNECTED (with the bias of a following Add, as PyTorch
    exports Linear on 3-D inputs). Two activations: BATCH_MATMUL; an operand stored with its last
    two axes swapped (a relabelled Transpose) is read with adjX/adjY instead of transposed."""
    w = ctx.const(node.inputs[1])
    a = ctx.val(node.inputs[0], node)
    if w is not None and w.ndim == 2:
        bias, last = _bias_add(ctx, node, w.shape[1])
        return _fully_connected(ctx, node, a, w.T, bias, last)
    operands = []
    for value in node.inputs[:2]:
        tv = plain_features(ctx, ctx.val(value, node), value.name)
        rank = len(tv.perm)
        swapped = identity(rank)[:-2] + (rank - 1, rank - 2)
        if rank >= 2 and tv.perm == swapped:
            operands.append((tv, True))
        else:
            operands.append((ctx.as_perm(tv, identity(rank), value.name + "_plain"), False))
    (a, adj_x), (b, adj_y) = operands
    g = ctx.g
    out = ctx.out(node.outputs[0], identity(len(ctx.shape(node.outputs[0]))))
    # A 1-D operand (BATCH_MATMUL wants rank 2+): (K,) as (1, K) on the left, (K, 1) on the right, the
    # added axis RESHAPEd away after.
    vector_a, vector_b = len(a.perm) == 1, len(b.perm) == 1
    if vector_a or vector_b:
        for i, (tv, shape) in enumerate(((a, [1, -1]), (b, [-1, 1]))):
            if len(tv.perm) == 1:
                k = g.shape_of(tv.index)[0]
                mat = g.tensor(f"{node.name}_matrix{i}", [k if d == -1 else d for d in shape])
                g.reshape(tv.index, mat)
                a, b = (TVal(mat, identity(2)), b) if i == 0 else (a, TVal(mat, identity(2)))
        sa, sb = g.shape_of(a.index), g.shape_of(b.index)
        batch = list(np.broadcast_shapes(tuple(sa[:-2]), tuple(sb[:-2])))
        full = g.tensor(node.name + "_full", batch + [sa[-2], sb[-1]])
        g.op("BATCH_MATMUL", [a.index, b.index], [full], g.options("BatchMatMulOptions", adjX=adj_x, adjY=adj_y))
        g.reshape(full, out.index)
        return
    g.op("BATCH_MATMUL", [a.index, b.index], [out.index], g.options("BatchMatMulOptions", adjX=adj_x, adjY=adj_y))


def _bias_add(ctx: Ctx, node: ir.Node, features: int) -> tuple[np.ndarray | None, ir.Node]:
    """(bias, Add node) when the MatMul's only consumer adds a constant per-output-feature vector."""
    out = node.outputs[0]
    if out.name in ctx.outputs or len(out.uses()) != 1:
        return None, node
    add = out.uses()[0].node
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or ctx.shape(add.outputs[0]) != ctx.shape(out):
        return None, node
    other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
    c = ctx.const(other)
    if c is None or c.size != features or (c.ndim and c.shape[-1] != features):
        return None, node
    ctx.skip.add(id(add))
    return c.reshape(-1).astype(np.float32), add


def _fully_connected(ctx: Ctx, node: ir.Node, a: TVal, w: np.ndarray, bias: np.ndarray | None,
                     last: ir.Node | None = None) -> None:
    """w: (out, in) in ONNX feature order; reordered when `a` stores its features permuted.
    `last`: the node whose output this op produces (an Add folded in as the bias), default `node`."""
    rank = len(a.perm)
    if rank == 2 and a.feature_perm is not None:
        w = w[:, list(a.feature_perm)]
    elif a.perm != identity(rank):
        if a.perm[-1] != rank - 1:
            a = ctx.as_perm(a, identity(rank), node.inputs[0].name + "_plain")
    act, produced = _act(ctx, last or node)
    out_perm = a.perm if rank > 2 else identity(2)
    out = ctx.out(produced, out_perm)
    inputs = [a.index, ctx.weight(w, node.name + "_weights")]
    inputs.append(ctx.g.const(bias, node.name + "_bias") if bias is not None else -1)
    ctx.g.op("FULLY_CONNECTED", inputs, [out.index],
             ctx.g.options("FullyConnectedOptions", fusedActivationFunction=act, keepNumDims=rank > 2))


def _pool(ctx: Ctx, node: ir.Node, builtin: str) -> None:
    """MAX_POOL_2D / AVERAGE_POOL_2D. SAME padding when it pads exactly like ONNX (TFLite leaves padded
    cells out of the window: -inf for max, not counted for average); otherwise an explicit PAD and
    VALID, and for an average whose divisor is not the full window (count_include_pad=0, ceil_mode)
    one MUL by a constant kernel_area / divisor map."""
    kernel = _ints(node, "kernel_shape", [1, 1])
    if len(kernel) != 2:
        raise unsupported(node, "is not a 2-D pool")
    strides, dil = _ints(node, "strides", [1, 1]), _ints(node, "dilations", [1, 1])
    if any(d != 1 for d in dil):
        raise unsupported(node, "has dilations")
    x = ctx.as_perm(ctx.val(node.inputs[0], node), NHWC4, node.inputs[0].name + "_nhwc")
    in_hw, out_hw = ctx.shape(node.inputs[0])[2:], ctx.shape(node.outputs[0])[2:]
    pairs = _explicit_pads(node, in_hw, kernel, strides, [1, 1], out_hw)
    padded = any(p != (0, 0) for p in pairs)
    same = padded and _is_same(pairs, in_hw, kernel, strides, [1, 1], out_hw)
    include_pad = bool(node.attributes.get_int("count_include_pad", 0))
    padding, scale = "VALID", None
    if same and (builtin == "MAX_POOL_2D" or not include_pad):
        padding = "SAME"
    elif padded:
        x = _pad_input(ctx, x, pairs, node.name, value=-3.4e38 if builtin == "MAX_POOL_2D" else 0.0)
        if builtin == "AVERAGE_POOL_2D":
            scale = _average_scale(node, in_hw, kernel, strides, pairs, out_hw, include_pad)
    act, produced = _act(ctx, node)
    out = ctx.out(produced, NHWC4)
    g = ctx.g
    pooled = out.index if scale is None else g.tensor(node.name + "_window_mean", g.shape_of(out.index))
    g.op(builtin, [x.index], [pooled],
         g.options("Pool2DOptions", padding=getattr(g.s.Padding, padding), strideH=strides[0], strideW=strides[1],
                   filterHeight=kernel[0], filterWidth=kernel[1],
                   fusedActivationFunction=act if scale is None else g.s.ActivationFunctionType.NONE))
    if scale is not None:
        g.op("MUL", [pooled, g.const(scale, node.name + "_divisor_fix")], [out.index],
             g.options("MulOptions", fusedActivationFunction=act))


def _average_scale(node: ir.Node, in_hw, kernel, strides, pairs, out_hw, include_pad: bool) -> np.ndarray | None:
    """(1, H', W', 1) kernel_area / divisor, the divisor as ONNX (and PyTorch) count it: the window
    cells inside the input (count_include_pad=0) or inside input + pads (=1; a ceil_mode window
    reaching past the pads counts only up to them). None when every window divides by its area."""
    pads = _ints(node, "pads", [0] * 4)
    if node.attributes.get_string("auto_pad", "NOTSET") != "NOTSET":
        pads = [pairs[0][0], pairs[1][0], pairs[0][1], pairs[1][1]]
    counts = []
    for i in range(2):
        start = np.arange(out_hw[i]) * strides[i] - pairs[i][0]
        lo, hi = (-pads[i], in_hw[i] + pads[i + 2]) if include_pad else (0, in_hw[i])
        counts.append(np.minimum(start + kernel[i], hi) - np.maximum(start, lo))
    divisor = np.outer(counts[0], counts[1]).astype(np.float32)
    if (divisor == kernel[0] * kernel[1]).all():
        return None
    return (kernel[0] * kernel[1] / divisor).reshape(1, out_hw[0], out_hw[1], 1).astype(np.float32)


@lowering("MaxPool")
def max_pool(ctx: Ctx, node: ir.Node) -> None:
    if len(node.outputs) > 1 and (node.outputs[1].uses() or node.outputs[1].name in ctx.outputs):
        raise unsupported(node, "uses the Indices output")
    _pool_any(ctx, node, "MAX_POOL_2D")


@lowering("AveragePool")
def average_pool(ctx: Ctx, node: ir.Node) -> None:
    _pool_any(ctx, node, "AVERAGE_POOL_2D")


def _pool_any(ctx: Ctx, node: ir.Node, builtin: str) -> None:
    """2-D pools directly; a 1-D pool (N, C, W) as the 2-D pool of (N, C, 1, W) with a 1 x k window."""
    if len(ctx.shape(node.inputs[0])) != 3:
        return _pool(ctx, node, builtin)
    x = ctx.as_perm(ctx.val(node.inputs[0], node), NHWC[3], node.inputs[0].name + "_nwc")
    n, width, ch = ctx.g.shape_of(x.index)
    as_2d = ir.Value(name=f"{node.outputs[0].name}_as2d_in", shape=ir.Shape([n, ch, 1, width]), type=node.inputs[0].type)
    flat = ctx.g.tensor(as_2d.name, [n, 1, width, ch])
    ctx.g.reshape(x.index, flat)
    ctx.values[as_2d.name] = TVal(flat, NHWC4)
    attrs = []
    for key, value in node.attributes.items():
        if key in ("kernel_shape", "strides", "dilations"):
            attrs.append(ir.AttrInt64s(key, [1, *value.as_ints()]))
        elif key == "pads":
            begin, end = value.as_ints()
            attrs.append(ir.AttrInt64s(key, [0, begin, 0, end]))
        else:
            attrs.append(value)
    flat_node = ir.Node("", node.op_type, [as_2d], attributes=attrs, name=node.name, num_outputs=1)
    out_w = ctx.shape(node.outputs[0])[2]
    flat_node.outputs[0].name = f"{node.outputs[0].name}_as2d"
    flat_node.outputs[0].shape = ir.Shape([n, ch, 1, out_w])
    _pool(ctx, flat_node, builtin)
    out = ctx.out(node.outputs[0], NHWC[3])
    ctx.g.reshape(ctx.values[flat_node.outputs[0].name].index, out.index)


@lowering("GlobalAveragePool", "GlobalMaxPool")
def global_pool(ctx: Ctx, node: ir.Node) -> None:
    x = ctx.val(node.inputs[0], node)
    rank = len(x.perm)
    axes = [x.stored_axis(a) for a in range(2, rank)]
    out = ctx.out(node.outputs[0], x.perm)
    builtin = "MEAN" if node.op_type == "GlobalAveragePool" else "REDUCE_MAX"
    ctx.g.op(builtin, [x.index, ctx.int_const(axes, node.name + "_axes")], [out.index],
             ctx.g.options("ReducerOptions", keepDims=True))


@lowering("LpPool")
def lp_pool(ctx: Ctx, node: ir.Node) -> None:
    """(sum over the window of |x|^p)^(1/p): |x|^p, zero PAD, AVERAGE_POOL_2D (VALID) times the
    window area, ^(1/p). 2-D windows without dilation."""
    from edgepack.converters.export_tflite.chain import Chain

    kernel = _ints(node, "kernel_shape", [1, 1])
    strides, dil = _ints(node, "strides", [1] * len(kernel)), _ints(node, "dilations", [1] * len(kernel))
    if len(kernel) != 2 or any(d != 1 for d in dil):
        raise unsupported(node, "is not a 2-D pool without dilations")
    p = float(node.attributes.get_int("p", 2))
    c = Chain(ctx, node)
    x = ctx.as_perm(ctx.val(node.inputs[0], node), NHWC4, node.inputs[0].name + "_nhwc")
    powered = c.op("MUL", x.index, x.index) if p == 2 else c.op("POW", c.op("ABS", x.index), c.const(p))
    in_hw, out_hw = ctx.shape(node.inputs[0])[2:], ctx.shape(node.outputs[0])[2:]
    pairs = _explicit_pads(node, in_hw, kernel, strides, [1, 1], out_hw)
    padded = _pad_input(ctx, TVal(powered, NHWC4), pairs, node.name)
    out = ctx.out(node.outputs[0], NHWC4)
    n, _, _, ch = ctx.g.shape_of(padded.index)
    mean = c.op("AVERAGE_POOL_2D", padded.index, shape=[n, out_hw[0], out_hw[1], ch], padding=ctx.g.s.Padding.VALID,
                strideH=strides[0], strideW=strides[1], filterHeight=kernel[0], filterWidth=kernel[1])
    total = c.op("MUL", mean, c.const(float(kernel[0] * kernel[1])))
    if p == 2:
        c.op("SQRT", total, out=out.index)
    else:
        c.op("POW", total, c.const(1.0 / p), out=out.index)


@lowering("CausalConvWithState")
def causal_conv_with_state(ctx: Ctx, node: ir.Node) -> None:
    """Causal depthwise 1-D convolution over [past_state, input] (zeros without a past), optional SiLU,
    written per tap in ONNX layout (B, C, L): sum_k window_k * w[:, 0, k] + bias, each window one
    GATHER along the time axis, so the weights may be constants or fed at run time.
    present_state is the last k - 1 positions of the padded input."""
    from edgepack.converters.export_tflite.chain import Chain

    b, ch, length = ctx.shape(node.inputs[0])
    k = ctx.shape(node.inputs[1])[2]
    present = node.outputs[1] if len(node.outputs) > 1 and node.outputs[1] is not None and node.outputs[1].name else None
    if k < 2 and present is not None and (present.uses() or present.name in ctx.outputs):
        raise unsupported(node, "has kernel size 1: its present_state is empty (TFLite has no empty tensors)")
    activation = node.attributes.get_string("activation", "none")
    if activation not in ("none", "silu", "swish"):
        raise unsupported(node, f"uses activation {activation!r}")
    c = Chain(ctx, node)

    def plain(i: int) -> int:
        return ctx.as_perm(ctx.val(node.inputs[i], node), identity(len(ctx.shape(node.inputs[i]))),
                           f"{node.inputs[i].name}_plain").index

    x = plain(0)
    past_value = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3] is not None else None
    if k > 1:
        past = plain(3) if past_value is not None else c.const(np.zeros((b, ch, k - 1)))
        x = c.op("CONCATENATION", past, x, shape=[b, ch, length + k - 1], axis=2)
    weight = ctx.const(node.inputs[1])
    acc = None
    for t in range(k):
        window = x if k == 1 else c.op("GATHER", x, ctx.int_const(np.arange(t, t + length), f"{c.name}_tap{t}"),
                                       shape=[b, ch, length], axis=2)
        if weight is not None:
            w = c.const(weight[:, 0, t].reshape(ch, 1))
        else:
            picked = c.op("GATHER", plain(1), ctx.int_const([t], f"{c.name}_w{t}"), shape=[ch, 1, 1], axis=2)
            w = c.op("RESHAPE", picked, ctx.int_const([ch, 1], f"{c.name}_w{t}_shape"), shape=[ch, 1])
        term = c.op("MUL", window, w)
        acc = term if acc is None else c.op("ADD", acc, term)
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        bias = ctx.const(node.inputs[2])
        bias = (c.const(bias.reshape(ch, 1)) if bias is not None else
                c.op("RESHAPE", plain(2), ctx.int_const([ch, 1], f"{c.name}_bias_shape"), shape=[ch, 1]))
        acc = c.op("ADD", acc, bias)
    out = ctx.out(node.outputs[0], identity(3)).index
    if activation == "none":
        ctx.g.reshape(acc, out)
    else:
        c.op("MUL", acc, c.op("LOGISTIC", acc), out=out)
    if present is not None and k > 1:
        c.op("GATHER", x, ctx.int_const(np.arange(length, length + k - 1), f"{c.name}_state"),
             out=ctx.out(present, identity(3)).index, axis=2)
