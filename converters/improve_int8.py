"""The one entry point of the PTQ passes: from the processed fp32 ONNX and the calibration feeds,
the float model every int8 exporter should quantize and the per-tensor ranges it should use.

    float_model, ranges, summary = improve_int8(fp32_proto, calib_feeds, PtqOptions())
    save_ranges(ranges, ctx.calibration_path)          # calibration.json, read by every exporter
    quantize_int8(float_model, out, cache_path=ctx.calibration_path, method="minmax", calib_feeds=None)

Order: cross-layer equalization (equalize_cross_layer.py; changes the float weights, so it comes
before any range is measured), per-tensor range search (search_ranges.py), bias correction
(correct_bias.py, measured with the chosen ranges), then the ranges measured again on the
corrected model. Each step is kept only if the int8 model's cosine to the float model on the
calibration feeds does not drop (measured with ONNX Runtime on the QDQ int8 ONNX), and the summary
records that cosine after every step, so the report can say what each method gained."""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.converters.collect_activations import cosine, run

FUNCTION_TOLERANCE = 1e-4  # largest |float after CLE - before| / max |before| accepted


@dataclass(frozen=True)
class PtqOptions:
    equalize: bool = True  # cross-layer equalization
    search_ranges: bool = True  # MSE range search (kept where it beats min/max)
    correct_bias: bool = True  # empirical bias correction
    keep_only_gains: bool = True  # drop a step whose int8 cosine is lower than without it
    decision_samples: int = 16  # calibration feeds the int8 cosine of each step is measured on


@dataclass
class PtqSummary:
    steps: list[dict[str, Any]] = field(default_factory=list)  # one per pass: name, kept, cosine, seconds
    cosine_minmax: float = float("nan")  # int8 cosine with the base ranges (min/max) on the unchanged model
    cosine_final: float = float("nan")
    range_method: str = "minmax"

    def to_json(self) -> dict[str, Any]:
        return {"cosine_minmax": round(self.cosine_minmax, 6), "cosine_final": round(self.cosine_final, 6),
                "range_method": self.range_method, "steps": self.steps}


def int8_cosine(model, ranges: dict[str, tuple[float, float]], feeds: Sequence[dict[str, np.ndarray]],
                reference: list[list[np.ndarray]] | None = None) -> float:
    """Cosine of the QDQ int8 model (ONNX Runtime quantize_static with `ranges`) to the float model.
    The QDQ graph runs with graph optimizations off: its reference semantics (float math between
    exact int8 roundings), what int8 kernels without saturation compute. ONNX Runtime's fused x86
    int8 kernels on AVX2 machines without VNNI saturate 16-bit pair sums (u8 x s8) and would score
    the host CPU's arithmetic instead of the quantization (MobileNetV3-small: 0.894 vs 0.980)."""
    import onnx

    from edgepack.converters.quantize_int8 import quantize_int8, save_ranges

    reference = reference if reference is not None else run(model, feeds)
    with tempfile.TemporaryDirectory(prefix="edgepack-ptq-") as tmp:
        cache, out = Path(tmp) / "ranges.json", Path(tmp) / "q.onnx"
        save_ranges(ranges, cache)
        quantize_int8(model, out, cache_path=cache, method="minmax", calib_feeds=None)
        return cosine(reference, run(onnx.load(str(out)), feeds, optimize=False))


def _function_error(before, after, feeds) -> float:
    a, b = run(before, feeds[:4], optimize=False), run(after, feeds[:4], optimize=False)
    return max(float(np.abs(y - x).max() / max(np.abs(x).max(), 1e-12)) for xs, ys in zip(a, b) for x, y in zip(xs, ys))


def improve_int8(model, calib_feeds: Sequence[dict[str, np.ndarray]], options: PtqOptions = PtqOptions(), *,
                 base_ranges: Callable[[object], dict[str, tuple[float, float]]] | None = None
                 ) -> tuple[object, dict[str, tuple[float, float]], PtqSummary]:
    """(float ModelProto to quantize, {tensor: (min, max)} ranges, summary). `model` is not changed.
    `base_ranges(model)`: the ranges the passes start from (default: min/max over the feeds; the
    calibration step passes ONNX Runtime's percentile or entropy calibrator here)."""
    from edgepack.converters.correct_bias import correct_bias
    from edgepack.converters.equalize_cross_layer import equalize_cross_layer
    from edgepack.converters.search_ranges import minmax_ranges, search_ranges

    feeds = list(calib_feeds)
    judge = feeds[:options.decision_samples]
    summary = PtqSummary()
    ref = run(model, judge)

    def measure(m) -> dict[str, tuple[float, float]]:
        return base_ranges(m) if base_ranges is not None else minmax_ranges(m, feeds)

    def step(name: str, start: float, before: float, cos: float | None, kept: bool, **extra) -> None:
        summary.steps.append({"name": name, "kept": kept, "cosine_before": round(before, 6),
                              **({"cosine": round(cos, 6)} if cos is not None else {}),
                              **extra, "seconds": round(time.perf_counter() - start, 2)})

    start = time.perf_counter()
    current, ranges = model, measure(model)
    best = summary.cosine_minmax = int8_cosine(model, ranges, judge, ref)
    summary.steps.append({"name": "ranges", "kept": True, "cosine": round(best, 6),
                          "seconds": round(time.perf_counter() - start, 2)})

    if options.equalize:
        start, before = time.perf_counter(), best
        equalized, result = equalize_cross_layer(current)
        err = _function_error(current, equalized, judge) if result.modified else 0.0
        cos, kept = None, False
        if result.modified and err <= FUNCTION_TOLERANCE:
            eq_ranges = measure(equalized)
            cos = int8_cosine(equalized, eq_ranges, judge, ref)
            if cos >= best or not options.keep_only_gains:
                current, ranges, best, kept = equalized, eq_ranges, cos, True
        step("equalize_cross_layer", start, before, cos, kept, pairs=result.counts["pairs"], function_error=float(f"{err:.3g}"))

    if options.search_ranges:
        start, before = time.perf_counter(), best
        searched = search_ranges(current, feeds, minmax=ranges)
        cos = int8_cosine(current, searched.ranges, judge, ref)
        kept = cos >= best or not options.keep_only_gains
        if kept:
            ranges, best, summary.range_method = searched.ranges, cos, "mse"
        step("search_ranges", start, before, cos, kept, clipped_tensors=searched.clipped)

    if options.correct_bias:
        start, before = time.perf_counter(), best
        corrected, result = correct_bias(current, feeds, ranges)
        cos = int8_cosine(corrected, ranges, judge, ref)
        kept = cos >= best or not options.keep_only_gains
        if kept:
            current, best = corrected, cos
        step("correct_bias", start, before, cos, kept, corrected=result.counts["corrected"])

    summary.cosine_final = best
    return current, ranges, summary
