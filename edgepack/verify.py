"""Verification: run the reference and each artifact on the same inputs and measure how far apart
they are. The reference is the PyTorch model (for an ONNX input: that ONNX in ONNX Runtime with
optimizations off).

Every artifact is held to a floor for its precision (`FLOORS`; the user's --tolerance and
--min-cosine override them), and judged by the worst part of each output, not only the whole
tensor: an output of rank >= 3 is also cut into slices along its feature axes (axis 1, as in NCHW
maps and YOLO's [1, 4 + classes, anchors] head, and for rank 3 the last axis too, as in [1, T, C]
sequences), pooled over the verification samples, and every slice whose reference is not negligible
(max |ref| >= SLICE_FLOOR x the output's max |ref|) must meet the cosine floor; the worst slice and
its index are reported. A 2-D [1, C] output is judged whole. An artifact whose output is NaN/Inf
where the reference is finite fails."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.errors import VerificationFailed
from edgepack.fsutil import atomic_path

VERIFY_NAME = "verify.npz"


@dataclass(frozen=True)
class Floor:
    """What an artifact of one precision must meet: max relative error (max abs error / max abs
    reference; None: not judged), min cosine of every output and every judged slice, whether the
    relative error is enforced (False: reported only)."""

    rel_error: float | None
    cosine: float
    rel_error_enforced: bool = True


# Default floors. fp32 is exact up to float rounding. fp16 is held to a cosine and a relative error
# that an fp16 overflow breaks (overflow gives rel err ~1 with a cosine that can stay ~0.9997).
# int8 (and int8 weights) must keep cosine 0.99 in every output and every slice: below that,
# classes flip and boxes drift in practice (the accuracy guard repairs before giving up).
FLOORS: dict[tuple[str, str], Floor] = {
    ("fp32", "exact"): Floor(1e-4, 0.9999),
    # --prune-approx removes constant channels that enter zero-padded convs: error at the borders (reported).
    ("fp32", "approx"): Floor(1e-2, 0.99, rel_error_enforced=False),
    ("fp16", "exact"): Floor(0.05, 0.999),
    ("fp16", "approx"): Floor(0.05, 0.99),
    ("int8", "exact"): Floor(None, 0.99),
    ("int8", "approx"): Floor(None, 0.99),
    ("int8-weights", "exact"): Floor(None, 0.99),
    ("int8-weights", "approx"): Floor(None, 0.99),
}
SLICE_FLOOR = 1e-4  # slices whose max |ref| is below this share of the output's max |ref| are not judged
MAX_SLICES = 4096  # beyond this many slices on an axis (e.g. a 6625-class axis), only the whole output is judged


def floor_for(precision: str, mode: str, *, tolerance: float | None = None, min_cosine: float | None = None) -> Floor:
    base = FLOORS.get((precision, mode), Floor(None, 0.99))
    rel, enforced = base.rel_error, base.rel_error_enforced
    if precision == "fp32" and tolerance is not None:
        rel, enforced = tolerance, True
    cosine = base.cosine if (precision == "fp32" or min_cosine is None) else min_cosine
    return Floor(rel, cosine, enforced)


def tolerance_for(precision: str, mode: str = "exact", user_target: float | None = None) -> tuple[float | None, bool]:
    """(relative-error tolerance, enforced) of `precision` (kept for the report's tolerance column)."""
    f = floor_for(precision, mode, tolerance=user_target)
    return f.rel_error, f.rel_error_enforced


@dataclass
class VerificationSet:
    """inputs: name -> (S, *input_shape) array, S batches; source says where they came from."""

    inputs: dict[str, np.ndarray]
    source: str
    seed: int
    calibration_indices: np.ndarray | None = None
    edge: int = 0  # the last `edge` samples exercise edges (zeros, large magnitudes): fp32 is judged on them too

    @property
    def count(self) -> int:
        return next(iter(self.inputs.values())).shape[0]

    def in_range(self) -> "VerificationSet":
        """The samples without the edge inputs (what fp16 and int8 artifacts are judged on)."""
        if not self.edge:
            return self
        n = self.count - self.edge
        return VerificationSet({k: v[:n] for k, v in self.inputs.items()}, self.source, self.seed, self.calibration_indices)

    def describe(self) -> str:
        if self.edge:
            return f"{self.source}: {self.count - self.edge} sample(s) + {self.edge} edge input(s) (zeros, 10x magnitude)"
        return f"{self.source}: {self.count} sample(s)"

    def feeds(self) -> list[dict[str, np.ndarray]]:
        return [{name: arr[i, ...] for name, arr in self.inputs.items()} for i in range(self.count)]


def batch_size(shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Samples per model call: the first dim of the first input that has one (a rank-0 input is a
    scalar shared by the batch)."""
    return next((s[0] for s in shapes.values() if s), 1)


def per_call(samples: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`batch` consecutive samples (batch, *shape[1:]) as one model input of `shape`; a scalar input
    takes the first of them."""
    return samples.reshape(shape) if shape else np.array(samples.reshape(-1)[0])


def make_verification_set(
    shapes: Mapping[str, tuple[int, ...]],
    *,
    seed: int,
    n_random: int = 8,
    calib: Mapping[str, np.ndarray] | None = None,
    holdout_fraction: float = 0.2,
    max_batches: int = 256,
) -> VerificationSet:
    """8 seeded N(0,1) samples plus two edge inputs (all zeros, 10x N(0,1)), or a seeded held-out
    split of the calibration data."""
    rng = np.random.default_rng(seed)
    if calib is None:
        inputs = {}
        for n, s in shapes.items():
            normal = rng.standard_normal((n_random,) + tuple(s), dtype=np.float32)
            edges = np.stack([np.zeros(tuple(s), np.float32), 10 * rng.standard_normal(tuple(s), dtype=np.float32)])
            inputs[n] = np.concatenate([normal, edges])
        return VerificationSet(inputs, "random-normal", seed, edge=2)
    total = next(iter(calib.values())).shape[0]
    order = rng.permutation(total)
    batch = batch_size(shapes)
    n_hold = max(batch, int(round(total * holdout_fraction)))
    n_hold = min(n_hold - n_hold % batch, max_batches * batch) or batch
    held, rest = order[:n_hold], order[n_hold:]
    inputs = {
        n: np.stack([per_call(calib[n][held[i : i + batch]], tuple(shapes[n])) for i in range(0, n_hold, batch)])
        for n in shapes
    }
    return VerificationSet(inputs, "calibration-holdout", seed, calibration_indices=np.sort(rest))


def run_all(run: Callable[[dict[str, np.ndarray]], list[np.ndarray]], vset: VerificationSet) -> list[np.ndarray]:
    """Run every batch; stack each output over batches -> list of (S, ...) arrays."""
    return stack_outputs([run(feed) for feed in vset.feeds()])


def stack_outputs(per_batch: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Each batch's outputs -> one (S, ...) array per output."""
    return [np.stack([outs[k] for outs in per_batch]) for k in range(len(per_batch[0]))]


def compare(reference: list[np.ndarray], actual: list[np.ndarray], names: list[str]) -> dict:
    """Max abs error, relative error (max abs error / max abs reference), cosine similarity, the
    worst slice along the feature axes (see the module doc) and, for classifier-like outputs
    (N x C, C >= 2), top-1 agreement; worst over outputs, plus per output. Arrays are (S, *shape):
    S verification samples of one output each."""
    if len(reference) != len(actual):
        return {"error": f"artifact has {len(actual)} outputs, reference {len(reference)}"}
    per_output = {}
    for name, ref, act in zip(names, reference, actual):
        if ref.shape != act.shape:
            return {"error": f"output {name!r} has shape {list(act.shape[1:])}, reference {list(ref.shape[1:])}"}
        r = ref.astype(np.float64)
        a = act.astype(np.float64)
        # NaN/Inf where the reference has the very same value is agreement; NaN/Inf where the
        # reference is finite is an infinite error.
        same_nonfinite = ~np.isfinite(r) & ((a == r) | (np.isnan(a) & np.isnan(r)))
        bad = int((~np.isfinite(a) & ~same_nonfinite).sum())
        both = np.isfinite(r) & np.isfinite(a)
        diff = np.abs(a - r)[both]
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(r[np.isfinite(r)]).max()) if np.isfinite(r).any() else 0.0
        r, a = np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0), np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        entry = {
            "max_abs_error": max_abs if not bad else float("inf"),
            "rel_error": (max_abs / scale if scale > 0 else max_abs) if not bad else float("inf"),
            "cosine": _cosine(r, a) if not bad else 0.0,
            "nonfinite": bad,
        }
        worst_slice = _worst_slice(r, a)
        if worst_slice is not None:
            entry["worst_slice"] = worst_slice
        if r.ndim == 3 and r.shape[2] >= 2:  # (S, N, C) classifier-like
            entry["top1_agreement"] = float(np.mean(r.argmax(-1) == a.argmax(-1)))
        per_output[name] = entry
    worst = {
        "max_abs_error": max(e["max_abs_error"] for e in per_output.values()),
        "rel_error": max(e["rel_error"] for e in per_output.values()),
        "cosine": min(e["cosine"] for e in per_output.values()),
        "nonfinite": sum(e["nonfinite"] for e in per_output.values()),
    }
    slices = [(n, e["worst_slice"]) for n, e in per_output.items() if "worst_slice" in e]
    if slices:
        n, ws = min(slices, key=lambda t: t[1]["cosine"])
        worst["worst_slice"] = {"output": n, **ws}
    top1 = [e["top1_agreement"] for e in per_output.values() if "top1_agreement" in e]
    worst["top1_agreement"] = min(top1) if top1 else None
    worst["per_output"] = per_output
    return worst


def slice_axes(rank: int) -> tuple[int, ...]:
    """The feature axes (of the output itself, without the sample axis) whose slices are judged:
    axis 1 for rank >= 3 (NCHW maps, YOLO's [1, 4 + classes, anchors]); for rank 3 also the last axis
    ([1, T, C] sequences). A rank-2 [1, C] output is judged whole."""
    if rank >= 4:
        return (1,)
    if rank == 3:
        return (1, 2)
    return ()


def _worst_slice(r: np.ndarray, a: np.ndarray) -> dict | None:
    """{axis, index, cosine} of the slice with the lowest cosine, pooled over samples; None when the
    output has no judged slices."""
    peak = float(np.abs(r).max()) if r.size else 0.0
    if peak == 0.0:
        return None
    worst = None
    for axis in slice_axes(r.ndim - 1):
        k = axis + 1  # the sample axis comes first
        n = r.shape[k]
        if n < 2 or n > MAX_SLICES:
            continue
        rs = np.moveaxis(r, k, 0).reshape(n, -1)
        as_ = np.moveaxis(a, k, 0).reshape(n, -1)
        judged = np.abs(rs).max(axis=1) >= SLICE_FLOOR * peak
        num = (rs * as_).sum(axis=1)
        den = np.linalg.norm(rs, axis=1) * np.linalg.norm(as_, axis=1)
        cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
        cos = np.where(judged, cos, np.inf)
        i = int(np.argmin(cos))
        if np.isfinite(cos[i]) and (worst is None or cos[i] < worst["cosine"]):
            worst = {"axis": axis, "index": i, "cosine": float(cos[i]), "slices": int(judged.sum())}
    return worst


def _cosine(r: np.ndarray, a: np.ndarray) -> float:
    """Mean over samples of the cosine similarity of the flattened outputs."""
    r2 = r.reshape(r.shape[0], -1)
    a2 = a.reshape(a.shape[0], -1)
    num = (r2 * a2).sum(axis=1)
    den = np.linalg.norm(r2, axis=1) * np.linalg.norm(a2, axis=1)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(np.abs(r2 - a2).max(axis=1) == 0, 1.0, 0.0))
    return float(np.nan_to_num(cos.mean(), nan=0.0))


