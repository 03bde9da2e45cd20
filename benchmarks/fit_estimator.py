"""Fit the estimator's free parameters on published measurements and publish its error.

    python -m benchmarks.fit_estimator            # fit, print the error tables, check the shipped params
    python -m benchmarks.fit_estimator --write    # ... and write devices/estimator_params.json
    python -m benchmarks.fit_estimator --rebuild  # rebuild the reference models' layer tables (needs torch)
    python -m benchmarks.fit_estimator --reference-dir DIR  # the published data elsewhere

Data: the published measurements in the repo's sibling folder `shared/reference/` (CI clones the
repo with `shared/` beside it; their sources are in that folder's README), not copied into the
repo: ncnn-published-latency.csv (benchncnn, average ms) on the boards that have a profile. The ten benchmark models are rebuilt from their standard definitions
(`reference_models.py`); their layer tables are cached in `benchmarks/data/reference_layers.json`
so a refit needs no torch. Errors are |estimate / measured - 1|: on the models the fit saw, and
leaving each model out of the fit in turn and predicting it (the held-out error). The baseline is
a plain MACs estimate (ms = c x GMACs, c fitted per board x threads x precision on the same
training models), the usual back-of-envelope.

Excluded rows (no sane model reproduces them), each with its reason, are in EXCLUDED; rows once
called outliers that the model now reproduces stay in the fit and are listed in REPRODUCED."""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from edgepack.devices import DeviceProfile, load_profile
from edgepack.devices.estimate import (
    LayerFeatures,
    RuntimeParams,
    combine,
    layer_seconds,
    load_params,
    numerics,
    runtime_graph,
)
from edgepack.devices.layers import LayerTable, load_tables, save_tables
from scipy.optimize import least_squares

ROOT = Path(__file__).resolve().parent.parent
# public measurements (sources in that folder's README.md), beside the repo, never copied into it
REFERENCE = ROOT.parent / "shared" / "reference"
TABLES = ROOT / "benchmarks" / "data" / "reference_layers.json"
PARAMS = ROOT / "devices" / "estimator_params.json"
BOARDS = {"rpi4": "rpi4", "rpi5": "rpi5", "rpi3": "rpi3", "rpi-zero2w": "rpi-zero2w", "jetson-nano-cpu": "jetson-nano-cpu"}
GOAL_BOARDS = ("rpi4", "rpi5")
EXCLUDED = {
    ("rpi5", "mobilenet", "fp32", 4): "average 33.9 ms vs 20.3 ms on 1 thread after a 73 ms spike (min 9.0 ms): "
                                      "a disturbed run, not the model",
}
# Rows once excluded as outliers that the model now reproduces, so they stay in the fit (their
# estimate is printed): int8 slower than fp32 on the A76, because ncnn's fp32 runs fp16 Winograd at
# twice the fp32 rate while its int8 Winograd multiplies int16 transforms without the dot product.
REPRODUCED = {
    ("rpi5", "resnet18", "int8", 1): "int8 slower than fp32 (36.4 vs 29.7 ms): int16 Winograd vs fp16 Winograd",
    ("rpi5", "vgg16", "int8", 1): "int8 slower than fp32 (273 vs 190 ms): int16 Winograd vs fp16 Winograd",
}
START = {"gemm_eff": 0.6, "width_half": 32.0, "dw_eff": 0.15, "winograd": 0.8, "int8_nodot": 1.4, "int8_dot": 2.0,
         "in_order_eff": 0.7, "cache_bw": 4.0, "act_passes": 2.0, "memory_share": 0.05, "memory_share_int8": 0.05, "layer_cycles": 20000.0}
BOUNDS = {"gemm_eff": (0.05, 1.0), "width_half": (1.0, 1024.0), "dw_eff": (0.01, 1.0), "winograd": (0.1, 2.0),
          "int8_nodot": (0.5, 4.0), "int8_dot": (0.5, 8.0), "in_order_eff": (0.2, 1.5), "cache_bw": (1.0, 20.0), "act_passes": (1.0, 10.0),
          "memory_share": (0.0, 0.9), "memory_share_int8": (0.0, 0.9), "layer_cycles": (100.0, 1e6)}

