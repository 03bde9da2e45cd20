"""`edgepack estimate ARTIFACT --target T`: the estimator (edgepack.devices.estimate) on one
artifact, printed as totals and the slowest layers."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgepack.devices import load_profile
from edgepack.devices.estimate import Estimate, estimate_artifact, export_target


def run_estimate(artifact: Path, *, target: str | None, runtime: str | None, threads: int | None,
                 precision: str | None, input_shape: str | None) -> Estimate:
    from edgepack.errors import UsageError
    from edgepack.options import InputSpec

    if artifact.suffix.lower() not in (".onnx", ".tflite", ".param"):  # before asking for a target
        raise UsageError(f"cannot estimate {artifact.name}: edgepack estimate reads .onnx, .tflite and ncnn .param "
                         "artifacts; export the model first (edgepack export MODEL --target T)")
    shapes = None
    if input_shape:
        spec = InputSpec.parse(input_shape)
        shapes = {spec.name or "in0": spec.shape}
    return estimate_artifact(artifact, load_profile(target or export_target(artifact)), runtime, threads, precision, shapes)


def render_estimate(result: Estimate, console: Any, top: int = 15) -> None:
    """The human view: totals, then the slowest layers."""
    from rich.table import Table

    from edgepack.report import macs_text

    console.print(f"[bold]{result.target}[/] {result.runtime}, {result.threads} thread(s), {result.precision} "
                  f"({result.numerics})")
    console.print(f"latency      {result.latency_ms:10.2f} ms  ({len(result.layers)} layers, {macs_text(result.macs)})")
    fits = "fits" if result.fits_memory else "[red]exceeds[/]"
    console.print(f"peak memory  {result.peak_memory_mb:10.2f} MB  = weights {result.weights_mb:.2f} + activation arena "
                  f"{result.arena_mb:.2f} ({result.arena_rule}); {fits} the {result.ram_budget_mb} MB budget")
    rows = sorted(result.layers, key=lambda r: -r["ms"])
    shown = rows if top <= 0 else rows[:top]
    table = Table(show_edge=False, pad_edge=False)
    for col in ("layer", "op", "kind", "MMACs", "ms", "share", "bound"):
        table.add_column(col, justify="right" if col in ("MMACs", "ms", "share") else "left")
    for r in shown:
        table.add_row(r["name"], r["op"], r["kind"] + (" (winograd)" if r.get("winograd") else ""), f"{r['macs'] / 1e6:.1f}",
                      f"{r['ms']:.3f}", f"{100 * r['ms'] / max(result.latency_ms, 1e-9):.1f}%", r["bound"])
    console.print(table)
    if len(rows) > len(shown):
        console.print(f"... {len(rows) - len(shown)} more layers (--top 0 lists all, --json gives every layer)")
