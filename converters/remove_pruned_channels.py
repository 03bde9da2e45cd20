"""Physically remove pruned channels from the ONNX graph, exactly.

Written by hand because no maintained library does this on ONNX graphs (NNI ModelSpeedup and
AIMET winnow worked on PyTorch modules and are archived or deprecated).

How it works, in three steps over the shape-inferred graph (after BatchNorm folding):

1. Constant analysis. For every tensor with a channel axis (axis 1) we compute, per channel, the
   constant value it provably holds everywhere, or NaN when it varies. A Conv/Gemm output channel is
   constant when every input channel it reads through a non-zero weight is constant (an all-zero
   filter gives its bias); constants pass through activations, per-channel Mul/Add, pooling,
   Resize, Concat, Split/Slice, Flatten, channel shuffle and depthwise (and grouped) convs. Zero
   padding breaks the constant unless it is 0 (or `approx` is set; never for ConvTranspose, whose
   output from a constant input is not constant even inside).
2. Channel groups. Channels that must be removed together are unified (union-find over
   (tensor, channel) atoms): both sides of element-wise ops, Concat members and their slices,
   depthwise conv in/out, shuffle permutations, Flatten's expansion by H x W. Channel-mixing
   nodes (Conv with group 1, Gemm, MatMul, ConvTranspose) are the boundaries: their output
   channels are dropped from the weights, and a constant entering them is folded into their bias.
   A group is removed when nothing blocks it (graph inputs/outputs, ops we do not understand,
   grouped convs, a non-zero constant entering a zero-padded conv, a tensor used as a weight or
   read inside a subgraph) and every atom that leaves the group into a channel-mixing consumer is
   constant. A tensor never loses every channel (one group is kept), and with `round_channels`
   groups are kept until each layer's width is a multiple of it.
3. Rewrite. Weights, biases, per-channel constants, Split sizes, Slice bounds, Resize sizes and
   Reshape targets are sliced; a channel shuffle whose channels changed becomes one Gather with
   explicit indices.

`find_removable(...)` is the predicate half (what could go and why the rest cannot);
`remove_pruned_channels(...)` applies it and returns the PassResult for the report.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from edgepack.converters import PassResult, UniqueNames
from edgepack.errors import UsageError

MIXING = ("Conv", "Gemm", "MatMul", "ConvTranspose")

_UNARY = {
    "Relu": lambda k, n: np.maximum(k, 0.0),
    "Sigmoid": lambda k, n: 1.0 / (1.0 + np.exp(-k)),
    "Tanh": lambda k, n: np.tanh(k),
    "HardSigmoid": lambda k, n: np.clip(_attr_f(n, "alpha", 0.2) * k + _attr_f(n, "beta", 0.5), 0, 1),
    "HardSwish": lambda k, n: k * np.clip(k / 6.0 + 0.5, 0, 1),
    "LeakyRelu": lambda k, n: np.where(k >= 0, k, _attr_f(n, "alpha", 0.01) * k),
    "Elu": lambda k, n: np.where(k >= 0, k, _attr_f(n, "alpha", 1.0) * (np.exp(k) - 1)),
    "Softplus": lambda k, n: np.log1p(np.exp(k)),
    "Neg": lambda k, n: -k,
    "Abs": lambda k, n: np.abs(k),
    "Identity": lambda k, n: k,
    "Dropout": lambda k, n: k,
    "Erf": None,  # no numpy erf: varying
}
_BINARY = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": np.divide,
    "Max": np.maximum,
    "Min": np.minimum,
}
_POOLS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Resize", "Upsample")
_REDUCE = ("ReduceMean", "ReduceMax", "ReduceMin")


def _attr_f(node: ir.Node, name: str, default: float) -> float:
    return node.attributes.get_float(name, default)


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def _static_shape(value: ir.Value | None) -> tuple[int | ir.SymbolicDim, ...] | None:
    """The shape when every dimension but the batch (axis 0, often symbolic) is known."""
    if value is None or value.shape is None:
        return None
    dims = tuple(value.shape)
    return dims if all(isinstance(d, int) for d in dims[1:]) else None


def _has_padding(node: ir.Node) -> bool:
    if node.attributes.get_string("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER"):
        return True
    return any(p != 0 for p in (node.attributes.get_ints("pads", []) or []))


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
        shape = _static_shape(value)
        if shape is not None and len(shape) >= 2:
            an.block(an.new(value, shape[1]), "graph input")
    skip: set[ir.Node] = set()
    for node in graph:
        if node in skip:
            continue
        shuffle = _match_shuffle(node)
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
    shape = _static_shape(out)
    ins = [an.info.get(v) if v is not None else None for v in node.inputs]
    if shape is None or len(shape) < 2:
        for v, ch in zip(node.inputs, ins):
            if ch is not None:
                an.block(ch, f"consumed by {op} '{node.name}' with no static channel axis")
        return
    c_out = shape[1]
    x = ins[0] if ins else None
    if op not in _BINARY and op != "Concat":
        # Only the data input is followed; a channel tensor used as a weight, a Gemm C, a shape or
        # a bound must keep all its channels.
        for index, ch in enumerate(ins[1:], start=1):
            if ch is not None:
                an.block(ch, f"used as input {index} of {op} '{node.name}'")

    if op in ("Conv", "ConvTranspose"):
        _conv(an, node, x, c_out, approx)
    elif op in ("Gemm", "MatMul"):
        _gemm(an, node, x, c_out)
    elif op in _UNARY or op == "Clip":
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
    elif op in _BINARY:
        _binary(an, node, ins, c_out)
    elif op in _POOLS or op in _REDUCE or op == "Pad":
        _pool_like(an, node, x, c_out, op)
    elif op == "Concat":
        _concat(an, node, ins, c_out)
    elif op in ("Split", "Slice"):
        _split_slice(an, node, x, op)
    elif op in ("Flatten", "Reshape"):
        _flatten(an, node, x, c_out)
    else:
        _unknown(an, node, ins, c_out)


def _unknown(an: Analysis, node: ir.Node, ins: list[Channels | None], c_out: int | None) -> None:
    for ch in ins:
        if ch is not None:
            an.block(ch, f"consumed by {node.op_type} '{node.name}'")
    for out in node.outputs:
        shape = _static_shape(out)
        if shape is not None and len(shape) >= 2 and out not in an.info:
            an.block(an.new(out, shape[1]), f"produced by {node.op_type} '{node.name}'")


def _conv(an: Analysis, node: ir.Node, x: Channels | None, c_out: int, approx: bool) -> None:
    w = _const(node.inputs[1])
    b = _const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if x is None or w is None or (len(node.inputs) > 2 and node.inputs[2] is not None and b is None):
        return _unknown(an, node, [x], c_out)
    b = np.zeros(c_out) if b is None else b.astype(np.float64)
    group = node.attributes.get_int("group", 1)
    padded = _has_padding(node)
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
    w = _const(node.inputs[1])
    x_shape = _static_shape(node.inputs[0])
    if x is None or w is None or w.ndim != 2 or x_shape is None or len(x_shape) != 2:
        return _unknown(an, node, [x], c_out)
    if node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
        return _unknown(an, node, [x], c_out)
    trans_b = node.op_type == "Gemm" and node.attributes.get_int("transB", 0)
    wk = (w.T if trans_b else w).astype(np.float64)  # (K, N)
    alpha = _attr_f(node, "alpha", 1.0) if node.op_type == "Gemm" else 1.0
    beta = _attr_f(node, "beta", 1.0) if node.op_type == "Gemm" else 1.0
    c = _const(node.inputs[2]) if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None else None
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
            value = _const(node.inputs[index])
            if value is None:
                return None
            bounds.append(float(value))
        else:
            bounds.append(_attr_f(node, name, default))  # opset < 11 attributes
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
    out_rank = len(_static_shape(node.outputs[0]))
    consts, joined = [], []
    for value, ch in zip(node.inputs[:2], ins[:2]):
        arr = _const(value)
        if arr is not None:
            vec = _per_channel(arr, out_rank, c_out)
            if vec is None:
                return _unknown(an, node, ins, c_out)
            consts.append(vec)
        elif ch is None or len(_static_shape(value) or ()) != out_rank:
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
        const = _BINARY[node.op_type](consts[0], consts[1])
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
            axes_arr = _const(node.inputs[1])
            axes = None if axes_arr is None else axes_arr.tolist()
        rank = len(_static_shape(node.inputs[0]))
        if axes is None or any(a % rank in (0, 1) for a in axes):
            return _unknown(an, node, [x], c_out)
    if op == "Pad":
        pads = _const(node.inputs[1]) if len(node.inputs) > 1 else None
        mode = node.attributes.get_string("mode", "constant")
        value = _const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else np.zeros(())
        if pads is None or value is None or len(node.inputs) > 3 and node.inputs[3] is not None:
            return _unknown(an, node, [x], c_out)
        rank = len(pads) // 2
        if pads[1] != 0 or pads[1 + rank] != 0 or pads[0] != 0 or pads[rank] != 0:
            return _unknown(an, node, [x], c_out)
        if mode == "constant":
            const = np.where(const == float(value), const, np.nan)
    if op == "Resize" and len(node.inputs) > 3 and node.inputs[3] is not None and _const(node.inputs[3]) is None:
        return _unknown(an, node, [x], c_out)  # target sizes (which include C) must be rewritable
    if op == "AveragePool" and node.attributes.get_int("count_include_pad", 0) and _has_padding(node):
        const = np.where(const == 0, const, np.nan)
    ch = an.new(node.outputs[0], c_out, const)
    an.union_range(ch, x, np.arange(c_out))


def _concat(an: Analysis, node: ir.Node, ins: list[Channels | None], c_out: int) -> None:
    rank = len(_static_shape(node.outputs[0]))
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
    in_shape = _static_shape(node.inputs[0])
    if x is None or in_shape is None:
        return None
    rank = len(in_shape)
    if node.op_type == "Split":
        axis = node.attributes.get_int("axis", 0) % rank
        if axis != 1:
            return [np.arange(x.count)] * len(node.outputs)
        shapes = [_static_shape(o) for o in node.outputs]
        if any(shape is None for shape in shapes):
            return None
        sizes = [shape[1] for shape in shapes]
        bounds = np.cumsum([0] + sizes)
        return [np.arange(bounds[i], bounds[i + 1]) for i in range(len(sizes))]
    if len(node.inputs) < 3:  # opset < 10: bounds as attributes, which the rewrite does not edit
        return None
    starts, ends = _const(node.inputs[1]), _const(node.inputs[2])
    if starts is None or ends is None:
        return None
    axes = _const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else np.arange(len(starts))
    steps = _const(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else np.ones(len(starts), np.int64)
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
    in_shape = _static_shape(node.inputs[0])
    out_shape = _static_shape(node.outputs[0])
    if x is None or in_shape is None or len(in_shape) < 2:
        return _unknown(an, node, [x], c_out)
    if node.op_type == "Reshape" and out_shape[0] != in_shape[0]:  # Flatten(axis=1) keeps the batch by definition
        return _unknown(an, node, [x], c_out)
    if node.op_type == "Flatten" and node.attributes.get_int("axis", 1) != 1:
        return _unknown(an, node, [x], c_out)
    if node.op_type == "Reshape" and _const(node.inputs[1]) is None:
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


def _match_shuffle(node: ir.Node) -> tuple[ir.Node, ir.Node, ir.Node, np.ndarray] | None:
    """Reshape (N,C,H,W)->(N,g,C/g,H,W), Transpose(0,2,1,3,4), Reshape back: out[i] = in[perm[i]]."""
    if node.op_type != "Reshape":
        return None
    in_shape, mid = _static_shape(node.inputs[0]), _static_shape(node.outputs[0])
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
    if _static_shape(back.outputs[0]) != in_shape:
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


# ---------------------------------------------------------------- step 3: rewrite


def remove_pruned_channels(model: ir.Model, *, approx: bool = False, round_channels: int = 1) -> PassResult:
    from edgepack.model_stats import count_macs, count_params

    if isinstance(round_channels, bool) or not isinstance(round_channels, int) or round_channels < 1:
        raise UsageError(
            f"round_channels={round_channels!r}: it must be an integer >= 1 (1 keeps any width); "
            "pass --round-channels 1, or e.g. 4 or 8 to keep widths SIMD-friendly"
        )
    graph = model.graph
    result = PassResult("remove_pruned_channels", False)
    params_before, macs_before = count_params(model), count_macs(model)
    an = find_removable(model, approx=approx)
    removed_roots = set(an.removable_roots)
    layer_outputs = [(n, n.outputs[0]) for n in graph if n.op_type in MIXING or _is_depthwise(n)]
    kept_nonempty = _keep_nonempty(an, removed_roots)
    kept_for_rounding = _round_widths(an, layer_outputs, removed_roots, round_channels)
    keep = {v: np.array([i for i in range(ch.count) if an.find(ch.base + i) not in removed_roots], dtype=np.int64)
            for v, ch in an.info.items()}
    layers = []
    for node, out in layer_outputs:
        if out in an.info:
            before, after = an.info[out].count, len(keep[out])
            layers.append({"layer": node.name, "op": node.op_type, "channels_before": before, "channels_after": after})
    if any(len(k) < an.info[v].count for v, k in keep.items()):
        _rewrite(model, an, keep)
        _reinfer(model)
    result.modified = any(entry["channels_after"] < entry["channels_before"] for entry in layers)
    result.details = [entry for entry in layers if entry["channels_after"] < entry["channels_before"]]
    result.skipped = _kept_reasons(an, layer_outputs, kept_nonempty, kept_for_rounding, round_channels)
    params_after, macs_after = count_params(model), count_macs(model)
    result.counts = {
        "channels_removed": sum(e["channels_before"] - e["channels_after"] for e in layers),
        "layers_slimmed": len(result.details),
        "params_before": params_before,
        "params_after": params_after,
        "macs_before": macs_before,
        "macs_after": macs_after,
        "approx": int(approx),
        "round_channels": round_channels,
    }
    sparse = _sparsity(graph)
    result.extra = {
        "sparsity": sparse,
        "hint": "scattered zeros do not speed up dense runtimes; only whole filters/channels are removed "
        "(use structured pruning, e.g. prune.ln_structured(..., dim=0))" if sparse else None,
    }
    return result


def _is_depthwise(node: ir.Node) -> bool:
    if node.op_type != "Conv":
        return False
    w = node.inputs[1].shape if node.inputs[1] is not None else None
    return node.attributes.get_int("group", 1) > 1 and w is not None and w[1] == 1


def _keep_nonempty(an: Analysis, removed: set[int]) -> set[int]:
    """Un-remove one group wherever a tensor would lose every channel (a 0-channel tensor is not a
    model any runtime accepts, and a conv whose filters are all dead is the user's to delete)."""
    restored: set[int] = set()
    for ch in an.info.values():
        roots = [an.find(ch.base + i) for i in range(ch.count)]
        if roots and all(r in removed for r in roots):
            removed.discard(roots[0])
            restored.add(roots[0])
    return restored


def _round_widths(an: Analysis, layer_outputs: list, removed: set[int], n: int) -> set[int]:
    """Un-remove groups until each layer's remaining width is a multiple of n; return those roots."""
    restored: set[int] = set()
    if n <= 1:
        return restored
    for _ in range(20):
        changed = False
        for _, out in layer_outputs:
            ch = an.info.get(out)
            if ch is None:
                continue
            roots = [an.find(ch.base + i) for i in range(ch.count)]
            gone = [r for r in roots if r in removed]
            remaining = ch.count - len(gone)
            need = (-remaining) % n
            if gone and need:
                for r in list(dict.fromkeys(gone))[:need]:
                    removed.discard(r)
                    restored.add(r)
                changed = True
        if not changed:
            break
    return restored


def _kept_reasons(an: Analysis, layer_outputs: list, nonempty: set[int], rounded: set[int], n: int) -> list[dict]:
    out = []
    for node, value in layer_outputs:
        ch = an.info.get(value)
        if ch is None:
            continue
        whys: dict[str, list[int]] = defaultdict(list)
        for i in range(ch.count):
            root = an.find(ch.base + i)
            if root in nonempty:
                whys["kept so that no tensor loses every channel"].append(i)
            elif root in rounded:
                whys[f"kept to keep the width a multiple of {n} (--round-channels)"].append(i)
            elif root in an.reasons and not np.isnan(ch.const[i]):
                whys[an.reasons[root]].append(i)
        for why, idx in whys.items():
            out.append({"node": node.name, "channels": idx, "why": f"{len(idx)} constant channel(s) kept: {why}"})
    return out


def _sparsity(graph: ir.Graph) -> list[dict]:
    """Scattered zeros per layer: zero weights outside whole dead output filters (those are either
    removed or listed in `skipped` with the reason they stay)."""
    rows = []
    for node in graph:
        if node.op_type in MIXING and len(node.inputs) > 1:
            w = _const(node.inputs[1])
            if w is None or not w.size or w.ndim < 2:
                continue
            if node.op_type == "ConvTranspose":
                out_axis = 1
            elif node.op_type == "Conv" or (node.op_type == "Gemm" and node.attributes.get_int("transB", 0)):
                out_axis = 0
            else:
                out_axis = w.ndim - 1  # MatMul / Gemm weight (K, N)
            zero = w == 0
            dead = np.moveaxis(zero, out_axis, 0).reshape(w.shape[out_axis], -1).all(1)
            scattered = float(zero.mean() - dead.mean())
            if scattered > 0.0:
                rows.append({"layer": node.name, "zero_fraction": round(scattered, 4)})
    return rows


def _rewrite(model: ir.Model, an: Analysis, keep: dict[ir.Value, np.ndarray]) -> None:
    graph = model.graph
    names = UniqueNames(graph)
    for node in list(graph):
        op = node.op_type
        out = node.outputs[0] if node.outputs else None
        if op in ("Conv", "ConvTranspose", "Gemm", "MatMul") and node.inputs[0] in an.info and out in an.info:
            _rewrite_mixing(graph, node, an, keep, names)
        elif op in _BINARY and out in an.info:
            c_old = an.info[out].count
            rank = len(_static_shape(out))
            for i, value in enumerate(node.inputs[:2]):
                arr = _const(value)
                if arr is not None and len(keep[out]) < c_old:
                    sliced = _slice_operand(arr, rank, c_old, keep[out])
                    if sliced is not None:
                        node.replace_input_with(i, _init(graph, names, sliced, value.name or "c"))
        elif op == "Split" and node.inputs[0] in an.info and all(o in an.info for o in node.outputs):
            rank = len(_static_shape(node.inputs[0]))
            shrunk = any(len(keep[o]) < an.info[o].count for o in node.outputs)
            if shrunk and node.attributes.get_int("axis", 0) % rank == 1:
                sizes = np.array([len(keep[o]) for o in node.outputs], dtype=np.int64)
                if len(node.inputs) > 1 and node.inputs[1] is not None:
                    node.replace_input_with(1, _init(graph, names, sizes, "split_sizes"))
                elif "split" in node.attributes:
                    node.attributes["split"] = ir.AttrInt64s("split", sizes.tolist())
                else:  # equal parts (opset 18 `num_outputs`): give the sizes, which excludes num_outputs
                    node.attributes.pop("num_outputs", None)
                    node.resize_inputs(2)
                    node.replace_input_with(1, _init(graph, names, sizes, "split_sizes"))
        elif op == "Slice" and node.inputs[0] in an.info and out in an.info:
            _rewrite_slice(graph, node, an, keep, names)
        elif op == "Resize" and len(node.inputs) > 3 and node.inputs[3] is not None and out in an.info:
            _rewrite_resize_sizes(graph, node, an, keep, names)
        elif op == "Reshape" and node.inputs[0] in an.info and out in an.info:
            shape = _const(node.inputs[1])
            new = [int(d) for d in shape]
            old_c, new_c = an.info[out].count, len(keep[out])
            if len(new) > 1 and new[1] == old_c and old_c != new_c:
                new[1] = new_c
                node.replace_input_with(1, _init(graph, names, np.array(new, dtype=np.int64), "shape"))
    for first, tr, back, perm in an.shuffles:
        x, y = first.inputs[0], back.outputs[0]
        if len(keep[x]) == an.info[x].count:
            continue
        position = {int(c): i for i, c in enumerate(keep[x])}
        idx = np.array([position[int(perm[i])] for i in keep[y]], dtype=np.int64)
        gather = ir.Node("", "Gather", [x, _init(graph, names, idx, "shuffle_indices")],
                         attributes=[ir.AttrInt64("axis", 1)], name=names.fresh(f"{back.name}_gather"))
        graph.insert_before(first, gather)
        y.replace_all_uses_with(gather.outputs[0], replace_graph_outputs=True)
        gather.outputs[0].name = y.name
        y.name = None
        graph.remove([back, tr, first], safe=True)


def _rewrite_mixing(graph: ir.Graph, node: ir.Node, an: Analysis, keep: dict, names: UniqueNames) -> None:
    x, out = node.inputs[0], node.outputs[0]
    kin, kout = keep[x], keep[out]
    cin, cout = an.info[x].count, an.info[out].count
    if len(kin) == cin and len(kout) == cout:
        return
    removed_in = np.setdiff1d(np.arange(cin), kin)
    k = np.nan_to_num(an.info[x].const[removed_in])
    w = _const(node.inputs[1]).astype(np.float64)
    dtype = _const(node.inputs[1]).dtype
    has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
    op = node.op_type
    if op == "Conv" and node.attributes.get_int("group", 1) > 1:  # depthwise
        b = _const(node.inputs[2]).astype(np.float64) if has_bias else None
        node.replace_input_with(1, _init(graph, names, w[kout].astype(dtype), node.inputs[1].name))
        if b is not None:
            node.replace_input_with(2, _init(graph, names, b[kout].astype(dtype), node.inputs[2].name))
        node.attributes["group"] = ir.AttrInt64("group", len(kin))
        return
    if op == "Conv":
        b = _const(node.inputs[2]).astype(np.float64) if has_bias else np.zeros(cout)
        wf = w.reshape(cout, cin, -1)
        b = b + (wf[:, removed_in, :].sum(-1) * k[None, :]).sum(1)
        new_w = w[kout][:, kin]
        _set_bias(graph, node, 2, b[kout], dtype, names)
    elif op == "ConvTranspose":
        b = _const(node.inputs[2]).astype(np.float64) if has_bias else np.zeros(cout)
        new_w = w[kin][:, kout]
        _set_bias(graph, node, 2, b[kout], dtype, names)
    else:  # Gemm / MatMul: W as (K, N)
        trans_b = op == "Gemm" and node.attributes.get_int("transB", 0)
        wk = w.T if trans_b else w
        alpha = _attr_f(node, "alpha", 1.0) if op == "Gemm" else 1.0
        shift = alpha * (k[:, None] * wk[removed_in]).sum(0)
        new_wk = wk[kin][:, kout]
        new_w = new_wk.T if trans_b else new_wk
        if op == "Gemm":
            beta = _attr_f(node, "beta", 1.0)
            c = _const(node.inputs[2]).astype(np.float64) if has_bias else np.zeros(1)
            bias = np.broadcast_to(beta * c, (1, cout))[0] + shift
            _set_bias(graph, node, 2, bias[kout], dtype, names)
            node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
        elif np.any(shift[kout] != 0):
            add = ir.Node("", "Add", [out, _init(graph, names, shift[kout].astype(dtype), "matmul_shift")],
                          name=names.fresh(f"{node.name}_shift"))
            graph.insert_after(node, add)
            out.replace_all_uses_with(add.outputs[0], replace_graph_outputs=True)
            add.replace_input_with(0, out)
            # The Add takes over the name (it may be a graph output the user feeds on); MatMul gets a fresh one.
            name, out.name = out.name, names.fresh(f"{out.name or node.name}_matmul")
            add.outputs[0].name = name
            add.outputs[0].type = out.type
            an.info[add.outputs[0]] = an.info[out]
            keep[add.outputs[0]] = kout
    node.replace_input_with(1, _init(graph, names, np.ascontiguousarray(new_w).astype(dtype), node.inputs[1].name))


def _set_bias(graph: ir.Graph, node: ir.Node, index: int, bias: np.ndarray, dtype: np.dtype, names: UniqueNames) -> None:
    if len(node.inputs) <= index:
        node.resize_inputs(index + 1)
    node.replace_input_with(index, _init(graph, names, bias.astype(dtype), f"{node.name}_bias"))


def _slice_operand(arr: np.ndarray, out_rank: int, c_old: int, kept: np.ndarray) -> np.ndarray | None:
    axis = arr.ndim - (out_rank - 1)
    if axis < 0 or arr.shape[axis] != c_old:
        return None  # scalar or broadcast over channels: unchanged
    return np.take(arr, kept, axis=axis)


def _rewrite_slice(graph: ir.Graph, node: ir.Node, an: Analysis, keep: dict, names: UniqueNames) -> None:
    x = node.inputs[0]
    rank = len(_static_shape(x))
    starts, ends = _const(node.inputs[1]), _const(node.inputs[2])
    axes = _const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else np.arange(len(starts))
    axes = [int(a) % rank for a in axes]
    if 1 not in axes:
        return
    i = axes.index(1)
    s, e, _ = slice(int(starts[i]), int(ends[i]), 1).indices(an.info[x].count)
    kept = keep[x]
    new_s = int(np.searchsorted(kept, s))
    new_e = int(np.searchsorted(kept, e))
    starts, ends = starts.copy(), ends.copy()  # keep their dtype: Slice needs one index type
    starts[i], ends[i] = new_s, new_e
    node.replace_input_with(1, _init(graph, names, starts, "slice_starts"))
    node.replace_input_with(2, _init(graph, names, ends, "slice_ends"))


def _rewrite_resize_sizes(graph: ir.Graph, node: ir.Node, an: Analysis, keep: dict, names: UniqueNames) -> None:
    """Resize by target sizes: the sizes name the channel count too."""
    out = node.outputs[0]
    old_c, new_c = an.info[out].count, len(keep[out])
    if old_c == new_c:
        return
    sizes = _const(node.inputs[3]).copy()
    rank = len(_static_shape(out))
    axes = [a % rank for a in node.attributes.get_ints("axes", list(range(rank)))]
    if 1 in axes and int(sizes[axes.index(1)]) == old_c:
        sizes[axes.index(1)] = new_c
        node.replace_input_with(3, _init(graph, names, sizes, "resize_sizes"))


def _init(graph: ir.Graph, names: UniqueNames, array: np.ndarray, base: str) -> ir.Value:
    array = np.ascontiguousarray(array)
    value = ir.Value(name=names.fresh(f"{base}_slim"), const_value=ir.tensor(array))
    value.shape = ir.Shape(array.shape)
    value.type = ir.TensorType(ir.DataType.from_numpy(array.dtype))
    graph.register_initializer(value)
    return value


def _reinfer(model: ir.Model) -> None:
    """Shapes changed: forget inferred shapes of intermediate values and infer again."""
    from edgepack.converters.cleanup_graph import infer_shapes

    graph = model.graph
    keep = set(graph.inputs) | set(graph.outputs)
    for node in graph:
        for out in node.outputs:
            if out not in keep:
                out.shape = None
    infer_shapes(model)