def save_verification(path: Path, vset: VerificationSet, reference: list[np.ndarray], output_names: list[str]) -> None:
    """OUTDIR/verify.npz: `input/<name>` and `reference/<output name>`, so later commands can
    re-verify an artifact without torch."""
    arrays = {f"input/{n}": a for n, a in vset.inputs.items()}
    arrays.update({f"reference/{n}": a for n, a in zip(output_names, reference)})
    arrays["meta/edge"] = np.array(vset.edge)  # the last `edge` samples are edge inputs (judged for fp32 only)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def load_verification(path: Path, with_edge: bool = False):
    """verify.npz -> (inputs {name: (S, ...)}, references {output name: (S, ...)}[, edge count])."""
    with np.load(path, allow_pickle=False) as data:
        inputs = {k[len("input/"):]: data[k] for k in data.files if k.startswith("input/")}
        refs = {k[len("reference/"):]: data[k] for k in data.files if k.startswith("reference/")}
        edge = int(data["meta/edge"]) if "meta/edge" in data.files else 0
    return (inputs, refs, edge) if with_edge else (inputs, refs)


def judge(fidelity: dict, tolerance: dict) -> list[str]:
    """What is wrong with `fidelity` against a floor (`tolerance` as stored in report.json); [] when
    it holds. The same rules as check_fidelity, for results measured elsewhere (bench --verify)."""
    problems = []
    if fidelity.get("error"):
        return [fidelity["error"]]
    if fidelity.get("nonfinite"):
        problems.append(f"{fidelity['nonfinite']} NaN/Inf output value(s) where the reference is finite")
    rel = tolerance.get("rel_error")
    if rel is not None and tolerance.get("rel_error_enforced", True) and not fidelity["rel_error"] <= rel:
        problems.append(f"relative error {fidelity['rel_error']:.3g} > {rel:g}")
    floor = tolerance.get("min_cosine")
    if floor is not None and fidelity["cosine"] < floor:
        problems.append(f"cosine {fidelity['cosine']:.4f} < {floor}")
    ws = fidelity.get("worst_slice")
    if floor is not None and ws is not None and ws["cosine"] < floor:
        problems.append(f"slice {ws['index']} of output {ws['output']!r} (axis {ws['axis']}) cosine {ws['cosine']:.4f} < {floor}")
    top1, want = fidelity.get("top1_agreement"), tolerance.get("min_top1")
    if want is not None and top1 is not None and top1 < want:
        problems.append(f"top-1 agreement {top1:.1%} < {want:.1%}")
    return problems


