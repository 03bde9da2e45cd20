"""Ops that only move elements, by a map fixed at export time (constant shapes, indices, lengths or
conditions): CenterCropPad, Compress, ReverseSequence, and the Gather / Slice cases the direct
lowerings leave (multi-dimensional indices, negative steps). The map is worked out by applying the
op to the element numbers of the input (np.arange) in numpy; the TFLite graph is then one GATHER of
the flattened input by that map (a padded element reads an appended zero). Exact by construction
(no arithmetic); a GATHER is slower than a native op, so the direct lowerings stay first."""
from __future__ import annotations


import numpy as np
import onnx_ir as ir

from edgepack.converters.export_tflite.graph import unsupported
from edgepack.converters.export_tflite.ops_shape import PAD, gather_map
from edgepack.converters.export_tflite.registry import Ctx, lowering

def _const_input(ctx: Ctx, node: ir.Node, i: int, what: str) -> np.ndarray:
    value = ctx.const(node.inputs[i]) if len(node.inputs) > i and node.inputs[i] is not None else None
    if value is None:
        raise unsupported(node, f"has {what} computed at run time (TFLite needs it constant here)")
    return value


@lowering("CenterCropPad")
def center_crop_pad(ctx: Ctx, node: ir.Node) -> None:
    target = _const_input(ctx, node, 1, "the shape").reshape(-1).astype(np.int64)
    rank = len(ctx.shape(node.inputs[0]))
    axes = [a % rank for a in node.attributes.get_ints("axes", list(range(rank)))]

    def move(a: np.ndarray) -> np.ndarray:
        for axis, want in zip(axes, target):
            have = a.shape[axis]
            if want < have:  # crop the centre (the extra element on the right)
                a = np.take(a, np.arange((have - want) // 2, (have - want) // 2 + want), axis=axis)
            elif want > have:  # pad around (the extra zero on the right)
                pads = [(0, 0)] * a.ndim
                pads[axis] = ((want - have) // 2, want - have - (want - have) // 2)
                a = np.pad(a, pads, constant_values=PAD)
        return a

    gather_map(ctx, node, move)


@lowering("Compress")
def compress(ctx: Ctx, node: ir.Node) -> None:
    condition = _const_input(ctx, node, 1, "the condition").reshape(-1).astype(bool)
    axis = node.attributes.get_int("axis", None) if "axis" in node.attributes else None
    gather_map(ctx, node, lambda a: np.compress(condition, a, axis=axis))  # no axis: of the flattened input


@lowering("ReverseSequence")
def reverse_sequence(ctx: Ctx, node: ir.Node) -> None:
    lengths = _const_input(ctx, node, 1, "sequence_lens").reshape(-1).astype(np.int64)
    batch_axis, time_axis = node.attributes.get_int("batch_axis", 1), node.attributes.get_int("time_axis", 0)

    def move(a: np.ndarray) -> np.ndarray:
        out = a.copy()
        for b, n in enumerate(lengths):
            src = [slice(None)] * a.ndim
            src[batch_axis], src[time_axis] = b, slice(0, int(n))
            out[tuple(src)] = np.flip(a[tuple(src)], axis=time_axis - (batch_axis < time_axis))
        return out

    gather_map(ctx, node, move)


@lowering("GatherND")
def gather_nd(ctx: Ctx, node: ir.Node) -> None:
    indices = _const_input(ctx, node, 1, "the indices").astype(np.int64)
    if node.attributes.get_int("batch_dims", 0):
        raise unsupported(node, "has batch_dims (0 only)")
    k = indices.shape[-1]
    gather_map(ctx, node, lambda a: a[tuple(indices[..., i] % a.shape[i] for i in range(k))])
