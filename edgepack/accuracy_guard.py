"""Accuracy guard for int8: when a quantized artifact misses the user's target (--min-cosine /
--min-top1), find the layer that hurts most and keep it in float, then re-quantize from the same
calibration file and check again, until the target is met or no candidate is left.

Sensitivity is measured per node with `edgepack.divergence.per_node_divergence`: the fp32 graph and
the current int8 graph run on held-out samples with every intermediate tensor exposed, tensors are
matched by ONNX name, and each node is scored by how much SQNR it loses relative to its inputs
(its local damage). Excluding a node keeps it in float with a Q/DQ pair around it (ONNX Runtime's
`nodes_to_exclude`), so the artifact stays int8 but is no longer full-integer; the excluded nodes
are reported as `float_nodes`."""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edgepack.converters.quantize_int8 import Int8Result, quantize_int8

if TYPE_CHECKING:
    from edgepack.artifacts import ExportContext

MAX_ROUNDS = 12
GUARD_SAMPLES = 8  # held-out samples used to rank nodes (intermediate tensors are large)


@dataclass
class Repair:
    fidelity: dict
    float_nodes: list[str]
    result: Int8Result
    history: list[dict] = field(default_factory=list)


def repair_int8(ctx: "ExportContext", path: Path, fidelity: dict, *, entry: dict | None = None,
                rebuild: Callable[[list[str]], None] | None = None, start: list[str] = ()) -> Repair:
    """Keep nodes in float until the artifact at `path` meets the target. For an ONNX artifact the
    int8 ONNX itself is ranked and rebuilt; for another format, `rebuild(float_nodes)` rewrites the
    artifact and an int8 ONNX with the same float nodes (from the same calibration file) is the
    stand-in that ranks the nodes, since tensors are matched by ONNX name. `start`: nodes already in
    float (e.g. the int8 ONNX's choice, reused by the int8 TFLite of the same export)."""
    from edgepack.artifacts import _missed, verify_artifact
    from edgepack.divergence import per_node_divergence

    fp32 = ctx.fp32_proto
    graph_nodes = {n.name for n in fp32.graph.node}
    feeds = ctx.vset.feeds()[:GUARD_SAMPLES]
    entry = entry or {"path": path.name, "format": "onnx"}
    excluded: list[str] = list(start)
    history = [_step(excluded, fidelity, None)]
    result = None
    with tempfile.TemporaryDirectory(prefix="edgepack-guard-") as tmp:
        rank_path = path if rebuild is None else Path(tmp) / "rank.int8.onnx"

        def requantize() -> Int8Result:
            return quantize_int8(fp32, rank_path, cache_path=ctx.calibration_path, method=ctx.options.calib_method,
                                 calib_feeds=ctx.calib_feeds, nodes_to_exclude=excluded)

        if rebuild is not None:
            requantize()
        for _ in range(MAX_ROUNDS):
            ranking = per_node_divergence(fp32, rank_path, feeds)
            rows = sorted((r for r in ranking if r.get("node") in graph_nodes),
                          key=lambda r: r.get("sqnr_drop_db") or 0.0, reverse=True)
            worst = rows[0] if rows else None
            if worst is None:
                break
            if worst["node"] not in excluded:
                new = [worst["node"]]
            else:
                # The damage is at a node already in float: what still hurts is the int8 data it
                # reads, so keep the nearest quantized producers of its inputs in float.
                new = _quantized_producers(fp32, worst["node"], excluded)
            if not new:
                break
            excluded.extend(new)
            for name in new:
                excluded.extend(n for n in _fused_activation_inputs(fp32, name, excluded) if n not in excluded)
            result = requantize()
            if rebuild is not None:
                rebuild(list(excluded))
            fidelity = verify_artifact(ctx, entry, "int8")
            history.append(_step(excluded, fidelity, worst))
            if not _missed(fidelity):
                break
    if result is None:  # nothing could be excluded: keep the artifact as it was
        import onnx

        from edgepack.converters.quantize_int8 import count_quantized_nodes

        q, f = count_quantized_nodes(onnx.load(str(path))) if rebuild is None else (0, 0)
        result = Int8Result(q, f, ())
    return Repair(fidelity, excluded, result, history)


_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh")


def _fused_activation_inputs(model, node_name: str, excluded: list[str]) -> list[str]:
    """ONNX Runtime quantizes an activation's output together with the layer before it, so a
    node kept in float still reads int8 data when its input comes from such an activation. Keep
    that activation in float too when everything it feeds is in float."""
    nodes = {n.name: n for n in model.graph.node}
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[str]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.name)
    out = []
    for tensor in nodes[node_name].input:
        p = producers.get(tensor)
        if p is not None and p.op_type in _ACTIVATIONS and all(c in excluded for c in consumers.get(tensor, [])):
            out.append(p.name)
    return out


def _quantized_producers(model, node_name: str, excluded: list[str]) -> list[str]:
    """Nearest producers of `node_name`'s inputs that are not in float yet, walking up through
    nodes already in float."""
    nodes = {n.name: n for n in model.graph.node}
    producers = {o: n for n in model.graph.node for o in n.output}
    found: list[str] = []
    stack, seen = list(nodes[node_name].input), set()
    while stack:
        tensor = stack.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        p = producers.get(tensor)
        if p is None:
            continue
        if p.name in excluded:
            stack.extend(p.input)
        elif p.name not in found:
            found.append(p.name)
    return found


def _step(excluded: list[str], fidelity: dict, worst: dict | None) -> dict:
    step = {
        "float_nodes": list(excluded),
        "cosine": fidelity.get("cosine"),
        "top1_agreement": fidelity.get("top1_agreement"),
        "rel_error": fidelity.get("rel_error"),
    }
    if worst is not None:
        step["kept_in_float"] = {"node": worst["node"], "op": worst.get("op"), "sqnr_drop_db": worst.get("sqnr_drop_db")}
    return step
