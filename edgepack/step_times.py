"""Where an export's time went, as one console line: report.json's `timings_s` grouped by step
(the graph passes summed, one entry per artifact), plus "start", the time the process spent before
and around the export (interpreter start-up and imports), so the numbers add up to the wall time:

    time: start/imports 4.1 s, load 2.3 s, reference 0.4 s, to_onnx 6.2 s, passes 0.5 s, tflite fp32 1.1 s, estimate 0.2 s; total 14.8 s
"""
from __future__ import annotations

import os
import time
from pathlib import Path


def process_age_s() -> float | None:
    """Seconds since this process started (Linux: /proc); None where that is not known."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started_ticks = int(fields[19])  # field 22 of stat(5): starttime, clock ticks after boot
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def group_timings(timings: dict[str, float]) -> dict[str, float]:
    """`timings_s` without its total, the `pass:*` entries summed as "passes" and artifacts named
    "tflite fp32", in the order the steps ran."""
    grouped: dict[str, float] = {}
    for key, seconds in timings.items():
        if key == "total":
            continue
        name = "passes" if key.startswith("pass:") else key.removeprefix("artifact:").replace(".", " ")
        grouped[name] = grouped.get(name, 0.0) + seconds
    return grouped


def time_line(timings: dict[str, float], wall_s: float | None = None) -> str:
    """One line: `wall_s` (the process's age at the end) gives "start", the wall time outside the
    timed steps; without it only the steps and their total."""
    steps = group_timings(timings)
    total = timings.get("total", sum(steps.values()))
    parts = []
    if wall_s is not None:
        parts.append(f"start/imports {max(0.0, wall_s - total):.1f} s")
        total = max(wall_s, total)
    parts += [f"{name} {seconds:.1f} s" for name, seconds in steps.items()]
    return f"time: {', '.join(parts)}; total {total:.1f} s"


class ExportClock:
    """Wall time of one CLI export, as the process's age when it ends (perf_counter from when this
    clock was made where /proc is missing: then "start" counts only what ran after that)."""

    def __init__(self) -> None:
        self.made = time.perf_counter()
        self.age_at_made = process_age_s()

    def wall_s(self) -> float:
        return (self.age_at_made or 0.0) + time.perf_counter() - self.made
