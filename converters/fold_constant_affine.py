"""Fold constant per-channel affines (a Mul by a constant, optionally followed by an Add of a
constant) into the neighbouring Conv, and fuse the written-out hard-swish into one HardSwish.

Why: Paddle models (PP-OCR's PP-LCNetV3, exported by paddle2onnx) follow every Conv with a
"learnable affine block" (scalar Mul + Add) and write hard-swish as x * clip(x + 3, 0, 6) / 6. In
a QDQ int8 graph each of those nodes is a point where the activation is rounded to int8: nine
roundings per block where one or two carry the information. On PP-OCRv4 rec the backbone alone
takes the exact-match rate from 70.3% to 55% (keeping the whole backbone float restores it; the
neck and head do not). The rewrite is exact in float (up to fp32 rounding) and changes the graph
every format starts from, so the ONNX, TFLite and ncnn int8 artifacts all quantize the same,
shorter chain with the same calibration.

The affine y = x * s + t (s, t scalars or per channel on axis 1 of a 4-D tensor) is written as a
BatchNormalization and handed to fold_batchnorm's predicates and folder: into the producing Conv
when it feeds only this affine, or into consuming Convs (the shift only when they do not zero-pad).
An affine that neither accepts is left as it was, with the reason in the report. onnx-ir has no
pass for either rewrite; onnxscript's rewriter has pattern machinery but no such rules, and its
fusions target its own function domain (not what TFLite's and ncnn's exporters read)."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgepack.converters import PassResult, UniqueNames, const_value
from edgepack.converters.fold_batchnorm import can_fold_into_consumers, can_fold_into_producer, fold_batchnorm

HARDSWISH_MIN_OPSET = 14


def fold_constant_affine(model: ir.Model) -> PassResult:
    result = PassResult("fold_constant_affine", False, {"affines_folded": 0, "hardswish_fused": 0})
    graph = model.graph
    names = UniqueNames(graph)
    folded = 0
    for mul in [n for n in graph if n.op_type == "Mul" and n.domain == ""]:
        if mul.graph is None:  # removed with an earlier chain
            continue
        chain = affine_chain(mul)
        if isinstance(chain, str):
            continue  # not an affine of a 4-D tensor: nothing to say
        x, s, t, nodes = chain
        recipe = _recipe(nodes)
        bn = _as_batchnorm(graph, x, s, t, nodes, names)
        why = can_fold_into_producer(bn, s)
        why = why and can_fold_into_consumers(bn, t)
        if why:
            _undo(graph, bn, recipe)
            result.skipped.append({"node": mul.name or mul.outputs[0].name, "why": f"left as {'+'.join(n.op_type for n in nodes)}: {why}"})
            continue
        folded += 1
    if folded:
        fold_batchnorm(model)  # exactly the BatchNormalizations made here: the graph had none left
    result.counts["affines_folded"] = folded
    result.counts["hardswish_fused"] = fuse_hardswish(model)
    result.modified = any(result.counts.values())
    return result


def affine_chain(mul: ir.Node) -> tuple[ir.Value, np.ndarray, np.ndarray, list[ir.Node]] | str:
    """(x, s, t, [Mul, Add?]) for y = x * s (+ t) with constant s, t per channel of a 4-D x, or why not."""
    x, s = _const_operand(mul)
    if x is None:
        return "not a Mul by a constant"
    channels = _channels(x)
    if channels is None:
        return "input is not a 4-D tensor with a known channel count"
    s = _per_channel(s, channels)
    if s is None:
        return "the constant is not per channel"
    nodes, t = [mul], np.zeros(channels)
    y = mul.outputs[0]
    uses = y.uses()
    if len(uses) == 1 and not y.is_graph_output() and uses[0].node.op_type == "Add" and uses[0].node.domain == "":
        add = uses[0].node
        other, shift = _const_operand(add)
        shift = _per_channel(shift, channels) if other is y else None
        if shift is not None:
            nodes, t = [mul, add], shift
    if nodes[-1].outputs[0].is_graph_output():
        return "its output is a graph output"
    return x, s, t, nodes


def fuse_hardswish(model: ir.Model) -> int:
    """x * clip(x + 3, 0, 6) / 6 (or * 1/6) -> HardSwish(x) in opset >= 14 graphs, else
    x * HardSigmoid(x) (alpha 1/6, beta 0.5: the same function, two nodes). Returns the count."""
    graph = model.graph
    names = UniqueNames(graph)
    native = model.opset_imports.get("", 1) >= HARDSWISH_MIN_OPSET
    fused = 0
    for clip in [n for n in graph if n.op_type == "Clip" and n.domain == ""]:
        match = _hardswish_match(clip)
        if match is None:
            continue
        x, nodes = match
        last = nodes[-1]
        if native:
            node = ir.Node("", "HardSwish", [x], name=names.fresh(f"{last.name}_hardswish"))
            graph.insert_after(last, node)
        else:
            gate = ir.Node("", "HardSigmoid", [x], name=names.fresh(f"{last.name}_hardsigmoid"),
                           attributes=[ir.AttrFloat32("alpha", 1 / 6), ir.AttrFloat32("beta", 0.5)])
            node = ir.Node("", "Mul", [x, gate.outputs[0]], name=names.fresh(f"{last.name}_hardswish"))
            graph.insert_after(last, [gate, node])
        out = last.outputs[0]
        name = out.name
        node.outputs[0].shape, node.outputs[0].type = out.shape, out.type
        out.replace_all_uses_with(node.outputs[0], replace_graph_outputs=True)
        out.name = None
        node.outputs[0].name = name  # the calibration and the per-node tools key tensors by name
        for n in reversed(nodes):
            graph.remove(n, safe=True)
        fused += 1
    return fused


def _hardswish_match(clip: ir.Node) -> tuple[ir.Value, list[ir.Node]] | None:
    add = clip.inputs[0].producer() if clip.inputs and clip.inputs[0] is not None else None
    if add is None or add.op_type != "Add" or len(add.outputs[0].uses()) != 1:
        return None
    x, three = _const_operand(add)
    if x is None or three.size != 1 or float(three.reshape(())) != 3.0:
        return None
    bounds = [const_value(v) if v is not None else None for v in clip.inputs[1:3]]
    if len(bounds) != 2 or any(b is None or b.size != 1 for b in bounds) or (float(bounds[0]), float(bounds[1])) != (0.0, 6.0):
        return None
    uses = clip.outputs[0].uses()
    if len(uses) != 1 or clip.outputs[0].is_graph_output():
        return None
    mul = uses[0].node
    if mul.op_type != "Mul" or {id(v) for v in mul.inputs} != {id(x), id(clip.outputs[0])}:
        return None
    uses = mul.outputs[0].uses()
    if len(uses) != 1 or mul.outputs[0].is_graph_output():
        return None
    scale = uses[0].node
    _, c = _const_operand(scale) if scale.op_type in ("Div", "Mul") else (None, None)
    if c is None or c.size != 1 or scale.inputs[0] is not mul.outputs[0]:
        return None
    want = 6.0 if scale.op_type == "Div" else 1 / 6.0
    if not np.isclose(float(c.reshape(())), want, rtol=1e-6):
        return None
    return x, [add, clip, mul, scale]


def _const_operand(node: ir.Node) -> tuple[ir.Value | None, np.ndarray | None]:
    """(the non-constant input, the constant) of a binary node with exactly one constant input."""
    if len(node.inputs) != 2 or any(v is None for v in node.inputs):
        return None, None
    consts = [const_value(v) for v in node.inputs]
    if (consts[0] is None) == (consts[1] is None):
        return None, None
    k = 0 if consts[0] is not None else 1
    if not np.issubdtype(consts[k].dtype, np.floating):
        return None, None
    return node.inputs[1 - k], consts[k]


def _channels(x: ir.Value) -> int | None:
    if x.shape is None or len(x.shape) != 4 or not isinstance(x.shape[1], int):
        return None
    return x.shape[1]


def _per_channel(c: np.ndarray | None, channels: int) -> np.ndarray | None:
    """c as a (channels,) float64 vector when it broadcasts along axis 1 of NCHW only."""
    if c is None:
        return None
    shape = (1,) * (4 - c.ndim) + c.shape if c.ndim <= 4 else None
    if shape is None or shape[0] != 1 or shape[2:] != (1, 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(c.reshape(-1).astype(np.float64), (channels,)).copy()


def _as_batchnorm(graph: ir.Graph, x: ir.Value, s: np.ndarray, t: np.ndarray, nodes: list[ir.Node],
                  names: UniqueNames) -> ir.Node:
    """A BatchNormalization computing x * s + t, placed after `nodes` and taking over their output's uses."""
    dtype = np.float32
    consts = []
    for base, array in (("scale", s), ("shift", t), ("mean", np.zeros_like(s)), ("var", np.ones_like(s))):
        value = ir.Value(name=names.fresh(f"{nodes[0].name}_affine_{base}"), const_value=ir.tensor(array.astype(dtype)))
        value.shape, value.type = ir.Shape(array.shape), ir.TensorType(ir.DataType.FLOAT)
        graph.register_initializer(value)
        consts.append(value)
    bn = ir.Node("", "BatchNormalization", [x, *consts], attributes=[ir.AttrFloat32("epsilon", 0.0)],
                 name=names.fresh(f"{nodes[0].name}_affine"))
    graph.insert_after(nodes[-1], bn)
    out = nodes[-1].outputs[0]
    bn.outputs[0].shape, bn.outputs[0].type = out.shape, out.type
    out.replace_all_uses_with(bn.outputs[0])
    for node in reversed(nodes):  # the BN alone uses x now, as fold_batchnorm's predicates expect
        graph.remove(node, safe=True)
    return bn