LOSS = "soft_l1"  # robust: a few odd rows do not drag the rest

# Held at a physical limit, not fitted: free, the fit drives them to these bounds anyway (a GEMM at
# the FMA peak before the width term; depthwise time is all memory; a cache 20x faster than DRAM).
FIXED = {"gemm_eff": 1.0, "dw_eff": 1.0, "cache_bw": 20.0}
# LiteRT (XNNPACK): no Winograd; no in-order board in its data (in_order_eff kept at ncnn's value
# when --write copies it); depthwise efficiency is fitted (EfficientDet is depthwise-heavy).
LITERT_FIXED = {"gemm_eff": 1.0, "cache_bw": 20.0, "winograd": 1.0, "in_order_eff": 0.7}


def reference_file(reference: Path, name: str) -> Path:
    path = Path(reference) / name
    if not path.is_file():
        raise SystemExit(f"no {name} in {reference}: the published measurements live in the repo's sibling folder "
                         "shared/reference/ (clone shared/ beside the repo) or pass --reference-dir DIR")
    return path


@dataclass(frozen=True)
class Row:
    board: str
    model: str
    precision: str
    threads: int
    ms: float


def read_ncnn_rows(reference: Path = REFERENCE) -> tuple[list[Row], list[tuple[Row, str]]]:
    rows, excluded = [], []
    with open(reference_file(reference, "ncnn-published-latency.csv")) as f:
        for r in csv.DictReader(f):
            if r["device"] not in BOARDS:
                continue
            model, precision = (r["model"][: -len("_int8")], "int8") if r["model"].endswith("_int8") else (r["model"], "fp32")
            row = Row(BOARDS[r["device"]], model, precision, int(r["threads"]), float(r["avg_ms"]))
            why = EXCLUDED.get((row.board, row.model, row.precision, row.threads))
            (excluded.append((row, why)) if why else rows.append(row))
    return rows, excluded


TFLITE_BOARDS = {"Raspberry Pi 4 4GB (Cortex-A72)": "rpi4", "Raspberry Pi 5 8GB (Cortex-A76 2.4GHz)": "rpi5"}


def read_litert_rows(reference: Path = REFERENCE) -> list[Row]:
    """TFLite 2.18 benchmark_model with the XNNPACK delegate (mean ms): EfficientDet-Lite0-4 on the RPi 4
    and 5, fp32 and int8, 1-4 threads; a repeated run is averaged. The TFLite 2.5 Python rows (SSD
    models, a 1.5 GHz RPi 4, Arm NN) are not used: no rebuilt model and a different runtime build."""
    runs: dict[tuple, list[float]] = {}
    with open(reference_file(reference, "tflite-published-latency.csv")) as f:
        for r in csv.DictReader(f):
            board = TFLITE_BOARDS.get(r["device"])
            if board is None or not r["runtime"].startswith("TFLite 2.18"):
                continue
            model, _, precision = r["model"].rpartition("_")
            precision = precision.lower()
            runs.setdefault((board, model, precision, int(r["threads"])), []).append(float(r["mean_ms"]))
    return [Row(b, m, p, t, statistics.mean(v)) for (b, m, p, t), v in sorted(runs.items())]


def reference_models() -> dict:
    from benchmarks.reference_models import (
        CHECK_MODELS,
        LITERT_REFERENCE_MODELS,
        REFERENCE_MODELS,
    )

    return {**REFERENCE_MODELS, **LITERT_REFERENCE_MODELS, **CHECK_MODELS}


