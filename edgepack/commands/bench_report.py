"""The comparison of an export's benchmarked artifacts: a console table (format x precision: size,
p50, p99, peak memory, fidelity) and report.html with two plots (latency per artifact; size
against fidelity). The HTML is one self-contained file (inline SVG and CSS, no script, no fonts,
nothing fetched), so it opens offline; the SVG is written here because a plotting library would
be a large dependency for two charts on a device install."""
from __future__ import annotations

import math
from html import escape
from pathlib import Path
from typing import Any

from edgepack.fsutil import atomic_write_bytes

HTML_NAME = "report.html"
COLORS = {"onnx": "#1f77b4", "tflite": "#ff7f0e", "ncnn": "#2ca02c"}


def _rows(report: dict) -> list[dict]:
    rows = []
    for art in report.get("artifacts", []):
        b, fid = art.get("bench") or {}, art.get("fidelity") or {}
        lat = b.get("latency_ms") or {}
        rows.append({
            "path": art.get("path") or f"({art['format']})", "format": art["format"], "precision": art["precision"],
            "size": art.get("size_bytes") or b.get("size_bytes"), "p50": lat.get("p50"), "p90": lat.get("p90"),
            "p99": lat.get("p99"), "peak": b.get("peak_rss_mb"), "model_mem": b.get("model_rss_mb"),
            "cosine": fid.get("cosine") if isinstance(fid.get("cosine"), (int, float)) else None,
            "top1": fid.get("top1_agreement"), "device": b.get("device"),
            "error": (art.get("bench_error") or {}).get("error"),
            "runtime": f"{b['runtime']} {b['runtime_version']}" if "runtime" in b else None, "threads": b.get("threads"),
        })
    return rows


def _ms(x: float | None) -> str:
    return "-" if x is None else (f"{x:.3f}" if x < 10 else f"{x:.1f}")


def _mb(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f} MB"


def _kb(n: int | None) -> str:
    return "-" if n is None else (f"{n / 1024:.1f} KB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MB")


def render_bench_table(report: dict, console: Any) -> None:
    from rich.markup import escape as rescape
    from rich.table import Table

    rows = _rows(report)
    devices = sorted({r["device"] for r in rows if r["device"]})
    title = f"{report.get('model', {}).get('name', 'model')}: bench" + (f" on {', '.join(devices)}" if devices else " on this machine")
    table = Table(title=title, title_justify="left")
    for col in ("artifact", "precision", "size", "p50 ms", "p99 ms", "threads", "peak mem", "model mem", "cosine", "top-1",
                "runtime"):
        table.add_column(col, justify="left" if col in ("artifact", "precision", "runtime") else "right")
    for r in rows:
        table.add_row(rescape(r["path"]), r["precision"], _kb(r["size"]), _ms(r["p50"]), _ms(r["p99"]),
                      "-" if r["threads"] is None else str(r["threads"]), _mb(r["peak"]),
                      _mb(r["model_mem"]), "-" if r["cosine"] is None else f"{r['cosine']:.6f}",
                      "-" if r["top1"] is None else f"{r['top1']:.1%}",
                      rescape(r["runtime"]) if r["runtime"] else "[red]error[/]")
    console.print(table)


# ---------------------------------------------------------------- HTML


def nice_ticks(hi: float, most: int = 5) -> list[float]:
    """Round tick values 0, step, 2*step, ... up to the first at or above `hi`, step 1, 2 or 5 x 10^k,
    at most `most` + 1 ticks."""
    hi = max(hi, 1e-9)
    for step in sorted(m * 10.0 ** e for e in range(math.floor(math.log10(hi / most)) - 1, math.ceil(math.log10(hi)) + 1)
                       for m in (1, 2, 5)):
        n = math.ceil(hi / step - 1e-9)
        if n <= most:
            return [round(i * step, 12) for i in range(n + 1)]
    return [0.0, hi]


def _latency_axis(rows: list[dict]) -> float:
    """The axis end: past every median, and past each p90 only as far as twice its own median, so one
    noisy p90 or p99 cannot squash every bar (a whisker beyond the axis ends in an arrow)."""
    return max(max(r["p50"] for r in rows) * 1.1, max(min(r["p90"] or r["p50"], 2 * r["p50"]) for r in rows))


