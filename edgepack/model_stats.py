"""Parameter and MAC counts read off a shape-inferred ONNX graph (no torch needed)."""
from __future__ import annotations

import math

import onnx_ir as ir


def count_params(model: ir.Model) -> int:
    """Elements of the float initializers (weights) that are used (a pass may leave replaced ones until cleanup)."""
    return int(sum(
        math.prod(v.const_value.shape)
        for v in model.graph.initializers.values()
        if v.const_value is not None and v.const_value.dtype.is_floating_point() and (v.uses() or v.is_graph_output())
    ))


def count_macs(model: ir.Model) -> int:
    """Multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul (the layers that dominate)."""
    total = 0
    for node in model.graph:
        total += node_macs(node)
    return int(total)


def node_macs(node: ir.Node) -> int:
    out = _dims(node.outputs[0]) if node.outputs else None
    if out is None:
        return 0
    if node.op_type == "Conv":
        w = _dims(node.inputs[1])
        return math.prod(out) * math.prod(w[1:]) if w else 0
    if node.op_type == "ConvTranspose":
        x, w = _dims(node.inputs[0]), _dims(node.inputs[1])
        if not x or not w:
            return 0
        return math.prod(x) * math.prod(w[1:])
    if node.op_type in ("Gemm", "MatMul"):
        a = _dims(node.inputs[0])
        if not a:
            return 0
        k = a[0] if node.op_type == "Gemm" and node.attributes.get_int("transA", 0) else a[-1]
        return math.prod(out) * k
    return 0


def _dims(value: ir.Value | None) -> list[int] | None:
    if value is None or value.shape is None:
        return None
    dims = list(value.shape)
    return dims if all(isinstance(d, int) for d in dims) else None
