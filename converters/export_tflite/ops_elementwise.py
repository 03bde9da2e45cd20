"""Lowerings for element-wise ops and activations (layout-agnostic: outputs keep the input's)."""
from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from edgepack.converters.export_tflite.graph import TVal, _np_type, identity, unsupported
from edgepack.converters.export_tflite.ops_shape import plain_features
from edgepack.converters.export_tflite.registry import Ctx, activation_kind, lowering

_BINARY = {"Add": ("ADD", "AddOptions"), "Sub": ("SUB", "SubOptions"), "Mul": ("MUL", "MulOptions"),
           "Div": ("DIV", "DivOptions"),
           "Pow": ("POW", "PowOptions")}
_FUSED_BINARY = ("ADD", "SUB", "MUL", "DIV")


def _const_in_layout(array: np.ndarray, rank: int, perm: tuple[int, ...]) -> np.ndarray:
    """An ONNX-broadcastable constant, expanded to `rank` and stored in layout `perm`."""
    a = np.asarray(array)
    if a.dtype == np.float64:
        a = a.astype(np.float32)
    elif a.dtype.kind == "u" and a.dtype != np.uint8:
        a = a.astype(np.int64)
    a = a.reshape((1,) * (rank - a.ndim) + a.shape)
    return np.ascontiguousarray(a.transpose(perm))


def _operand(ctx: Ctx, node: ir.Node, value: ir.Value, rank: int, perm: tuple[int, ...],
             feature_perm: tuple[int, ...] | None) -> int:
    array = ctx.const(value)
    if array is not None:
        array = _const_in_layout(array, rank, perm)
        if feature_perm is not None and array.shape[-1] > 1:  # a per-feature constant, in stored feature order
            array = np.ascontiguousarray(array[..., list(feature_perm)])
        return ctx.g.const(array, f"{node.name}_{value.name}")
    tv = ctx.val(value, node)
    if tv.feature_perm != feature_perm:
        tv = plain_features(ctx, tv, value.name)
    if len(tv.perm) == rank:
        return ctx.as_perm(tv, perm, value.name + "_relayout").index
    plain = ctx.as_perm(tv, identity(len(tv.perm)), value.name + "_plain")  # lower rank: broadcast like ONNX
    shape = [1] * (rank - len(tv.perm)) + ctx.g.shape_of(plain.index)
    expanded = ctx.g.tensor(value.name + "_expanded", shape, _np_type(ctx.g.tensors[plain.index].type))
    ctx.g.reshape(plain.index, expanded)
    if perm == identity(rank):
        return expanded
    return ctx.g.transpose(expanded, perm, value.name + "_expanded_t")


def broadcast_operands(ctx: Ctx, node: ir.Node, values: list[ir.Value]) -> tuple[list[int], tuple[int, ...], tuple[int, ...] | None]:
    """(operand tensors, output layout, feature order) for an element-wise op over `values`, broadcast
    like ONNX: the output takes the layout of the full-rank activation operands; constants are laid
    out to match at export time. Flattened image features (feature_perm) stay permuted when every
    activation operand shares that order; per-feature constants are reordered to it."""
    rank = len(ctx.shape(node.outputs[0]))
    acts = [ctx.values.get(v.name) for v in values if ctx.const(v) is None]
    if any(a is None for a in acts):
        raise unsupported(node, "has inputs no supported op produced")
    full = [a for a in acts if len(a.perm) == rank]
    perm = full[0].perm if full else identity(rank)
    orders = {a.feature_perm for a in acts}
    feature_perm = orders.pop() if len(orders) == 1 and len(full) == len(acts) else None
    return [_operand(ctx, node, v, rank, perm, feature_perm) for v in values], perm, feature_perm


def binary_operands(ctx: Ctx, node: ir.Node) -> tuple[list[int], tuple[int, ...], tuple[int, ...] | None]:
    return broadcast_operands(ctx, node, list(node.inputs[:2]))


