"""Fold every BatchNormalization the exporter left into a neighbour's weights.

Order of preference for each BN (y = x * s + t per channel, s = gamma / sqrt(var + eps),
t = beta - mean * s):
1. into its producer when the producer's output feeds only this BN: Conv, ConvTranspose, Gemm
   (BatchNorm1d after Linear), MatMul with a constant 2-D weight (optionally followed by a
   constant bias Add);
2. into its consumers when every consumer is a Conv with no zero padding (or t == 0, where zero
   padding of x and of x*s agree) or a Gemm (pre-activation networks, BN1d before Linear);
3. otherwise into one per-channel Mul + Add, so no BatchNormalization is left.

`can_fold_into_producer` / `can_fold_into_consumers` return None or the reason they refuse, and
the report carries that reason for every BN that ended up as Mul + Add."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgepack.converters.node_names import module_key
from edgepack.converters import PassResult, UniqueNames, const_value, has_padding

_ABSORBING_PRODUCERS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add")


def fold_batchnorm(model: ir.Model) -> PassResult:
    graph = model.graph
    names = UniqueNames(graph)
    result = PassResult("fold_batchnorm", False, {"into_producer": 0, "into_consumer": 0, "to_mul_add": 0, "kept": 0})
    for bn in [n for n in graph if n.op_type == "BatchNormalization" and n.domain == ""]:
        label = _label(bn)
        affine = bn_affine(bn)
        if isinstance(affine, str):
            result.counts["kept"] += 1
            result.skipped.append({"node": label, **module_key(bn), "why": affine})
            continue
        s, t = affine
        why_producer = can_fold_into_producer(bn, s)
        if why_producer is None:
            into = _fold_into_producer(graph, bn, s, t, names)
            result.counts["into_producer"] += 1
            result.details.append({"node": label, **module_key(bn), "folded_into": into, "where": "producer"})
            continue
        why_consumers = can_fold_into_consumers(bn, t)
        if why_consumers is None:
            into = _fold_into_consumers(graph, bn, s, t, names)
            result.counts["into_consumer"] += 1
            result.details.append({"node": label, **module_key(bn), "folded_into": into, "where": "consumers"})
            continue
        rank = _rank(bn.inputs[0])
        if rank is None:
            result.counts["kept"] += 1
            result.skipped.append({"node": label, **module_key(bn),
                                   "why": f"{why_producer}; {why_consumers}; input rank unknown, kept as BatchNormalization"})
            continue
        _to_mul_add(graph, bn, s, t, rank, names)
        result.counts["to_mul_add"] += 1
        result.skipped.append({"node": label, **module_key(bn),
                               "why": f"not folded: {why_producer}; {why_consumers}; replaced by per-channel Mul + Add"})
    result.modified = any(result.counts[k] for k in ("into_producer", "into_consumer", "to_mul_add"))
    if not any(result.counts.values()):
        fused = sum(1 for n in graph if n.metadata_props.get("pkg.onnxscript.rewriter.rule_name") == "FuseBatchNormIntoConv")
        if fused:  # say why the pass shows 0 folds
            result.skipped.append({"node": "*", "why": f"nothing left to fold: the PyTorch dynamo exporter already folded "
                                                       f"{fused} BatchNorm(s) into their convs"})
    return result


# ---------------------------------------------------------------- predicates


def bn_affine(bn: ir.Node) -> tuple[np.ndarray, np.ndarray] | str:
    """(s, t) in float64, or why this BN cannot be treated as an affine map."""
    if bn.attributes.get_int("training_mode", 0):
        return "training_mode=1 (batch statistics)"
    if len(bn.outputs) > 1 and any(o.uses() or o.is_graph_output() for o in bn.outputs[1:]):
        return "running-statistics outputs are used"
    consts = [const_value(v) for v in bn.inputs[1:5]]
    if len(consts) != 4 or any(c is None for c in consts):
        return "scale, bias, mean or variance is not a constant"
    gamma, beta, mean, var = (c.astype(np.float64) for c in consts)
    eps = bn.attributes.get_float("epsilon", 1e-5)
    s = gamma / np.sqrt(var + eps)
    return s, beta - mean * s


def can_fold_into_producer(bn: ir.Node, s: np.ndarray) -> str | None:
    x = bn.inputs[0]
    producer = x.producer()
    if producer is None:
        return "input is a graph input"
    op = producer.op_type
    if op not in _ABSORBING_PRODUCERS or producer.domain != "":
        return f"after {op} (cannot absorb a scale)"
    if len(x.uses()) != 1 or x.is_graph_output():
        return f"{op} output also feeds {len(x.uses()) - 1} other node(s) or is a graph output"
    channels = s.shape[0]
    if op == "Conv":
        w = const_value(producer.inputs[1])
        if w is None or (len(producer.inputs) > 2 and producer.inputs[2] is not None and const_value(producer.inputs[2]) is None):
            return "Conv weights are not constant"
        return None if w.shape[0] == channels else f"Conv has {w.shape[0]} output channels, BN {channels}"
    if op == "ConvTranspose":
        w = const_value(producer.inputs[1])
        if w is None or (len(producer.inputs) > 2 and producer.inputs[2] is not None and const_value(producer.inputs[2]) is None):
            return "ConvTranspose weights are not constant"
        cout = w.shape[1] * producer.attributes.get_int("group", 1)
        return None if cout == channels else f"ConvTranspose has {cout} output channels, BN {channels}"
    if op == "Gemm":
        return _why_not_gemm_producer(producer, channels)
    if op == "MatMul":
        return _why_not_matmul(producer, channels)
    # Add: MatMul (+ constant bias) -> BN
    inner, bias = _matmul_bias(producer)
    if inner is None:
        return "after Add that is not a MatMul + constant bias"
    if len(inner.outputs[0].uses()) != 1:
        return "MatMul output also feeds other nodes"
    why = _why_not_matmul(inner, channels)
    if why is None and _rank(producer.outputs[0]) != 2:
        why = "MatMul + bias output is not 2-D (the bias broadcasts it to another rank)"
    if why is None and (bias.size not in (1, channels) or (bias.ndim and bias.shape[-1] != bias.size)):
        why = f"bias of shape {list(bias.shape)} is not one value per feature ({channels}) along the last axis"
    return why


def can_fold_into_consumers(bn: ir.Node, t: np.ndarray) -> str | None:
    y = bn.outputs[0]
    if y.is_graph_output():
        return "output is a graph output"
    uses = y.uses()
    if not uses:
        return "output is unused"
    for use in uses:
        node, index = use.node, use.idx
        if node.op_type == "Conv" and node.domain == "" and index == 0:
            if const_value(node.inputs[1]) is None:
                return "consumer Conv weights are not constant"
            if len(node.inputs) > 2 and node.inputs[2] is not None and const_value(node.inputs[2]) is None:
                return "consumer Conv bias is not constant"
            if has_padding(node) and np.any(t != 0):
                return f"consumer Conv {node.name} zero-pads its input (the BN shift would differ at the borders)"
        elif node.op_type == "Gemm" and node.domain == "" and index == 0:
            if node.attributes.get_int("transA", 0):
                return "consumer Gemm transposes its input"
            if const_value(node.inputs[1]) is None or (len(node.inputs) > 2 and node.inputs[2] is not None and const_value(node.inputs[2]) is None):
                return "consumer Gemm weights are not constant"
        elif node.op_type in ("Conv", "Gemm") and node.domain == "":
            return f"feeds input {index} of {node.op_type} {node.name} (only its data input can absorb a scale)"
        else:
            return f"feeds {node.op_type} (non-linear or not channel-mixing)"
    return None


def _why_not_gemm_producer(gemm: ir.Node, channels: int) -> str | None:
    w = const_value(gemm.inputs[1])
    if w is None or w.ndim != 2:
        return "Gemm weights are not a constant matrix"
    if len(gemm.inputs) > 2 and gemm.inputs[2] is not None and const_value(gemm.inputs[2]) is None:
        return "Gemm bias is not constant"
    n = w.shape[0] if gemm.attributes.get_int("transB", 0) else w.shape[1]
    return None if n == channels else f"Gemm has {n} outputs, BN {channels}"


def _why_not_matmul(matmul: ir.Node, channels: int) -> str | None:
    w = const_value(matmul.inputs[1])
    if w is None or w.ndim != 2:
        return "MatMul weight is not a constant matrix"
    if _rank(matmul.outputs[0]) != 2:
        return "MatMul output is not 2-D (BN channel axis is not its feature axis)"
    return None if w.shape[1] == channels else f"MatMul has {w.shape[1]} outputs, BN {channels}"


def _matmul_bias(add: ir.Node) -> tuple[ir.Node | None, np.ndarray | None]:
    for i in (0, 1):
        other = add.inputs[1 - i]
        bias = const_value(other)
        producer = add.inputs[i].producer() if add.inputs[i] is not None else None
        if bias is not None and producer is not None and producer.op_type == "MatMul":
            return producer, bias
    return None, None


# ---------------------------------------------------------------- rewrites


def _fold_into_producer(graph: ir.Graph, bn: ir.Node, s: np.ndarray, t: np.ndarray, names: UniqueNames) -> str:
    producer = bn.inputs[0].producer()
    op = producer.op_type
    if op == "Conv":
        w = const_value(producer.inputs[1])
        bias = _bias_or_zeros(producer, 2, w.shape[0])
        _set_input(graph, producer, 1, w * s.reshape((-1,) + (1,) * (w.ndim - 1)), names)
        _set_input(graph, producer, 2, bias * s + t, names, like=w)
    elif op == "ConvTranspose":
        w = const_value(producer.inputs[1])
        g = producer.attributes.get_int("group", 1)
        cin, cout_g = w.shape[0], w.shape[1]
        ws = w.reshape((g, cin // g, cout_g) + w.shape[2:]) * s.reshape((g, 1, cout_g) + (1,) * (w.ndim - 2))
        bias = _bias_or_zeros(producer, 2, cout_g * g)
        _set_input(graph, producer, 1, ws.reshape(w.shape), names)
        _set_input(graph, producer, 2, bias * s + t, names, like=w)
    elif op == "Gemm":
        w = const_value(producer.inputs[1])
        trans_b = producer.attributes.get_int("transB", 0)
        beta = producer.attributes.get_float("beta", 1.0)
        c = const_value(producer.inputs[2]) if len(producer.inputs) > 2 and producer.inputs[2] is not None else np.zeros(1)
        _set_input(graph, producer, 1, w * (s[:, None] if trans_b else s[None, :]), names)
        _set_input(graph, producer, 2, beta * c.astype(np.float64) * s + t, names, like=w)
        producer.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
    elif op == "MatMul":
        w = const_value(producer.inputs[1])
        _set_input(graph, producer, 1, w * s[None, :], names)
        add = ir.Node("", "Add", [producer.outputs[0], _new_init(graph, t, names, "bn_shift", like=w)], name=names.fresh(f"{_label(bn)}_shift"))
        graph.insert_after(producer, add)
        _bypass(bn, add.outputs[0])
        graph.remove(bn, safe=True)
        return producer.name
    else:  # Add after MatMul
        matmul, bias = _matmul_bias(producer)
        w = const_value(matmul.inputs[1])
        _set_input(graph, matmul, 1, w * s[None, :], names)
        bias_index = 1 if producer.inputs[0].producer() is matmul else 0
        _set_input(graph, producer, bias_index, bias.astype(np.float64).reshape(-1) * s + t, names, like=w)
    _bypass(bn, producer.outputs[0])
    graph.remove(bn, safe=True)
    return producer.name


def _fold_into_consumers(graph: ir.Graph, bn: ir.Node, s: np.ndarray, t: np.ndarray, names: UniqueNames) -> str:
    into = []
    for use in list(bn.outputs[0].uses()):
        node = use.node
        if node.op_type == "Conv":
            w = const_value(node.inputs[1])
            g = node.attributes.get_int("group", 1)
            cout, cin_g = w.shape[0], w.shape[1]
            wg = w.astype(np.float64).reshape((g, cout // g, cin_g) + w.shape[2:])
            sg = s.reshape((g, 1, cin_g) + (1,) * (w.ndim - 2))
            tg = t.reshape((g, 1, cin_g) + (1,) * (w.ndim - 2))
            shift = (wg * tg).reshape(cout, -1).sum(axis=1)
            bias = _bias_or_zeros(node, 2, cout)
            _set_input(graph, node, 1, (wg * sg).reshape(w.shape), names)
            _set_input(graph, node, 2, bias + shift, names, like=w)
        else:  # Gemm
            w = const_value(node.inputs[1]).astype(np.float64)
            trans_b = node.attributes.get_int("transB", 0)
            alpha = node.attributes.get_float("alpha", 1.0)
            beta = node.attributes.get_float("beta", 1.0)
            wk = w.T if trans_b else w  # (K, N)
            c = const_value(node.inputs[2]).astype(np.float64) if len(node.inputs) > 2 and node.inputs[2] is not None else np.zeros(1)
            _set_input(graph, node, 1, (wk * s[:, None]).T if trans_b else wk * s[:, None], names, like=const_value(node.inputs[1]))
            _set_input(graph, node, 2, beta * c + alpha * (t @ wk), names, like=const_value(node.inputs[1]))
            node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
        node.replace_input_with(use.idx, bn.inputs[0])
        into.append(node.name)
    graph.remove(bn, safe=True)
    return ", ".join(into)


def _to_mul_add(graph: ir.Graph, bn: ir.Node, s: np.ndarray, t: np.ndarray, rank: int, names: UniqueNames) -> None:
    shape = (-1,) + (1,) * (rank - 2)
    x, base = bn.inputs[0], _label(bn)
    # The constants take X's type: since opset 15 scale/bias may be float while X is float16.
    like = np.zeros(0, dtype=x.dtype.numpy()) if x.dtype is not None else const_value(bn.inputs[1])
    mul = ir.Node("", "Mul", [x, _new_init(graph, s.reshape(shape), names, f"{base}_scale", like=like)],
                  name=names.fresh(f"{base}_mul"))
    add = ir.Node("", "Add", [mul.outputs[0], _new_init(graph, t.reshape(shape), names, f"{base}_shift", like=like)],
                  name=names.fresh(f"{base}_add"))
    mul.outputs[0].name = names.fresh(f"{base}_scaled")
    graph.insert_before(bn, [mul, add])
    _bypass(bn, add.outputs[0])
    graph.remove(bn, safe=True)


# ---------------------------------------------------------------- helpers




def _label(node: ir.Node) -> str:
    return node.name or node.outputs[0].name or node.op_type


def _rank(value: ir.Value) -> int | None:
    return None if value.shape is None else len(value.shape)




def _bias_or_zeros(node: ir.Node, index: int, n: int) -> np.ndarray:
    if len(node.inputs) > index and node.inputs[index] is not None:
        return const_value(node.inputs[index]).astype(np.float64)
    return np.zeros(n)


def _new_init(graph: ir.Graph, array: np.ndarray, names: UniqueNames, base: str, like: np.ndarray) -> ir.Value:
    value = ir.Value(name=names.fresh(base), const_value=ir.tensor(np.ascontiguousarray(array, dtype=like.dtype)))
    value.shape = ir.Shape(array.shape)
    value.type = ir.TensorType(ir.DataType.from_numpy(like.dtype))
    graph.register_initializer(value)
    return value


def _set_input(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray, names: UniqueNames, like: np.ndarray | None = None) -> None:
    """Give `node` a new constant at input `index` (a fresh initializer, so shared weights stay intact)."""
    old = node.inputs[index] if len(node.inputs) > index else None
    ref = like if like is not None else const_value(old)
    base = (old.name if old is not None and old.name else f"{node.name}_in{index}") + "_bnfold"
    value = _new_init(graph, array, names, base, like=ref)
    if len(node.inputs) <= index:
        node.resize_inputs(index + 1)
    node.replace_input_with(index, value)


def _bypass(bn: ir.Node, replacement: ir.Value) -> None:
    """Point every use of the BN output (graph outputs included, keeping the name) at `replacement`."""
    y = bn.outputs[0]
    name, is_output = y.name, y.is_graph_output()
    replacement.shape = replacement.shape or y.shape
    replacement.type = replacement.type or y.type
    y.replace_all_uses_with(replacement, replace_graph_outputs=True)
    if is_output:
        y.name = None
        replacement.name = name
