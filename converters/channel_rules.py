"""Channel rules for `remove_pruned_channels`: what each op does to the channels of the tensors it
reads and writes (steps 1 and 2 of that pass: constant analysis and channel groups; the rewrite is
in remove_pruned_channels.py).

Rules live in `CHANNEL_RULES`, keyed by op type (`domain.op_type` outside the default domain); an
op without a rule blocks the channels it touches (they are kept, with the reason in the report).
**Hook for a custom op:** register a rule with `@channel_rule("mydomain.MyOp")`; it is called as
`rule(an, node, ins, c_out, approx)` with the `Analysis`, the node, the `Channels` of each input
(None for tensors without a channel axis), the output channel count and the --prune-approx flag,
and must record its output with `an.new(...)` and tie channels with `an.union_range(...)` (or call
`unknown(an, node, ins, c_out)` to keep everything). Registering an op twice is an error.

Written by hand because no maintained library does this on ONNX graphs (see remove_pruned_channels)."""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from edgepack.converters import attr_f, const_value, has_padding, registrar, static_shape

MIXING = ("Conv", "Gemm", "MatMul", "ConvTranspose")

_UNARY = {
    "Relu": lambda k, n: np.maximum(k, 0.0),
    "Sigmoid": lambda k, n: 1.0 / (1.0 + np.exp(-k)),
    "Tanh": lambda k, n: np.tanh(k),
    "HardSigmoid": lambda k, n: np.clip(attr_f(n, "alpha", 0.2) * k + attr_f(n, "beta", 0.5), 0, 1),
    "HardSwish": lambda k, n: k * np.clip(k / 6.0 + 0.5, 0, 1),
    "LeakyRelu": lambda k, n: np.where(k >= 0, k, attr_f(n, "alpha", 0.01) * k),
    "Elu": lambda k, n: np.where(k >= 0, k, attr_f(n, "alpha", 1.0) * (np.exp(k) - 1)),
    "Softplus": lambda k, n: np.log1p(np.exp(k)),
    "Neg": lambda k, n: -k,
    "Abs": lambda k, n: np.abs(k),
    "Identity": lambda k, n: k,
    "Dropout": lambda k, n: k,
    "Erf": None,  # no numpy erf: varying
}
BINARY = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": np.divide,
    "Max": np.maximum,
    "Min": np.minimum,
}
_POOLS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Resize", "Upsample")
_REDUCE = ("ReduceMean", "ReduceMax", "ReduceMin")










@dataclass
class Channels:
    """Per-tensor channel info: count, constant per channel (NaN = varies), first atom id."""

    count: int
    const: np.ndarray
    base: int


@dataclass
class Analysis:
    """What `find_removable` learned: channel info, atom groups, and why groups are blocked."""

    info: dict[ir.Value, Channels] = field(default_factory=dict)
    parent: list[int] = field(default_factory=list)
    blocked: dict[int, str] = field(default_factory=dict)  # atom -> reason
    needs_const: dict[int, str] = field(default_factory=dict)  # atom -> consumer that absorbs it
    mixing_inputs: list[tuple[ir.Node, ir.Value]] = field(default_factory=list)
    shuffles: list[tuple[ir.Node, ir.Node, ir.Node, np.ndarray]] = field(default_factory=list)
    removable_roots: set[int] = field(default_factory=set)
    reasons: dict[int, str] = field(default_factory=dict)  # root -> why a constant group stays
    notes: dict[int, str] = field(default_factory=dict)  # atom -> why its constant stops being one

    def new(self, value: ir.Value, count: int, const: np.ndarray | None = None) -> Channels:
        base = len(self.parent)
        self.parent.extend(range(base, base + count))
        ch = Channels(count, np.full(count, np.nan) if const is None else np.asarray(const, np.float64), base)
        self.info[value] = ch
        return ch

    def find(self, a: int) -> int:
        parent = self.parent
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:
            parent[a], a = root, parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def union_range(self, out: Channels, src: Channels, mapping: np.ndarray) -> None:
        """Unify out channel i with src channel mapping[i]."""
        for i, j in enumerate(mapping):
            self.union(out.base + i, src.base + int(j))

    def block(self, ch: Channels, why: str, idx: np.ndarray | None = None) -> None:
        for i in range(ch.count) if idx is None else idx:
            self.blocked.setdefault(ch.base + int(i), why)


# ---------------------------------------------------------------- step 1 + 2: analysis


