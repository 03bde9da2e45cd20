"""Verification: run the reference and each artifact on the same inputs and measure how far apart
they are. The reference is the PyTorch model (for an ONNX input: that ONNX in ONNX Runtime with
optimizations off). Tolerances live in one table keyed by (precision, mode)."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.errors import VerificationFailed
from edgepack.fsutil import atomic_path

VERIFY_NAME = "verify.npz"
# Without a user target, quantized artifacts are only warned about below these.
POOR_COSINE = 0.99
POOR_TOP1 = 0.95

# (precision, mode) -> (relative-error tolerance, enforced by default). Entries that are not
# enforced are reported; they fail an artifact only when the user sets a target.
TOLERANCES: dict[tuple[str, str], tuple[float, bool]] = {
    ("fp32", "exact"): (1e-4, True),
    # --prune-approx removes constant channels that enter zero-padded convs: error at the borders.
    ("fp32", "approx"): (1e-2, False),
    ("fp16", "exact"): (1e-2, False),
    ("fp16", "approx"): (1e-2, False),
}
# int8 and int8-weights have no relative-error tolerance: they are judged by cosine and top-1
# agreement against user targets (--min-cosine / --min-top1), and warned about below defaults.


def tolerance_for(precision: str, mode: str = "exact", user_target: float | None = None) -> tuple[float | None, bool]:
    if user_target is not None:
        return user_target, True
    return TOLERANCES.get((precision, mode), (None, False))


@dataclass
class VerificationSet:
    """inputs: name -> (S, *input_shape) array, S batches; source says where they came from."""

    inputs: dict[str, np.ndarray]
    source: str
    seed: int
    calibration_indices: np.ndarray | None = None

    @property
    def count(self) -> int:
        return next(iter(self.inputs.values())).shape[0]

    def feeds(self) -> list[dict[str, np.ndarray]]:
        return [{name: arr[i] for name, arr in self.inputs.items()} for i in range(self.count)]


def make_verification_set(
    shapes: Mapping[str, tuple[int, ...]],
    *,
    seed: int,
    n_random: int = 8,
    calib: Mapping[str, np.ndarray] | None = None,
    holdout_fraction: float = 0.2,
    max_batches: int = 256,
) -> VerificationSet:
    """8 seeded N(0,1) samples, or a seeded held-out split of the calibration data."""
    rng = np.random.default_rng(seed)
    if calib is None:
        inputs = {n: rng.standard_normal((n_random,) + tuple(s), dtype=np.float32) for n, s in shapes.items()}
        return VerificationSet(inputs, "random-normal", seed)
    total = next(iter(calib.values())).shape[0]
    order = rng.permutation(total)
    batch = next(iter(shapes.values()))[0]
    n_hold = max(batch, int(round(total * holdout_fraction)))
    n_hold = min(n_hold - n_hold % batch, max_batches * batch) or batch
    held, rest = order[:n_hold], order[n_hold:]
    inputs = {
        n: calib[n][held].reshape((n_hold // batch,) + tuple(shapes[n])) for n in shapes
    }
    return VerificationSet(inputs, "calibration-holdout", seed, calibration_indices=np.sort(rest))


def run_all(run: Callable[[dict[str, np.ndarray]], list[np.ndarray]], vset: VerificationSet) -> list[np.ndarray]:
    """Run every batch; stack each output over batches -> list of (S, ...) arrays."""
    per_batch = [run(feed) for feed in vset.feeds()]
    return [np.stack([outs[k] for outs in per_batch]) for k in range(len(per_batch[0]))]


def compare(reference: list[np.ndarray], actual: list[np.ndarray], names: list[str]) -> dict:
    """Max abs error, relative error (max abs error / max abs reference), cosine similarity and, for
    classifier-like outputs (N x C, C >= 2), top-1 agreement; worst over outputs, plus per output."""
    if len(reference) != len(actual):
        return {"error": f"artifact has {len(actual)} outputs, reference {len(reference)}"}
    per_output = {}
    for name, ref, act in zip(names, reference, actual):
        if ref.shape != act.shape:
            return {"error": f"output {name!r} has shape {list(act.shape[1:])}, reference {list(ref.shape[1:])}"}
        r = ref.astype(np.float64)
        a = act.astype(np.float64)
        # NaN/Inf where the reference has the very same value is agreement (e.g. NaN weights);
        # anywhere else it is an infinite error.
        same_nonfinite = ~np.isfinite(r) & ((a == r) | (np.isnan(a) & np.isnan(r)))
        finite = bool((np.isfinite(a) | same_nonfinite).all())
        both = np.isfinite(r) & np.isfinite(a)
        diff = np.abs(a - r)[both]
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(r[np.isfinite(r)]).max()) if np.isfinite(r).any() else 0.0
        r, a = np.nan_to_num(r, posinf=0.0, neginf=0.0), np.nan_to_num(a, posinf=0.0, neginf=0.0)
        entry = {
            "max_abs_error": max_abs if finite else float("inf"),
            "rel_error": (max_abs / scale if scale > 0 else max_abs) if finite else float("inf"),
            "cosine": _cosine(r, a),
        }
        if r.ndim == 3 and r.shape[2] >= 2:  # (S, N, C) classifier-like
            entry["top1_agreement"] = float(np.mean(r.argmax(-1) == a.argmax(-1)))
        per_output[name] = entry
    worst = {
        "max_abs_error": max(e["max_abs_error"] for e in per_output.values()),
        "rel_error": max(e["rel_error"] for e in per_output.values()),
        "cosine": min(e["cosine"] for e in per_output.values()),
    }
    top1 = [e["top1_agreement"] for e in per_output.values() if "top1_agreement" in e]
    worst["top1_agreement"] = min(top1) if top1 else None
    worst["per_output"] = per_output
    return worst


def _cosine(r: np.ndarray, a: np.ndarray) -> float:
    """Mean over batches of the cosine similarity of the flattened outputs."""
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
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def load_verification(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """verify.npz -> (inputs {name: (S, ...)}, references {output name: (S, ...)})."""
    with np.load(path, allow_pickle=False) as data:
        inputs = {k[len("input/"):]: data[k] for k in data.files if k.startswith("input/")}
        refs = {k[len("reference/"):]: data[k] for k in data.files if k.startswith("reference/")}
    return inputs, refs


# ---------------------------------------------------------------- verifying an artifact of an export


def verify_artifact(ctx, entry: dict, precision: str) -> dict:
    """Run the artifact on the verification set in its runtime and compare with the reference.
    Every non-fp32 artifact is held to the user's --min-cosine / --min-top1 when given. `ctx` is the
    export's ExportContext (vset, reference, output names, options, runner)."""
    from edgepack.formats import FORMATS
    from edgepack.runtimes import get_runtime
    from edgepack.runtimes.ort import ort_message

    fmt = entry["format"]
    runtime = get_runtime(FORMATS[fmt].runtime)
    try:
        actual = run_all(ctx.runner(entry), ctx.vset)
    except Exception as exc:  # the artifact itself is broken: it cannot be verified
        why = ort_message(exc) if fmt == "onnx" else str(exc).splitlines()[0][:300]
        raise VerificationFailed(
            f"{runtime.name} cannot run {entry['path']}: {why}; the artifact is kept for inspection"
        ) from None
    result = compare(ctx.reference, actual, ctx.output_names)
    v = ctx.options.verify
    mode = "approx" if ctx.options.prune.prune_approx else "exact"
    # fp16 TFLite computes in fp32 (weights dequantized once): it is judged by the fp16 tolerance too.
    tol, enforced = tolerance_for(precision, mode, v.tolerance if precision == "fp32" else None)
    result["tolerance"] = {"rel_error": tol, "enforced": enforced}
    if precision != "fp32" and (v.min_cosine is not None or v.min_top1 is not None):
        result["tolerance"].update({"min_cosine": v.min_cosine, "min_top1": v.min_top1, "enforced": True})
    result["samples"] = ctx.vset.count
    result["runtime"] = f"{runtime.name} {runtime.version()}"
    return result


