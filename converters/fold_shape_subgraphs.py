"""Fold shape subgraphs: once every graph input has a static shape, the arithmetic that models do
on shapes (Shape, Size, ConstantOfShape, Range, Gather / Slice / Concat / Unsqueeze / Cast /
arithmetic on shape tensors, the computed shape of a Reshape or Expand) is constant. This pass
turns it into constants so that no exporter ever sees those ops (TFLite and ncnn have no
lowering for most of them).

onnxscript's constant folder does the folding (it knows Shape, Size, Reshape, Expand, Concat,
Gather on shapes and evaluates the rest with the ONNX reference evaluator; ConstantOfShape, which
it keeps by default, is folded here too); what it does not do is
go round again: a Reshape whose shape has just become constant gets its output shape only from the
next shape inference, and the Shape nodes downstream of it only fold in the next sweep (PP-OCRv4's
recogniser needs four). So this pass alternates shape inference and folding until nothing changes,
and reports which shape ops are left and why (their input's shape is not static)."""
from __future__ import annotations

from collections import Counter

import onnx_ir as ir
import onnx_ir.passes.common as common
from onnxscript.optimizer import fold_constants

from edgepack.converters import PassResult
from edgepack.converters.cleanup_graph import _FOLD_LIMIT, _keep_quantization, infer_shapes

# Ops that only compute on shapes (or on constants made from shapes): what this pass should leave none of.
SHAPE_OPS = ("Shape", "Size", "ConstantOfShape", "Range", "EyeLike")
MAX_ROUNDS = 16


def fold_shape_subgraphs(model: ir.Model) -> PassResult:
    before = Counter(n.op_type for n in model.graph)
    forgotten = _forget_invalid_shapes(model.graph)
    rounds = 0
    while rounds < MAX_ROUNDS:
        count = sum(1 for _ in model.graph)
        infer_shapes(model)
        fold_constants(model, input_size_limit=_FOLD_LIMIT, output_size_limit=_FOLD_LIMIT, should_fold=_should_fold)
        common.RemoveUnusedNodesPass()(model)
        rounds += 1
        if sum(1 for _ in model.graph) == count:
            break
    common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    common.TopologicalSortPass()(model)
    infer_shapes(model)
    after = Counter(n.op_type for n in model.graph)
    folded = {op: before[op] - after.get(op, 0) for op in before if before[op] > after.get(op, 0) and op != "Constant"}
    counts = {"rounds": rounds, "invalid_shapes_reinferred": forgotten, **{f"folded_{op}": n for op, n in sorted(folded.items())}}
    skipped = [{"node": n.name, "op": n.op_type, "why": why} for n in model.graph if (why := can_fold(n)) is not None]
    return PassResult("fold_shape_subgraphs", bool(folded), counts, skipped=skipped)


def _forget_invalid_shapes(graph: ir.Graph) -> int:
    """Some exporters (Paddle2ONNX) declare an unknown dimension as `dim_value: -1`, which shape
    inference takes as a known dimension and keeps. Forget such shapes on the values that nodes
    produce, so inference computes them from the now static inputs."""
    count = 0
    for node in graph:
        for value in node.outputs:
            if value.shape is not None and any(isinstance(d, int) and d < 0 for d in value.shape):
                value.shape = None
                count += 1
    return count


def _should_fold(node: ir.Node) -> bool | None:
    """ConstantOfShape too (the folder keeps it by default, to keep files small): a constant-shaped
    fill is a constant every exporter can hold, and none of them has a lowering for the op."""
    if node.op_type == "ConstantOfShape" and node.domain in ("", "ai.onnx"):
        return True
    return _keep_quantization(node)


def can_fold(node: ir.Node) -> str | None:
    """None for a node this pass has no business with (not a shape op); for a shape op that is
    still in the graph, the reason it could not be folded."""
    if node.op_type not in SHAPE_OPS or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type in ("Shape", "Size", "EyeLike"):
        shape = node.inputs[0].shape if node.inputs and node.inputs[0] is not None else None
        if shape is None:
            return f"the shape of {node.inputs[0].name!r} is unknown (it depends on an op shape inference cannot follow)"
        if not shape.is_static():
            return f"{node.inputs[0].name!r} has shape {shape}: a dimension depends on the data, not on the input shapes"
        return "not folded by the constant folder"
    dynamic = [v.name for v in node.inputs if v is not None and ir.convenience.get_const_tensor(v) is None]
    return f"its input(s) {dynamic} depend on the data, not only on the input shapes"
