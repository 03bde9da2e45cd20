"""Resize / Upsample. Where a TFLite builtin (RESIZE_NEAREST_NEIGHBOR, RESIZE_BILINEAR) computes
exactly what ONNX asks (a 4-D image, spatial axes, scale = out / in, a matching coordinate mode) it is
used (`ops_shape.resize_builtin`). Every other static resize is written per resized axis as taps:
out[i] = sum_t w[i, t] * x[idx[i, t]] (one GATHER per tap, a MUL by the constant weights, ADDs):
one tap for nearest, two for linear, four for cubic, more for an antialiasing filter. The taps are
computed at export time with the ONNX reference implementation's own coefficient functions, so every
mode, coordinate transform, nearest rounding, exclude_outside, antialias and tf_crop_and_resize
extrapolation follows the ONNX definition (separable: one axis after the other, as ONNX does)."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgepack.converters.export_tflite.chain import Chain
from edgepack.converters.export_tflite.ops_shape import plain_features, resize_builtin
from edgepack.converters.export_tflite.registry import Ctx, lowering
from edgepack.converters.export_tflite.graph import unsupported
from edgepack.errors import UnsupportedError

MAX_TAPS = 64


@lowering("Resize", "Upsample")
def resize(ctx: Ctx, node: ir.Node) -> None:
    in_dims, out_dims = ctx.shape(node.inputs[0]), ctx.shape(node.outputs[0])
    scales = _scales(ctx, node, in_dims, out_dims)
    if _builtin_exact(node, in_dims, out_dims, scales):
        try:
            return resize_builtin(ctx, node)
        except UnsupportedError:
            pass
    _resize_taps(ctx, node, in_dims, out_dims, scales)


def _legacy(node: ir.Node) -> bool:
    """Upsample, or opset-10 Resize (X, scales): asymmetric coordinates, floor for nearest."""
    return node.op_type == "Upsample" or len(node.inputs) == 2


def _scales(ctx: Ctx, node: ir.Node, in_dims, out_dims) -> list[float]:
    """The per-axis scale ONNX uses in its coordinate transform (given scales, else from sizes with
    keep_aspect_ratio_policy)."""
    rank = len(in_dims)
    axes = [a % rank for a in node.attributes.get_ints("axes", list(range(rank)))]
    inputs = list(node.inputs) + [None] * 4
    scales_value, sizes_value = (inputs[1], None) if _legacy(node) else (inputs[2], inputs[3])
    given = [v for v in (scales_value, sizes_value) if v is not None and ctx.shape(v) != (0,)]
    if not given:
        raise unsupported(node, "has neither scales nor sizes")
    array = ctx.const(given[0])
    if array is None:
        raise unsupported(node, f"has {'scales' if given[0] is scales_value else 'sizes'} computed at run time "
                                f"(input {given[0].name!r}); TFLite needs them constant: store them in the model as "
                                "initializers")
    array = array.reshape(-1).astype(np.float64)
    scale = [1.0] * rank
    if given[0] is scales_value:
        for a, s in zip(axes, array):
            scale[a] = float(s)
        return scale
    ratios = [s / in_dims[a] for a, s in zip(axes, array)]
    policy = node.attributes.get_string("keep_aspect_ratio_policy", "stretch")
    if policy != "stretch":
        ratios = [min(ratios) if policy == "not_larger" else max(ratios)] * len(axes)
    for a, r in zip(axes, ratios):
        scale[a] = float(r)
    return scale


def _builtin_exact(node: ir.Node, in_dims, out_dims, scales) -> bool:
    if len(in_dims) != 4 or _legacy(node) or node.attributes.get_string("mode", "nearest") == "cubic":
        return False
    return all(abs(s - o / i) < 1e-6 for s, i, o in zip(scales, in_dims, out_dims) if i)


def _coefficients(node: ir.Node):
    from onnx.reference.ops import op_resize as ref

    mode = node.attributes.get_string("mode", "nearest")
    antialias = bool(node.attributes.get_int("antialias", 0))
    if mode == "nearest":
        rounding = "floor" if _legacy(node) else node.attributes.get_string("nearest_mode", "round_prefer_floor")
        return lambda ratio, scale: ref._nearest_coeffs(ratio, mode=rounding)
    if mode == "cubic":
        a = node.attributes.get_float("cubic_coeff_a", -0.75)
        fn = ref._cubic_coeffs_antialias if antialias else ref._cubic_coeffs
        return lambda ratio, scale: fn(ratio, scale, A=a)
    if mode == "linear":
        return ref._linear_coeffs_antialias if antialias else ref._linear_coeffs
    raise unsupported(node, f"uses mode={mode!r}")


def axis_taps(node: ir.Node, in_w: int, out_w: int, scale: float, roi: tuple[float, float] | None):
    """(indices [out, T], weights [out, T], outside [out] bool) for one axis, following
    onnx.reference's 1-D interpolation (edge padding: indices clipped into the input)."""
    from onnx.reference.ops import op_resize as ref

    coeffs_of = _coefficients(node)
    coord = "asymmetric" if _legacy(node) else node.attributes.get_string("coordinate_transformation_mode", "half_pixel")
    exclude = bool(node.attributes.get_int("exclude_outside", 0))
    width = scale * in_w
    rows, outside = [], np.zeros(out_w, bool)
    for x in range(out_w):
        if coord == "align_corners":
            x_ori = 0.0 if width == 1 else x * (in_w - 1) / (width - 1)
        elif coord == "asymmetric":
            x_ori = x / scale
        elif coord == "tf_crop_and_resize":
            r0, r1 = roi
            x_ori = (r1 - r0) * (in_w - 1) / 2 if width == 1 else x * (r1 - r0) * (in_w - 1) / (width - 1)
            x_ori += r0 * (in_w - 1)
            if x_ori < 0 or x_ori > in_w - 1:
                outside[x] = True
                rows.append(([0], [0.0]))
                continue
        elif coord == "pytorch_half_pixel":
            x_ori = -0.5 if width == 1 else (x + 0.5) / scale - 0.5
        elif coord == "half_pixel":
            x_ori = (x + 0.5) / scale - 0.5
        elif coord == "half_pixel_symmetric":
            offset = in_w / 2 * (1 - out_w / width)
            x_ori = offset + (x + 0.5) / scale - 0.5
        else:
            raise unsupported(node, f"uses coordinate_transformation_mode={coord!r}")
        x_ori = float(x_ori)
        base = int(np.floor(x_ori))
        ratio = 1 if x_ori.is_integer() else x_ori - base
        coeffs = np.array(coeffs_of(ratio, scale), np.float64)
        pad = int(np.ceil(len(coeffs) / 2))
        idx = np.asarray(ref._get_neighbor_idxes(x_ori + pad, len(coeffs), in_w + 2 * pad)) - pad
        if exclude:
            coeffs = np.where((idx < 0) | (idx >= in_w), 0.0, coeffs)
            coeffs = coeffs / coeffs.sum()
        idx = np.clip(idx, 0, in_w - 1)
        used = coeffs != 0  # taps with a zero weight are left out (nearest: one tap)
        rows.append((idx[used].tolist() or [0], coeffs[used].tolist() or [0.0]))
    taps = max(len(i) for i, _ in rows)
    index = np.zeros((out_w, taps), np.int32)
    weight = np.zeros((out_w, taps), np.float32)
    for r, (i, w) in enumerate(rows):
        index[r, :len(i)], weight[r, :len(w)] = i, w
    return index, weight, outside


