"""Lowerings for shape and data-movement ops, with axes remapped to the stored layout. A
Transpose only relabels the layout; a Reshape that merges or splits axes stored side by side is one
RESHAPE in the layout that leaves the data in place ((N, C, H, W) NHWC -> (N, C, H*W) NWC); a
Flatten of a permuted tensor records the feature order so the next Gemm/MatMul permutes its
weights instead of the activations being transposed."""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from edgepack.converters.export_tflite.chain import Chain
from edgepack.converters.export_tflite.graph import NHWC, TVal, identity, unsupported
from edgepack.converters.export_tflite.registry import Ctx, default_perm, lowering

INT_MAX = 2**31 - 1


def plain_features(ctx: Ctx, tv: TVal, name: str) -> TVal:
    """A flattened tensor back in ONNX feature order (one GATHER)."""
    if tv.feature_perm is None:
        return tv
    order = np.argsort(np.array(tv.feature_perm))
    shape = ctx.g.shape_of(tv.index)
    out = ctx.g.tensor(name + "_onnx_order", shape)
    ctx.g.op("GATHER", [tv.index, ctx.int_const(order, name + "_feature_order")], [out],
             ctx.g.options("GatherOptions", axis=1))
    return TVal(out, tv.perm)


def _flatten_order(onnx_dims: tuple[int, ...], perm: tuple[int, ...]) -> tuple[int, ...] | None:
    """Stored feature j of the flattened tensor = ONNX feature order[j]; None when identical."""
    order = np.arange(math.prod(onnx_dims[1:])).reshape(onnx_dims[1:]).transpose([p - 1 for p in perm[1:]]).reshape(-1)
    return None if (order == np.arange(order.size)).all() else tuple(int(i) for i in order)


def _groups(in_dims: tuple[int, ...], out_dims: tuple[int, ...]) -> list[tuple[list[int], list[int]]] | None:
    """A reshape as groups (ONNX input axes, ONNX output axes) with equal sizes, size-1 axes left
    out: (N, C, H, W) -> (N, C, H*W) is [([1], [1]), ([2, 3], [2])] (N = 1 is left out)."""
    ins = [a for a, d in enumerate(in_dims) if d != 1]
    outs = [a for a, d in enumerate(out_dims) if d != 1]
    groups, i, j = [], 0, 0
    try:
        while i < len(ins) or j < len(outs):
            gi, go = [ins[i]], [outs[j]]
            pi, po = in_dims[ins[i]], out_dims[outs[j]]
            i, j = i + 1, j + 1
            while pi != po:
                if pi < po:
                    gi.append(ins[i])
                    pi, i = pi * in_dims[ins[i]], i + 1
                else:
                    go.append(outs[j])
                    po, j = po * out_dims[outs[j]], j + 1
            groups.append((gi, go))
    except IndexError:
        return None
    return groups


def _reshape_perm(in_dims: tuple[int, ...], perm: tuple[int, ...], out_dims: tuple[int, ...]) -> tuple[int, ...] | None:
    """The layout in which a RESHAPE of the stored tensor gives ONNX's reshape, or None when the
    data must move. It exists when every group of merged/split axes is stored contiguous and in
    ONNX order: (N, C, H, W) stored NHWC -> (N, C, H*W) is stored (N, H*W, C), layout NWC."""
    groups = _groups(in_dims, out_dims)
    if groups is None:
        return None
    pos = {a: k for k, a in enumerate(a for a in perm if in_dims[a] != 1)}
    for gi, _ in groups:
        if [pos[a] for a in gi] != list(range(pos[gi[0]], pos[gi[0]] + len(gi))):
            return None
    order = [a for _, go in sorted(groups, key=lambda g: pos[g[0][0]]) for a in go]  # non-1 output axes, as stored
    rank = len(out_dims)
    nice = (default_perm(rank), identity(rank)) if rank == 4 or _ones_tail(out_dims) else (identity(rank), default_perm(rank))
    for cand in nice:
        if [a for a in cand if out_dims[a] != 1] == order:
            return cand
    rest = iter(order)  # size-1 axes where ONNX has them, the others in stored order
    return tuple(a if out_dims[a] == 1 else next(rest) for a in range(rank))


