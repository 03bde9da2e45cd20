"""Physically remove pruned channels from the ONNX graph, exactly.

Written by hand because no maintained library does this on ONNX graphs (NNI ModelSpeedup and
AIMET winnow worked on PyTorch modules and are archived or deprecated).

How it works, in three steps over the shape-inferred graph (after BatchNorm folding):

1. Constant analysis. For every tensor with a channel axis (axis 1) we compute, per channel, the
   constant value it provably holds everywhere, or NaN when it varies. A Conv/Gemm output channel is
   constant when every input channel it reads through a non-zero weight is constant (an all-zero
   filter gives its bias); constants pass through activations, per-channel Mul/Add, pooling,
   Resize, Concat, Split/Slice, Flatten, channel shuffle and depthwise (and grouped) convs. Zero
   padding breaks the constant unless it is 0 (or `approx` is set; never for ConvTranspose, whose
   output from a constant input is not constant even inside).
2. Channel groups. Channels that must be removed together are unified (union-find over
   (tensor, channel) atoms): both sides of element-wise ops, Concat members and their slices,
   depthwise conv in/out, shuffle permutations, Flatten's expansion by H x W. Channel-mixing
   nodes (Conv with group 1, Gemm, MatMul, ConvTranspose) are the boundaries: their output
   channels are dropped from the weights, and a constant entering them is folded into their bias.
   A group is removed when nothing blocks it (graph inputs/outputs, ops we do not understand,
   grouped convs, a non-zero constant entering a zero-padded conv, a tensor used as a weight or
   read inside a subgraph) and every atom that leaves the group into a channel-mixing consumer is
   constant. A tensor never loses every channel (one group is kept), and with `round_channels`
   groups are kept until each layer's width is a multiple of it.
3. Rewrite. Weights, biases, per-channel constants, Split sizes, Slice bounds, Resize sizes and
   Reshape targets are sliced; a channel shuffle whose channels changed becomes one Gather with
   explicit indices.

`find_removable(...)` is the predicate half (what could go and why the rest cannot);
`remove_pruned_channels(...)` applies it and returns the PassResult for the report.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx_ir as ir

from edgepack.converters import PassResult, UniqueNames
from edgepack.converters import attr_f, const_value, static_shape
from edgepack.converters.channel_rules import BINARY, MIXING, Analysis, find_removable
from edgepack.converters.node_names import module_key, module_path
from edgepack.errors import UsageError

__all__ = ["find_removable", "remove_pruned_channels"]


# ---------------------------------------------------------------- step 3: rewrite


def remove_pruned_channels(model: ir.Model, *, approx: bool = False, round_channels: int = 1) -> PassResult:
    from edgepack.model_stats import count_macs, count_params

    if isinstance(round_channels, bool) or not isinstance(round_channels, int) or round_channels < 1:
        raise UsageError(
            f"round_channels={round_channels!r}: it must be an integer >= 1 (1 keeps any width); "
            "pass --round-channels 1, or e.g. 4 or 8 to keep widths SIMD-friendly"
        )
    graph = model.graph
    result = PassResult("remove_pruned_channels", False)
    params_before, macs_before = count_params(model), count_macs(model)
    an = find_removable(model, approx=approx)
    removed_roots = set(an.removable_roots)
    layer_outputs = [(n, n.outputs[0]) for n in graph if n.op_type in MIXING or _is_depthwise(n)]
    kept_nonempty = _keep_nonempty(an, removed_roots)
    kept_for_rounding = _round_widths(an, layer_outputs, removed_roots, round_channels)
    keep = {v: np.array([i for i in range(ch.count) if an.find(ch.base + i) not in removed_roots], dtype=np.int64)
            for v, ch in an.info.items()}
    layers = []
    for node, out in layer_outputs:
        if out in an.info:
            before, after = an.info[out].count, len(keep[out])
            layers.append({"layer": node.name, **module_key(node), "op": node.op_type,
                           "channels_before": before, "channels_after": after})
    if any(len(k) < an.info[v].count for v, k in keep.items()):
        _rewrite(model, an, keep)
        _reinfer(model)
    result.modified = any(entry["channels_after"] < entry["channels_before"] for entry in layers)
    result.details = [entry for entry in layers if entry["channels_after"] < entry["channels_before"]]
    zeroed = sum(int((~np.isnan(an.info[out].const)).sum()) for _, out in layer_outputs if out in an.info)
    result.skipped = _kept_reasons(an, layer_outputs, kept_nonempty, kept_for_rounding, round_channels, removed_roots)
    params_after, macs_after = count_params(model), count_macs(model)
    result.counts = {
        "channels_removed": sum(e["channels_before"] - e["channels_after"] for e in layers),
        "layers_slimmed": len(result.details),
        "params_before": params_before,
        "params_after": params_after,
        "macs_before": macs_before,
        "macs_after": macs_after,
        "approx": int(approx),
        "round_channels": round_channels,
        "constant_channels": zeroed,
    }
    sparse = _sparsity(graph)
    result.extra = {
        "summary": _summary(zeroed, result.counts["channels_removed"], result.counts["layers_slimmed"], result.skipped),
        "sparsity": sparse,
        "hint": "scattered zeros do not speed up dense runtimes; only whole filters/channels are removed "
        "(use structured pruning, e.g. prune.ln_structured(..., dim=0))" if sparse else None,
    }
    return result


def _is_depthwise(node: ir.Node) -> bool:
    if node.op_type != "Conv":
        return False
    w = node.inputs[1].shape if node.inputs[1] is not None else None
    return node.attributes.get_int("group", 1) > 1 and w is not None and w[1] == 1


def _keep_nonempty(an: Analysis, removed: set[int]) -> set[int]:
    """Un-remove one group wherever a tensor would lose every channel (a 0-channel tensor is not a
    model any runtime accepts, and a conv whose filters are all dead is the user's to delete)."""
    restored: set[int] = set()
    for ch in an.info.values():
        roots = [an.find(ch.base + i) for i in range(ch.count)]
        if roots and all(r in removed for r in roots):
            removed.discard(roots[0])
            restored.add(roots[0])
    return restored


def _round_widths(an: Analysis, layer_outputs: list, removed: set[int], n: int) -> set[int]:
    """Un-remove groups until each layer's remaining width is a multiple of n; return those roots."""
    restored: set[int] = set()
    if n <= 1:
        return restored
    for _ in range(20):
        changed = False
        for _, out in layer_outputs:
            ch = an.info.get(out)
            if ch is None:
                continue
            roots = [an.find(ch.base + i) for i in range(ch.count)]
            gone = [r for r in roots if r in removed]
            remaining = ch.count - len(gone)
            need = (-remaining) % n
            if gone and need:
                for r in list(dict.fromkeys(gone))[:need]:
                    removed.discard(r)
                    restored.add(r)
                changed = True
        if not changed:
            break
    return restored


def _summary(zeroed: int, removed: int, layers: int, skipped: list[dict]) -> str | None:
    """One line for the console: '910 constant (zeroed-filter) channels -> 204 removed in 5 layers; 706 kept: ...'."""
    if not zeroed and not removed:
        return None
    kept: dict[str, int] = defaultdict(int)
    for item in skipped:
        kept[item["reason"]] += len(item["channels"])
    text = f"{zeroed} constant (zeroed-filter) channel(s) -> {removed} removed in {layers} layer(s)"
    if kept:
        text += f"; {sum(kept.values())} kept: " + ", ".join(f"{k} {why}" for why, k in sorted(kept.items(), key=lambda kv: -kv[1]))
    return text


def _tied_reason(an: Analysis, root: int, members: dict[int, list[int]], producer: dict[int, ir.Node]) -> str:
    """Why a constant channel stays when nothing blocks its group: it is tied (residual Add, Concat,
    depthwise conv) to channels of other layers that are not constant."""
    live = []
    for atom in members.get(root, []):
        node = producer.get(atom)
        if node is not None:
            label = module_path(node) or node.name
            if label not in live:
                live.append(label)
    where = f" of {', '.join(live[:4])}" + (" ..." if len(live) > 4 else "") if live else ""
    return (f"tied through a residual Add, Concat or depthwise conv to channels{where} whose filters are not zero "
            "(zero those filters too to remove them)")


def _kept_reasons(an: Analysis, layer_outputs: list, nonempty: set[int], rounded: set[int], n: int,
                  removed: set[int]) -> list[dict]:
    members: dict[int, list[int]] = defaultdict(list)
    producer: dict[int, ir.Node] = {}  # a varying atom of a layer output -> the layer
    for node, value in layer_outputs:
        ch = an.info.get(value)
        if ch is not None:
            for i in np.flatnonzero(np.isnan(ch.const)):
                producer[ch.base + int(i)] = node
                members[an.find(ch.base + int(i))].append(ch.base + int(i))
    out = []
    for node, value in layer_outputs:
        ch = an.info.get(value)
        if ch is None:
            continue
        whys: dict[str, list[int]] = defaultdict(list)
        for i in range(ch.count):
            root = an.find(ch.base + i)
            if root in nonempty:
                whys["kept so that no tensor loses every channel"].append(i)
            elif root in rounded:
                whys[f"kept to keep the width a multiple of {n} (--round-channels)"].append(i)
            elif root in an.reasons and not np.isnan(ch.const[i]):
                whys[an.reasons[root]].append(i)
            elif root not in removed and not np.isnan(ch.const[i]):
                whys[_tied_reason(an, root, members, producer)].append(i)
        for why, idx in whys.items():
            out.append({"node": node.name, **module_key(node), "channels": idx, "reason": _short(why),
                        "why": f"{len(idx)} constant channel(s) kept: {why}"})
    return out


def _short(why: str) -> str:
    """The kind of reason, for the one-line total."""
    for key, short in (("tied through", "tied to live channels"), ("zero-padded", "non-zero constant into a zero-padded conv"),
                       ("--round-channels", "for --round-channels"), ("loses every channel", "so no tensor loses every channel")):
        if key in why:
            return short
    return "blocked (" + why.split(":")[0][:60] + ")"


def _sparsity(graph: ir.Graph) -> list[dict]:
    """Scattered zeros per layer: zero weights outside whole dead output filters (those are either
    removed or listed in `skipped` with the reason they stay)."""
    rows = []
    for node in graph:
        if node.op_type in MIXING and len(node.inputs) > 1:
            w = const_value(node.inputs[1])
            if w is None or not w.size or w.ndim < 2:
                continue
            if node.op_type == "ConvTranspose":
                out_axis = 1
            elif node.op_type == "Conv" or (node.op_type == "Gemm" and node.attributes.get_int("transB", 0)):
                out_axis = 0
            else:
                out_axis = w.ndim - 1  # MatMul / Gemm weight (K, N)
            zero = w == 0
            dead = np.moveaxis(zero, out_axis, 0).reshape(w.shape[out_axis], -1).all(1)
            scattered = float(zero.mean() - dead.mean())
            if scattered > 0.0:
                rows.append({"layer": node.name, **module_key(node), "zero_fraction": round(scattered, 4)})
    return rows


def _rewrite(model: ir.Model, an: Analysis, keep: dict[ir.Value, np.ndarray]) -> None:
    graph = model.graph
    names = UniqueNames(graph)
    for node in list(graph):
        op = node.op_type
        out = node.outputs[0] if node.outputs else None
        if op in ("Conv", "ConvTranspose", "Gemm", "MatMul") and node.inputs[0] in an.info and out in an.info:
            _rewrite_mixing(graph, node, an, keep, names)
        elif op in BINARY and out in an.info:
            c_old = an.info[out].count
            rank = len(static_shape(out))
            for i, value in enumerate(node.inputs[:2]):
                arr = const_value(value)
                if arr is not None and len(keep[out]) < c_old:
                    sliced = _slice_operand(arr, rank, c_old, keep[out])
                    if sliced is not None:
                        node.replace_input_with(i, _init(graph, names, sliced, value.name or "c"))
        elif op == "Split" and node.inputs[0] in an.info and all(o in an.info for o in node.outputs):
            rank = len(static_shape(node.inputs[0]))
            shrunk = any(len(keep[o]) < an.info[o].count for o in node.outputs)
            if shrunk and node.attributes.get_int("axis", 0) % rank == 1:
                sizes = np.array([len(keep[o]) for o in node.outputs], dtype=np.int64)
                if len(node.inputs) > 1 and node.inputs[1] is not None:
                    node.replace_input_with(1, _init(graph, names, sizes, "split_sizes"))
                elif "split" in node.attributes:
                    node.attributes["split"] = ir.AttrInt64s("split", sizes.tolist())
                else:  # equal parts (opset 18 `num_outputs`): give the sizes, which excludes num_outputs
                    node.attributes.pop("num_outputs", None)
                    node.resize_inputs(2)
                    node.replace_input_with(1, _init(graph, names, sizes, "split_sizes"))
        elif op == "Slice" and node.inputs[0] in an.info and out in an.info:
            _rewrite_slice(graph, node, an, keep, names)
        elif op == "Resize" and len(node.inputs) > 3 and node.inputs[3] is not None and out in an.info:
            _rewrite_resize_sizes(graph, node, an, keep, names)
        elif op == "Reshape" and node.inputs[0] in an.info and out in an.info:
            shape = const_value(node.inputs[1])
            new = [int(d) for d in shape]
            old_c, new_c = an.info[out].count, len(keep[out])
            if len(new) > 1 and new[1] == old_c and old_c != new_c:
                new[1] = new_c
                node.replace_input_with(1, _init(graph, names, np.array(new, dtype=np.int64), "shape"))
    for first, tr, back, perm in an.shuffles:
        x, y = first.inputs[0], back.outputs[0]
        if len(keep[x]) == an.info[x].count:
            continue
        position = {int(c): i for i, c in enumerate(keep[x])}
        idx = np.array([position[int(perm[i])] for i in keep[y]], dtype=np.int64)
        gather = ir.Node("", "Gather", [x, _init(graph, names, idx, "shuffle_indices")],
                         attributes=[ir.AttrInt64("axis", 1)], name=names.fresh(f"{back.name}_gather"))
        graph.insert_before(first, gather)
        y.replace_all_uses_with(gather.outputs[0], replace_graph_outputs=True)
        gather.outputs[0].name = y.name
        y.name = None
        graph.remove([back, tr, first], safe=True)


def _rewrite_mixing(graph: ir.Graph, node: ir.Node, an: Analysis, keep: dict, names: UniqueNames) -> None:
    x, out = node.inputs[0], node.outputs[0]
    kin, kout = keep[x], keep[out]
    cin, cout = an.info[x].count, an.info[out].count
    if len(kin) == cin and len(kout) == cout:
        return
    removed_in = np.setdiff1d(np.arange(cin), kin)
    k = np.nan_to_num(an.info[x].const[removed_in])
    w = const_value(node.inputs[1]).astype(np.float64)
    dtype = const_value(node.inputs[1]).dtype
    has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
    op = node.op_type
    if op == "Conv" and node.attributes.get_int("group", 1) > 1:  # depthwise
        b = const_value(node.inputs[2]).astype(np.float64) if has_bias else None
        node.replace_input_with(1, _init(graph, names, w[kout].astype(dtype), node.inputs[1].name))
        if b is not None:
            node.replace_input_with(2, _init(graph, names, b[kout].astype(dtype), node.inputs[2].name))
        node.attributes["group"] = ir.AttrInt64("group", len(kin))
        return
    if op == "Conv":
        b = const_value(node.inputs[2]).astype(np.float64) if has_bias else np.zeros(cout)
        wf = w.reshape(cout, cin, -1)
        b = b + (wf[:, removed_in, :].sum(-1) * k[None, :]).sum(1)
        new_w = w[kout][:, kin]
        _set_bias(graph, node, 2, b[kout], dtype, names)
    elif op == "ConvTranspose":
        b = const_value(node.inputs[2]).astype(np.float64) if has_bias else np.zeros(cout)
        new_w = w[kin][:, kout]
        _set_bias(graph, node, 2, b[kout], dtype, names)
    else:  # Gemm / MatMul: W as (K, N)
        trans_b = op == "Gemm" and node.attributes.get_int("transB", 0)
        wk = w.T if trans_b else w
        alpha = attr_f(node, "alpha", 1.0) if op == "Gemm" else 1.0
        shift = alpha * (k[:, None] * wk[removed_in]).sum(0)
        new_wk = wk[kin][:, kout]
        new_w = new_wk.T if trans_b else new_wk
        if op == "Gemm":
            beta = attr_f(node, "beta", 1.0)
            c = const_value(node.inputs[2]).astype(np.float64) if has_bias else np.zeros(1)
            bias = np.broadcast_to(beta * c, (1, cout))[0] + shift
            _set_bias(graph, node, 2, bias[kout], dtype, names)
            node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
        elif np.any(shift[kout] != 0):
            add = ir.Node("", "Add", [out, _init(graph, names, shift[kout].astype(dtype), "matmul_shift")],
                          name=names.fresh(f"{node.name}_shift"))
            graph.insert_after(node, add)
            out.replace_all_uses_with(add.outputs[0], replace_graph_outputs=True)
            add.replace_input_with(0, out)
            # The Add takes over the name (it may be a graph output the user feeds on); MatMul gets a fresh one.
            name, out.name = out.name, names.fresh(f"{out.name or node.name}_matmul")
            add.outputs[0].name = name
            add.outputs[0].type = out.type
            an.info[add.outputs[0]] = an.info[out]
            keep[add.outputs[0]] = kout
    node.replace_input_with(1, _init(graph, names, np.ascontiguousarray(new_w).astype(dtype), node.inputs[1].name))


def _set_bias(graph: ir.Graph, node: ir.Node, index: int, bias: np.ndarray, dtype: np.dtype, names: UniqueNames) -> None:
    if len(node.inputs) <= index:
        node.resize_inputs(index + 1)
    node.replace_input_with(index, _init(graph, names, bias.astype(dtype), f"{node.name}_bias"))


def _slice_operand(arr: np.ndarray, out_rank: int, c_old: int, kept: np.ndarray) -> np.ndarray | None:
    axis = arr.ndim - (out_rank - 1)
    if axis < 0 or arr.shape[axis] != c_old:
        return None  # scalar or broadcast over channels: unchanged
    return np.take(arr, kept, axis=axis)


def _rewrite_slice(graph: ir.Graph, node: ir.Node, an: Analysis, keep: dict, names: UniqueNames) -> None:
    x = node.inputs[0]
    rank = len(static_shape(x))
    starts, ends = const_value(node.inputs[1]), const_value(node.inputs[2])
    axes = const_value(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else np.arange(len(starts))
    axes = [int(a) % rank for a in axes]
    if 1 not in axes:
        return
    i = axes.index(1)
    s, e, _ = slice(int(starts[i]), int(ends[i]), 1).indices(an.info[x].count)
    kept = keep[x]
    new_s = int(np.searchsorted(kept, s))
    new_e = int(np.searchsorted(kept, e))
    starts, ends = starts.copy(), ends.copy()  # keep their dtype: Slice needs one index type
    starts[i], ends[i] = new_s, new_e
    node.replace_input_with(1, _init(graph, names, starts, "slice_starts"))
    node.replace_input_with(2, _init(graph, names, ends, "slice_ends"))


def _rewrite_resize_sizes(graph: ir.Graph, node: ir.Node, an: Analysis, keep: dict, names: UniqueNames) -> None:
    """Resize by target sizes: the sizes name the channel count too."""
    out = node.outputs[0]
    old_c, new_c = an.info[out].count, len(keep[out])
    if old_c == new_c:
        return
    sizes = const_value(node.inputs[3]).copy()
    rank = len(static_shape(out))
    axes = [a % rank for a in node.attributes.get_ints("axes", list(range(rank)))]
    if 1 in axes and int(sizes[axes.index(1)]) == old_c:
        sizes[axes.index(1)] = new_c
        node.replace_input_with(3, _init(graph, names, sizes, "resize_sizes"))


def _init(graph: ir.Graph, names: UniqueNames, array: np.ndarray, base: str) -> ir.Value:
    array = np.ascontiguousarray(array)
    value = ir.Value(name=names.fresh(f"{base}_slim"), const_value=ir.tensor(array))
    value.shape = ir.Shape(array.shape)
    value.type = ir.TensorType(ir.DataType.from_numpy(array.dtype))
    graph.register_initializer(value)
    return value


def _reinfer(model: ir.Model) -> None:
    """Shapes changed: forget inferred shapes of intermediate values and infer again."""
    from edgepack.converters.cleanup_graph import infer_shapes

    graph = model.graph
    keep = set(graph.inputs) | set(graph.outputs)
    for node in graph:
        for out in node.outputs:
            if out not in keep:
                out.shape = None
    infer_shapes(model)
