"""Activation memory: liveness of each tensor over the execution order, and the arena a runtime
lays the tensors out in.

LiteRT (TFLite's ArenaPlanner, `kGreedyBySize`): tensors sorted by size, largest first; each is
placed at the lowest-waste offset (best fit) among the gaps left by already-placed tensors whose
lifetimes overlap it, else after the last one; offsets aligned to 64 bytes. The arena is as large
as the highest end offset, which can exceed the largest sum of simultaneously live tensors
(fragmentation). That is what `greedy_by_size` computes.

The other runtimes differ, and `peak_bytes` says which rule it used:
- ncnn frees a blob once its last consumer ran (lightmode) into a pool allocator that reuses freed
  blocks; its peak is close to the largest sum of live tensors (`live_peak`), without the arena's
  fragmentation but with per-blob 16-byte alignment.
- ONNX Runtime plans a memory pattern (BFC arena + mem pattern) from the first run; it also lands
  near the live peak, rounded up by the arena's growth policy. We report the live peak for it.

Written by hand: no library computes TFLite's arena layout outside the interpreter; it is ~50 lines."""
from __future__ import annotations

from dataclasses import dataclass

ALIGN = 64


@dataclass(frozen=True)
class Lifetime:
    name: str
    size: int  # bytes
    first: int  # index of the op that writes it (-1: graph input)
    last: int  # index of the last op that reads it (n: graph output)


@dataclass(frozen=True)
class ArenaPlan:
    peak_bytes: int  # the arena size under the runtime's rule
    live_peak: int  # the largest sum of simultaneously live tensors (a lower bound for any layout)
    rule: str
    offsets: dict[str, int]


def _align(n: int, to: int = ALIGN) -> int:
    return (n + to - 1) // to * to


def greedy_by_size(lifetimes: list[Lifetime]) -> dict[str, int]:
    """Offsets of TFLite's greedy-by-size best-fit layout."""
    order = sorted(lifetimes, key=lambda t: (-t.size, t.first))
    placed: list[tuple[int, int, Lifetime]] = []  # (offset, end, tensor)
    offsets: dict[str, int] = {}
    for t in order:
        size = _align(t.size)
        overlapping = sorted((o, e) for o, e, u in placed if not (u.last < t.first or t.last < u.first))
        best, best_gap, cursor = None, None, 0
        for start, end in overlapping:
            gap = start - cursor
            if gap >= size and (best_gap is None or gap < best_gap):
                best, best_gap = cursor, gap
            cursor = max(cursor, end)
        offset = best if best is not None else cursor
        offsets[t.name] = offset
        placed.append((offset, offset + size, t))
    return offsets


def live_peak(lifetimes: list[Lifetime], align: int = 16) -> int:
    if not lifetimes:
        return 0
    lo = min(t.first for t in lifetimes)
    hi = max(t.last for t in lifetimes)
    return max(sum(_align(t.size, align) for t in lifetimes if t.first <= step <= t.last) for step in range(lo, hi + 1))


def plan(lifetimes: list[Lifetime], runtime: str) -> ArenaPlan:
    peak = live_peak(lifetimes)
    if runtime == "litert":
        offsets = greedy_by_size(lifetimes)
        sizes = {t.name: _align(t.size) for t in lifetimes}
        arena = max((offsets[n] + sizes[n] for n in offsets), default=0)
        return ArenaPlan(arena, peak, "greedy by size, best fit, 64-byte aligned (TFLite ArenaPlanner)", offsets)
    rule = ("live blobs, freed after last use (ncnn lightmode + pool allocator)" if runtime == "ncnn"
            else "live tensors (ONNX Runtime memory pattern)")
    return ArenaPlan(peak, peak, rule, {})