def build_tables(names: list[str]) -> dict[str, LayerTable]:
    """Rebuild reference models: torch -> ONNX -> edgepack's cleanup + BN folding -> layer table."""
    import onnx_ir as ir
    import torch
    from edgepack.converters.cleanup_graph import cleanup_graph
    from edgepack.converters.fold_batchnorm import fold_batchnorm
    from edgepack.converters.torch_to_onnx import torch_to_onnx
    from edgepack.devices.layers import layers_from_onnx

    tables = {}
    models = reference_models()
    for name in names:
        make, shape = models[name]
        module = make().eval()
        with torch.no_grad():
            out = module(torch.zeros(shape))
        n_out = len(out) if isinstance(out, tuple) else 1
        proto = torch_to_onnx(module, "module", (torch.randn(*shape),), ["input"], [f"out{i}" for i in range(n_out)], 18).model_proto
        model = ir.from_proto(proto)
        for graph_pass in (cleanup_graph, fold_batchnorm, cleanup_graph):
            graph_pass(model)
        tables[name] = layers_from_onnx(ir.to_proto(model), source=name)
        print(f"rebuilt {name}: {tables[name].macs / 1e9:.3f} GMACs, {len(tables[name].layers)} layers", file=sys.stderr)
    return tables


def check_macs(tables: dict[str, LayerTable], reference: Path = REFERENCE) -> list[str]:
    """Our rebuilds' MAC split against ncnn-benchmark-models.csv."""
    lines = []
    with open(reference_file(reference, "ncnn-benchmark-models.csv")) as f:
        for r in csv.DictReader(f):
            t = tables[r["model"]]
            dense = sum(x.macs for x in t.layers if x.kind == "conv") / 1e9
            dw = sum(x.macs for x in t.layers if x.kind == "dwconv") / 1e9
            fc = sum(x.macs for x in t.layers if x.kind in ("fc", "matmul")) / 1e9
            lines.append(f"{r['model']:14s} dense {dense:7.3f} / {float(r['dense_conv_gmacs']):7.3f}  dw {dw:6.4f} / "
                         f"{float(r['depthwise_gmacs']):6.4f}  fc {fc:6.4f} / {float(r['fc_gmacs']):6.4f}  "
                         f"params {t.weight_elems / 1e6:7.3f} / {float(r['mparams']):7.3f} M")
    return lines


# ---------------------------------------------------------------- the model over many rows


class Problem:
    """Precomputed layer features per (model, board, precision), so one evaluation of all rows is fast."""

    def __init__(self, tables: dict[str, LayerTable], rows: list[Row], runtime: str) -> None:
        self.rows, self.runtime = rows, runtime
        self.profiles: dict[str, DeviceProfile] = {b: load_profile(b) for b in {r.board for r in rows}}
        self.features = {}
        for name, table in tables.items():
            layers, _ = runtime_graph(table, runtime)
            self.features[name] = LayerFeatures.of(layers, table.tensors)

    def predict(self, rp: RuntimeParams, rows: list[Row] | None = None) -> np.ndarray:
        out = []
        for r in rows or self.rows:
            profile = self.profiles[r.board]
            num = numerics(self.runtime, r.precision, profile)
            out.append(float(combine(*layer_seconds(self.features[r.model], profile, self.runtime, num, rp,
                                                    r.threads)).sum()) * 1e3)
        return np.array(out)


def fit(problem: Problem, rows: list[Row], free: list[str] | None = None, base: RuntimeParams | None = None,
        starts: int = 4) -> RuntimeParams:
    """Least squares on log(estimate / measured) with a robust loss, from `starts` seeded starting
    points (the first is START); parameters not in `free` stay at `base`."""
    names = RuntimeParams.names()
    free = free or names
    fixed = {k: v for k, v in vars(base).items() if k not in free} if base else {}
    enc = lambda k, v: v if k.startswith("memory_share") else np.log(v)
    lo = np.array([enc(k, BOUNDS[k][0]) for k in free])
    hi = np.array([enc(k, BOUNDS[k][1]) for k in free])
    measured = np.log([r.ms for r in rows])

    def params_of(x: np.ndarray) -> RuntimeParams:
        values = {k: float(v) if k.startswith("memory_share") else float(np.exp(v)) for k, v in zip(free, x)}
        return RuntimeParams(**{**fixed, **values})

    def residuals(x: np.ndarray) -> np.ndarray:
        return np.log(problem.predict(params_of(x), rows)) - measured

    rng = np.random.default_rng(0)
    best = None
    for i in range(starts):
        x0 = np.array([enc(k, START[k]) for k in free])
        if i:
            x0 = np.clip(x0 + rng.normal(0, 0.5, len(free)) * (hi - lo) / 4, lo + 1e-6, hi - 1e-6)
        result = least_squares(residuals, x0, bounds=(lo, hi), diff_step=1e-4, max_nfev=300, loss=LOSS, f_scale=0.1)
        if best is None or result.cost < best.cost:
            best = result
    return params_of(best.x)


