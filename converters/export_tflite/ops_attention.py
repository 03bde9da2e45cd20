"""Attention (opset 23+): scaled dot-product attention written out as BATCH_MATMUL, SOFTMAX and
element-wise ops, following the ONNX definition step by step: 3-D inputs split into heads, the KV
cache concatenated (present_key / present_value), grouped KV heads repeated (GATHER), Q and K each
scaled by sqrt(scale), softcap, the additive bias (mask, causal frontier, sliding window, padding
from nonpad_kv_seqlen), softmax, rows with every key masked set to 0, then P @ V. The bias is folded
into one constant at export time where it is known (causal, window, constant masks); a mask fed at
run time is added (float) or selected (bool)."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgepack.converters.export_tflite.chain import Chain
from edgepack.converters.export_tflite.graph import TVal, identity, unsupported
from edgepack.converters.export_tflite.ops_shape import plain_features
from edgepack.converters.export_tflite.registry import Ctx, lowering

NEG_INF = np.float32(-np.inf)


def _input(node: ir.Node, i: int) -> ir.Value | None:
    return node.inputs[i] if len(node.inputs) > i and node.inputs[i] is not None else None


def _heads(ctx: Ctx, c: Chain, node: ir.Node, value: ir.Value, heads: int | None) -> int:
    """(B, H, S, D) in ONNX order: 4-D as it is; 3-D (B, S, H*D) reshaped and transposed."""
    tv = plain_features(ctx, ctx.val(value, node), value.name)
    tv = ctx.as_perm(tv, identity(len(tv.perm)), value.name + "_plain")
    shape = ctx.g.shape_of(tv.index)
    if len(shape) == 4:
        return tv.index
    if heads is None:
        raise unsupported(node, "has 3-D inputs without q_num_heads / kv_num_heads")
    b, s, hidden = shape
    split = c.op("RESHAPE", tv.index, ctx.int_const([b, s, heads, hidden // heads], f"{value.name}_heads_shape"),
                 shape=[b, s, heads, hidden // heads])
    return ctx.g.transpose(split, (0, 2, 1, 3), f"{value.name}_bhsd")


@lowering("Attention")
def attention(ctx: Ctx, node: ir.Node) -> None:
    g, c = ctx.g, Chain(ctx, node)
    attr = node.attributes
    q_heads, kv_heads = attr.get_int("q_num_heads", None), attr.get_int("kv_num_heads", None)
    rank = len(ctx.shape(node.inputs[0]))
    q = _heads(ctx, c, node, node.inputs[0], q_heads)
    k = _heads(ctx, c, node, node.inputs[1], kv_heads)
    v = _heads(ctx, c, node, node.inputs[2], kv_heads)
    mask_value, past_k, past_v, nonpad = (_input(node, i) for i in (3, 4, 5, 6))
    if (past_k is None) != (past_v is None):
        raise unsupported(node, "has only one of past_key / past_value")
    past_len = ctx.shape(past_k)[2] if past_k is not None else 0
    outputs = list(node.outputs) + [None] * 4
    for i, (cur, past) in enumerate(((k, past_k), (v, past_v))):
        present = outputs[1 + i]
        if past is not None:
            p = ctx.as_perm(ctx.val(past, node), identity(4), past.name + "_plain").index
            shape = g.shape_of(cur)
            shape[2] += g.shape_of(p)[2]
            target = ctx.out(present, identity(4)).index if present is not None else None
            cur = c.op("CONCATENATION", p, cur, out=target, shape=shape, axis=2)
        elif present is not None and (present.uses() or present.name in ctx.outputs):
            ctx.alias(present, TVal(cur, identity(4)))
        if i == 0:
            k = cur
        else:
            v = cur
    b, hq, s, d = g.shape_of(q)
    hk, kv_len = g.shape_of(k)[1], g.shape_of(k)[2]
    if hq != hk:
        if hq % hk:
            raise unsupported(node, f"has {hq} query heads for {hk} key/value heads (not a multiple)")
        heads = ctx.int_const(np.arange(hq) // (hq // hk), node.name + "_kv_heads")
        k = c.op("GATHER", k, heads, shape=[b, hq, kv_len, g.shape_of(k)[3]], axis=1)
        v = c.op("GATHER", v, heads, shape=[b, hq, kv_len, g.shape_of(v)[3]], axis=1)
    scale = attr.get_float("scale", None)
    root = np.float32(np.sqrt(1 / np.sqrt(d) if scale is None else scale))
    qk = c.op("BATCH_MATMUL", c.op("MUL", q, c.const(root)), c.op("MUL", k, c.const(root)),
              shape=[b, hq, s, kv_len], adjY=True)
    softcap = attr.get_float("softcap", 0.0)
    if softcap > 0:
        qk = c.op("MUL", c.op("TANH", c.op("MUL", qk, c.const(1 / softcap))), c.const(softcap))
    const_bias, runtime_bias = _bias(ctx, c, node, mask_value, nonpad, s, kv_len, past_len)
    mode = attr.get_int("qk_matmul_output_mode", 0)
    shown_value = outputs[3] if outputs[3] is not None and (outputs[3].uses() or outputs[3].name in ctx.outputs) else None

    def biased(finite: bool) -> int:
        # the softmax gets a finite stand-in for -inf (exp of it is exactly 0, a fully masked row stays
        # finite; XNNPACK's softmax mishandles -inf); the qk_matmul_output keeps ONNX's -inf
        bias = runtime_bias
        if bias is not None and finite:
            bias = c.op("MAXIMUM", bias, c.const(np.float32(-3.0e38)))
        if const_bias is not None:
            folded = c.const(np.maximum(const_bias, np.float32(-3.0e38)) if finite else const_bias)
            bias = folded if bias is None else c.op("ADD", bias, folded)
        return qk if bias is None else c.op("ADD", qk, bias)

    probs = c.op("SOFTMAX", biased(True), beta=1.0)
    if runtime_bias is not None:  # rows whose run-time bias is -inf for every key: 0
        bias_shape = g.shape_of(runtime_bias)
        peak = c.op("REDUCE_MAX", runtime_bias, ctx.int_const([len(bias_shape) - 1], node.name + "_last_axis"),
                    shape=bias_shape[:-1] + [1], keepDims=True)
        alive = c.op("CAST", c.op("GREATER", peak, c.const(NEG_INF)), dtype=np.float32)
        probs = c.op("MUL", probs, alive)
    elif const_bias is not None and np.isneginf(const_bias.max(axis=-1, keepdims=True)).any():
        # rows with every key masked are 0 (their finite stand-in softmax is uniform, never NaN)
        keep = (~np.isneginf(const_bias.max(axis=-1, keepdims=True))).astype(np.float32)
        probs = c.op("MUL", probs, c.const(keep))
    if shown_value is not None:  # as onnx.reference: 0, 1: the (softcapped) scores; 2: with the bias; 3: softmax
        shown = {0: qk, 1: qk, 2: biased(False), 3: probs}.get(mode)
        if shown is None:
            raise unsupported(node, f"has qk_matmul_output_mode={mode}")
        ctx.g.reshape(shown, ctx.out(shown_value, identity(4)).index)
    dv = g.shape_of(v)[3]
    y = c.op("BATCH_MATMUL", probs, v, shape=[b, hq, s, dv])
    out = ctx.out(outputs[0], identity(rank)).index
    if rank == 4:
        ctx.g.reshape(y, out)
        return
    ctx.g.reshape(ctx.g.transpose(y, (0, 2, 1, 3), node.name + "_bshd"), out)


def _bias(ctx: Ctx, c: Chain, node: ir.Node, mask_value, nonpad, s: int, kv_len: int, past_len: int):
    """(constant additive bias or None, run-time bias tensor or None), as ONNX builds attn_bias."""
    from onnx.reference.ops import op_attention as ref

    attr = node.attributes
    causal = bool(attr.get_int("is_causal", 0))
    left, right = attr.get_int("left_window_size", -1), attr.get_int("right_window_size", -1)
    lengths = None
    if nonpad is not None:
        lengths = ctx.const(nonpad)
        if lengths is None:
            raise unsupported(node, "has nonpad_kv_seqlen computed at run time")
    mask = ctx.const(mask_value) if mask_value is not None else None
    runtime = None
    if mask_value is not None and mask is None:  # a run-time mask: as a bias tensor
        tv = ctx.as_perm(ctx.val(mask_value, node), identity(len(ctx.shape(mask_value))), mask_value.name + "_plain")
        shape = ctx.g.shape_of(tv.index)
        if ctx.g.tensors[tv.index].type == ctx.g.s.TensorType.BOOL:
            runtime = c.op("SELECT_V2", tv.index, c.const(0.0), c.const(NEG_INF), shape=shape, dtype=np.float32)
        else:
            runtime = tv.index
        if len(shape) < 4:  # the same rank as the scores (broadcasting across ranks is not safe in LiteRT)
            shape = [1] * (4 - len(shape)) + shape
            runtime = c.op("RESHAPE", runtime, ctx.int_const(shape, node.name + "_mask_shape"), shape=shape)
        if shape[-1] < kv_len:
            pads = np.zeros((len(shape), 2), np.int32)
            pads[-1, 1] = kv_len - shape[-1]
            runtime = c.op("PADV2", runtime, ctx.g.const(pads, node.name + "_mask_pads"), c.const(NEG_INF),
                           shape=shape[:-1] + [kv_len])
    base = np.zeros((s, kv_len), np.float32)
    if mask is not None:
        if mask.shape[-1] < kv_len:
            pad = [(0, 0)] * (mask.ndim - 1) + [(0, kv_len - mask.shape[-1])]
            mask = np.pad(mask, pad, constant_values=False if mask.dtype == np.bool_ else NEG_INF)
        base = base + (np.where(mask, np.float32(0), NEG_INF) if mask.dtype == np.bool_ else mask.astype(np.float32))
    offset = past_len if lengths is None or past_len else lengths.reshape(-1) - s
    bias = base
    if causal:
        bias = ref._apply_causal(bias, offset)
    if left >= 0 or right >= 0:
        bias = ref._apply_sliding_window(np.zeros((s, kv_len), np.float32) + bias, left, right, offset)
    if lengths is not None:
        pad_mask = (np.arange(kv_len) < lengths.reshape(-1, 1)).reshape(-1, 1, 1, kv_len)
        bias = bias + np.where(pad_mask, np.float32(0), NEG_INF)
    if mask is None and not causal and left < 0 and right < 0 and lengths is None:
        return None, runtime
    bias = np.asarray(bias, np.float32)
    return bias.reshape((1,) * (4 - bias.ndim) + bias.shape), runtime


@lowering("RotaryEmbedding")
def rotary_embedding(ctx: Ctx, node: ir.Node) -> None:
    """RoPE is linear in x: out = x * C + x[partner] * S, where partner swaps each rotated element with
    its pair (the other half, or the neighbour when interleaved) and C / S hold cos and -sin / +sin
    (1 and 0 past rotary_embedding_dim): one GATHER along the last axis, two MUL, one ADD. C and S are
    constants when the caches (and position_ids) are; caches fed at run time without position_ids
    are spread to C / S by a GATHER each."""
    cos, sin = ctx.const(node.inputs[1]), ctx.const(node.inputs[2])
    positions = _input(node, 3)
    pos = ctx.const(positions) if positions is not None else None
    if (cos is None or sin is None) and positions is not None or (positions is not None and pos is None):
        raise unsupported(node, "has position_ids with caches or ids computed at run time (TFLite needs them constant here)")
    dims = ctx.shape(node.inputs[0])
    num_heads = node.attributes.get_int("num_heads", 0)
    head = dims[3] if len(dims) == 4 else (dims[2] // num_heads if len(dims) == 3 and num_heads else 0)
    if not head:
        raise unsupported(node, "has a 3-D input without num_heads")
    rot = node.attributes.get_int("rotary_embedding_dim", 0) or head
    half = rot // 2
    if ctx.shape(node.inputs[1])[-1] != half:
        raise unsupported(node, f"has caches of width {ctx.shape(node.inputs[1])[-1]}, not rotary_embedding_dim / 2 = {half}")
    j = np.arange(head)
    if node.attributes.get_int("interleaved", 0):
        pair, partner, sign = j // 2, j ^ 1, np.where(j % 2 == 0, -1.0, 1.0)
    else:
        pair, partner, sign = j % half, np.where(j < half, j + half, j - half), np.where(j < half, -1.0, 1.0)
    inside = j < rot
    pair, partner, sign = np.where(inside, pair, 0), np.where(inside, partner, j), np.where(inside, sign, 0.0)
    heads = 1 if len(dims) == 4 else dims[2] // head  # (B, S, H * D): the head's pattern repeated per head
    pair, inside, sign = np.tile(pair, heads), np.tile(inside, heads), np.tile(sign, heads)
    partner = (np.arange(heads)[:, None] * head + partner).reshape(-1)
    c = Chain(ctx, node)
    if cos is not None and sin is not None:
        if pos is not None:
            cos, sin = cos[pos.astype(np.int64)], sin[pos.astype(np.int64)]  # (B, S, rot / 2)
        c_full = c.const(np.where(inside, cos[..., pair], 1.0))  # (B, S, head * heads)
        s_full = c.const(sign * sin[..., pair])
    else:  # (B, S, rot / 2) fed at run time
        cache = [ctx.as_perm(ctx.val(v, node), identity(3), f"{v.name}_plain").index for v in node.inputs[1:3]]
        shape = ctx.g.shape_of(cache[0])[:2] + [len(pair)]
        spread = [c.op("GATHER", t, ctx.int_const(pair, f"{c.name}_pair{i}"), shape=shape, axis=2) for i, t in enumerate(cache)]
        c_full = c.op("ADD", c.op("MUL", spread[0], c.const(inside.astype(np.float32))), c.const((~inside).astype(np.float32)))
        s_full = c.op("MUL", spread[1], c.const(sign))
    if len(dims) == 4:  # (B, H, S, D): the same row for every head
        b, s = ctx.g.shape_of(c_full)[:2]
        c_full, s_full = (c.op("RESHAPE", t, ctx.int_const([b, 1, s, head], f"{c.name}_bhsd{i}"), shape=[b, 1, s, head])
                          for i, t in enumerate((c_full, s_full)))
    x = ctx.as_perm(plain_features(ctx, ctx.val(node.inputs[0], node), node.inputs[0].name), identity(len(dims)),
                    f"{c.name}_plain")
    swapped = c.op("GATHER", x.index, ctx.int_const(partner, f"{c.name}_partner"), shape=list(dims), axis=len(dims) - 1)
    out = ctx.out(node.outputs[0], identity(len(dims)))
    c.op("ADD", c.op("MUL", x.index, c_full), c.op("MUL", swapped, s_full), out=out.index)
