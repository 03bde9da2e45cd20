"""sweep.html: per target, accuracy against latency and against size, one dot per verified cell, the
Pareto front joined and ringed, the recommended variant starred; then the table of every cell.

Written by hand as inline SVG (a few dozen lines) so the page is one self-contained file that opens
anywhere without a plotting library or a network connection."""
from __future__ import annotations

from html import escape
from pathlib import Path

from edgepack.fsutil import atomic_write_bytes

W, H, PAD = 420, 280, 48


def _scatter(points: list[dict], x: str, x_label: str, front: list[str], best: str | None) -> str:
    pts = [p for p in points if p[x] is not None and p["accuracy"] is not None]
    if not pts:
        return f"<p>no cell has both accuracy and {escape(x_label)}</p>"
    xs, ys = [p[x] for p in pts], [p["accuracy"] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    x1, y1 = (x1 if x1 > x0 else x0 + 1e-9), (y1 if y1 > y0 else y0 + 1e-9)

    def sx(v: float) -> float:
        return PAD + (v - x0) / (x1 - x0) * (W - 2 * PAD)

    def sy(v: float) -> float:
        return H - PAD - (v - y0) / (y1 - y0) * (H - 2 * PAD)

    parts = [f'<svg width="{W}" height="{H}" xmlns="http://www.w3.org/2000/svg" font-size="11">',
             f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#444"/>',
             f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="#444"/>',
             f'<text x="{W / 2}" y="{H - 12}" text-anchor="middle">{escape(x_label)}</text>',
             f'<text x="14" y="{H / 2}" transform="rotate(-90 14 {H / 2})" text-anchor="middle">{escape(pts[0]["metric"])}</text>',
             f'<text x="{PAD}" y="{H - PAD + 14}" text-anchor="middle">{x0:.3g}</text>',
             f'<text x="{W - PAD}" y="{H - PAD + 14}" text-anchor="middle">{x1:.3g}</text>',
             f'<text x="{PAD - 4}" y="{H - PAD}" text-anchor="end">{y0:.4g}</text>',
             f'<text x="{PAD - 4}" y="{PAD + 4}" text-anchor="end">{y1:.4g}</text>']
    on_front = sorted((p for p in pts if p["cell"] in front), key=lambda p: p[x])
    if len(on_front) > 1:
        path = " ".join(f"{sx(p[x]):.1f},{sy(p['accuracy']):.1f}" for p in on_front)
        parts.append(f'<polyline points="{path}" fill="none" stroke="#d62728" stroke-dasharray="4 3"/>')
    for p in pts:
        cx, cy = sx(p[x]), sy(p["accuracy"])
        colour = "#d62728" if p["cell"] in front else "#1f77b4"
        title = f"{p['cell']}: {p['accuracy']:.4g} {p['metric']}, {p[x]:.3g} {x_label}"
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{colour}"><title>{escape(title)}</title></circle>')
        if p["cell"] == best:
            parts.append(f'<text x="{cx + 7:.1f}" y="{cy - 7:.1f}" font-size="16" fill="#2ca02c">&#9733;</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(result: dict) -> str:
    sections = []
    for target, t in result["targets"].items():
        best = t["recommended"]
        sections.append(
            f"<h2>{escape(target)}</h2><p>recommended: <b>{escape(best or '-')}</b> ({escape(t['why'])}); "
            "red: Pareto front, &#9733;: recommended</p>"
            + _scatter(t["points"], "latency_ms", "latency (ms)", t["pareto_latency"], best)
            + _scatter(t["points"], "size_mb", "size (MB)", t["pareto_size"], best))
    rows = []
    for rec in result["cells"]:
        art = rec.get("artifact") or {}
        acc = art.get("accuracy") or {}
        score = acc.get("value", acc.get("top1"))
        rows.append("<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in (
            rec["id"], rec["status"], art.get("size_bytes", "-"), "-" if score is None else f"{score:.4g}",
            rec.get("error") or "")) + "</tr>")
    c = {k: "-" if v is None else v for k, v in result["constraints"].items()}
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>edgepack sweep</title>
<style>body{{font-family:sans-serif;margin:2em}} svg{{margin-right:1em;border:1px solid #ddd}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 6px;font-size:12px}}</style></head><body>
<h1>edgepack sweep</h1>
<p>{len(result['cells'])} cell(s) in {result['seconds']:.1f} s on {escape(result['where'])}; constraints:
max latency {c['max_latency_ms']} ms, max size {c['max_size_mb']} MB, min accuracy {c['min_accuracy']}</p>
{''.join(sections)}
<h2>cells</h2><table><tr><th>cell</th><th>status</th><th>bytes</th><th>accuracy</th><th>error</th></tr>
{''.join(rows)}</table></body></html>
"""


def write_html(result: dict, path: Path) -> Path:
    atomic_write_bytes(path, render_html(result).encode())
    return path