# ---------------------------------------------------------------- verifying an artifact of an export


def verify_artifact(ctx, entry: dict, precision: str) -> dict:
    """Run the artifact on the verification set in its runtime and compare with the reference; the
    floor of its precision (FLOORS, or the user's --tolerance / --min-cosine / --min-top1) goes into
    `tolerance`. Edge inputs (zeros, large magnitudes: `vset.edge`) are judged for fp32 artifacts
    only; fp16 and int8 are judged on in-range data. `ctx` is the export's ExportContext."""
    from edgepack.formats import FORMATS
    from edgepack.runtimes import get_runtime
    from edgepack.runtimes.ort import ort_message

    fmt = entry["format"]
    runtime = get_runtime(FORMATS[fmt].runtime)
    vset = ctx.vset if precision == "fp32" else ctx.vset.in_range()
    try:
        actual = stack_outputs(ctx.outputs(entry, vset.feeds()))  # ncnn, LiteRT: in a child (a crash fails this artifact)
    except Exception as exc:  # the artifact itself is broken: it cannot be verified
        why = ort_message(exc) if fmt == "onnx" else getattr(exc, "detail", None) or str(exc).splitlines()[0][:300]
        raise VerificationFailed(
            f"{runtime.name} cannot run {entry['path']}: {why}; the artifact is kept for inspection"
        ) from None
    reference = ctx.reference if precision == "fp32" else [r[: vset.count] for r in ctx.reference]
    result = compare(reference, actual, ctx.output_names)
    v = ctx.options.verify
    mode = "approx" if ctx.options.prune.prune_approx else "exact"
    floor = floor_for(precision, mode, tolerance=v.tolerance, min_cosine=v.min_cosine)
    result["tolerance"] = {"rel_error": floor.rel_error, "enforced": True, "rel_error_enforced": floor.rel_error_enforced,
                           "min_cosine": floor.cosine, "min_top1": v.min_top1 if precision != "fp32" else None,
                           "source": "user" if (v.min_cosine is not None and precision != "fp32") or
                           (v.tolerance is not None and precision == "fp32") else "default"}
    result["samples"] = vset.count
    result["inputs"] = vset.describe()
    result["runtime"] = f"{runtime.name} {runtime.version()}"
    return result