def find_removable(model: ir.Model, *, approx: bool = False) -> Analysis:
    graph = model.graph
    an = Analysis()
    for value in graph.inputs:
        shape = static_shape(value)
        if shape is not None and len(shape) >= 2:
            an.block(an.new(value, shape[1]), "graph input")
    skip: set[ir.Node] = set()
    for node in graph:
        if node in skip:
            continue
        shuffle = match_shuffle(node)
        if shuffle is not None:
            skip.update(shuffle[1:3])
            _shuffle(an, *shuffle)
            continue
        _analyse_node(an, node, approx)
    for value in graph.outputs:
        if value in an.info:
            an.block(an.info[value], "graph output (shape must not change)")
    for node in ir.traversal.RecursiveGraphIterator(graph):
        if node.graph is not graph:  # a subgraph (If/Loop/Scan body) reading an outer tensor by name
            for value in node.inputs:
                if value in an.info:
                    an.block(an.info[value], f"read inside the subgraph of '{node.graph.name}'")
    _decide(an)
    return an


def _analyse_node(an: Analysis, node: ir.Node, approx: bool) -> None:
    op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
    out = node.outputs[0] if node.outputs else None
    shape = static_shape(out)
    ins = [an.info.get(v) if v is not None else None for v in node.inputs]
    if shape is None or len(shape) < 2:
        for v, ch in zip(node.inputs, ins):
            if ch is not None:
                an.block(ch, f"consumed by {op} '{node.name}' with no static channel axis")
        return
    c_out = shape[1]
    if op not in BINARY and op != "Concat":
        # Only the data input is followed; a channel tensor used as a weight, a Gemm C, a shape or
        # a bound must keep all its channels.
        for index, ch in enumerate(ins[1:], start=1):
            if ch is not None:
                an.block(ch, f"used as input {index} of {op} '{node.name}'")

    CHANNEL_RULES.get(op, unknown)(an, node, ins, c_out, approx)


Rule = Callable[["Analysis", ir.Node, list, int, bool], None]
CHANNEL_RULES: dict[str, Rule] = {}


def channel_rule(*ops: str) -> Callable[[Rule], Rule]:
    """Register the channel rule of `ops` (the hook for a custom op: see the module docstring)."""
    return registrar(CHANNEL_RULES, "a channel rule", *ops)


def unknown(an: "Analysis", node: ir.Node, ins: list, c_out: int | None, approx: bool = False) -> None:
    """The rule of an op without one: every channel it reads or writes is kept."""
    _unknown(an, node, ins, c_out)


@channel_rule("Conv", "ConvTranspose")
def _conv_rule(an, node, ins, c_out, approx):
    _conv(an, node, ins[0] if ins else None, c_out, approx)


@channel_rule("Gemm", "MatMul")
def _gemm_rule(an, node, ins, c_out, approx):
    _gemm(an, node, ins[0] if ins else None, c_out)


def _elementwise_rule(an, node, ins, c_out, approx):
    op, x, out = node.op_type, ins[0] if ins else None, node.outputs[0]
    if x is None or x.count != c_out:
        return _unknown(an, node, ins, c_out)
    fn = _UNARY.get(op)
    with np.errstate(all="ignore"):
        if op == "Clip":
            bounds = _clip_bounds(node)
            const = np.full(c_out, np.nan) if bounds is None else np.clip(x.const, *bounds)
        else:
            const = fn(x.const, node) if fn is not None else np.full(c_out, np.nan)
    ch = an.new(out, c_out, const)
    an.union_range(ch, x, np.arange(c_out))


def _binary_rule(an, node, ins, c_out, approx):
    _binary(an, node, ins, c_out)


def _pool_rule(an, node, ins, c_out, approx):
    _pool_like(an, node, ins[0] if ins else None, c_out, node.op_type)


@channel_rule("Concat")
def _concat_rule(an, node, ins, c_out, approx):
    _concat(an, node, ins, c_out)


@channel_rule("Split", "Slice")
def _split_slice_rule(an, node, ins, c_out, approx):
    _split_slice(an, node, ins[0] if ins else None, node.op_type)


@channel_rule("Flatten", "Reshape")
def _flatten_rule(an, node, ins, c_out, approx):
    _flatten(an, node, ins[0] if ins else None, c_out)


channel_rule(*_UNARY, "Clip")(_elementwise_rule)
channel_rule(*BINARY)(_binary_rule)
channel_rule(*_POOLS, *_REDUCE, "Pad")(_pool_rule)


