"""The accuracy guard for int8, one loop for every format, on by default: while an int8 artifact
misses its floor (cosine 0.99 in every output and slice by default; --min-cosine / --min-top1),
find the part that hurts most, keep it in float,
rebuild from the same calibration and verify again, until the floor is met, nothing is left to
try, or more than MAX_FLOAT_MAC_SHARE of the MACs would run in float (then the artifact fails: a
float model is not called int8). Each format supplies the two format-specific steps as a `Guard`:

- `rank(float_units) -> rows`: what to keep in float next (each row names a `unit` and why);
- `rebuild(float_units) -> Built`: the artifact written again with those units in float.

ONNX and TFLite rank ONNX nodes with `edgepack.divergence.per_node_divergence` (fp32 graph against
an int8 ONNX with the same float nodes, tensors matched by ONNX name; each node scored by the SQNR
it loses relative to its inputs). ncnn ranks its own int8 layers (`layer_divergence`)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edgepack.verify import MAX_FLOAT_MAC_SHARE, missed, verify_artifact

if TYPE_CHECKING:
    from edgepack.artifacts.context import Built, ExportContext

MAX_ROUNDS = 12
GUARD_SAMPLES = 8  # held-out samples used to rank (intermediate tensors are large)


@dataclass
class Guard:
    rank: Callable[[list[str]], list[dict]]
    rebuild: Callable[[list[str]], "Built"]
    start: list[str] = field(default_factory=list)  # units already in float when the artifact was built


def repair_int8(ctx: "ExportContext", entry: dict, built: "Built") -> tuple[dict, "Built", list[dict]]:
    """(fidelity, the artifact as last built, one history step per round). `entry` is updated in
    place after every rebuild (path, IO rows and details) so verification runs the new file."""
    from edgepack.artifacts.context import describe, int8_mac_share

    guard = built.guard
    if guard is None:  # nothing this format can keep in float
        return entry["fidelity"], built, []
    float_units = list(guard.start)
    fidelity = entry["fidelity"]
    history = [_step(float_units, fidelity, None)]
    for _ in range(MAX_ROUNDS):
        rows = [r for r in guard.rank(float_units) if r["unit"] not in float_units]
        if not rows:
            break
        float_units.extend(dict.fromkeys(r["unit"] for r in rows))
        built = guard.rebuild(list(float_units))
        describe(entry, built, ctx)
        fidelity = verify_artifact(ctx, entry, "int8")
        history.append(_step(float_units, fidelity, rows[0]))
        share = int8_mac_share(ctx, entry)
        if share is not None:
            history[-1]["int8_mac_share"] = round(share, 4)
        if not missed(fidelity):
            break
        if share is not None and share < 1.0 - MAX_FLOAT_MAC_SHARE:  # more float would no longer be an int8 model
            break
    return fidelity, built, history


def _step(float_units: list[str], fidelity: dict, worst: dict | None) -> dict:
    step = {
        "float_nodes": list(float_units),
        "cosine": fidelity.get("cosine"),
        "top1_agreement": fidelity.get("top1_agreement"),
        "rel_error": fidelity.get("rel_error"),
    }
    if worst is not None:
        step["kept_in_float"] = {"node": worst["unit"], "op": worst.get("op"), "sqnr_drop_db": worst.get("sqnr_drop_db")}
    return step


# ---------------------------------------------------------------- ranking ONNX nodes (ONNX and TFLite int8)


def onnx_node_rank(ctx: "ExportContext", int8_onnx: Callable[[], Path]) -> Callable[[list[str]], list[dict]]:
    """Rank the nodes of the int8 ONNX that `int8_onnx()` returns (built with the current float
    nodes) by the SQNR each loses; return the worst one to keep in float next. When the worst is
    already in float, what still hurts is the int8 data it reads: its nearest quantized producers."""
    from edgepack.divergence import per_node_divergence

    fp32 = ctx.quant_proto
    graph_nodes = {n.name for n in fp32.graph.node}
    feeds = ctx.vset.feeds()[:GUARD_SAMPLES]

    def rank(excluded: list[str]) -> list[dict]:
        ranking = per_node_divergence(fp32, int8_onnx(), feeds)
        rows = sorted((r for r in ranking if r.get("node") in graph_nodes),
                      key=lambda r: r.get("sqnr_drop_db") or 0.0, reverse=True)
        if not rows:
            return []
        worst = rows[0]
        new = [worst["node"]] if worst["node"] not in excluded else _quantized_producers(fp32, worst["node"], excluded)
        for name in list(new):
            new.extend(n for n in _fused_activation_inputs(fp32, name, excluded + new) if n not in new)
        return [{"unit": n, "op": worst.get("op"), "sqnr_drop_db": worst.get("sqnr_drop_db")} for n in new]

    return rank


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
