"""Per-tensor activation range search: the (min, max) of each tensor that minimises the mean
squared error of its int8 quantize-dequantize on the calibration activations.

Min/max calibration lets one rare outlier set the step of a whole tensor; the MSE choice trades a
little clipping of the tail for a finer step everywhere else (Banner et al. 2019; NNCF's and
TensorRT's MSE/percentile estimators). Candidates: clipping ratios of the min/max range (each side on
its own grid) and the 99.9/99.99/99.999 percentiles, scored on a histogram of every tensor over all
calibration samples, quantized exactly as ONNX Runtime's QDQ int8 does it (asymmetric, range
widened to hold 0, zero point rounded). Graph outputs keep their min/max: clipping what the user
reads is never a gain. Written here because ONNX Runtime's calibrators have no MSE method and its
percentile/entropy methods apply one rule to every tensor.

Output: {tensor name: (min, max)}, the format of calibration.json (`save_ranges` writes it)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edgepack.converters.collect_activations import float_tensors, iterate

BINS = 16384
RATIOS = np.unique(np.r_[np.linspace(0.1, 1.0, 31), 0.02, 0.05, 0.075])
PERCENTILES = (99.9, 99.99, 99.999)
MARGIN = 0.02  # a clipped range must beat min/max by this share of its estimated MSE to be chosen


@dataclass
class RangeSearch:
    ranges: dict[str, tuple[float, float]]  # chosen (MSE) ranges
    minmax: dict[str, tuple[float, float]]  # plain min/max, for comparison and fallback
    clipped: int = 0  # tensors whose chosen range is narrower than min/max
    mse_ratio: dict[str, float] = field(default_factory=dict)  # chosen MSE / min-max MSE per tensor


def minmax_ranges(model, feeds: Sequence[dict[str, np.ndarray]], names: Sequence[str] | None = None
                  ) -> dict[str, tuple[float, float]]:
    """Plain min/max of every float tensor over the feeds (ONNX Runtime's MinMax calibration)."""
    names = list(names) if names is not None else float_tensors(model)
    lo = dict.fromkeys(names, np.inf)
    hi = dict.fromkeys(names, -np.inf)
    for values in iterate(model, feeds, names):
        for n, v in values.items():
            if v.size:
                lo[n] = min(lo[n], float(v.min()))
                hi[n] = max(hi[n], float(v.max()))
    return {n: (lo[n], hi[n]) for n in names if np.isfinite(lo[n])}


def qdq(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Quantize-dequantize `x` (broadcast against per-candidate lo/hi) as ONNX Runtime's int8 QDQ
    does for an asymmetric activation: range widened to hold 0, scale (max-min)/255, zero point
    rounded, values saturated to [-128, 127]."""
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    scale = np.where(hi > lo, (hi - lo) / 255.0, 1.0)
    zero = np.clip(np.round(-128.0 - lo / scale), -128, 127)
    return (np.clip(np.round(x / scale) + zero, -128, 127) - zero) * scale


def _qparams(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    scale = np.where(hi > lo, (hi - lo) / 255.0, 1.0)
    return scale, np.clip(np.round(-128.0 - lo / scale), -128, 127)


def mse_of_range(counts: np.ndarray, centers: np.ndarray, zeros: float, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Expected squared error of quantize-dequantize over a histogram, one value per candidate
    (lo[i], hi[i]): values inside the representable range get the rounding noise step^2/12 (exact
    zeros, `zeros` of them, are represented exactly), values outside are clipped to its ends.
    Prefix sums make each candidate O(log bins), so the histogram can be fine (16k bins)."""
    scale, zero = _qparams(lo, hi)
    q_lo, q_hi = (-128.0 - zero) * scale, (127.0 - zero) * scale
    s0, s1, s2 = (np.r_[0.0, np.cumsum(counts * centers ** k)] for k in (0, 1, 2))
    i = np.searchsorted(centers, q_lo)  # bins [0, i) lie below the range
    j = np.searchsorted(centers, q_hi, side="right")  # bins [j, n) above it
    below = s2[i] - 2 * q_lo * s1[i] + q_lo ** 2 * s0[i]
    above = (s2[-1] - s2[j]) - 2 * q_hi * (s1[-1] - s1[j]) + q_hi ** 2 * (s0[-1] - s0[j])
    inside = np.maximum(s0[j] - s0[i] - zeros, 0.0) * scale ** 2 / 12.0
    return below + above + inside


def best_range(counts: np.ndarray, edges: np.ndarray, zeros: float = 0.0) -> tuple[tuple[float, float], float, float]:
    """((lo, hi), its MSE, min/max MSE) for one tensor's histogram over [edges[0], edges[-1]]."""
    mn, mx = float(edges[0]), float(edges[-1])
    centers = (edges[:-1] + edges[1:]) / 2
    counts = counts.astype(np.float64)
    lows = mn * RATIOS if mn < 0 else np.array([mn])
    highs = mx * RATIOS if mx > 0 else np.array([mx])
    cand_lo, cand_hi = (a.ravel() for a in np.meshgrid(lows, highs, indexing="ij"))
    cdf = np.cumsum(counts) / max(counts.sum(), 1)
    for p in PERCENTILES:
        cand_lo = np.r_[cand_lo, edges[np.searchsorted(cdf, 1 - p / 100)] if mn < 0 else mn]
        cand_hi = np.r_[cand_hi, edges[min(np.searchsorted(cdf, p / 100) + 1, len(edges) - 1)] if mx > 0 else mx]
    cand_lo, cand_hi = np.r_[mn, cand_lo], np.r_[mx, cand_hi]  # candidate 0 is min/max itself
    errors = mse_of_range(counts, centers, zeros, cand_lo, cand_hi)
    best = int(np.argmin(errors))
    if errors[best] > (1 - MARGIN) * errors[0]:  # within the noise model's accuracy: keep min/max
        best = 0
    return (float(cand_lo[best]), float(cand_hi[best])), float(errors[best]), float(errors[0])


def search_ranges(model, feeds: Sequence[dict[str, np.ndarray]], *, keep: Sequence[str] | None = None,
                  minmax: dict[str, tuple[float, float]] | None = None) -> RangeSearch:
    """MSE-optimal per-tensor ranges of every float tensor of `model` on `feeds`. `keep`: tensors
    that keep their min/max (default: the graph outputs). `minmax`: the plain ranges if already
    measured (saves one pass over the feeds)."""
    names = float_tensors(model)
    if minmax is None:
        minmax = minmax_ranges(model, feeds, names)
    keep = set(keep if keep is not None else (o.name for o in model.graph.output))
    searched = [n for n in names if n in minmax and n not in keep and minmax[n][1] > minmax[n][0]]
    hist = {n: np.zeros(BINS, np.int64) for n in searched}
    zeros = dict.fromkeys(searched, 0)
    for values in iterate(model, feeds, searched):
        for n, v in values.items():
            lo, hi = minmax[n]
            v = v.ravel()
            zeros[n] += int(np.count_nonzero(v == 0))
            idx = ((v.astype(np.float64) - lo) * (BINS / (hi - lo))).astype(np.int64)
            hist[n] += np.bincount(np.clip(idx, 0, BINS - 1), minlength=BINS)
    result = RangeSearch(dict(minmax), dict(minmax))
    for n in searched:
        lo, hi = minmax[n]
        (a, b), err, base = best_range(hist[n], np.linspace(lo, hi, BINS + 1), zeros[n])
        result.ranges[n] = (a, b)
        result.mse_ratio[n] = err / base if base > 0 else 1.0
        result.clipped += (a, b) != (lo, hi)
    return result