def _ones_tail(shape: tuple[int, ...]) -> bool:
    return len(shape) >= 3 and all(d == 1 for d in shape[2:])


def reshape_to(ctx: Ctx, node: ir.Node, x: TVal, in_dims: tuple[int, ...], out_value: ir.Value) -> None:
    """One RESHAPE of the stored tensor, in the layout that needs no data movement (`_reshape_perm`);
    a flatten to (N, features) that would need one records the feature order instead (the next
    Gemm/MatMul permutes its weights); otherwise a TRANSPOSE to ONNX layout first."""
    out_dims = ctx.shape(out_value)
    g = ctx.g
    if x.feature_perm is not None:
        if len(out_dims) == 2 and out_dims == in_dims:
            return ctx.alias(out_value, x)
        x = plain_features(ctx, x, out_value.name)
    perm = _reshape_perm(in_dims, x.perm, out_dims)
    if perm is None:
        if len(out_dims) == 2 and out_dims[0] == in_dims[0] and x.perm[0] == 0:
            out = ctx.out(out_value, identity(2), feature_perm=_flatten_order(in_dims, x.perm))
            g.reshape(x.index, out.index)
            return
        x = ctx.as_perm(x, identity(len(in_dims)), node.inputs[0].name + "_plain")
        perm = _reshape_perm(in_dims, x.perm, out_dims)
    out = ctx.out(out_value, perm)
    g.reshape(x.index, out.index)


@lowering("Reshape")
def reshape(ctx: Ctx, node: ir.Node) -> None:
    from edgepack.converters.channel_rules import match_shuffle

    shuffle = match_shuffle(node)
    if shuffle is not None:
        return _channel_shuffle(ctx, *shuffle)
    reshape_to(ctx, node, ctx.val(node.inputs[0], node), ctx.shape(node.inputs[0]), node.outputs[0])


@lowering("Flatten", "Squeeze", "Unsqueeze")
def flatten_like(ctx: Ctx, node: ir.Node) -> None:
    reshape_to(ctx, node, ctx.val(node.inputs[0], node), ctx.shape(node.inputs[0]), node.outputs[0])


def _channel_shuffle(ctx: Ctx, first: ir.Node, tr: ir.Node, back: ir.Node, perm: np.ndarray) -> None:
    """Reshape-Transpose-Reshape channel shuffle = one GATHER on the channel axis (no TRANSPOSE)."""
    ctx.skip.update({id(tr), id(back)})
    x = ctx.val(first.inputs[0], first)
    out = ctx.out(back.outputs[0], x.perm)
    ctx.g.op("GATHER", [x.index, ctx.int_const(perm, back.name + "_shuffle")], [out.index],
             ctx.g.options("GatherOptions", axis=x.stored_axis(1)))


@lowering("Transpose")
def transpose(ctx: Ctx, node: ir.Node) -> None:
    x = ctx.val(node.inputs[0], node)
    if x.feature_perm is not None:
        x = plain_features(ctx, x, node.inputs[0].name)
    t = list(node.attributes.get_ints("perm", list(range(len(x.perm)))[::-1]))
    ctx.alias(node.outputs[0], TVal(x.index, tuple(t.index(p) for p in x.perm)))


