"""The PyTorch module a node of the ONNX graph came from, so messages name `layer1.0.conv1`, not
`node_Conv_505` (whose number changes between the .pt and the .pt2 of the same model).

Read, in order, from what the exporters leave in the graph: a layer's weight initializer (both
PyTorch exporters name it after the parameter, `layer1.0.conv1.weight`; a pass may append a suffix
such as `_slim`), the dynamo exporter's `pkg.torch.onnx.name_scopes` node metadata (the module
paths from the root, then the op), and the TorchScript exporter's node names
(`/layer1/layer1.0/conv1/Conv`). None for a graph that records none of these (a hand-made ONNX)."""
from __future__ import annotations

import ast
import re

import onnx_ir as ir

_WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "LayerNormalization", "InstanceNormalization"}
_WEIGHT_RE = re.compile(r"(?P<module>[A-Za-z_][\w.]*)\.weight(?:_[A-Za-z0-9]+)*")
NAME_SCOPES = "pkg.torch.onnx.name_scopes"


def module_path(node: ir.Node) -> str | None:
    if node.op_type in _WEIGHTED and len(node.inputs) > 1 and node.inputs[1] is not None and node.inputs[1].name:
        m = _WEIGHT_RE.fullmatch(node.inputs[1].name)
        if m:
            return m.group("module")
    scopes = node.metadata_props.get(NAME_SCOPES)
    if scopes:
        try:
            parts = ast.literal_eval(scopes)
        except (ValueError, SyntaxError):
            parts = None
        if isinstance(parts, list) and len(parts) > 1:
            modules = [p for p in parts[:-1] if isinstance(p, str) and p]
            if modules:
                return modules[-1]
    if node.name and node.name.startswith("/") and node.name.count("/") > 1:
        path = ""
        for part in node.name.strip("/").split("/")[:-1]:  # /layer1/layer1.0/conv1/Conv -> layer1.0.conv1
            path = part if not path or part.startswith(path + ".") else f"{path}.{part}"
        return path or None
    return None


def module_key(node: ir.Node) -> dict[str, str]:
    """{"module": path} for a report entry, or {} when the graph does not record one."""
    module = module_path(node)
    return {"module": module} if module else {}


def label(node: ir.Node) -> str:
    """The module path with the ONNX node name, `layer1.0.conv1 (node_Conv_505)`, else the node name."""
    module = module_path(node)
    name = node.name or (node.outputs[0].name if node.outputs else "") or node.op_type
    return f"{module} ({name})" if module else name