@lowering(*_BINARY)
def binary(ctx: Ctx, node: ir.Node) -> None:
    builtin, options = _BINARY[node.op_type]
    inputs, perm, feature_perm = binary_operands(ctx, node)
    if builtin == "POW" and _small_integer_power(ctx, node, inputs, perm, feature_perm):
        return
    if builtin == "POW":
        inputs = [_as_float(ctx, node, i) for i in inputs]
    act, produced = ctx.g.s.ActivationFunctionType.NONE, node.outputs[0]
    if builtin in _FUSED_BINARY:
        fused = ctx.fusable_activation(node)
        if fused is not None:
            act, produced = getattr(ctx.g.s.ActivationFunctionType, fused[0]), fused[1].outputs[0]
            ctx.skip.add(id(fused[1]))
    out = ctx.out(produced, perm, feature_perm=feature_perm)
    opts = ctx.g.options(options, fusedActivationFunction=act) if builtin in _FUSED_BINARY else ctx.g.options(options)
    ctx.g.op(builtin, inputs, [out.index], opts)


def _small_integer_power(ctx: Ctx, node: ir.Node, inputs: list[int], perm, feature_perm) -> bool:
    """x ** 2 and x ** 3 (GELU's tanh form writes x ** 3) as MULs: XNNPACK has no POW, so a POW
    leaves the delegate (two partitions) in fp32 and stays float in int8. False: not that case."""
    exponent = ctx.const(node.inputs[1])
    if exponent is None or exponent.size != 1 or float(exponent.reshape(-1)[0]) not in (2.0, 3.0):
        return False
    x = inputs[0]
    if list(ctx.g.shape_of(x)) != list(np.broadcast_shapes(*(tuple(ctx.g.shape_of(i)) for i in inputs))):
        return False
    out = ctx.out(node.outputs[0], perm, feature_perm=feature_perm)
    if float(exponent.reshape(-1)[0]) == 2.0:
        ctx.g.op("MUL", [x, x], [out.index], ctx.g.options("MulOptions"))
        return True
    square = ctx.g.tensor(node.name + "_square", ctx.g.shape_of(x))
    ctx.g.op("MUL", [x, x], [square], ctx.g.options("MulOptions"))
    ctx.g.op("MUL", [square, x], [out.index], ctx.g.options("MulOptions"))
    return True


def _as_float(ctx: Ctx, node: ir.Node, index: int) -> int:
    """A constant integer operand (Pow's exponent) as float32: TFLite's POW wants one type."""
    g = ctx.g
    if _np_type(g.tensors[index].type) == np.float32:
        return index
    data = g.data_of(index)
    if data is None:
        raise unsupported(node, "mixes a float base with a non-constant integer exponent")
    return g.const(data.astype(np.float32), g.name_of(index) + "_float")


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


@lowering("Exp", "Sqrt", "Neg", "Abs", "Log")
def simple_unary(ctx: Ctx, node: ir.Node) -> None:
    _unary(ctx, node, node.op_type.upper())


@lowering("Reciprocal")
def reciprocal(ctx: Ctx, node: ir.Node) -> None:
    x = ctx.val(node.inputs[0], node)
    out = ctx.out(node.outputs[0], x.perm, feature_perm=x.feature_perm)
    ctx.g.op("DIV", [ctx.g.const(np.ones([1] * len(x.perm), np.float32), node.name + "_one"), x.index], [out.index],
             ctx.g.options("DivOptions"))


@lowering("Erf")
def erf(ctx: Ctx, node: ir.Node) -> None:
    """TFLite has no ERF; the exact GELU that PyTorch exports around it, x * 0.5 * (1 + erf(x / sqrt 2)),
    becomes one GELU (the scaling op before the Erf is left unused and dropped)."""
    gelu = _match_gelu(ctx, node)
    if gelu is None:  # a lone Erf: written out (ops_math.erf_chain)
        from edgepack.converters.export_tflite.chain import Chain
        from edgepack.converters.export_tflite.chain import erf_chain

        x = ctx.val(node.inputs[0], node)
        erf_chain(Chain(ctx, node), x.index, ctx.out(node.outputs[0], x.perm, feature_perm=x.feature_perm).index)
        return
    x_value, skipped, last = gelu
    ctx.skip.update(id(n) for n in skipped)
    x = ctx.val(x_value, node)
    out = ctx.out(last.outputs[0], x.perm, feature_perm=x.feature_perm)
    ctx.g.op("GELU", [x.index], [out.index], ctx.g.options("GeluOptions", approximate=False))