@lowering("Gather")
def gather(ctx: Ctx, node: ir.Node) -> None:
    """Constant indices along one axis; a scalar index drops the axis (x[:, 0])."""
    indices = ctx.const(node.inputs[1])
    x = ctx.val(node.inputs[0], node)
    if indices is None:
        raise unsupported(node, "gathers with non-constant indices")
    if indices.ndim > 1:  # one GATHER of the flattened input by the fixed map
        axis = node.attributes.get_int("axis", 0)
        return gather_map(ctx, node, lambda a: np.take(a, indices.astype(np.int64) % a.shape[axis], axis=axis))
    x = plain_features(ctx, x, node.inputs[0].name)
    onnx_axis = node.attributes.get_int("axis", 0) % len(x.perm)
    indices = indices % ctx.shape(node.inputs[0])[onnx_axis]  # negative indices count from the end
    axis = x.stored_axis(onnx_axis)
    if indices.ndim == 1:
        out = ctx.out(node.outputs[0], x.perm)
        ctx.g.op("GATHER", [x.index, ctx.int_const(indices, node.name + "_indices")], [out.index],
                 ctx.g.options("GatherOptions", axis=axis))
        return
    # Constants are written at least 1-D, so a scalar index keeps the axis: GATHER one, RESHAPE it away.
    kept = [a for a in x.perm if a != onnx_axis]
    out = ctx.out(node.outputs[0], tuple(a - (a > onnx_axis) for a in kept))
    shape = ctx.g.shape_of(x.index)
    one = ctx.g.tensor(node.name + "_one", shape[:axis] + [1] + shape[axis + 1:])
    ctx.g.op("GATHER", [x.index, ctx.int_const(indices.reshape(1), node.name + "_indices")], [one],
             ctx.g.options("GatherOptions", axis=axis))
    ctx.g.reshape(one, out.index)


@lowering("Concat")
def concat(ctx: Ctx, node: ir.Node) -> None:
    vals = [plain_features(ctx, ctx.val(v, node), v.name) for v in node.inputs]
    perm = vals[0].perm
    vals = [ctx.as_perm(v, perm, f"{node.name}_in{i}") for i, v in enumerate(vals)]
    axis = vals[0].stored_axis(node.attributes.get_int("axis", 1))
    out = ctx.out(node.outputs[0], perm)
    ctx.g.op("CONCATENATION", [v.index for v in vals], [out.index], ctx.g.options("ConcatenationOptions", axis=axis))


@lowering("Split")
def split(ctx: Ctx, node: ir.Node) -> None:
    x = plain_features(ctx, ctx.val(node.inputs[0], node), node.inputs[0].name)
    onnx_axis = node.attributes.get_int("axis", 0) % len(x.perm)
    sizes = [ctx.shape(o)[onnx_axis] for o in node.outputs]
    outs = [ctx.out(o, x.perm) for o in node.outputs]
    axis = x.stored_axis(onnx_axis)
    # XNNPACK's delegate takes SPLIT and SLICE but not SPLIT_V (measured on YOLOv8n: 9 SPLIT_V, 9
    # partitions more, in fp32 and int8): equal parts are one SPLIT, unequal ones a SLICE each.
    if len(set(sizes)) == 1:
        ctx.g.op("SPLIT", [ctx.int_const(axis, node.name + "_axis"), x.index], [o.index for o in outs],
                 ctx.g.options("SplitOptions", numSplits=len(outs)))
        return
    shape = ctx.g.shape_of(x.index)
    start = 0
    for o, size in zip(outs, sizes):
        begin = [0] * len(shape)
        begin[axis] = start
        extent = list(shape)
        extent[axis] = size
        ctx.g.op("SLICE", [x.index, ctx.int_const(begin, f"{node.name}_begin{start}"),
                           ctx.int_const(extent, f"{node.name}_size{start}")], [o.index], ctx.g.options("SliceOptions"))
        start += size