def missed(fidelity: dict) -> bool:
    """True when the artifact misses its cosine or top-1 floor (whole outputs or a judged slice):
    what the accuracy guard can repair."""
    tol = fidelity.get("tolerance") or {}
    if fidelity.get("error"):
        return False
    if tol.get("min_cosine") is not None:
        if fidelity["cosine"] < tol["min_cosine"]:
            return True
        ws = fidelity.get("worst_slice")
        if ws is not None and ws["cosine"] < tol["min_cosine"]:
            return True
    top1 = fidelity.get("top1_agreement")
    return tol.get("min_top1") is not None and top1 is not None and top1 < tol["min_top1"]


def check_fidelity(entry: dict, precision: str) -> None:
    """Raise VerificationFailed when the artifact misses its floor; set entry["warning"] when a
    reported-only tolerance is exceeded (--prune-approx)."""
    fid = entry["fidelity"]
    if fid.get("error"):
        raise VerificationFailed(fid["error"])
    tol = fid["tolerance"]
    if fid.get("nonfinite"):
        raise VerificationFailed(
            f"{fid['nonfinite']} output value(s) are NaN/Inf where the reference is finite; the artifact is kept for inspection")
    rel = tol.get("rel_error")
    if rel is not None and not fid["rel_error"] <= rel:
        if tol.get("rel_error_enforced", True):
            raise VerificationFailed(
                f"relative error {fid['rel_error']:.3g} exceeds the {precision} floor {rel:.0e}"
                + (" (an fp16 overflow or underflow)" if precision == "fp16" else "") + "; the artifact is kept for inspection")
        entry["warning"] = (f"relative error {fid['rel_error']:.3g} exceeds {rel:.0e} (reported, not enforced: "
                            "--prune-approx; pass --tolerance to enforce one)")
    if missed(fid):
        floats = entry.get("float_nodes") or []
        ws = fid.get("worst_slice")
        where = (f"; worst slice: output {ws['output']!r} axis {ws['axis']} index {ws['index']} cosine {ws['cosine']:.4f}"
                 if ws is not None else "")
        guard = f" even with {len(floats)} node(s) kept in float" if precision == "int8" else ""
        raise VerificationFailed(
            f"{precision} misses its floor (cosine {fid['cosine']:.4f}{where}, top-1 agreement "
            f"{_pct(fid.get('top1_agreement'))}; floor: cosine {tol.get('min_cosine')}"
            + (f", top-1 {tol.get('min_top1')}" if tol.get("min_top1") is not None else "") + f"){guard}; "
            "the artifact is kept for inspection; try --calib-method entropy or percentile, more --calib data, or "
            "`edgepack compare --per-node`" if precision.startswith("int8") else
            f"{precision} misses its floor (cosine {fid['cosine']:.4f}{where}; floor {tol.get('min_cosine')}); "
            "the artifact is kept for inspection"
        )
    share = entry.get("int8_mac_share")
    if precision == "int8" and share is not None and share < 1.0 - MAX_FLOAT_MAC_SHARE:
        raise VerificationFailed(
            f"only {share:.0%} of the MACs run in int8 (the accuracy guard kept {1 - share:.0%} in float to meet the "
            f"floor; at most {MAX_FLOAT_MAC_SHARE:.0%} may stay float before an artifact stops being an int8 model); "
            "the artifact is kept for inspection; try --calib-method entropy or percentile, or more --calib data")


# A non-ONNX int8 artifact must agree with the int8 ONNX built from the same calibration (when that
# one met its own floor) to this cosine, whole and in its worst slice. Both round activations on
# the same grid (the same ranges), so they differ only by integer-kernel rounding: where the TFLite
# writer was right, agreement measured >= 0.9999 (YOLO11n 0.99998); its bugs gave 0.36 (YOLO11n's
# concat of boxes and scores) and 0.90 (LR-ASPP's gate). 0.99 sits far from both.
AGREEMENT_FLOOR = 0.99


def check_agreement(agreement: dict, floor: float = AGREEMENT_FLOOR) -> None:
    """Raise VerificationFailed when an int8 artifact disagrees with the int8 ONNX of the same calibration."""
    problems = judge(agreement, {"min_cosine": floor})
    if problems:
        raise VerificationFailed(
            f"int8 disagrees with the int8 ONNX from the same calibration ({'; '.join(problems)}; floor: cosine {floor}): "
            "its int8 writer computes something else; the artifact is kept for inspection; "
            "`python -m edgepack.divergence_tflite` shows the first tensor where they part")


MAX_FLOAT_MAC_SHARE = 0.10  # the accuracy guard may keep at most this share of an int8 model's MACs in float


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"