def _latency_svg(rows: list[dict]) -> str:
    """Horizontal bars: p50 per artifact (its value written after the whisker, as "p50 ..."), with a
    whisker from p90 to p99; round ticks (1, 2, 5 x 10^k)."""
    rows = [r for r in rows if r["p50"] is not None]
    if not rows:
        return "<p>No benchmark results.</p>"
    left, bar_h, gap, width = 220, 18, 8, 520
    ticks = nice_ticks(_latency_axis(rows))
    top = ticks[-1]
    height = len(rows) * (bar_h + gap) + 40
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 110}" height="{height}" role="img" '
              f'aria-label="latency per artifact">')]
    for i, r in enumerate(rows):
        y = 10 + i * (bar_h + gap)
        scale = width / top
        color = COLORS.get(r["format"], "#777")
        p90, p99 = r["p90"] or r["p50"], r["p99"] or r["p50"]
        parts.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end" font-size="12">{escape(r["path"])}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{max(min(r["p50"], top) * scale, 1):.1f}" height="{bar_h}" fill="{color}">'
                     f'<title>p50 {r["p50"]:.4f} ms, p90 {p90:.4f} ms, p99 {p99:.4f} ms</title></rect>')
        x90, x99 = left + min(p90, top) * scale, left + min(p99, top) * scale
        end = (f'<polygon points="{x99 - 6:.1f},{y + 3} {x99:.1f},{y + bar_h / 2} {x99 - 6:.1f},{y + bar_h - 3}" fill="#333"/>'
               if p99 > top else
               f'<line x1="{x99:.1f}" x2="{x99:.1f}" y1="{y + 3}" y2="{y + bar_h - 3}" stroke="#333"/>')
        parts.append(f'<line x1="{x90:.1f}" x2="{x99:.1f}" y1="{y + bar_h / 2}" y2="{y + bar_h / 2}" stroke="#333"/>' + end)
        parts.append(f'<text x="{x99 + 4:.1f}" y="{y + 13}" font-size="11">p50 {_ms(r["p50"])}</text>')
    axis_y = height - 22
    parts.append(f'<line x1="{left}" x2="{left + width}" y1="{axis_y}" y2="{axis_y}" stroke="#999"/>')
    for t in ticks:
        x = left + t / top * width
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{axis_y}" y2="{axis_y + 4}" stroke="#999"/>'
                     f'<text x="{x:.1f}" y="{axis_y + 15}" font-size="10" text-anchor="middle">{t:g}</text>')
    parts.append(f'<text x="{left + width + 14}" y="{axis_y + 4}" font-size="11">ms</text></svg>')
    return "".join(parts)


COSINE_FLOOR = 1e-6  # 1 - cosine below this is float rounding (the report prints cosine to 6 decimals)