def fit_both(problem: Problem, rows: list[Row], fixed: dict[str, float] | None = None) -> RuntimeParams:
    """Stage 1: every parameter but in_order_eff (and the `fixed` ones) on the goal boards
    (out-of-order A72, A76). Stage 2: in_order_eff alone on the in-order A53 boards, the rest fixed.
    Other boards (jetson-nano-cpu, A57) are never fitted on: their error is a transfer test."""
    fixed = FIXED if fixed is None else fixed
    names = RuntimeParams.names()
    goal = [r for r in rows if r.board in GOAL_BOARDS]
    stage1 = fit(problem, goal, free=[k for k in names if k != "in_order_eff" and k not in fixed],
                 base=RuntimeParams(**{**START, **fixed}))
    in_order = [r for r in rows if problem.profiles[r.board].big.in_order]
    return fit(problem, in_order, free=["in_order_eff"], base=stage1, starts=1) if in_order else stage1


def errors(pred: np.ndarray, rows: list[Row]) -> np.ndarray:
    return np.abs(pred / np.array([r.ms for r in rows]) - 1)


def baseline_loo(tables: dict[str, LayerTable], rows: list[Row]) -> dict[Row, float]:
    """Plain MACs: ms = c x GMACs with c the median ms/GMAC of the other models on the same board,
    threads and precision."""
    pred = {}
    for r in rows:
        ratios = [o.ms / (tables[o.model].macs / 1e9) for o in rows
                  if (o.board, o.threads, o.precision) == (r.board, r.threads, r.precision) and o.model != r.model]
        pred[r] = statistics.median(ratios) * tables[r.model].macs / 1e9
    return pred


def summarize(label: str, rows: list[Row], err: dict[Row, float]) -> list[str]:
    lines = []
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r.board, r.threads), []).append(err[r])
    for (board, threads), e in sorted(groups.items()):
        mark = "" if board in GOAL_BOARDS or board in ("rpi3", "rpi-zero2w") else " (board never fitted on)"
        lines.append(f"{label:10s} {board:16s} {threads}T  n={len(e):2d}  median {100 * statistics.median(e):5.1f}%  "
                     f"worst {100 * max(e):5.1f}%{mark}")
    return lines


def run(write: bool, rebuild: bool, reference: Path = REFERENCE) -> int:
    tables = {} if rebuild or not TABLES.is_file() else load_tables(TABLES)
    missing = [name for name in reference_models() if name not in tables]
    if missing:
        tables.update(build_tables(missing))
        TABLES.parent.mkdir(parents=True, exist_ok=True)
        save_tables(tables, TABLES)
    print("Reference rebuilds vs ncnn-benchmark-models.csv (ours / published, GMACs):")
    print("\n".join("  " + line for line in check_macs(tables, reference)))
    rows, excluded = read_ncnn_rows(reference)
    print(f"\nExcluded {len(excluded)} rows:")
    for row, why in excluded:
        print(f"  {row.board} {row.model} {row.precision} {row.threads}T {row.ms} ms: {why}")

    ncnn = evaluate(tables, rows, "ncnn", FIXED)
    litert_rows = read_litert_rows(reference)
    print(f"\nLiteRT rows: {len(litert_rows)} (TFLite 2.18 benchmark_model + XNNPACK, EfficientDet-Lite0-4, rpi4 and rpi5)")
    litert = evaluate(tables, litert_rows, "litert", LITERT_FIXED)
    params = {"ncnn": ncnn, "litert": {**litert, "in_order_eff": ncnn["in_order_eff"]}}
    check_memory(tables, params["litert"], reference)
    check_other(tables, params["litert"], reference)

    shipped = load_params() if PARAMS.is_file() else None
    new = {
        "version": "2",
        "fitted_by": "python -m benchmarks.fit_estimator --write",
        "data": {"ncnn": "ncnn-published-latency.csv (boards: " + ", ".join(sorted(BOARDS)) + ")",
                 "litert": "tflite-published-latency.csv, TFLite 2.18 benchmark_model + XNNPACK (rpi4, rpi5)"},
        "runtimes": {
            "ncnn": {"params": params["ncnn"]},
            "litert": {"params": params["litert"], "note": "fitted on EfficientDet-Lite0-4 only (one model family); "
                       "in_order_eff copied from ncnn (no in-order board in the LiteRT data)"},
            "onnxruntime": {"same_as": "litert", "note": "not fitted: no published per-model ONNX Runtime latency on ARM "
                            "besides YOLOv8 in other-published-latency.csv; uses LiteRT's (XNNPACK-like, no Winograd) parameters"},
        },
    }
    if write:
        PARAMS.write_text(json.dumps(new, indent=2) + "\n")
        print(f"wrote {PARAMS.relative_to(ROOT)}")
        return 0
    if shipped is not None:
        same = all(params_match(shipped["runtimes"][r].get("params", {}), new["runtimes"][r]["params"]) for r in ("ncnn", "litert"))
        print("shipped parameters reproduced" if same else "shipped parameters differ from this fit: rerun with --write")
        return 0 if same else 1
    return 0