def _match_gelu(ctx: Ctx, erf_node: ir.Node) -> tuple[ir.Value, list[ir.Node], ir.Node] | None:
    """(x, the nodes after the Erf that GELU replaces, the last of them) for the exact-GELU pattern."""
    scale_node = erf_node.inputs[0].producer()
    if scale_node is None or scale_node.op_type not in ("Div", "Mul"):
        return None
    c = ctx.const(scale_node.inputs[1])
    want = math.sqrt(2.0) if scale_node.op_type == "Div" else 1 / math.sqrt(2.0)
    if c is None or c.size != 1 or not np.isclose(float(c.reshape(())), want, rtol=1e-5):
        return None
    x = scale_node.inputs[0]

    def only_use(value: ir.Value) -> ir.Node | None:
        uses = value.uses()
        return uses[0].node if len(uses) == 1 and value.name not in ctx.outputs else None

    add = only_use(erf_node.outputs[0])
    if add is None or add.op_type != "Add" or not _is_const(ctx, add, 1.0):
        return None
    chain, half, times_x = [add], False, False  # then Mul by 0.5 and Mul by x, in either order
    while not (half and times_x):
        mul = only_use(chain[-1].outputs[0])
        if mul is None or mul.op_type != "Mul":
            return None
        other = [v for v in mul.inputs if v is not chain[-1].outputs[0]]
        if len(other) != 1:
            return None
        if not half and _is_const(ctx, mul, 0.5):
            half = True
        elif not times_x and other[0] is x:
            times_x = True
        else:
            return None
        chain.append(mul)
    return x, chain, chain[-1]


def _is_const(ctx: Ctx, node: ir.Node, value: float) -> bool:
    consts = [ctx.const(v) for v in node.inputs]
    return any(c is not None and c.size == 1 and float(c.reshape(())) == value for c in consts)


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
    """max(0, min(1, alpha * x + beta)) = RELU6(6 alpha x + 6 beta) / 6: ADD with a fused RELU6 (after
    a MUL unless 6 alpha is 1, PyTorch's hardsigmoid) and a MUL. XNNPACK's delegate takes neither
    RELU_0_TO_1 nor an int8 HARD_SWISH: this form stays inside it in fp32 and int8."""
    x = ctx.val(node.inputs[0], node)
    alpha, beta = node.attributes.get_float("alpha", 0.2), node.attributes.get_float("beta", 0.5)
    g = ctx.g
    shape = g.shape_of(x.index)
    scaled = x.index
    if abs(6.0 * alpha - 1.0) > 1e-7:
        scaled = g.tensor(node.name + "_scaled", shape)
        g.op("MUL", [x.index, g.const(np.array(6.0 * alpha, np.float32), node.name + "_alpha")], [scaled],
             g.options("MulOptions"))
    clipped = g.tensor(node.name + "_relu6", shape)
    g.op("ADD", [scaled, g.const(np.array(6.0 * beta, np.float32), node.name + "_beta")], [clipped],
         g.options("AddOptions", fusedActivationFunction=g.s.ActivationFunctionType.RELU6))
    out = ctx.out(node.outputs[0], x.perm, feature_perm=x.feature_perm)
    g.op("MUL", [clipped, g.const(np.array(1.0 / 6.0, np.float32), node.name + "_sixth")], [out.index],
         g.options("MulOptions"))


