"""Lowerings for element-wise ops and activations (layout-agnostic: outputs keep the input's)."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgepack.converters.export_tflite.graph import TVal, identity, unsupported
from edgepack.converters.export_tflite.registry import Ctx, activation_kind, lowering

_BINARY = {"Add": ("ADD", "AddOptions"), "Sub": ("SUB", "SubOptions"), "Mul": ("MUL", "MulOptions"),
           "Div": ("DIV", "DivOptions"), "Max": ("MAXIMUM", "MaximumMinimumOptions"),
           "Min": ("MINIMUM", "MaximumMinimumOptions"), "Pow": ("POW", "PowOptions")}
_FUSED_BINARY = ("ADD", "SUB", "MUL", "DIV")


def _const_in_layout(array: np.ndarray, rank: int, perm: tuple[int, ...]) -> np.ndarray:
    """An ONNX-broadcastable constant, expanded to `rank` and stored in layout `perm`."""
    a = np.asarray(array)
    if a.dtype == np.float64:
        a = a.astype(np.float32)
    a = a.reshape((1,) * (rank - a.ndim) + a.shape)
    return np.ascontiguousarray(a.transpose(perm))


def _operand(ctx: Ctx, node: ir.Node, value: ir.Value, rank: int, perm: tuple[int, ...]) -> int:
    array = ctx.const(value)
    if array is not None:
        return ctx.g.const(_const_in_layout(array, rank, perm), f"{node.name}_{value.name}")
    tv = ctx.val(value, node)
    if len(tv.perm) == rank:
        return ctx.as_perm(tv, perm, value.name + "_relayout").index
    plain = ctx.as_perm(tv, identity(len(tv.perm)), value.name + "_plain")  # lower rank: broadcast like ONNX
    shape = [1] * (rank - len(tv.perm)) + ctx.g.shape_of(plain.index)
    expanded = ctx.g.tensor(value.name + "_expanded", shape)
    ctx.g.op("RESHAPE", [plain.index, ctx.int_const(shape, value.name + "_shape")], [expanded],
             ctx.g.options("ReshapeOptions", newShape=shape))
    if perm == identity(rank):
        return expanded
    return ctx.g.transpose(expanded, perm, value.name + "_expanded_t")


@lowering(*_BINARY)
def binary(ctx: Ctx, node: ir.Node) -> None:
    builtin, options = _BINARY[node.op_type]
    rank = len(ctx.shape(node.outputs[0]))
    acts = [ctx.values.get(v.name) for v in node.inputs[:2] if ctx.const(v) is None]
    if not acts or any(a is None for a in acts):
        raise unsupported(node, "has inputs no supported op produced")
    full = [a for a in acts if len(a.perm) == rank]
    perm = full[0].perm if full else identity(rank)
    if rank == 2 and full and full[0].feature_perm is not None:
        raise unsupported(node, "combines a flattened image tensor element-wise (only Gemm/MatMul may follow a Flatten)")
    inputs = [_operand(ctx, node, v, rank, perm) for v in node.inputs[:2]]
    act, produced = ctx.g.s.ActivationFunctionType.NONE, node.outputs[0]
    if builtin in _FUSED_BINARY:
        fused = ctx.fusable_activation(node)
        if fused is not None:
            act, produced = getattr(ctx.g.s.ActivationFunctionType, fused[0]), fused[1].outputs[0]
            ctx.skip.add(id(fused[1]))
    out = ctx.out(produced, perm)
    opts = ctx.g.options(options, fusedActivationFunction=act) if builtin in _FUSED_BINARY else ctx.g.options(options)
    ctx.g.op(builtin, inputs, [out.index], opts)


def _unary(ctx: Ctx, node: ir.Node, builtin: str, options: object | None = None) -> TVal:
    x = ctx.val(node.inputs[0], node)
    out = ctx.out(node.outputs[0], x.perm, feature_perm=x.feature_perm)
    ctx.g.op(builtin, [x.index], [out.index], options)
    return out


@lowering("Relu")
def relu(ctx: Ctx, node: ir.Node) -> None:
    _unary(ctx, node, "RELU")


@lowering("Sigmoid")
def sigmoid(ctx: Ctx, node: ir.Node) -> None:
    _unary(ctx, node, "LOGISTIC")


@lowering("Tanh")
def tanh(ctx: Ctx, node: ir.Node) -> None:
    _unary(ctx, node, "TANH")


@lowering("HardSwish")
def hard_swish(ctx: Ctx, node: ir.Node) -> None:
    _unary(ctx, node, "HARD_SWISH")


@lowering("Exp", "Sqrt", "Neg", "Abs")
def simple_unary(ctx: Ctx, node: ir.Node) -> None:
    _unary(ctx, node, node.op_type.upper())


@lowering("LeakyRelu")
def leaky_relu(ctx: Ctx, node: ir.Node) -> None:
    _unary(ctx, node, "LEAKY_RELU", ctx.g.options("LeakyReluOptions", alpha=node.attributes.get_float("alpha", 0.01)))


@lowering("Clip")
def clip(ctx: Ctx, node: ir.Node) -> None:
    kind = activation_kind(node, ctx)
    if kind is not None:
        return _unary(ctx, node, {"Relu": "RELU", "Relu6": "RELU6", "ReluN1To1": "RELU_N1_TO_1"}[kind])
    lo = ctx.const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    hi = ctx.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if (len(node.inputs) > 1 and node.inputs[1] is not None and lo is None) or (
            len(node.inputs) > 2 and node.inputs[2] is not None and hi is None):
        raise unsupported(node, "has non-constant bounds")
    x = ctx.val(node.inputs[0], node)
    bounds = [(b, op) for b, op in ((lo, "MAXIMUM"), (hi, "MINIMUM")) if b is not None]
    if not bounds:
        return ctx.alias(node.outputs[0], x)
    cur = x.index
    for i, (bound, builtin) in enumerate(bounds):
        if i == len(bounds) - 1:
            nxt = ctx.out(node.outputs[0], x.perm, feature_perm=x.feature_perm).index
        else:
            nxt = ctx.g.tensor(f"{node.name}_{builtin.lower()}", ctx.g.shape_of(x.index))
        ctx.g.op(builtin, [cur, ctx.g.const(np.array(bound, np.float32), f"{node.name}_{builtin.lower()}_bound")], [nxt],
                 ctx.g.options("MaximumMinimumOptions"))
        cur = nxt


@lowering("HardSigmoid")
def hard_sigmoid(ctx: Ctx, node: ir.Node) -> None:
    """max(0, min(1, alpha * x + beta)) = RELU_0_TO_1(x * alpha + beta)."""
    x = ctx.val(node.inputs[0], node)
    alpha, beta = node.attributes.get_float("alpha", 0.2), node.attributes.get_float("beta", 0.5)
    shape = ctx.g.shape_of(x.index)
    scaled = ctx.g.tensor(node.name + "_scaled", shape)
    ctx.g.op("MUL", [x.index, ctx.g.const(np.array(alpha, np.float32), node.name + "_alpha")], [scaled],
             ctx.g.options("MulOptions"))
    shifted = ctx.g.tensor(node.name + "_shifted", shape)
    ctx.g.op("ADD", [scaled, ctx.g.const(np.array(beta, np.float32), node.name + "_beta")], [shifted],
             ctx.g.options("AddOptions"))
    out = ctx.out(node.outputs[0], x.perm, feature_perm=x.feature_perm)
    ctx.g.op("RELU_0_TO_1", [shifted], [out.index])


@lowering("PRelu")
def prelu(ctx: Ctx, node: ir.Node) -> None:
    slope = ctx.const(node.inputs[1])
    if slope is None:
        raise unsupported(node, "has a non-constant slope")
    x = ctx.val(node.inputs[0], node)
    rank = len(x.perm)
    alpha = _const_in_layout(slope, rank, x.perm)
    alpha = alpha.reshape(alpha.shape[1:]) if alpha.shape[0] == 1 else alpha
    out = ctx.out(node.outputs[0], x.perm, feature_perm=x.feature_perm)
    ctx.g.op("PRELU", [x.index, ctx.g.const(alpha, node.name + "_alpha")], [out.index])


@lowering("Softmax")
def softmax(ctx: Ctx, node: ir.Node) -> None:
    """TFLite's SOFTMAX works on the last stored axis: relabel or transpose so the axis is last."""
    x = ctx.val(node.inputs[0], node)
    rank = len(x.perm)
    axis = node.attributes.get_int("axis", -1) % rank
    if x.stored_axis(axis) != rank - 1:
        perm = tuple(a for a in x.perm if a != axis) + (axis,)
        x = ctx.as_perm(x, perm, node.inputs[0].name + "_softmax_last")
    out = ctx.out(node.outputs[0], x.perm)
    ctx.g.op("SOFTMAX", [x.index], [out.index], ctx.g.options("SoftmaxOptions", beta=1.0))


@lowering("Identity", "Dropout")
def identity_op(ctx: Ctx, node: ir.Node) -> None:
    ctx.alias(node.outputs[0], ctx.val(node.inputs[0], node))