def evaluate(tables: dict[str, LayerTable], rows: list[Row], runtime: str, fixed: dict[str, float]) -> dict[str, float]:
    """Fit on all rows, then leave each model out in turn; print the error tables; return the params."""
    problem = Problem(tables, rows, runtime)
    params = fit_both(problem, rows, fixed)
    fit_err = dict(zip(rows, errors(problem.predict(params, rows), rows), strict=True))
    loo_err: dict[Row, float] = {}
    loo_ms: dict[Row, float] = {}
    for model in sorted({r.model for r in rows}):
        test = [r for r in rows if r.model == model]
        p = fit_both(problem, [r for r in rows if r.model != model], fixed)
        pred = problem.predict(p, test)
        loo_err.update(zip(test, errors(pred, test), strict=True))
        loo_ms.update(zip(test, pred, strict=True))
        print(f"  {runtime}: left out {model:19s} held-out median {100 * statistics.median(loo_err[r] for r in test):5.1f}%",
              file=sys.stderr)
    base = baseline_loo(tables, rows)
    base_err = {r: abs(base[r] / r.ms - 1) for r in rows}
    print(f"\n{runtime}: error |estimate/measured - 1| per board and threads "
          "(fit = models in the fit; held-out = each model predicted by a fit without it; MACs-only = baseline, held-out)")
    print("\n".join(summarize("fit", rows, fit_err)))
    print("\n".join(summarize("held-out", rows, loo_err)))
    print("\n".join(summarize("MACs-only", rows, base_err)))
    goal = [r for r in rows if r.board in GOAL_BOARDS and r.threads in (1, 4)]
    for label, err in (("fit", fit_err), ("held-out", loo_err), ("MACs-only", base_err)):
        e = [err[r] for r in goal]
        print(f"{label:10s} GOAL rpi4+rpi5, 1T+4T  n={len(e)}  median {100 * statistics.median(e):5.1f}%  "
              f"worst {100 * max(e):5.1f}%")
    worst = sorted(goal, key=lambda r: -loo_err[r])[:5]
    print("worst held-out rows (estimate / measured - 1): " + "; ".join(
        f"{r.board} {r.model} {r.precision} {r.threads}T {100 * (loo_ms[r] / r.ms - 1):+.0f}%" for r in worst))
    fit_ms = dict(zip(rows, problem.predict(params, rows), strict=True))
    for r in rows:
        why = REPRODUCED.get((r.board, r.model, r.precision, r.threads)) if runtime == "ncnn" else None
        if why:
            print(f"once an outlier, kept: {r.board} {r.model} {r.precision} {r.threads}T measured {r.ms} ms, estimate "
                  f"{fit_ms[r]:.1f} (fit) / {loo_ms[r]:.1f} ms (held-out): {why}")
    print(f"fitted {runtime} parameters: " + json.dumps({k: round(v, 4) for k, v in vars(params).items()}))
    return {k: round(v, 6) for k, v in vars(params).items()}