def _resize_taps(ctx: Ctx, node: ir.Node, in_dims, out_dims, scales) -> None:
    x = plain_features(ctx, ctx.val(node.inputs[0], node), node.inputs[0].name)
    rank = len(in_dims)
    roi = None
    coord = node.attributes.get_string("coordinate_transformation_mode", "half_pixel")
    if coord == "tf_crop_and_resize" and not _legacy(node):
        axes = [a % rank for a in node.attributes.get_ints("axes", list(range(rank)))]
        r = ctx.const(node.inputs[1]) if node.inputs[1] is not None else None
        if r is None:
            raise unsupported(node, "uses tf_crop_and_resize with a non-constant roi")
        r = r.reshape(-1).astype(np.float64)
        roi = {a: (0.0, 1.0) for a in range(rank)}
        for k, a in enumerate(axes):
            roi[a] = (float(r[k]), float(r[k + len(axes)]))
    extrapolation = node.attributes.get_float("extrapolation_value", 0.0)
    c = Chain(ctx, node)
    g = ctx.g
    cur = x.index
    moved = [a for a in range(rank) if in_dims[a] != out_dims[a] or scales[a] != 1.0]
    out = ctx.out(node.outputs[0], x.perm).index
    if not moved:
        g.reshape(cur, out)
        return
    for n, a in enumerate(moved):
        index, weight, outside = axis_taps(node, in_dims[a], out_dims[a], scales[a], roi[a] if roi else None)
        if index.shape[1] > MAX_TAPS:
            raise unsupported(node, f"needs {index.shape[1]} taps per output on axis {a} (at most {MAX_TAPS})")
        stored = x.stored_axis(a)
        shape = g.shape_of(cur)
        shape[stored] = out_dims[a]
        bshape = [1] * len(shape)
        bshape[stored] = out_dims[a]
        last = n == len(moved) - 1
        acc = None
        for t in range(index.shape[1]):
            picked = c.op("GATHER", cur, ctx.int_const(index[:, t], f"{node.name}_axis{a}_tap{t}"), shape=shape, axis=stored)
            if not (weight[:, t] == 1).all():
                picked = c.op("MUL", picked, c.const(weight[:, t].reshape(bshape)))
            acc = picked if acc is None else c.op("ADD", acc, picked)
        if outside.any():
            acc = c.op("ADD", acc, c.const((outside * extrapolation).astype(np.float32).reshape(bshape)))
        if last and g.operators[-1].outputs == [acc]:
            g.operators[-1].outputs = [out]  # the last op writes the ONNX output itself
        elif last:
            g.reshape(acc, out)
        cur = acc


