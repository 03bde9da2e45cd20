"""Lowerings for ONNX's recurrent layers (LSTM, GRU, RNN), unrolled over the static sequence
length into FULLY_CONNECTED / ADD / SUB / MUL / LOGISTIC / TANH ops that XNNPACK runs.

Per direction: one FULLY_CONNECTED projects every time step's input at once (input weights, with
every bias that adds linearly folded in), a SPLIT hands out the steps, and each step is one
FULLY_CONNECTED on the previous hidden state plus the gate arithmetic of the ONNX operator's
definition. Missing initial states are zero constants. Y, Y_h and Y_c are assembled with
CONCATENATION in the layout the ONNX `layout` attribute gives (relabelled, not transposed).

LiteRT's UNIDIRECTIONAL/BIDIRECTIONAL_SEQUENCE_LSTM builtins are not used: their state inputs are
variable tensors that the kernel updates in place (state would carry from one invocation to the
next, while an ONNX LSTM starts from its initial states every time), they have no final cell-state
output (Y_c), and their int8 kernel needs int16 cell states and per-gate intermediate scales that
the one calibration does not give. The unrolled form is exact in float32 and is what LiteRT
itself produces for a Keras LSTM with `unroll=True`.

int8: the operators of a recurrent layer stay float (registered in `TfliteGraph.no_int8`, so the
int8 pass puts DEQUANTIZE / QUANTIZE around them and reports them as float ops): the hidden and
cell states are fed back through every step, and per-tensor int8 states compound the rounding
error over the sequence."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgepack.converters.export_tflite.graph import identity, unsupported
from edgepack.converters.export_tflite.registry import Ctx, lowering

ACTIVATIONS = {"Sigmoid": "LOGISTIC", "Tanh": "TANH", "Relu": "RELU"}
DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
FLOAT_WHY = ("recurrent layer: its states feed back through every step, where int8 rounding compounds; "
             "kept float between DEQUANTIZE and QUANTIZE")


@dataclass
class Recurrent:
    """A checked ONNX LSTM / GRU / RNN node: weights per direction in ONNX gate order."""

    op: str
    seq: int
    batch: int
    hidden: int
    directions: list[bool]  # reverse? per direction
    acts: list[list[str]]  # TFLite builtins per direction
    w: np.ndarray  # (dirs, gates*H, I)
    r: np.ndarray  # (dirs, gates*H, H)
    b: np.ndarray  # (dirs, 2*gates*H): Wb then Rb
    p: np.ndarray | None  # LSTM peepholes (dirs, 3H): i, o, f
    batch_first: bool
    linear_before_reset: bool


def _input(node: ir.Node, i: int) -> ir.Value | None:
    return node.inputs[i] if len(node.inputs) > i and node.inputs[i] is not None and node.inputs[i].name else None


def _output(node: ir.Node, i: int, ctx: Ctx) -> ir.Value | None:
    if len(node.outputs) <= i or not node.outputs[i].name:
        return None
    value = node.outputs[i]
    return value if value.uses() or value.name in ctx.outputs else None


def can_lower(ctx: Ctx, node: ir.Node) -> tuple[Recurrent | None, str | None]:
    """The checked layer, or None and the reason it cannot be lowered."""
    op = node.op_type
    attrs = node.attributes
    if attrs.get_float("clip", 0.0):
        return None, "has a `clip` attribute (cell clipping is not lowered)"
    if op == "LSTM" and attrs.get_int("input_forget", 0):
        return None, "couples input and forget gates (input_forget=1)"
    direction = attrs.get_string("direction", "forward")
    directions = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}.get(direction)
    if directions is None:
        return None, f"has direction {direction!r}"
    w, r = ctx.const(_input(node, 1)), ctx.const(_input(node, 2))
    if w is None or r is None:
        return None, "has non-constant weights W / R"
    gates, dirs = GATES[op], len(directions)
    hidden = r.shape[-1]
    b = ctx.const(_input(node, 3)) if _input(node, 3) is not None else np.zeros((dirs, 2 * gates * hidden), np.float32)
    if b is None:
        return None, "has a non-constant bias B"
    x_shape = ctx.shape(node.inputs[0])
    batch_first = bool(attrs.get_int("layout", 0))
    seq, batch = (x_shape[1], x_shape[0]) if batch_first else (x_shape[0], x_shape[1])
    lens = _input(node, 4)
    if lens is not None:
        values = ctx.const(lens)
        if values is None or not np.all(values == seq):
            return None, "has per-sample sequence_lens (only full-length sequences are lowered)"
    names = attrs.get_strings("activations", None) if "activations" in attrs else None
    per_dir = len(DEFAULT_ACTIVATIONS[op])
    names = list(names) if names else list(DEFAULT_ACTIVATIONS[op]) * dirs
    unknown = sorted({n for n in names if n not in ACTIVATIONS})
    if unknown or len(names) != per_dir * dirs:
        return None, f"uses activations {names} (lowered: {', '.join(ACTIVATIONS)})"
    acts = [[ACTIVATIONS[n] for n in names[d * per_dir:(d + 1) * per_dir]] for d in range(dirs)]
    p = ctx.const(_input(node, 7)) if op == "LSTM" and _input(node, 7) is not None else None
    if op == "LSTM" and _input(node, 7) is not None and p is None:
        return None, "has non-constant peephole weights P"
    lbr = bool(attrs.get_int("linear_before_reset", 0)) if op == "GRU" else False
    return Recurrent(op, seq, batch, hidden, directions, acts, w.astype(np.float32), r.astype(np.float32),
                     b.astype(np.float32), None if p is None else p.astype(np.float32), batch_first, lbr), None


@lowering("LSTM", "GRU", "RNN")
def recurrent(ctx: Ctx, node: ir.Node) -> None:
    layer, why = can_lower(ctx, node)
    if layer is None:
        raise unsupported(node, why)
    first = len(ctx.g.operators)
    x = ctx.val(node.inputs[0], node)
    x = ctx.as_perm(x, (1, 0, 2) if layer.batch_first else identity(3), node.inputs[0].name + "_time_major")
    h0 = _initial_states(ctx, node, layer, 5)
    c0 = _initial_states(ctx, node, layer, 6) if layer.op == "LSTM" else [None] * len(layer.directions)
    runs = [_direction(ctx, node, layer, x.index, d, h0[d], c0[d]) for d in range(len(layer.directions))]
    _write_outputs(ctx, node, layer, runs)
    for op in ctx.g.operators[first:]:
        ctx.g.no_int8[id(op)] = FLOAT_WHY


# ---------------------------------------------------------------- emitting


def _emit(ctx: Ctx, builtin: str, inputs: list[int], shape: list[int], name: str, options: str | None = None,
          **fields) -> int:
    out = ctx.g.tensor(name, shape)
    ctx.g.op(builtin, inputs, [out], ctx.g.options(options, **fields) if options else None)
    return out


def _binary(ctx: Ctx, builtin: str, a: int, b: int, name: str) -> int:
    options = {"ADD": "AddOptions", "SUB": "SubOptions", "MUL": "MulOptions"}[builtin]
    return _emit(ctx, builtin, [a, b], ctx.g.shape_of(a), name, options)


def _unary(ctx: Ctx, builtin: str, a: int, name: str) -> int:
    return _emit(ctx, builtin, [a], ctx.g.shape_of(a), name)


def _fc(ctx: Ctx, x: int, w: int, bias: int, name: str) -> int:
    """FULLY_CONNECTED with weight tensor `w` (out, in) and bias tensor `bias` (-1: none)."""
    shape = ctx.g.shape_of(x)[:-1] + [ctx.g.shape_of(w)[0]]
    return _emit(ctx, "FULLY_CONNECTED", [x, w, bias], shape, name, "FullyConnectedOptions", keepNumDims=len(shape) > 2)


def _split(ctx: Ctx, x: int, axis: int, parts: int, name: str) -> list[int]:
    if parts == 1:
        return [x]
    shape = ctx.g.shape_of(x)
    shape[axis] //= parts
    outs = [ctx.g.tensor(f"{name}_{k}", shape) for k in range(parts)]
    ctx.g.op("SPLIT", [ctx.int_const(axis, name + "_axis"), x], outs, ctx.g.options("SplitOptions", numSplits=parts))
    return outs


def _reshape(ctx: Ctx, x: int, shape: list[int], name: str) -> int:
    if ctx.g.shape_of(x) == list(shape):
        return x
    out = ctx.g.tensor(name, shape)
    ctx.g.reshape(x, out)
    return out


def _concat(ctx: Ctx, parts: list[int], axis: int, name: str) -> int:
    if len(parts) == 1:
        return parts[0]
    shape = ctx.g.shape_of(parts[0])
    shape[axis] = sum(ctx.g.shape_of(p)[axis] for p in parts)
    return _emit(ctx, "CONCATENATION", parts, shape, name, "ConcatenationOptions", axis=axis)


# ---------------------------------------------------------------- states and steps


def _initial_states(ctx: Ctx, node: ir.Node, layer: Recurrent, index: int) -> list[int]:
    """One [batch, H] tensor per direction: the given initial state, or zeros."""
    dirs, shape = len(layer.directions), [layer.batch, layer.hidden]
    value = _input(node, index)
    array = ctx.const(value) if value is not None else np.zeros((dirs, layer.batch, layer.hidden), np.float32)
    if array is not None:
        array = array.transpose(1, 0, 2) if layer.batch_first and value is not None else array
        return [ctx.g.const(np.ascontiguousarray(array[d], np.float32), f"{node.name}_state{index}_{d}") for d in range(dirs)]
    tv = ctx.as_perm(ctx.val(value, node), (1, 0, 2) if layer.batch_first else identity(3), value.name + "_dirs_first")
    parts = _split(ctx, tv.index, 0, dirs, value.name + "_dir")
    return [_reshape(ctx, p, shape, f"{value.name}_dir{d}_2d") for d, p in enumerate(parts)]


def _direction(ctx: Ctx, node: ir.Node, layer: Recurrent, x: int, d: int, h: int, c: int | None) -> tuple[list[int], int, int | None]:
    """Run one direction; returns the hidden state of every step (in time order) and the final h, c."""
    gates, hid = GATES[layer.op], layer.hidden
    name = f"{node.name}_d{d}"
    wb, rb = layer.b[d, : gates * hid], layer.b[d, gates * hid:]
    in_bias = wb + rb
    if layer.op == "GRU":  # the h gate's recurrent bias goes inside r * (...) (before reset) or with R_h
        in_bias[2 * hid:] = wb[2 * hid:] + (0 if layer.linear_before_reset else rb[2 * hid:])
    xw = _fc(ctx, x, ctx.weight(layer.w[d], name + "_w"), ctx.g.const(in_bias, name + "_w_bias"), name + "_xw")
    steps = _split(ctx, xw, 0, layer.seq, name + "_xw_t")
    # the recurrent weights, shared by every step: (tensor, bias tensor or -1)
    r = layer.r[d]
    if layer.op == "GRU" and layer.linear_before_reset:
        bias = np.concatenate([np.zeros(2 * hid, np.float32), rb[2 * hid:]])
        weights = [(ctx.weight(r, name + "_r"), ctx.g.const(bias, name + "_r_bias"))]
    elif layer.op == "GRU":
        weights = [(ctx.weight(r[: 2 * hid], name + "_r_zr"), -1), (ctx.weight(r[2 * hid:], name + "_r_h"), -1)]
    else:
        weights = [(ctx.weight(r, name + "_r"), -1)]
    cell = {"LSTM": _lstm_step, "GRU": _gru_step, "RNN": _rnn_step}[layer.op]
    hs: list[int] = [0] * layer.seq
    order = range(layer.seq - 1, -1, -1) if layer.directions[d] else range(layer.seq)
    for t in order:
        xt = _reshape(ctx, steps[t], [layer.batch, gates * hid], f"{name}_t{t}_x")
        h, c = cell(ctx, layer, d, xt, h, c, weights, f"{name}_t{t}")
        hs[t] = h
    return hs, h, c


def _lstm_step(ctx: Ctx, layer: Recurrent, d: int, xt: int, h: int, c: int, weights: list, name: str) -> tuple[int, int]:
    f_act, g_act, h_act = layer.acts[d]
    pre = _binary(ctx, "ADD", xt, _fc(ctx, h, *weights[0], name + "_hr"), name + "_pre")
    i, o, f, g = _split(ctx, pre, 1, 4, name + "_gate")  # ONNX gate order: i, o, f, c
    hid = layer.hidden
    peep = layer.p[d] if layer.p is not None else None
    if peep is not None:
        i = _binary(ctx, "ADD", i, _binary(ctx, "MUL", c, ctx.g.const(peep[:hid], name + "_pi"), name + "_pic"), name + "_ip")
        f = _binary(ctx, "ADD", f, _binary(ctx, "MUL", c, ctx.g.const(peep[2 * hid:], name + "_pf"), name + "_pfc"), name + "_fp")
    i, f, g = _unary(ctx, f_act, i, name + "_i"), _unary(ctx, f_act, f, name + "_f"), _unary(ctx, g_act, g, name + "_g")
    c_new = _binary(ctx, "ADD", _binary(ctx, "MUL", f, c, name + "_fc"), _binary(ctx, "MUL", i, g, name + "_ig"), name + "_c")
    if peep is not None:
        o = _binary(ctx, "ADD", o, _binary(ctx, "MUL", c_new, ctx.g.const(peep[hid:2 * hid], name + "_po"), name + "_poc"), name + "_op")
    o = _unary(ctx, f_act, o, name + "_o")
    return _binary(ctx, "MUL", o, _unary(ctx, h_act, c_new, name + "_tanh_c"), name + "_h"), c_new


def _gru_step(ctx: Ctx, layer: Recurrent, d: int, xt: int, h: int, c: None, weights: list, name: str) -> tuple[int, None]:
    f_act, g_act = layer.acts[d]
    xz, xr, xh = _split(ctx, xt, 1, 3, name + "_x")
    if layer.linear_before_reset:  # h~ = g(xh + r * (H Rh + Rbh))
        hz, hr, hh = _split(ctx, _fc(ctx, h, *weights[0], name + "_hr"), 1, 3, name + "_h")
        z = _unary(ctx, f_act, _binary(ctx, "ADD", xz, hz, name + "_zpre"), name + "_z")
        r = _unary(ctx, f_act, _binary(ctx, "ADD", xr, hr, name + "_rpre"), name + "_r")
        cand = _binary(ctx, "ADD", xh, _binary(ctx, "MUL", r, hh, name + "_rhh"), name + "_hpre")
    else:  # h~ = g(xh + (r * H) Rh + Rbh), Rbh already in xh
        hz, hr = _split(ctx, _fc(ctx, h, *weights[0], name + "_hzr"), 1, 2, name + "_h")
        z = _unary(ctx, f_act, _binary(ctx, "ADD", xz, hz, name + "_zpre"), name + "_z")
        r = _unary(ctx, f_act, _binary(ctx, "ADD", xr, hr, name + "_rpre"), name + "_r")
        rh = _fc(ctx, _binary(ctx, "MUL", r, h, name + "_rh"), *weights[1], name + "_rhw")
        cand = _binary(ctx, "ADD", xh, rh, name + "_hpre")
    cand = _unary(ctx, g_act, cand, name + "_cand")
    # H = (1 - z) * h~ + z * H_prev = h~ + z * (H_prev - h~)
    return _binary(ctx, "ADD", cand, _binary(ctx, "MUL", z, _binary(ctx, "SUB", h, cand, name + "_diff"), name + "_zd"), name + "_h"), None


def _rnn_step(ctx: Ctx, layer: Recurrent, d: int, xt: int, h: int, c: None, weights: list, name: str) -> tuple[int, None]:
    pre = _binary(ctx, "ADD", xt, _fc(ctx, h, *weights[0], name + "_hr"), name + "_pre")
    return _unary(ctx, layer.acts[d][0], pre, name + "_h"), None


# ---------------------------------------------------------------- outputs


def _write_outputs(ctx: Ctx, node: ir.Node, layer: Recurrent, runs: list[tuple[list[int], int, int | None]]) -> None:
    """Y [seq, dirs, batch, H] (batch_first: [batch, seq, dirs, H]), Y_h and Y_c [dirs, batch, H]
    ([batch, dirs, H]); stored time-major / direction-major and relabelled to the ONNX order."""
    b, hid = layer.batch, layer.hidden
    y = _output(node, 0, ctx)
    if y is not None:
        per_dir = [_concat(ctx, [_reshape(ctx, h, [1, 1, b, hid], f"{node.name}_y_d{d}_t{t}") for t, h in enumerate(hs)], 0,
                           f"{node.name}_y_d{d}") for d, (hs, _, _) in enumerate(runs)]
        _alias(ctx, y, _concat(ctx, per_dir, 1, y.name + "_dirs"), (1, 2, 0, 3) if layer.batch_first else identity(4))
    for k, pick in ((1, 1), (2, 2)):
        value = _output(node, k, ctx)
        if value is None:
            continue
        if runs[0][pick] is None:
            raise unsupported(node, "produces a cell state for a layer without one")
        finals = [_reshape(ctx, run[pick], [1, b, hid], f"{value.name}_d{d}") for d, run in enumerate(runs)]
        _alias(ctx, value, _concat(ctx, finals, 0, value.name + "_dirs"), (1, 0, 2) if layer.batch_first else identity(3))


def _alias(ctx: Ctx, value: ir.Value, index: int, perm: tuple[int, ...]) -> None:
    """Make tensor `index` (stored with axes `perm`) the TFLite tensor of ONNX `value`, under its name."""
    out = ctx.out(value, perm)
    if ctx.g.shape_of(out.index) != ctx.g.shape_of(index):
        raise unsupported(value.producer(), f"output {value.name!r} would be {ctx.g.shape_of(index)}, ONNX says "
                                            f"{ctx.g.shape_of(out.index)}")
    ctx.g.reshape(index, out.index)