def _unknown(an: Analysis, node: ir.Node, ins: list[Channels | None], c_out: int | None) -> None:
    for ch in ins:
        if ch is not None:
            an.block(ch, f"consumed by {node.op_type} '{node.name}'")
    for out in node.outputs:
        shape = static_shape(out)
        if shape is not None and len(shape) >= 2 and out not in an.info:
            an.block(an.new(out, shape[1]), f"produced by {node.op_type} '{node.name}'")


def _conv(an: Analysis, node: ir.Node, x: Channels | None, c_out: int, approx: bool) -> None:
    w = const_value(node.inputs[1])
    b = const_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if x is None or w is None or (len(node.inputs) > 2 and node.inputs[2] is not None and b is None):
        return _unknown(an, node, [x], c_out)
    b = np.zeros(c_out) if b is None else b.astype(np.float64)
    group = node.attributes.get_int("group", 1)
    padded = has_padding(node)
    out = node.outputs[0]
    if node.op_type == "ConvTranspose":
        if group != 1:
            return _unknown(an, node, [x], c_out)
        # W: (C_in, C_out, k...). Output is constant only where no varying or non-zero input reaches it.
        nz = (w.reshape(w.shape[0], w.shape[1], -1) != 0).any(-1).T  # (C_out, C_in)
        bad = nz & (np.isnan(x.const)[None, :] | (x.const != 0)[None, :])
        an.new(out, c_out, np.where(bad.any(1), np.nan, b))
        an.mixing_inputs.append((node, node.inputs[0]))
        for i in range(x.count):
            an.needs_const.setdefault(x.base + i, f"ConvTranspose '{node.name}'")
            if x.const[i] != 0:  # even with approx: with stride > 1 not even the interior is constant
                an.blocked.setdefault(
                    x.base + i, f"non-zero constant enters ConvTranspose '{node.name}' (border and stride taps differ)"
                )
        return
    cin_g = w.shape[1]
    if group == 1:
        wf = w.reshape(c_out, cin_g, -1).astype(np.float64)
        nz = (wf != 0).any(-1)
        k = x.const
        bad = nz & np.isnan(k)[None, :]
        if padded and not approx:
            bad |= nz & (k != 0)[None, :]
        const = b + (wf.sum(-1) * np.nan_to_num(k)[None, :]).sum(1)
        an.new(out, c_out, np.where(bad.any(1), np.nan, const))
        an.mixing_inputs.append((node, node.inputs[0]))
        for i in range(x.count):
            an.needs_const.setdefault(x.base + i, f"Conv '{node.name}'")
            if padded and not approx and x.const[i] != 0:
                an.blocked.setdefault(x.base + i, f"non-zero constant enters zero-padded Conv '{node.name}' (use --prune-approx)")
        return
    if group == x.count and c_out % group == 0 and cin_g == 1:  # depthwise (channel multiplier m)
        m = c_out // group
        src = np.arange(c_out) // m
        wf = w.reshape(c_out, -1).astype(np.float64)
        k = x.const[src]
        zero_filter = ~(wf != 0).any(-1)
        ok = ~np.isnan(k) & ((k == 0) | (not padded or approx))
        const = np.where(zero_filter, b, np.where(ok, b + wf.sum(-1) * np.nan_to_num(k), np.nan))
        ch = an.new(out, c_out, const)
        an.union_range(ch, x, src)
        why = f"non-zero constant enters zero-padded depthwise Conv '{node.name}' (use --prune-approx)"
        for i in np.flatnonzero(~ok & ~zero_filter & ~np.isnan(k)):  # for the report: why it now varies
            an.notes.setdefault(x.base + int(src[i]), why)
        return
    if x.count != group * cin_g or c_out % group:
        return _unknown(an, node, [x], c_out)
    # Grouped (not depthwise): constants are still known per output channel, but no channel can go.
    wf = w.reshape(c_out, cin_g, -1).astype(np.float64)
    k = x.const.reshape(group, cin_g)[np.arange(c_out) // (c_out // group)]  # (C_out, cin_g): what each filter reads
    nz = (wf != 0).any(-1)
    bad = nz & (np.isnan(k) | ((k != 0) & padded & (not approx)))
    const = np.where(bad.any(1), np.nan, b + (wf.sum(-1) * np.nan_to_num(k)).sum(1))
    an.block(x, f"grouped Conv '{node.name}' (group={group}): channels must stay consistent per group")
    an.block(an.new(out, c_out, const), f"output of grouped Conv '{node.name}' (group={group})")


def _gemm(an: Analysis, node: ir.Node, x: Channels | None, c_out: int) -> None:
    w = const_value(node.inputs[1])
    x_shape = static_shape(node.inputs[0])
    if x is None or w is None or w.ndim != 2 or x_shape is None or len(x_shape) != 2:
        return _unknown(an, node, [x], c_out)
    if node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
        return _unknown(an, node, [x], c_out)
    trans_b = node.op_type == "Gemm" and node.attributes.get_int("transB", 0)
    wk = (w.T if trans_b else w).astype(np.float64)  # (K, N)
    alpha = attr_f(node, "alpha", 1.0) if node.op_type == "Gemm" else 1.0
    beta = attr_f(node, "beta", 1.0) if node.op_type == "Gemm" else 1.0
    c = const_value(node.inputs[2]) if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None else None
    if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None and c is None:
        return _unknown(an, node, [x], c_out)
    if c is not None and c.size not in (1, c_out):  # C varies over the batch: not a bias
        return _unknown(an, node, [x], c_out)
    bias = np.zeros(c_out) if c is None else np.broadcast_to(beta * c.astype(np.float64).reshape(-1), (c_out,))
    nz = wk != 0
    bad = (nz & np.isnan(x.const)[:, None]).any(0)
    const = bias + alpha * (np.nan_to_num(x.const)[:, None] * wk).sum(0)
    an.new(node.outputs[0], c_out, np.where(bad, np.nan, const))
    an.mixing_inputs.append((node, node.inputs[0]))
    for i in range(x.count):
        an.needs_const.setdefault(x.base + i, f"{node.op_type} '{node.name}'")


def _clip_bounds(node: ir.Node) -> tuple[float, float] | None:
    """Clip's (min, max), or None when a bound is a tensor that is not constant."""
    bounds = []
    for index, name, default in ((1, "min", -np.inf), (2, "max", np.inf)):
        if len(node.inputs) > index and node.inputs[index] is not None:
            value = const_value(node.inputs[index])
            if value is None:
                return None
            bounds.append(float(value))
        else:
            bounds.append(attr_f(node, name, default))  # opset < 11 attributes
    return bounds[0], bounds[1]


def _per_channel(arr: np.ndarray, out_rank: int, c_out: int) -> np.ndarray | None:
    """Values of a constant operand per output channel, or None when it varies within a channel."""
    a = arr.astype(np.float64)
    if a.ndim < out_rank - 1:
        a = a.reshape((1,) * (out_rank - 1 - a.ndim) + a.shape)
    if a.ndim == out_rank - 1:
        a = a[None]
    if a.ndim != out_rank or a.shape[1] not in (1, c_out):
        return None
    flat = np.moveaxis(a, 1, 0).reshape(a.shape[1], -1)
    if not (flat == flat[:, :1]).all():
        return None
    vec = flat[:, 0]
    return np.repeat(vec, c_out) if vec.size == 1 else vec


def _binary(an: Analysis, node: ir.Node, ins: list[Channels | None], c_out: int) -> None:
    out_rank = len(static_shape(node.outputs[0]))
    consts, joined = [], []
    for value, ch in zip(node.inputs[:2], ins[:2]):
        arr = const_value(value)
        if arr is not None:
            vec = _per_channel(arr, out_rank, c_out)
            if vec is None:
                return _unknown(an, node, ins, c_out)
            consts.append(vec)
        elif ch is None or len(static_shape(value) or ()) != out_rank:
            # Broadcasting aligns from the right: a lower-rank operand's axis 1 is not the channel axis.
            return _unknown(an, node, ins, c_out)
        elif ch.count == c_out:
            consts.append(ch.const)
            joined.append(ch)
        elif ch.count == 1:  # broadcast over channels: not coupled
            consts.append(np.repeat(ch.const, c_out))
        else:
            return _unknown(an, node, ins, c_out)
    with np.errstate(all="ignore"):
        const = BINARY[node.op_type](consts[0], consts[1])
        if node.op_type == "Mul":  # 0 * anything finite is 0
            const = np.where((consts[0] == 0) | (consts[1] == 0), 0.0, const)
    out = an.new(node.outputs[0], c_out, const)
    for ch in joined:
        an.union_range(out, ch, np.arange(c_out))


def _pool_like(an: Analysis, node: ir.Node, x: Channels | None, c_out: int, op: str) -> None:
    if x is None or x.count != c_out:
        return _unknown(an, node, [x], c_out)
    const = x.const.copy()
    if op in _REDUCE:
        axes = node.attributes.get_ints("axes", None)
        if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
            axes_arr = const_value(node.inputs[1])
            axes = None if axes_arr is None else axes_arr.tolist()
        rank = len(static_shape(node.inputs[0]))
        if axes is None or any(a % rank in (0, 1) for a in axes):
            return _unknown(an, node, [x], c_out)
    if op == "Pad":
        pads = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
        mode = node.attributes.get_string("mode", "constant")
        value = const_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else np.zeros(())
        if pads is None or value is None or len(node.inputs) > 3 and node.inputs[3] is not None:
            return _unknown(an, node, [x], c_out)
        rank = len(pads) // 2
        if pads[1] != 0 or pads[1 + rank] != 0 or pads[0] != 0 or pads[rank] != 0:
            return _unknown(an, node, [x], c_out)
        if mode == "constant":
            const = np.where(const == float(value), const, np.nan)
    if op == "Resize" and len(node.inputs) > 3 and node.inputs[3] is not None and const_value(node.inputs[3]) is None:
        return _unknown(an, node, [x], c_out)  # target sizes (which include C) must be rewritable
    if op == "AveragePool" and node.attributes.get_int("count_include_pad", 0) and has_padding(node):
        const = np.where(const == 0, const, np.nan)
    ch = an.new(node.outputs[0], c_out, const)
    an.union_range(ch, x, np.arange(c_out))


def _concat(an: Analysis, node: ir.Node, ins: list[Channels | None], c_out: int) -> None:
    rank = len(static_shape(node.outputs[0]))
    axis = node.attributes.get_int("axis", 1) % rank
    if any(ch is None for ch in ins):
        return _unknown(an, node, ins, c_out)
    if axis == 1:
        out = an.new(node.outputs[0], c_out, np.concatenate([ch.const for ch in ins]))
        offset = 0
        for ch in ins:
            an.union_range(Channels(ch.count, ch.const, out.base + offset), ch, np.arange(ch.count))
            offset += ch.count
        return
    if any(ch.count != c_out for ch in ins):
        return _unknown(an, node, ins, c_out)
    consts = np.stack([ch.const for ch in ins])
    const = np.where((consts == consts[0]).all(0), consts[0], np.nan)
    out = an.new(node.outputs[0], c_out, const)
    for ch in ins:
        an.union_range(out, ch, np.arange(c_out))


def _split_slice(an: Analysis, node: ir.Node, x: Channels | None, op: str) -> None:
    ranges = _channel_ranges(node, x)
    if ranges is None:
        return _unknown(an, node, [x], None)
    for out, idx in zip(node.outputs, ranges):
        ch = an.new(out, len(idx), x.const[idx])
        an.union_range(ch, x, idx)


def _channel_ranges(node: ir.Node, x: Channels | None) -> list[np.ndarray] | None:
    """For Split/Slice: the input channel indices each output takes (None if unsupported)."""
    in_shape = static_shape(node.inputs[0])
    if x is None or in_shape is None:
        return None
    rank = len(in_shape)
    if node.op_type == "Split":
        axis = node.attributes.get_int("axis", 0) % rank
        if axis != 1:
            return [np.arange(x.count)] * len(node.outputs)
        shapes = [static_shape(o) for o in node.outputs]
        if any(shape is None for shape in shapes):
            return None
        sizes = [shape[1] for shape in shapes]
        bounds = np.cumsum([0] + sizes)
        return [np.arange(bounds[i], bounds[i + 1]) for i in range(len(sizes))]
    if len(node.inputs) < 3:  # opset < 10: bounds as attributes, which the rewrite does not edit
        return None
    starts, ends = const_value(node.inputs[1]), const_value(node.inputs[2])
    if starts is None or ends is None:
        return None
    axes = const_value(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else np.arange(len(starts))
    steps = const_value(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else np.ones(len(starts), np.int64)
    if axes is None or steps is None:
        return None
    axes = [int(a) % rank for a in axes]
    if 1 not in axes:
        return [np.arange(x.count)]
    i = axes.index(1)
    if int(steps[i]) != 1:
        return None
    s, e, _ = slice(int(starts[i]), int(ends[i]), 1).indices(x.count)
    return [np.arange(s, e)]


def _flatten(an: Analysis, node: ir.Node, x: Channels | None, c_out: int) -> None:
    in_shape = static_shape(node.inputs[0])
    out_shape = static_shape(node.outputs[0])
    if x is None or in_shape is None or len(in_shape) < 2:
        return _unknown(an, node, [x], c_out)
    if node.op_type == "Reshape" and out_shape[0] != in_shape[0]:  # Flatten(axis=1) keeps the batch by definition
        return _unknown(an, node, [x], c_out)
    if node.op_type == "Flatten" and node.attributes.get_int("axis", 1) != 1:
        return _unknown(an, node, [x], c_out)
    if node.op_type == "Reshape" and const_value(node.inputs[1]) is None:
        return _unknown(an, node, [x], c_out)  # a computed target shape could not be rewritten
    inner = math.prod(in_shape[2:])
    if len(out_shape) == 2 and out_shape[1] == x.count * inner:
        src = np.repeat(np.arange(x.count), inner)  # Flatten: feature c*HW + s comes from channel c
    elif out_shape[1] == x.count and math.prod(out_shape[2:]) == inner and (out_shape[2:] == in_shape[2:] or inner == 1):
        src = np.arange(x.count)  # (N,C,1,1) <-> (N,C)
    else:
        return _unknown(an, node, [x], c_out)
    ch = an.new(node.outputs[0], out_shape[1], x.const[src])
    an.union_range(ch, x, src)


def match_shuffle(node: ir.Node) -> tuple[ir.Node, ir.Node, ir.Node, np.ndarray] | None:
    """Reshape (N,C,H,W)->(N,g,C/g,H,W), Transpose(0,2,1,3,4), Reshape back: out[i] = in[perm[i]]."""
    if node.op_type != "Reshape":
        return None
    in_shape, mid = static_shape(node.inputs[0]), static_shape(node.outputs[0])
    if in_shape is None or mid is None or len(in_shape) != 4 or len(mid) != 5 or mid[1] * mid[2] != in_shape[1]:
        return None
    uses = node.outputs[0].uses()
    if len(uses) != 1 or uses[0].node.op_type != "Transpose" or node.outputs[0].is_graph_output():
        return None
    tr = uses[0].node
    if list(tr.attributes.get_ints("perm", [])) != [0, 2, 1, 3, 4]:
        return None
    uses = tr.outputs[0].uses()
    if len(uses) != 1 or uses[0].node.op_type != "Reshape" or tr.outputs[0].is_graph_output():
        return None
    back = uses[0].node
    if static_shape(back.outputs[0]) != in_shape:
        return None
    g, cg = mid[1], mid[2]
    perm = np.arange(in_shape[1]).reshape(g, cg).T.reshape(-1)
    return node, tr, back, perm


def _shuffle(an: Analysis, first: ir.Node, tr: ir.Node, back: ir.Node, perm: np.ndarray) -> None:
    x = an.info.get(first.inputs[0])
    if x is None:
        return _unknown(an, first, [None], None)
    out = an.new(back.outputs[0], x.count, x.const[perm])
    an.union_range(out, x, perm)
    an.shuffles.append((first, tr, back, perm))


def _decide(an: Analysis) -> None:
    """A group goes when nothing blocks it and every atom that leaves it into a mixing consumer is constant."""
    members: dict[int, list[int]] = defaultdict(list)
    const_of = np.full(len(an.parent), np.nan)
    for ch in an.info.values():
        const_of[ch.base : ch.base + ch.count] = ch.const
    for atom in range(len(an.parent)):
        members[an.find(atom)].append(atom)
    for root, atoms in members.items():
        why = next((an.blocked[a] for a in atoms if a in an.blocked), None)
        if why is None:
            varying = [a for a in atoms if a in an.needs_const and np.isnan(const_of[a])]
            if varying:  # a live channel, unless a constant was made to vary (padded depthwise)
                note = next((an.notes[a] for a in atoms if a in an.notes), None)
                if note is not None:
                    an.reasons[root] = note
                continue
            if not any(a in an.needs_const for a in atoms):
                continue  # never reaches a mixing consumer (e.g. only in a blocked region)
            an.removable_roots.add(root)
        elif all(not np.isnan(const_of[a]) for a in atoms if a in an.needs_const) and any(
            not np.isnan(const_of[a]) for a in atoms
        ):
            an.reasons[root] = why