@lowering("PRelu")
def prelu(ctx: Ctx, node: ir.Node) -> None:
    slope = ctx.const(node.inputs[1])
    x = ctx.val(node.inputs[0], node)
    if slope is None:  # max(x, 0) + slope * min(x, 0), broadcast like ONNX
        from edgepack.converters.export_tflite.chain import Chain

        (xs, ss), perm, feature_perm = binary_operands(ctx, node)
        c = Chain(ctx, node)
        neg = c.op("MUL", c.op("MINIMUM", xs, c.const(0.0)), ss)
        c.op("ADD", c.op("MAXIMUM", xs, c.const(0.0)), neg, out=ctx.out(node.outputs[0], perm, feature_perm=feature_perm).index)
        return
    rank = len(x.perm)
    alpha = _const_in_layout(slope, rank, x.perm)
    if x.feature_perm is not None and alpha.shape[-1] > 1:
        alpha = alpha[..., list(x.feature_perm)]
    alpha = alpha.reshape(alpha.shape[1:]) if alpha.shape[0] == 1 else alpha
    out = ctx.out(node.outputs[0], x.perm, feature_perm=x.feature_perm)
    ctx.g.op("PRELU", [x.index, ctx.g.const(np.ascontiguousarray(alpha), node.name + "_alpha")], [out.index])


@lowering("Softmax", "LogSoftmax")
def softmax(ctx: Ctx, node: ir.Node) -> None:
    """TFLite's SOFTMAX / LOG_SOFTMAX work on the last stored axis. On another stored axis (the W axis
    of an NHWC tensor, say) they are written out along that axis, x - max then exp / sum (or minus
    log sum): five or six ops and no TRANSPOSE."""
    x = ctx.val(node.inputs[0], node)
    rank = len(x.perm)
    axis = node.attributes.get_int("axis", -1 if _opset(ctx) >= 13 else 1) % rank
    if _opset(ctx) < 13 and axis != rank - 1:
        raise unsupported(node, f"is an opset-{_opset(ctx)} {node.op_type} over axes {axis}.. flattened (opset 13+ or the last axis only)")
    # Softmax over all features of a flattened map does not care about their order: it stays permuted.
    feature_perm = x.feature_perm if rank == 2 and axis == 1 else None
    if x.feature_perm is not None and feature_perm is None:
        x = plain_features(ctx, x, node.inputs[0].name)
    out = ctx.out(node.outputs[0], x.perm, feature_perm=feature_perm)
    g = ctx.g
    log = node.op_type == "LogSoftmax"
    stored = x.stored_axis(axis)
    if stored == rank - 1:
        if log:
            g.op("LOG_SOFTMAX", [x.index], [out.index], g.options("LogSoftmaxOptions"))
        else:
            g.op("SOFTMAX", [x.index], [out.index], g.options("SoftmaxOptions", beta=1.0))
        return
    shape = g.shape_of(x.index)
    reduced = [1 if i == stored else d for i, d in enumerate(shape)]
    axes = ctx.int_const([stored], node.name + "_axis")
    peak, shifted, exp, total = (g.tensor(f"{node.name}_{k}", s) for k, s in
                                 (("max", reduced), ("shifted", shape), ("exp", shape), ("sum", reduced)))
    g.op("REDUCE_MAX", [x.index, axes], [peak], g.options("ReducerOptions", keepDims=True))
    g.op("SUB", [x.index, peak], [shifted], g.options("SubOptions"))
    g.op("EXP", [shifted], [exp])
    g.op("SUM", [exp, axes], [total], g.options("ReducerOptions", keepDims=True))
    if log:
        log_total = g.tensor(node.name + "_log_sum", reduced)
        g.op("LOG", [total], [log_total])
        g.op("SUB", [shifted, log_total], [out.index], g.options("SubOptions"))
    else:
        g.op("DIV", [exp, total], [out.index], g.options("DivOptions"))


def _opset(ctx: Ctx) -> int:
    return ctx.model.opset_imports.get("", ctx.model.opset_imports.get("ai.onnx", 18))


@lowering("Identity", "Dropout")
def identity_op(ctx: Ctx, node: ir.Node) -> None:
    ctx.alias(node.outputs[0], ctx.val(node.inputs[0], node))
