"""Did quantizing make a TFLite artifact faster here? `compare_speed(artifact, reference)` loads
both with LiteRT's default delegate (XNNPACK), as an app would, on one thread, and times them
interleaved (A, B, A, B, ...: this machine's load drifts, and shifts both alike), after warm-up
runs; medians in ms, their ratio, and each one's XNNPACK delegation (runtimes.litert_delegation).
Run it in a child (`edgepack.runtimes.isolated.call`): LiteRT may crash on a damaged file."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

WARMUP = 2


def compare_speed(artifact: str | Path, reference: str | Path, runs: int = 7, threads: int = 1,
                  budget_s: float = 20.0) -> dict:
    """{"ms", "reference_ms", "ratio" (artifact / reference), "runs", "delegation",
    "reference_delegation"}. Stops early (at least 3 runs each) once `budget_s` is spent."""
    from edgepack.runtimes.litert import _interpreter_class
    from edgepack.runtimes.litert_delegation import partitions_of

    its = []
    for path in (artifact, reference):
        it = _interpreter_class()(model_path=str(Path(path)), num_threads=threads)
        it.allocate_tensors()
        rng = np.random.default_rng(0)
        for d in it.get_input_details():
            it.set_tensor(d["index"], _random(rng, d))
        its.append(it)
    for it in its:
        for _ in range(WARMUP):
            it.invoke()
    times: list[list[float]] = [[], []]
    start = time.perf_counter()
    for i in range(runs):
        for k, it in enumerate(its):
            t0 = time.perf_counter()
            it.invoke()
            times[k].append((time.perf_counter() - t0) * 1e3)
        if i >= 2 and time.perf_counter() - start > budget_s:
            break
    ms, ref_ms = float(np.median(times[0])), float(np.median(times[1]))
    return {"ms": ms, "reference_ms": ref_ms, "ratio": ms / ref_ms if ref_ms > 0 else float("inf"),
            "runs": len(times[0]), "threads": threads, "delegation": partitions_of(its[0]),
            "reference_delegation": partitions_of(its[1])}


def _random(rng: np.random.Generator, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    shape = [int(x) for x in detail["shape"]]
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -128), min(info.max, 127) + 1, size=shape).astype(dtype)
    return np.zeros(shape, dtype)
