"""Lowerings for element-wise math that TFLite has no single builtin for, each written out as a few
builtins (`Chain`): the ELU family, Softplus / Mish / Softsign, Shrink, trigonometric and hyperbolic
functions, rounding, Mod, and the n-input Sum / Mean / Max / Min. Outputs keep the input's layout."""
from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from edgepack.converters.export_tflite.chain import Chain, erf_chain  # noqa: F401  (erf_chain: used by Erf lowerings)
from edgepack.converters.export_tflite.graph import unsupported
from edgepack.converters.export_tflite.registry import Ctx, lowering


def _start(ctx: Ctx, node: ir.Node):
    x = ctx.val(node.inputs[0], node)
    return Chain(ctx, node), x, ctx.out(node.outputs[0], x.perm, feature_perm=x.feature_perm).index


def _elu_part(c: Chain, x: int, alpha: float, scale_in: float = 1.0) -> int:
    """alpha * (exp(min(x, 0) * scale_in) - 1): the negative branch of ELU / SELU / CELU."""
    neg = c.op("MINIMUM", x, c.const(0.0))
    if scale_in != 1.0:
        neg = c.op("MUL", neg, c.const(scale_in))
    e = c.op("SUB", c.op("EXP", neg), c.const(1.0))
    return c.op("MUL", e, c.const(alpha))


@lowering("Elu")
def elu(ctx: Ctx, node: ir.Node) -> None:
    c, x, out = _start(ctx, node)
    alpha = node.attributes.get_float("alpha", 1.0)
    if alpha == 1.0:
        c.op("ELU", x.index, out=out)
        return
    c.op("ADD", c.op("MAXIMUM", x.index, c.const(0.0)), _elu_part(c, x.index, alpha), out=out)


@lowering("Selu")
def selu(ctx: Ctx, node: ir.Node) -> None:
    c, x, out = _start(ctx, node)
    alpha = node.attributes.get_float("alpha", 1.67326319217681884765625)
    gamma = node.attributes.get_float("gamma", 1.05070102214813232421875)
    s = c.op("ADD", c.op("MAXIMUM", x.index, c.const(0.0)), _elu_part(c, x.index, alpha))
    c.op("MUL", s, c.const(gamma), out=out)


@lowering("Celu")
def celu(ctx: Ctx, node: ir.Node) -> None:
    c, x, out = _start(ctx, node)
    alpha = node.attributes.get_float("alpha", 1.0)
    c.op("ADD", c.op("MAXIMUM", x.index, c.const(0.0)), _elu_part(c, x.index, alpha, 1.0 / alpha), out=out)


@lowering("ThresholdedRelu")
def thresholded_relu(ctx: Ctx, node: ir.Node) -> None:
    c, x, out = _start(ctx, node)
    above = c.op("GREATER", x.index, c.const(node.attributes.get_float("alpha", 1.0)))
    c.op("SELECT_V2", above, x.index, c.const(0.0), out=out)


@lowering("Shrink")
def shrink(ctx: Ctx, node: ir.Node) -> None:
    c, x, out = _start(ctx, node)
    lambd, bias = node.attributes.get_float("lambd", 0.5), node.attributes.get_float("bias", 0.0)
    low = c.op("SELECT_V2", c.op("LESS", x.index, c.const(-lambd)), c.op("ADD", x.index, c.const(bias)), c.const(0.0))
    c.op("SELECT_V2", c.op("GREATER", x.index, c.const(lambd)), c.op("SUB", x.index, c.const(bias)), low, out=out)


def _log1p(c: Chain, u: int) -> int:
    """log(1 + u) for u >= 0, accurate for small u: u (1 - u / 2 + u^2 / 3) below 1e-3 (LiteRT's LOG
    near 1 is off by ~1e-7 absolute, too much for a result of 1e-5), LOG(1 + u) above."""
    series = c.op("MUL", u, c.op("ADD", c.op("MUL", u, c.op("SUB", c.op("MUL", u, c.const(1 / 3)), c.const(0.5))), c.const(1.0)))
    return c.op("SELECT_V2", c.op("LESS", u, c.const(1e-3)), series, c.op("LOG", c.op("ADD", u, c.const(1.0))))