def missed(fidelity: dict) -> bool:
    """True when a user target (--min-cosine / --min-top1) is set and missed."""
    tol = fidelity.get("tolerance") or {}
    if fidelity.get("error"):
        return False
    if tol.get("min_cosine") is not None and fidelity["cosine"] < tol["min_cosine"]:
        return True
    top1 = fidelity.get("top1_agreement")
    return tol.get("min_top1") is not None and top1 is not None and top1 < tol["min_top1"]


def check_fidelity(entry: dict, precision: str) -> None:
    """Raise VerificationFailed when the artifact misses an enforced tolerance or target; set
    entry["warning"] when a quantized artifact without a target looks poor."""
    fid = entry["fidelity"]
    if fid.get("error"):
        raise VerificationFailed(fid["error"])
    tol = fid["tolerance"]
    if tol["enforced"] and tol["rel_error"] is not None and not fid["rel_error"] <= tol["rel_error"]:
        raise VerificationFailed(
            f"relative error {fid['rel_error']:.3g} exceeds the {precision} tolerance {tol['rel_error']:.0e}; "
            "the artifact is kept for inspection"
        )
    if missed(fid):
        floats = entry.get("float_nodes") or []
        raise VerificationFailed(
            f"{precision} misses the target (cosine {fid['cosine']:.4f}, top-1 agreement {_pct(fid.get('top1_agreement'))}; "
            f"targets: cosine {tol.get('min_cosine')}, top-1 {tol.get('min_top1')}) even with {len(floats)} node(s) kept in float; "
            "the artifact is kept for inspection; try --calib-method entropy or percentile, more --calib data, or a lower target"
        )
    warnings = []
    if precision != "fp32" and not tol.get("enforced"):
        if fid["cosine"] < POOR_COSINE:
            warnings.append(f"cosine {fid['cosine']:.4f} < {POOR_COSINE}")
        if fid.get("top1_agreement") is not None and fid["top1_agreement"] < POOR_TOP1:
            warnings.append(f"top-1 agreement {_pct(fid['top1_agreement'])} < {POOR_TOP1:.0%}")
    if warnings:
        entry["warning"] = (f"{precision} fidelity is poor ({', '.join(warnings)}); set --min-cosine/--min-top1 to let "
                            "the accuracy guard keep the worst layers in float, or run `edgepack compare --per-node`")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"
