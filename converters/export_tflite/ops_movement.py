"""Lowerings for data movement without arithmetic: SpaceToDepth / DepthToSpace (TFLite's builtins
are ONNX's DCR order on NHWC; CRD order is one GATHER of the channels first) and Tile."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgepack.converters.export_tflite.graph import NHWC, unsupported
from edgepack.converters.export_tflite.ops_shape import plain_features
from edgepack.converters.export_tflite.registry import Ctx, lowering


@lowering("SpaceToDepth", "DepthToSpace")
def space_depth(ctx: Ctx, node: ir.Node) -> None:
    if len(ctx.shape(node.inputs[0])) != 4:
        raise unsupported(node, "is not on a 4-D tensor")
    g = ctx.g
    bs = node.attributes.get_int("blocksize", 1)
    x = ctx.as_perm(ctx.val(node.inputs[0], node), NHWC[4], node.inputs[0].name + "_nhwc")
    out = ctx.out(node.outputs[0], NHWC[4])
    crd = node.attributes.get_string("mode", "DCR") == "CRD"
    if node.op_type == "SpaceToDepth":
        if crd:
            raise unsupported(node, "uses mode CRD (SpaceToDepth is DCR only)")
        g.op("SPACE_TO_DEPTH", [x.index], [out.index], g.options("SpaceToDepthOptions", blockSize=bs))
        return
    src = x.index
    if crd:  # DCR channel (b, c) = CRD channel (c, b)
        c = ctx.shape(node.inputs[0])[1] // (bs * bs)
        order = np.arange(c * bs * bs).reshape(c, bs * bs).T.reshape(-1)
        src = g.tensor(node.name + "_dcr", g.shape_of(x.index))
        g.op("GATHER", [x.index, ctx.int_const(order, node.name + "_crd_order")], [src], g.options("GatherOptions", axis=3))
    g.op("DEPTH_TO_SPACE", [src], [out.index], g.options("DepthToSpaceOptions", blockSize=bs))


@lowering("Tile")
def tile(ctx: Ctx, node: ir.Node) -> None:
    repeats = ctx.const(node.inputs[1])
    if repeats is None:
        raise unsupported(node, "has non-constant repeats")
    x = plain_features(ctx, ctx.val(node.inputs[0], node), node.inputs[0].name)
    out = ctx.out(node.outputs[0], x.perm)
    ctx.g.op("TILE", [x.index, ctx.int_const([int(repeats[a]) for a in x.perm], node.name + "_multiples")], [out.index],
             ctx.g.options("TileOptions"))