def _undo(graph: ir.Graph, bn: ir.Node, chain: list[tuple[str, list[ir.Value | None], str | None, str | None]]) -> None:
    """Put the Mul (+ Add) back where the BatchNormalization stands, with their names."""
    x = bn.inputs[0]
    previous = None
    for op, inputs, name, out_name in chain:
        ins = [x if v is None else v for v in inputs] if previous is None else [previous if v is None else v for v in inputs]
        node = ir.Node("", op, ins, name=name)
        graph.insert_before(bn, node)
        node.outputs[0].name = out_name
        previous = node.outputs[0]
    previous.shape, previous.type = bn.outputs[0].shape, bn.outputs[0].type
    bn.outputs[0].replace_all_uses_with(previous)
    consts = list(bn.inputs[1:])
    graph.remove(bn, safe=True)
    for value in consts:
        graph.initializers.pop(value.name, None)


def _recipe(nodes: list[ir.Node]) -> list[tuple[str, list[ir.Value | None], str | None, str | None]]:
    """How to rebuild the chain: op, inputs (None where the chain's running value goes), names."""
    recipe, running = [], None
    for node in nodes:
        inputs = [None if (v is running or (running is None and const_value(v) is None)) else v for v in node.inputs]
        recipe.append((node.op_type, inputs, node.name, node.outputs[0].name))
        running = node.outputs[0]
    return recipe
