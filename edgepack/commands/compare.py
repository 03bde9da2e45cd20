"""`edgepack compare A B`: output metrics and, with --per-node, the per-node SQNR table (the
per-node machinery is edgepack.divergence, shared with the accuracy guard)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from edgepack.divergence import (
    DEFAULT_SAMPLES, SQNR_THRESHOLD_DB, _divergence, compare_outputs, first_below, load_model, ranked, resolve_inputs,
)
from edgepack.errors import UsageError


def compare_models(a: Any, b: Any, *, inputs: Path | None = None, per_node: bool = False,
                   samples: int = DEFAULT_SAMPLES, seed: int = 0, threshold_db: float = SQNR_THRESHOLD_DB,
                   top: int = 10) -> dict:
    """What `edgepack compare` prints: output metrics on every sample and, with per_node, the
    per-node rows on the first `samples` samples, the `top` nodes by SQNR drop and the first node
    below `threshold_db`."""
    import onnxruntime

    if samples < 1 or top < 1:
        raise UsageError(f"samples and top must be at least 1 (got samples={samples}, top={top})")
    pa, pb = load_model(a, "A"), load_model(b, "B")
    feeds, source = resolve_inputs(pa, inputs, seed, a_path=Path(a) if isinstance(a, (str, Path)) else None)
    result: dict[str, Any] = {
        "a": str(a) if isinstance(a, (str, Path)) else "<ModelProto>",
        "b": str(b) if isinstance(b, (str, Path)) else "<ModelProto>",
        "runtime": f"onnxruntime {onnxruntime.__version__} CPU, graph optimizations off",
        "inputs": {"source": source, "samples": len(feeds), "per_node_samples": None},
        "outputs": None,
        "per_node": None,
    }
    if per_node:  # first: its "no tensor in common" says more than the outputs' names
        used = feeds[:samples]
        div = _divergence(pa, pb, used)
        result["inputs"]["per_node_samples"] = len(used)
        result["per_node"] = {
            "matched_tensors": len(div.rows),
            "a_float_tensors": div.a_float_tensors,
            "threshold_db": threshold_db,
            "first_below_threshold": first_below(div.rows, threshold_db),
            "top": ranked(div.rows, top),
            "skipped": div.skipped,
            "nodes": div.rows,
        }
    result["outputs"] = compare_outputs(pa, pb, feeds)
    return result


# ---------------------------------------------------------------- console output


def render(result: dict, console: Any) -> None:
    """Output-level metrics and, when computed, the per-node table (rich)."""
    from rich.markup import escape
    from rich.table import Table

    out = result["outputs"]
    inputs = result["inputs"]
    console.print(f"A (reference): {result['a']}\nB:             {result['b']}", markup=False)
    console.print(f"inputs: {inputs['source']}, {inputs['samples']} sample(s); {result['runtime']}", markup=False)
    line = (f"outputs {', '.join(out['outputs_compared'])}: max abs error {_num(out['max_abs_error'])}, "
            f"rel error {_num(out['rel_error'])}, cosine {out['cosine']:.6f}")
    if out.get("top1_agreement") is not None:
        line += f", top-1 agreement {out['top1_agreement']:.1%}"
    console.print(line, markup=False)
    for side in ("a", "b"):
        if out[f"only_in_{side}"]:
            console.print(f"outputs only in {side.upper()}: {', '.join(out[f'only_in_{side}'])}", markup=False)
    pn = result["per_node"]
    if pn is None:
        return
    console.print(f"per node ({inputs['per_node_samples']} sample(s)): {pn['matched_tensors']} of A's "
                  f"{pn['a_float_tensors']} float tensors matched in B by name")
    table = Table(title=f"largest SQNR drops (top {len(pn['top'])})", title_justify="left")
    for col, justify in (("node", "left"), ("op", "left"), ("tensor", "left"), ("SQNR dB", "right"),
                         ("drop dB", "right"), ("cosine", "right"), ("max abs err", "right")):
        table.add_column(col, justify=justify, overflow="fold")
    for r in pn["top"]:
        table.add_row(escape(_label(r)), escape(r["op"]), escape(r["tensor"]), _db(r["sqnr_db"]), _db(r["sqnr_drop_db"]),
                      f"{r['cosine']:.5f}", _num(r["max_abs_error"]))
    console.print(table)
    first = pn["first_below_threshold"]
    if first is None:
        console.print(f"no node below {pn['threshold_db']:g} dB SQNR", markup=False)
    else:
        console.print(f"first node below {pn['threshold_db']:g} dB SQNR: {_label(first)} ({first['op']}, tensor "
                      f"{first['tensor']}) at {_db(first['sqnr_db'])} dB", markup=False)
    if pn["skipped"]:
        console.print(f"{len(pn['skipped'])} same-named tensor(s) not compared: {pn['skipped'][0]['reason']}"
                      + (" ..." if len(pn["skipped"]) > 1 else ""), markup=False)


def _label(row: dict) -> str:
    return row["node"] + (f" (with {', '.join(row['covers'])})" if row["covers"] else "")


def _db(v: float) -> str:
    return f"{v:.1f}" if math.isfinite(v) else ("inf" if v > 0 else "-inf")


def _num(v: float) -> str:
    return f"{v:.4g}"