@lowering("Slice")
def slice_op(ctx: Ctx, node: ir.Node) -> None:
    x = plain_features(ctx, ctx.val(node.inputs[0], node), node.inputs[0].name)
    dims = ctx.shape(node.inputs[0])
    rank = len(dims)
    starts, ends = ctx.const(node.inputs[1]), ctx.const(node.inputs[2])
    axes = ctx.const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else np.arange(len(starts))
    steps = ctx.const(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else np.ones(len(starts), np.int64)
    if starts is None or ends is None or axes is None or steps is None:
        raise unsupported(node, "has non-constant starts/ends/axes/steps")
    begin, end, stride = [0] * rank, list(dims), [1] * rank
    picks = []  # (axis, the indices kept): for the negative-step fallback
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = int(a) % rank
        if st == 0:
            raise unsupported(node, "has a step of 0")
        b, e2, _ = slice(int(max(min(s, INT_MAX), -INT_MAX)), int(max(min(e, INT_MAX), -INT_MAX)), int(st)).indices(dims[a])
        begin[a], end[a], stride[a] = b, e2, int(st)
        picks.append((a, np.arange(b, e2, int(st))))
    if any(st < 0 for st in stride):  # STRIDED_SLICE would need reversed bounds: a GATHER by a fixed map
        def move(arr: np.ndarray) -> np.ndarray:
            for a, kept in picks:
                arr = np.take(arr, kept, axis=a)
            return arr

        return gather_map(ctx, node, move)
    order = list(x.perm)
    out = ctx.out(node.outputs[0], x.perm)
    ctx.g.op("STRIDED_SLICE", [x.index, ctx.int_const([begin[a] for a in order], node.name + "_begin"),
                               ctx.int_const([end[a] for a in order], node.name + "_end"),
                               ctx.int_const([stride[a] for a in order], node.name + "_strides")],
             [out.index], ctx.g.options("StridedSliceOptions"))


@lowering("Pad")
def pad(ctx: Ctx, node: ir.Node) -> None:
    x = plain_features(ctx, ctx.val(node.inputs[0], node), node.inputs[0].name)
    pads = ctx.const(node.inputs[1])
    rank = len(x.perm)
    has_axes = len(node.inputs) > 3 and node.inputs[3] is not None
    axes = ctx.const(node.inputs[3]) if has_axes else np.arange(rank)
    if pads is None or axes is None:
        raise unsupported(node, "has non-constant pads or axes")
    full = np.zeros(2 * rank, np.int64)  # pads over every axis: (begins, ends)
    for k, a in enumerate(axes.reshape(-1)):
        full[int(a) % rank], full[int(a) % rank + rank] = pads[k], pads[k + len(axes.reshape(-1))]
    pads = full
    value = ctx.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else np.zeros(())
    pairs = np.array([[pads[a], pads[a + rank]] for a in x.perm], np.int32)
    mode = node.attributes.get_string("mode", "constant")
    if mode in ("edge", "wrap") and (pads >= 0).all():  # no TFLite builtin: a GATHER of the input by a fixed map
        widths = [(int(pads[a]), int(pads[a + rank])) for a in range(rank)]
        return gather_map(ctx, node, lambda a: np.pad(a, widths, mode=mode))
    out = ctx.out(node.outputs[0], x.perm)
    g = ctx.g
    if mode == "constant" and float(value) == 0.0:
        g.op("PAD", [x.index, g.const(pairs, node.name + "_paddings")], [out.index], g.options("PadOptions"))
    elif mode == "constant":
        g.op("PADV2", [x.index, g.const(pairs, node.name + "_paddings"), g.const(np.array(value, np.float32), node.name + "_value")],
             [out.index], g.options("PadV2Options"))
    elif mode == "reflect":
        g.op("MIRROR_PAD", [x.index, g.const(pairs, node.name + "_paddings")], [out.index],
             g.options("MirrorPadOptions", mode=g.s.MirrorPadMode.REFLECT))
    else:
        raise unsupported(node, f"uses mode={mode!r} (constant, reflect, edge and wrap are supported)")


# ONNX reduction -> (op on x first, TFLite reducer, op on the result after)
_REDUCERS = {"ReduceMean": (None, "MEAN", None), "ReduceMax": (None, "REDUCE_MAX", None),
             "ReduceMin": (None, "REDUCE_MIN", None), "ReduceSum": (None, "SUM", None),
             "ReduceProd": (None, "REDUCE_PROD", None), "ReduceL2": ("SQUARE", "SUM", "SQRT"),
             "ReduceSumSquare": ("SQUARE", "SUM", None), "ReduceL1": ("ABS", "SUM", None),
             "ReduceLogSum": (None, "SUM", "LOG"), "ReduceLogSumExp": ("EXP", "SUM", "LOG")}


@lowering(*_REDUCERS)
def reduce(ctx: Ctx, node: ir.Node) -> None:
    """Axes remapped to the stored layout; the L1/L2/SumSquare/LogSum/LogSumExp reductions are the
    reducer with one element-wise op before and/or after (ReduceL2: SQUARE, SUM, SQRT)."""
    x = plain_features(ctx, ctx.val(node.inputs[0], node), node.inputs[0].name)
    rank = len(x.perm)
    axes = node.attributes.get_ints("axes", None)
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        arr = ctx.const(node.inputs[1])
        if arr is None:
            raise unsupported(node, "has non-constant axes")
        axes = arr.reshape(-1).tolist()
    before, reducer, after = _REDUCERS[node.op_type]
    if not axes and node.attributes.get_int("noop_with_empty_axes", 0):
        if before is None and after is None:
            return ctx.alias(node.outputs[0], x)
        axes_given = []
    else:
        axes_given = [a % rank for a in (axes if axes else range(rank))]
    if any(d == 0 for d in ctx.shape(node.inputs[0])) and reducer in ("REDUCE_MAX", "REDUCE_MIN"):
        raise unsupported(node, "takes the max / min of an empty tensor")
    keep = bool(node.attributes.get_int("keepdims", 1))
    if keep or not axes_given:
        perm = x.perm
    else:
        kept = [a for a in x.perm if a not in axes_given]
        perm = tuple(sorted(kept).index(a) for a in kept)
    out = ctx.out(node.outputs[0], perm)
    g = ctx.g
    source, target = x.index, out.index
    if before is not None:
        source = g.tensor(f"{node.name}_{before.lower()}", g.shape_of(x.index))
        # x*x as MUL, not SQUARE: LiteRT has no int8 SQUARE kernel (an int8 graph could not run)
        g.op("MUL", [x.index, x.index], [source]) if before == "SQUARE" else g.op(before, [x.index], [source])
    if not axes_given:  # noop_with_empty_axes=1 with an element-wise part: no reduction
        g.op(after, [source], [out.index]) if after is not None else g.reshape(source, out.index)
        return
    if after is not None:
        target = g.tensor(f"{node.name}_{reducer.lower()}", g.shape_of(out.index))
    g.op(reducer, [source, ctx.int_const(sorted(x.stored_axis(a) for a in axes_given), node.name + "_axes")],
         [target], g.options("ReducerOptions", keepDims=keep))
    if after is not None:
        g.op(after, [target], [out.index])


@lowering("Expand")
def expand(ctx: Ctx, node: ir.Node) -> None:
    """BROADCAST_TO the output's stored shape (the same rank: the layout carries over)."""
    x = plain_features(ctx, ctx.val(node.inputs[0], node), node.inputs[0].name)
    if len(x.perm) != len(ctx.shape(node.outputs[0])):
        raise unsupported(node, "expands to a higher rank (same-rank Expand only)")
    if ctx.shape(node.inputs[0]) == ctx.shape(node.outputs[0]):
        return ctx.alias(node.outputs[0], x)
    out = ctx.out(node.outputs[0], x.perm)
    ctx.g.op("BROADCAST_TO", [x.index, ctx.int_const(ctx.g.shape_of(out.index), node.name + "_shape")], [out.index],
             ctx.g.options("BroadcastToOptions"))


def resize_builtin(ctx: Ctx, node: ir.Node) -> None:
    """RESIZE_NEAREST_NEIGHBOR / RESIZE_BILINEAR for the ONNX modes they match exactly (the scale
    must be out / in: the caller checks). Otherwise UnsupportedError (ops_resize tries the general
    lowering then)."""
    x = ctx.as_perm(ctx.val(node.inputs[0], node), NHWC[4], node.inputs[0].name + "_nhwc")
    out_dims = ctx.shape(node.outputs[0])
    in_dims = ctx.shape(node.inputs[0])
    if len(out_dims) != 4 or out_dims[:2] != in_dims[:2]:
        raise unsupported(node, "resizes other than the two spatial axes of a 4-D tensor")
    mode = node.attributes.get_string("mode", "nearest")
    coord = node.attributes.get_string("coordinate_transformation_mode", "half_pixel")
    nearest = node.attributes.get_string("nearest_mode", "round_prefer_floor")
    if node.attributes.get_int("antialias", 0) and mode != "nearest" and any(o < i for o, i in zip(out_dims[2:], in_dims[2:])):
        raise unsupported(node, "downscales with antialias=1 (TFLite resizes without an antialiasing filter)")
    if coord == "pytorch_half_pixel" and any(o == 1 < i for o, i in zip(out_dims[2:], in_dims[2:])):
        raise unsupported(node, "resizes an axis to length 1 with pytorch_half_pixel (TFLite samples the centre, not pixel 0)")
    g = ctx.g
    out = ctx.out(node.outputs[0], NHWC[4])
    size = ctx.int_const(list(out_dims[2:]), node.name + "_size")
    if mode == "nearest":
        # TFLite picks floor(out * scale) (asymmetric), floor((out + 0.5) * scale) (half pixel
        # centres) or round-half-up(out * (in - 1) / (out - 1)) (align corners): only the ONNX
        # modes that pick the same source pixel for every size are taken.
        exact = {("asymmetric", "floor"): (False, False), ("half_pixel", "round_prefer_ceil"): (False, True),
                 ("pytorch_half_pixel", "round_prefer_ceil"): (False, True), ("tf_half_pixel_for_nn", "floor"): (False, True),
                 ("align_corners", "round_prefer_ceil"): (True, False)}
        if (coord, nearest) not in exact:
            raise unsupported(node, f"uses nearest with coordinate_transformation_mode={coord!r}, nearest_mode={nearest!r} "
                                    f"(supported: {', '.join(f'{c}/{n}' for c, n in exact)})")
        align, half = exact[coord, nearest]
        opts = g.options("ResizeNearestNeighborOptions", alignCorners=align, halfPixelCenters=half)
        g.op("RESIZE_NEAREST_NEIGHBOR", [x.index, size], [out.index], opts)
    elif mode == "linear":
        if coord in ("half_pixel", "pytorch_half_pixel"):
            opts = g.options("ResizeBilinearOptions", alignCorners=False, halfPixelCenters=True)
        elif coord == "align_corners":
            opts = g.options("ResizeBilinearOptions", alignCorners=True, halfPixelCenters=False)
        elif coord == "asymmetric":
            opts = g.options("ResizeBilinearOptions", alignCorners=False, halfPixelCenters=False)
        else:
            raise unsupported(node, f"uses linear with coordinate_transformation_mode={coord!r}")
        g.op("RESIZE_BILINEAR", [x.index, size], [out.index], opts)
    else:
        raise unsupported(node, f"uses mode={mode!r} (nearest and linear are supported)")


PAD = -1  # in a map: the element is a zero of the padding


def gather_map(ctx: Ctx, node: ir.Node, move: Callable[[np.ndarray], np.ndarray]) -> None:
    """Write node's output 0 as input 0 moved by `move` (a numpy function of an array shaped like
    the input, returning the output's array; PAD marks padding)."""
    dims = ctx.shape(node.inputs[0])
    size = int(np.prod(dims))
    where = np.asarray(move(np.arange(size, dtype=np.int64).reshape(dims)))
    if tuple(where.shape) != ctx.shape(node.outputs[0]):
        raise unsupported(node, f"maps to shape {list(where.shape)}, the model says {list(ctx.shape(node.outputs[0]))}")
    c = Chain(ctx, node)
    x = ctx.as_perm(plain_features(ctx, ctx.val(node.inputs[0], node), node.inputs[0].name), identity(len(dims)),
                    f"{c.name}_onnx_layout")
    flat = ctx.g.tensor(f"{c.name}_flat", [size], np.float32)
    ctx.g.reshape(x.index, flat)
    if (where == PAD).any():
        flat = c.op("CONCATENATION", flat, c.const(np.zeros(1)), shape=[size + 1], axis=0)
        where = np.where(where == PAD, size, where)
    out = ctx.out(node.outputs[0], identity(where.ndim))
    c.op("GATHER", flat, ctx.int_const(where, f"{c.name}_map"), out=out.index, axis=0)