def _fidelity_svg(rows: list[dict]) -> str:
    """Scatter: file size (x) against 1 - cosine to the reference (y, log scale; lower is better)."""
    pts = [r for r in rows if r["size"] and r["cosine"] is not None]
    if not pts:
        return "<p>No fidelity figures in the report.</p>"
    w, h, pad = 560, 300, 60
    biggest = max(r["size"] for r in pts)
    unit, unit_name = (1024, "KB") if biggest < 1 << 20 else (1 << 20, "MB")
    xticks = nice_ticks(biggest * 1.05 / unit, 4)
    xmax = xticks[-1] * unit
    ys = [math.log10(max(1.0 - r["cosine"], COSINE_FLOOR)) for r in pts]
    ylo, yhi = math.floor(min(ys)), max(math.ceil(max(ys)), math.floor(min(ys)) + 1)
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{w + pad + 140}" height="{h + pad}" role="img" '
              f'aria-label="size against fidelity">'),
             f'<line x1="{pad}" x2="{pad + w}" y1="{h}" y2="{h}" stroke="#999"/>',
             f'<line x1="{pad}" x2="{pad}" y1="10" y2="{h}" stroke="#999"/>',
             f'<text x="{pad + w / 2}" y="{h + 36}" font-size="12" text-anchor="middle">file size</text>',
             (f'<text x="14" y="{h / 2}" font-size="12" transform="rotate(-90 14 {h / 2})" text-anchor="middle">'
              '1 - cosine (log)</text>')]
    for e in range(ylo, yhi + 1):
        y = h - (e - ylo) / (yhi - ylo) * (h - 20)
        tick = f"&#8804;1e{e}" if 10.0 ** e <= COSINE_FLOOR else f"1e{e}"  # the floor: identical up to rounding
        parts.append(f'<text x="{pad - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{tick}</text>')
    for t in xticks:
        parts.append(f'<text x="{pad + t * unit / xmax * w:.1f}" y="{h + 16}" font-size="10" text-anchor="middle">{t:g} {unit_name}</text>')
    placed: list[tuple[float, float, float]] = []  # label boxes (x0, x1, baseline) already drawn
    dots = [(pad + r["size"] / xmax * w, h - (yv - ylo) / (yhi - ylo) * (h - 20)) for r, yv in zip(pts, ys)]
    for r, yv in sorted(zip(pts, ys), key=lambda p: p[0]["size"]):
        x = pad + r["size"] / xmax * w
        y = h - (yv - ylo) / (yhi - ylo) * (h - 20)
        color = COLORS.get(r["format"], "#777")
        label = f'{r["format"]} {r["precision"]}'
        span = 6.5 * len(label)
        others = [(px, py) for px, py in dots if (px, py) != (x, y)]

        def collides(x0: float, base: float) -> bool:  # a label already drawn, or another point, in the way
            return (any(a < x0 + span and x0 < b and abs(base - c) < 12 for a, b, c in placed)
                    or any(x0 - 6 < px < x0 + span + 6 and abs(py - (base - 4)) < 10 for px, py in others))

        base = y + 4
        x0 = next((c for c in (x + 8, x - 8 - span) if c > pad and not collides(c, base)), x + 8)  # right, else left
        step = 12 if base < h - 30 else -12  # near the x axis: move up, never into the tick labels
        while collides(x0, base):  # still in the way: the next line, beside the point
            base += step
            if not 12 < base < h - 4:
                break
        x1 = x0 + span
        placed.append((x0, x1, base))
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{color}"><title>{escape(r["path"])}: '
                     f'{_kb(r["size"])}, cosine {r["cosine"]:.6f}</title></circle>'
                     f'<text x="{x0:.1f}" y="{base:.1f}" font-size="11">{escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: dict) -> str:
    rows = _rows(report)
    name = escape(str(report.get("model", {}).get("name", "model")))
    head = ("<tr>" + "".join(f"<th>{c}</th>" for c in ("artifact", "precision", "size", "p50 ms", "p90 ms", "p99 ms",
                                                       "peak mem", "model mem", "cosine", "top-1", "runtime", "device"))
            + "</tr>")
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in (
            r["path"], r["precision"], _kb(r["size"]), _ms(r["p50"]), _ms(r["p90"]), _ms(r["p99"]), _mb(r["peak"]),
            _mb(r["model_mem"]), "-" if r["cosine"] is None else f"{r['cosine']:.6f}",
            "-" if r["top1"] is None else f"{r['top1']:.1%}", r["runtime"] or f"error: {r['error']}", r["device"] or "this machine",
        )) + "</tr>" for r in rows)
    legend = " ".join(f'<span style="color:{c}">&#9632; {f}</span>' for f, c in COLORS.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>edgepack bench: {name}</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}} td:first-child,th:first-child{{text-align:left}}
svg text{{font-family:sans-serif}}</style></head><body>
<h1>edgepack bench: {name}</h1>
<p>{legend}</p>
<h2>Latency per artifact</h2><p>Bar and number: median (p50). Whisker: from p90 to p99; an arrow means p99 is beyond the
axis (hover for the figures). The axis stops at twice a median, so one noisy run cannot hide the other bars.</p>
{_latency_svg(rows)}
<h2>Size against fidelity</h2><p>Lower is closer to the reference model; &#8804;1e-6 is identical up to float rounding.</p>
{_fidelity_svg(rows)}
<h2>All figures</h2><table>{head}{body}</table>
</body></html>
"""


def write_html(report: dict, out_dir: Path) -> Path:
    path = Path(out_dir) / HTML_NAME
    atomic_write_bytes(path, render_html(report).encode())
    return path