def _softplus(c: Chain, x: int, out: int | None = None) -> int:
    """max(x, 0) + log1p(exp(-|x|)): no overflow for large x, no lost digits for very negative x."""
    tail = _log1p(c, c.op("EXP", c.op("NEG", c.op("ABS", x))))
    return c.op("ADD", c.op("MAXIMUM", x, c.const(0.0)), tail, out=out)


@lowering("Softplus")
def softplus(ctx: Ctx, node: ir.Node) -> None:
    c, x, out = _start(ctx, node)
    _softplus(c, x.index, out)


@lowering("Mish")
def mish(ctx: Ctx, node: ir.Node) -> None:
    """x * tanh(softplus(x)) = x * n / (n + 2), n = e (e + 2), e = exp(min(x, 20)): exact where the
    tanh of a rounded softplus loses digits."""
    c, x, out = _start(ctx, node)
    e = c.op("EXP", c.op("MINIMUM", x.index, c.const(20.0)))
    n = c.op("MUL", e, c.op("ADD", e, c.const(2.0)))
    c.op("MUL", x.index, c.op("DIV", n, c.op("ADD", n, c.const(2.0))), out=out)


@lowering("Softsign")
def softsign(ctx: Ctx, node: ir.Node) -> None:
    c, x, out = _start(ctx, node)
    c.op("DIV", x.index, c.op("ADD", c.op("ABS", x.index), c.const(1.0)), out=out)


@lowering("Gelu")
def gelu(ctx: Ctx, node: ir.Node) -> None:
    """Exact: GELU. Tanh approximation: written out, 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))
    (LiteRT's approximate GELU kernel differs from it by up to 5e-4)."""
    c, x, out = _start(ctx, node)
    if node.attributes.get_string("approximate", "none") != "tanh":
        c.op("GELU", x.index, out=out, approximate=False)
        return
    cube = c.op("MUL", c.op("MUL", x.index, x.index), x.index)
    inner = c.op("MUL", c.op("ADD", x.index, c.op("MUL", cube, c.const(0.044715))), c.const(math.sqrt(2 / math.pi)))
    half = c.op("MUL", x.index, c.const(0.5))
    c.op("MUL", half, c.op("ADD", c.op("TANH", inner), c.const(1.0)), out=out)


@lowering("Sin", "Cos", "Floor", "Ceil", "Round", "Sign")
def plain_unary(ctx: Ctx, node: ir.Node) -> None:
    c, x, out = _start(ctx, node)
    c.op(node.op_type.upper(), x.index, out=out)


@lowering("Tan")
def tan(ctx: Ctx, node: ir.Node) -> None:
    c, x, out = _start(ctx, node)
    c.op("DIV", c.op("SIN", x.index), c.op("COS", x.index), out=out)


def _sqrt_one_minus_square(c: Chain, x: int) -> int:
    return c.op("SQRT", c.op("SUB", c.const(1.0), c.op("MUL", x, x)))


@lowering("Atan", "Asin", "Acos")
def inverse_trig(ctx: Ctx, node: ir.Node) -> None:
    """ATAN2: atan(x) = atan2(x, 1), asin(x) = atan2(x, sqrt(1 - x^2)), acos(x) = atan2(sqrt(1 - x^2), x)."""
    c, x, out = _start(ctx, node)
    if node.op_type == "Atan":
        c.op("ATAN2", x.index, c.const(np.ones(ctx.g.shape_of(x.index))), out=out)
    elif node.op_type == "Asin":
        c.op("ATAN2", x.index, _sqrt_one_minus_square(c, x.index), out=out)
    else:
        c.op("ATAN2", _sqrt_one_minus_square(c, x.index), x.index, out=out)


@lowering("Sinh", "Cosh")
def sinh_cosh(ctx: Ctx, node: ir.Node) -> None:
    c, x, out = _start(ctx, node)
    pos, neg = c.op("EXP", x.index), c.op("EXP", c.op("NEG", x.index))
    both = c.op("SUB" if node.op_type == "Sinh" else "ADD", pos, neg)
    c.op("MUL", both, c.const(0.5), out=out)


