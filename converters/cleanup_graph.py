"""Cleanup: drop inference no-ops (Dropout, Identity), fold constants (this also makes
`weight_orig * weight_mask` pruning products permanent), lift Constant nodes to initializers,
remove dead nodes, sort, and infer shapes. Built on onnx-ir's passes and onnxscript's constant
folder; what is ours is the Dropout rule and the bookkeeping for the report."""
from __future__ import annotations

from collections import Counter

import onnx_ir as ir
import onnx_ir.passes.common as common
from onnxscript.optimizer import fold_constants

from edgepack.converters import PassResult

# Large enough that pruning masks of real conv layers are folded; memory cost is one weight copy.
_FOLD_LIMIT = 1 << 28
_MAX_FOLD_ROUNDS = 8


def cleanup_graph(model: ir.Model) -> PassResult:
    before = Counter(n.op_type for n in model.graph)
    dropouts = _dropout_to_identity(model.graph)
    # A shape computed from a shape (Paddle's Shape -> Slice -> Concat -> Reshape -> ... -> Shape)
    # becomes constant one link per round: fold and infer again while that removes nodes.
    for _ in range(_MAX_FOLD_ROUNDS):
        size = sum(1 for _ in model.graph)
        fold_constants(model, input_size_limit=_FOLD_LIMIT, output_size_limit=_FOLD_LIMIT, should_fold=_keep_quantization)
        common.IdentityEliminationPass()(model)
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
        common.RemoveUnusedNodesPass()(model)
        common.TopologicalSortPass()(model)
        infer_shapes(model)
        if sum(1 for _ in model.graph) == size:
            break
    after = Counter(n.op_type for n in model.graph)
    removed = {op: before[op] - after.get(op, 0) for op in before if before[op] > after.get(op, 0)}
    counts = {"nodes_before": sum(before.values()), "nodes_after": sum(after.values()), "dropout_removed": dropouts}
    counts.update({f"removed_{op}": n for op, n in sorted(removed.items())})
    return PassResult("cleanup_graph", counts["nodes_before"] != counts["nodes_after"], counts)


def _keep_quantization(node: ir.Node) -> bool | None:
    """An already-quantized model keeps its Q/DQ pairs: folding DequantizeLinear(int8 weight)
    would turn its weights back into float."""
    return False if node.op_type in ("QuantizeLinear", "DequantizeLinear") else None


def infer_shapes(model: ir.Model) -> None:
    """ONNX shape inference, keeping what is already known when inference cannot say more. A
    declared dimension of -1 or 0 (Paddle writes -1 for the batch of its outputs) is not known:
    it is cleared first, so inference fills it from the (static) inputs."""
    for value in [*model.graph.outputs, *(o for n in model.graph for o in n.outputs)]:
        if value.shape is not None and any(isinstance(d, int) and d <= 0 for d in value.shape):
            value.shape = None
    common.ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)


def _dropout_to_identity(graph: ir.Graph) -> int:
    """Inference-mode Dropout is the identity; its optional mask output must be unused."""
    count = 0
    for node in list(graph):
        if node.op_type != "Dropout" or node.domain != "":
            continue
        if len(node.outputs) > 1 and (node.outputs[1].uses() or node.outputs[1].is_graph_output()):
            continue
        identity = ir.Node("", "Identity", [node.inputs[0]], name=node.name)
        node.outputs[0].replace_all_uses_with(identity.outputs[0], replace_graph_outputs=True)
        identity.outputs[0].name = node.outputs[0].name
        identity.outputs[0].shape = node.outputs[0].shape
        identity.outputs[0].type = node.outputs[0].type
        graph.insert_before(node, identity)
        graph.remove(node, safe=False)
        count += 1
    return count