def check_memory(tables: dict[str, LayerTable], litert: dict[str, float], reference: Path = REFERENCE) -> None:
    """Our peak-memory estimate next to benchmark_model's overall memory footprint (which also holds
    the interpreter, XNNPACK's packed weights and the process: a lower bound is all we claim)."""
    from edgepack.devices.estimate import estimate

    seen = set()
    print("\nLiteRT peak memory, estimate vs benchmark_model 'overall' footprint (MB):")
    with open(reference_file(reference, "tflite-published-latency.csv")) as f:
        for r in csv.DictReader(f):
            board = TFLITE_BOARDS.get(r["device"])
            model, _, precision = r["model"].rpartition("_")
            if board != "rpi4" or r["threads"] != "1" or not r["mem_overall_mb"] or (model, precision) in seen:
                continue
            seen.add((model, precision))
            est = estimate(tables[model], load_profile(board), "litert", precision.lower(), 1,
                           params={"runtimes": {"litert": {"params": litert}}})
            print(f"  {model:19s} {precision.lower():4s} estimate {est.peak_memory_mb:6.1f} (weights {est.weights_mb:5.1f} + "
                  f"arena {est.arena_mb:5.1f})  measured {float(r['mem_overall_mb']):6.1f}")


XNNPACK_ROWS = {"MobileNet v1 1.0": "mobilenet", "MobileNet v3 Large": "mobilenet_v3_large",
                "MobileNet v3 Small": "mobilenet_v3_small"}


def check_other(tables: dict[str, LayerTable], litert: dict[str, float], reference: Path = REFERENCE) -> None:
    """Models of another family, never fitted on: XNNPACK's end2end-bench on a RPi 4 (ARM64, all
    cores) from other-published-latency.csv. The board's clock is not stated (RPi 4 boards made
    before 2020 ran at 1.5 GHz, later ones at 1.8 GHz): both are shown."""
    import dataclasses

    from edgepack.devices.estimate import estimate

    rpi4 = load_profile("rpi4")
    slow = dataclasses.replace(rpi4, clusters=(dataclasses.replace(rpi4.big, clock_ghz=1.5),))
    print("\nLiteRT/XNNPACK out-of-family check (XNNPACK end2end-bench, RPi 4 ARM64, 4 threads; never fitted on):")
    with open(reference_file(reference, "other-published-latency.csv")) as f:
        for r in csv.DictReader(f):
            if not r["runtime"].startswith("XNNPACK end2end") or r["device"] != "RPi 4 (BCM2711), ARM64":
                continue
            name, precision = XNNPACK_ROWS[r["model"]], "int8" if r["precision"].startswith("INT8") else "fp32"
            ms = float(r["latency_ms"])
            got = [estimate(tables[name], p, "litert", precision, 4, params={"runtimes": {"litert": {"params": litert}}})
                   .latency_ms for p in (rpi4, slow)]
            print(f"  {r['model']:18s} {precision}  measured {ms:5.1f} ms  estimate {got[0]:5.1f} ms at 1.8 GHz "
                  f"({100 * (got[0] / ms - 1):+.0f}%), {got[1]:5.1f} ms at 1.5 GHz ({100 * (got[1] / ms - 1):+.0f}%)")


def params_match(a: dict[str, float], b: dict[str, float], rtol: float = 0.02) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= rtol * max(abs(a[k]), abs(b[k]), 1e-9) for k in a)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write devices/estimator_params.json")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the reference layer tables (needs torch)")
    parser.add_argument("--reference-dir", type=Path, default=REFERENCE,
                        help="folder with the published CSVs (default: the repo's sibling shared/reference/)")
    args = parser.parse_args(argv)
    return run(args.write, args.rebuild, args.reference_dir)


if __name__ == "__main__":
    sys.exit(main())
