"""report.json (schema below) and the console table.

Top-level keys: schema_version, provenance, model, target, preprocessing, passes, verification,
artifacts, warnings, timings_s, ok. Each artifact: path, files [{path, size_bytes, sha256}],
format, precision, weights_precision, compute_precision, size_bytes, deflated_bytes (raw deflate,
what a download costs), inputs, outputs, fidelity, ok, error. Later versions add fields; these names stay."""
from __future__ import annotations

import json
import math
import platform
import sys
from pathlib import Path
from typing import Any

from edgepack.errors import UsageError
from edgepack.fsutil import atomic_write_bytes, read_bounded

SCHEMA_VERSION = 1
REPORT_NAME = "report.json"


def versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("edgepack", "torch", "onnx", "onnx-ir", "onnxscript", "onnxruntime", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def provenance(seeds: dict[str, int]) -> dict[str, Any]:
    from datetime import datetime, timezone

    return {
        "command": list(sys.argv),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": f"{platform.system()}-{platform.machine()}",
        "versions": versions(),
        "seeds": seeds,
    }


def _clean(obj: Any) -> Any:
    """JSON has no inf/nan: write them as strings so the file stays standard JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def to_json_text(report: dict) -> str:
    return json.dumps(_clean(report), indent=2, sort_keys=False) + "\n"


MAX_REPORT_BYTES = 64 << 20  # never read a report.json (or a device/FIFO named so) without bound


def read_report(export_dir: Path) -> dict:
    """OUTDIR/report.json as written by `write_report`; a missing or damaged file is a usage error."""
    path = Path(export_dir) / REPORT_NAME
    try:
        report = json.loads(read_bounded(path, MAX_REPORT_BYTES))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} cannot be read ({exc}); export again") from None
    if not isinstance(report, dict) or not isinstance(report.get("artifacts"), list):
        raise UsageError(f"{path} is not an edgepack report (no artifacts list); export again")
    return report


def report_beside(artifact: Path) -> tuple[dict, dict | None]:
    """(the export's report.json next to an artifact, that artifact's entry): ({}, None) when there
    is no readable report there (an artifact may be used on its own)."""
    try:
        report = read_report(Path(artifact).parent)
    except UsageError:
        return {}, None
    return report, next((a for a in report["artifacts"] if isinstance(a, dict) and a.get("path") == Path(artifact).name), None)


def write_report(report: dict, out_dir: Path) -> Path:
    path = Path(out_dir) / REPORT_NAME
    atomic_write_bytes(path, to_json_text(report).encode())
    return path


def _fmt(x: float | None, spec: str) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    return format(x, spec)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def count_text(n: float) -> str:
    """A count with a unit and 3 significant digits: 9.1 k, 0.314 M, 300 M, 1.8 G."""
    for low, div, unit in ((1e9, 1e9, "G"), (1e5, 1e6, "M"), (1e3, 1e3, "k")):
        if n >= low:
            return f"{n / div:.3g} {unit}"
    return f"{n:.0f}"


def macs_text(macs: int | None) -> str:
    return "MACs unknown" if macs is None else f"{count_text(macs)} MACs"


def _params_text(model: dict) -> str:
    after = model.get("params_after_passes")
    text = f"{count_text(model['params'])} params"
    return text + (f" ({count_text(after)} after the graph passes)" if after is not None and after != model["params"] else "")


def _estimate_text(est: dict | None) -> str:
    """The --target estimate in the export table: latency at the profile's threads."""
    if not est or est.get("latency_ms") is None:
        return "-"
    return f"{est['latency_ms']:.3g} ms/{est.get('threads', '?')}T"


def _tolerance_text(tol: dict) -> str:
    if not tol:
        return "-"
    parts = []
    if tol.get("rel_error") is not None:
        parts.append(_fmt(tol["rel_error"], ".0e"))
    if tol.get("min_cosine") is not None:
        parts.append(f"cos>={tol['min_cosine']}")
    if tol.get("min_top1") is not None:
        parts.append(f"top1>={tol['min_top1']}")
    text = " ".join(parts) or "-"
    return text if tol.get("rel_error_enforced", tol.get("enforced")) or text == "-" else f"{text} (rel info)"


def render_table(report: dict, console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    model = report["model"]
    title = (
        f"{model['name']}: {model['source_format']} via {model.get('exporter') or '-'}; "
        f"{_params_text(model)}, {macs_text(model['macs'])}; target {report['target']['name']}"
    )
    table = Table(title=title, title_justify="left")
    estimated = any(art.get("estimate") for art in report["artifacts"])
    cols = ("artifact", "precision", "size", "deflated", "max abs err", "rel err", "tolerance", "cosine", "top-1", "ok")
    for col in cols + ((f"est. {report['target']['name']}",) if estimated else ()):
        table.add_column(col, justify="left" if col in ("artifact", "precision") else "right")
    for art in report["artifacts"]:
        fid = art.get("fidelity") or {}
        tol = fid.get("tolerance") or {}
        table.add_row(
            escape(art.get("path") or f"({art['format']})"),
            art["precision"],
            _size(art.get("size_bytes")),
            _size(art.get("deflated_bytes")),
            _fmt(fid.get("max_abs_error"), ".2e"),
            _fmt(fid.get("rel_error"), ".2e"),
            _tolerance_text(tol),
            _fmt(fid.get("cosine"), ".6f"),
            _fmt(fid.get("top1_agreement"), ".1%"),
            "[green]yes[/]" if art["ok"] else "[red]NO[/]",
            *((_estimate_text(art.get("estimate")),) if estimated else ()),
        )
    console.print(table)
    for art in report["artifacts"]:
        ws = (art.get("fidelity") or {}).get("worst_slice")
        if ws is not None:
            console.print(f"{escape(art.get('path') or '')}: worst slice cosine {ws['cosine']:.6f} (output "
                          f"{escape(ws['output'])}, axis {ws['axis']}, index {ws['index']} of {ws['slices']} judged)")
        if art.get("int8_mac_share") is not None and art["int8_mac_share"] < 1.0:
            console.print(f"{escape(art.get('path') or '')}: {art['int8_mac_share']:.1%} of MACs in int8")
        if art.get("float_nodes"):
            console.print(f"{escape(art['path'] or '')}: {len(art['float_nodes'])} node(s) kept in float by the accuracy guard: "
                          f"{escape(', '.join(art.get('float_modules') or art['float_nodes']))}")
        if art.get("accuracy") and "metric" in art["accuracy"]:  # --eval-metric
            ref = (report.get("evaluation") or {}).get("reference_value")
            console.print(f"{escape(art['path'] or '')}: {escape(art['accuracy']['metric'])} {art['accuracy']['value']:.6g}"
                          + (f" (reference {ref:.6g})" if ref is not None else ""))
        elif art.get("accuracy"):
            ref = (report.get("evaluation") or {}).get("reference_top1")
            console.print(f"{escape(art['path'] or '')}: top-1 accuracy {art['accuracy']['top1']:.2%}"
                          + (f" (reference {ref:.2%})" if ref is not None else ""))
        if art.get("error"):
            console.print(f"[red]{art['format']} {art['precision']}:[/] {escape(art['error'])}")
    for p in report["passes"]:
        counts = p.get("counts", {})
        if p["name"] == "remove_pruned_channels" and counts.get("macs_before"):
            console.print(
                f"remove_pruned_channels: {counts['channels_removed']} channel(s) removed in {counts['layers_slimmed']} layer(s); "
                f"params {count_text(counts['params_before'])} -> {count_text(counts['params_after'])}, "
                f"MACs {count_text(counts['macs_before'])} -> {count_text(counts['macs_after'])} "
                f"({counts['macs_after'] / counts['macs_before']:.2f}x)"
            )
            if (p.get("extra") or {}).get("summary"):
                console.print(f"remove_pruned_channels: {escape(p['extra']['summary'])}")
            if (p.get("extra") or {}).get("hint"):
                console.print(f"[yellow]hint:[/] {escape(p['extra']['hint'])}")
        for item in p.get("skipped", []):
            name = f"{item['module']} ({item['node']})" if item.get("module") else str(item["node"])
            where = "" if item["node"] == "*" else f"{escape(name)}: "
            console.print(f"[yellow]{p['name']}:[/] {where}{escape(item['why'])}")
