"""Lowerings for comparisons, logic, Where and Cast: element-wise, broadcast like ONNX (the operands
are laid out as for arithmetic, `broadcast_operands`); comparisons give bool tensors."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgepack.converters.export_tflite.graph import _np_type, unsupported
from edgepack.converters.export_tflite.ops_elementwise import broadcast_operands
from edgepack.converters.export_tflite.registry import Ctx, lowering
from edgepack.converters.export_tflite.chain import Chain

_COMPARE = {"Equal": "EQUAL", "Less": "LESS", "Greater": "GREATER", "LessOrEqual": "LESS_EQUAL",
            "GreaterOrEqual": "GREATER_EQUAL", "And": "LOGICAL_AND", "Or": "LOGICAL_OR"}


@lowering(*_COMPARE)
def compare(ctx: Ctx, node: ir.Node) -> None:
    operands, perm, feature_perm = broadcast_operands(ctx, node, list(node.inputs[:2]))
    out = ctx.out(node.outputs[0], perm, dtype=np.bool_, feature_perm=feature_perm)
    Chain(ctx, node).op(_COMPARE[node.op_type], *operands, out=out.index)


@lowering("Not")
def logical_not(ctx: Ctx, node: ir.Node) -> None:
    x = ctx.val(node.inputs[0], node)
    out = ctx.out(node.outputs[0], x.perm, dtype=np.bool_, feature_perm=x.feature_perm)
    Chain(ctx, node).op("LOGICAL_NOT", x.index, out=out.index)


@lowering("Where")
def where(ctx: Ctx, node: ir.Node) -> None:
    operands, perm, feature_perm = broadcast_operands(ctx, node, list(node.inputs[:3]))
    dtype = _np_type(ctx.g.tensors[operands[1]].type)
    out = ctx.out(node.outputs[0], perm, dtype=dtype, feature_perm=feature_perm)
    Chain(ctx, node).op("SELECT_V2", *operands, out=out.index)


_ONNX_TYPES = {1: np.float32, 6: np.int32, 7: np.int64, 9: np.bool_}


@lowering("Cast")
def cast(ctx: Ctx, node: ir.Node) -> None:
    to = node.attributes.get_int("to", 1)
    if to not in _ONNX_TYPES:
        raise unsupported(node, f"casts to ONNX type {to} (float32, int32, int64 and bool are supported)")
    x = ctx.val(node.inputs[0], node)
    if _np_type(ctx.g.tensors[x.index].type) == _ONNX_TYPES[to]:
        return ctx.alias(node.outputs[0], x)
    out = ctx.out(node.outputs[0], x.perm, dtype=_ONNX_TYPES[to], feature_perm=x.feature_perm)
    ctx.g.op("CAST", [x.index], [out.index])