# ---------------------------------------------------------------- GridSample (a constant grid)

GRID_MODES = {"bilinear": "linear", "linear": "linear", "nearest": "nearest", "bicubic": "cubic", "cubic": "cubic"}


@lowering("GridSample")
def grid_sample(ctx: Ctx, node: ir.Node) -> None:
    """With a constant grid GridSample is a fixed linear map of X: each output point is a weighted
    sum of at most 4^k input points (k spatial axes). The taps are worked out at export time
    (`grid_taps`) and run as one GATHER of X's spatial points (N*H*W, C) by the tap indices, a MUL by
    the tap weights and a SUM over the taps. A grid computed at run time is refused."""
    in_dims, out_dims = ctx.shape(node.inputs[0]), ctx.shape(node.outputs[0])
    grid = ctx.const(node.inputs[1])
    if grid is None:
        raise unsupported(node, f"has a grid computed at run time (input {node.inputs[1].name!r}); TFLite needs it "
                                "constant here")
    mode = GRID_MODES.get(node.attributes.get_string("mode", "linear"))
    padding = node.attributes.get_string("padding_mode", "zeros")
    if mode is None or padding not in ("zeros", "border", "reflection") or len(in_dims) not in (3, 4, 5):
        raise unsupported(node, f"uses mode {node.attributes.get_string('mode', 'linear')!r}, padding {padding!r} "
                                f"on a {len(in_dims)}-D input (1- to 3-D sampling, modes linear/nearest/cubic)")
    index, weight = grid_taps(grid.astype(np.float32), in_dims[2:], mode, padding,
                              bool(node.attributes.get_int("align_corners", 0)))
    n, ch, points, taps = in_dims[0], in_dims[1], int(np.prod(out_dims[2:])), index.shape[1]
    c = Chain(ctx, node)
    rank = len(in_dims)
    channels_last = (0,) + tuple(range(2, rank)) + (1,)
    x = ctx.as_perm(ctx.val(node.inputs[0], node), channels_last, f"{c.name}_channels_last")
    flat = ctx.g.tensor(f"{c.name}_points", [int(np.prod(in_dims)) // ch, ch])
    ctx.g.reshape(x.index, flat)
    picked = c.op("GATHER", flat, ctx.int_const(index, f"{c.name}_taps"), shape=[n * points, taps, ch], axis=0)
    if not (weight == 1).all():
        picked = c.op("MUL", picked, c.const(weight.reshape(n * points, taps, 1)))
    out = ctx.out(node.outputs[0], channels_last)
    summed = c.op("SUM", picked, ctx.int_const([1], f"{c.name}_tap_axis"), shape=[n * points, ch], keepDims=False)
    ctx.g.reshape(summed, out.index)


def grid_taps(grid: np.ndarray, dims, mode: str, padding: str, align_corners: bool) -> tuple[np.ndarray, np.ndarray]:
    """(index, weight), each (N * points, taps): the flat input point (batch included) and weight of
    every tap of every output point, as ONNX Runtime computes GridSample (per axis: the coordinate
    denormalized, rounded half to even for nearest, clamped or reflected when outside, then each
    tap's pixel fetched with the padding mode; zeros padding gives weight 0)."""
    k = len(dims)
    n = grid.shape[0]
    coords = grid.reshape(n, -1, k)
    per_axis = [_axis_taps(coords[..., k - 1 - a], dims[a], mode, padding, align_corners) for a in range(k)]
    strides = [int(np.prod(dims[a + 1:])) for a in range(k)]
    index = np.zeros(coords.shape[:2] + (1,), np.int64)
    weight = np.ones(coords.shape[:2] + (1,), np.float64)
    for (idx, w), stride in zip(per_axis, strides):  # outer product of the axes' taps
        index = (index[..., :, None] + idx[..., None, :] * stride).reshape(index.shape[:2] + (-1,))
        weight = (weight[..., :, None] * w[..., None, :]).reshape(weight.shape[:2] + (-1,))
    index += (np.arange(n) * int(np.prod(dims)))[:, None, None]
    return index.reshape(-1, index.shape[-1]).astype(np.int32), weight.reshape(-1, weight.shape[-1]).astype(np.float32)


def _axis_taps(g: np.ndarray, size: int, mode: str, padding: str, align_corners: bool) -> tuple[np.ndarray, np.ndarray]:
    one, two = np.float32(1), np.float32(2)
    x = (g + one) / two * np.float32(size - 1) if align_corners else ((g + one) * np.float32(size) - one) / two
    lo, hi = (0.0, size - 1.0) if align_corners else (-0.5, size - 0.5)
    if mode == "nearest":
        x = np.rint(x)
    # a coordinate outside is clamped / reflected first for linear and nearest; cubic pads only its
    # taps (ONNX Runtime and PyTorch; the ONNX reference clamps the coordinate for cubic too)
    outside = ((x < lo) | (x > hi)) & (mode != "cubic")
    if padding == "border":
        x = np.where(outside, np.clip(x, 0, size - 1), x)
    elif padding == "reflection":
        x = np.where(outside, _reflect(x.astype(np.float64), lo, hi), x)
    if mode == "nearest":
        first, coeffs = np.trunc(x).astype(np.int64), np.ones(x.shape + (1,))
    else:
        floor = np.floor(x)
        f = (x - floor).astype(np.float64)
        if mode == "linear":
            first, coeffs = floor.astype(np.int64), np.stack([1 - f, f], -1)
        else:
            first, coeffs = floor.astype(np.int64) - 1, _cubic_coeffs(f)
    idx = first[..., None] + np.arange(coeffs.shape[-1])
    if padding == "zeros":
        inside = (idx >= 0) & (idx < size)
        return np.where(inside, idx, 0), np.where(inside, coeffs, 0.0)
    if padding == "border":
        return np.clip(idx, 0, size - 1), coeffs
    return np.trunc(_reflect(idx.astype(np.float64), lo, hi)).astype(np.int64), coeffs


def _reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect by the near border until inside [lo, hi] (the ONNX reference's _gs_reflect)."""
    span = hi - lo
    below, above = lo - x, x - hi
    nb, na = np.floor(below / span), np.floor(above / span)
    rb, ra = below - nb * span, above - na * span
    out = np.where(below > 0, np.where(nb % 2 == 0, lo + rb, hi - rb), x)
    return np.where(above > 0, np.where(na % 2 == 0, hi - ra, lo + ra), out)


def _cubic_coeffs(f: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys cubic convolution weights of the taps at -1, 0, 1, 2 for a fractional offset f."""
    def near(t):  # |t| <= 1
        return ((a + 2) * t - (a + 3)) * t * t + 1

    def far(t):  # 1 < |t| < 2
        return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a

    return np.stack([far(f + 1), near(f), near(1 - f), far(2 - f)], -1)