@lowering("Asinh", "Acosh")
def asinh_acosh(ctx: Ctx, node: ir.Node) -> None:
    """log(x + sqrt(x^2 + 1)) / log(x + sqrt(x^2 - 1))."""
    c, x, out = _start(ctx, node)
    root = c.op("SQRT", c.op("ADD", c.op("MUL", x.index, x.index), c.const(1.0 if node.op_type == "Asinh" else -1.0)))
    c.op("LOG", c.op("ADD", x.index, root), out=out)


@lowering("Atanh")
def atanh(ctx: Ctx, node: ir.Node) -> None:
    c, x, out = _start(ctx, node)
    ratio = c.op("DIV", c.op("ADD", c.const(1.0), x.index), c.op("SUB", c.const(1.0), x.index))
    c.op("MUL", c.op("LOG", ratio), c.const(0.5), out=out)


@lowering("Mod")
def mod(ctx: Ctx, node: ir.Node) -> None:
    """fmod=0: FLOOR_MOD (the result takes the divisor's sign); fmod=1: x - trunc(x / y) * y (C fmod)."""
    from edgepack.converters.export_tflite.ops_elementwise import binary_operands

    c = Chain(ctx, node)
    (a, b), perm, feature_perm = binary_operands(ctx, node)
    out = ctx.out(node.outputs[0], perm, feature_perm=feature_perm).index
    if not node.attributes.get_int("fmod", 0):
        c.op("FLOOR_MOD", a, b, out=out)
        return
    q = c.op("DIV", a, b)
    trunc = c.op("MUL", c.op("SIGN", q), c.op("FLOOR", c.op("ABS", q)))
    c.op("SUB", a, c.op("MUL", trunc, b), out=out)


@lowering("Sum", "Mean")
def sum_mean(ctx: Ctx, node: ir.Node) -> None:
    """n inputs, broadcast like ONNX: ADDs in a row (one input: a copy), Mean then divides by n."""
    _variadic(ctx, node, "ADD", 1.0 / len(node.inputs) if node.op_type == "Mean" else None)


def _variadic(ctx: Ctx, node: ir.Node, builtin: str, scale: float | None) -> None:
    from edgepack.converters.export_tflite.ops_elementwise import broadcast_operands

    c = Chain(ctx, node)
    operands, perm, feature_perm = broadcast_operands(ctx, node, list(node.inputs))
    out = ctx.out(node.outputs[0], perm, feature_perm=feature_perm).index
    if len(operands) == 1:  # a copy (MAXIMUM with one input is a model LiteRT cannot run)
        if scale is None:
            ctx.g.reshape(operands[0], out)
        else:
            c.op("MUL", operands[0], c.const(scale), out=out)
        return
    acc = operands[0]
    for i, other in enumerate(operands[1:]):
        last = i == len(operands) - 2 and scale is None
        acc = c.op(builtin, acc, other, out=out if last else None)
    if scale is not None:
        c.op("MUL", acc, c.const(scale), out=out)


@lowering("Max", "Min")
def max_min(ctx: Ctx, node: ir.Node) -> None:
    if not node.inputs:
        raise unsupported(node, "has no inputs")
    _variadic(ctx, node, "MAXIMUM" if node.op_type == "Max" else "MINIMUM", None)


@lowering("Swish")
def swish(ctx: Ctx, node: ir.Node) -> None:
    """x * sigmoid(alpha * x)."""
    c, x, out = _start(ctx, node)
    alpha = node.attributes.get_float("alpha", 1.0)
    scaled = x.index if alpha == 1.0 else c.op("MUL", x.index, c.const(alpha))
    c.op("MUL", x.index, c.op("LOGISTIC", scaled), out=out)


@lowering("SwiGLU")
def swiglu(ctx: Ctx, node: ir.Node) -> None:
    """swish_alpha(A) * B = A * sigmoid(alpha * A) * B (A and B of one shape)."""
    from edgepack.converters.export_tflite.ops_elementwise import broadcast_operands

    (a, b), perm, feature_perm = broadcast_operands(ctx, node, list(node.inputs[:2]))
    c = Chain(ctx, node)
    alpha = node.attributes.get_float("alpha", 1.0)
    gate = c.op("MUL", a, c.op("LOGISTIC", a if alpha == 1.0 else c.op("MUL", a, c.const(alpha))))
    c.op("MUL", gate, b, out=ctx.out(node.outputs[0], perm, feature_perm=feature_perm).index)
