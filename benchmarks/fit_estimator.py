"""Fit the estimator's free parameters on published measurements and publish its error.

    python -m benchmarks.fit_estimator            # fit, print the error tables, check the shipped params
    python -m benchmarks.fit_estimator --write    # ... and write devices/estimator_params.json
    python -m benchmarks.fit_estimator --rebuild  # rebuild the reference models' layer tables (needs torch)
    python -m benchmarks.fit_estimator --reference-dir DIR  # the published data elsewhere

Data: the published measurements in the repo's sibling folder `shared/reference/` (CI clones the
repo with `shared/` beside it; their sources are in that folder's README), not copied into the
repo: ncnn-published-latency.csv (benchncnn, average ms) on the boards that have a profile; and,
kept apart in `benchmarks/data/` (sources in its README), benchncnn rows of ncnn's benchmark README
for other boards (RK3588, RK3399, RK3568, Jetson Nano, RPi 3, RPi Zero 2 W) and models the reference
CSV lacks (squeeze-excitation / swish networks, ResNet-50, inverted residuals). ncnn README rows for
the Raspberry Pi 4 and 5 that are not in shared/reference/ are never read: they are a check set.
Layer tables: the ten reference models rebuilt from their standard definitions
(`reference_models.py`, cached in `benchmarks/data/reference_layers.json`), the others read from
ncnn's own benchmark graphs (`benchmarks/data/ncnn_benchmark_layers.json`), so a refit needs no torch.

Errors are |estimate / measured - 1|, three ways: on the rows the fit saw; family held out (each
model family in FAMILIES left out of the fit in turn and predicted, on every board); board held out
(each board left out in turn). Each is printed next to a plain MACs estimate (ms = c x GMACs, c
the median ms/GMAC of the same training rows: same board, threads and precision for the family
split; over other boards, per peak GMAC/s, for the board split), the usual back-of-envelope.

Excluded rows (no sane model reproduces them), each with its reason, are in EXCLUDED; rows once
called outliers that the model now reproduces stay in the fit and are listed in REPRODUCED."""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from edgepack.devices import DeviceProfile, load_profile
from edgepack.devices.estimate import (
    LayerFeatures,
    Machine,
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
DATA = ROOT / "benchmarks" / "data"
TABLES = DATA / "reference_layers.json"
NCNN_TABLES = DATA / "ncnn_benchmark_layers.json"  # ncnn's benchmark graphs (see DATA / README.md)
OTHER_BOARDS = DATA / "ncnn-benchmark-other-boards.csv"
PARAMS = ROOT / "devices" / "estimator_params.json"
BOARDS = {"rpi4": "rpi4", "rpi5": "rpi5", "rpi3": "rpi3", "rpi-zero2w": "rpi-zero2w", "jetson-nano-cpu": "jetson-nano-cpu",
          "rk3568-a55": "rk3568-a55"}
# model families held out together (a family shares its blocks: a model of it in the fit would leak them)
FAMILIES = {
    "plain (AlexNet, VGG)": ("alexnet", "vgg16"),
    "ResNet": ("resnet18", "resnet50"),
    "Inception": ("googlenet",),
    "SqueezeNet": ("squeezenet", "squeezenet_ssd"),
    "MobileNet v1": ("mobilenet", "mobilenet_ssd", "mobilenet_yolo"),
    "inverted residual (MobileNetV2, MnasNet, ProxylessNAS)": ("mobilenet_v2", "mnasnet", "proxylessnasnet",
                                                               "mobilenetv2_yolov3"),
    "squeeze-excitation / swish (MobileNetV3, EfficientNet, RegNetY)": ("mobilenet_v3", "efficientnet_b0",
                                                                         "efficientnetv2_b0", "regnety_400m"),
    "ShuffleNet": ("shufflenet", "shufflenet_v2", "nanodet_m"),
    "YOLOv4-tiny": ("yolov4-tiny",),
    "Yolo-Fastest": ("yolo-fastest-1.1", "yolo-fastestv2", "FastestDet"),
    "BlazeFace": ("blazeface",),
}
STAGE1_CORES = ("Cortex-A72", "Cortex-A76")
# boards of benchmarks/data kept in the CSV but not used, with the reason
UNUSED_BOARDS = {
    "rk3588-a76": "its single-thread rows are ~2x the RPi 5's on the same core and clock (squeezenet 25.1 vs "
                  "11.9 ms, mobilenet 41.2 vs 20.3 ms): an older ncnn build (no fp16 arithmetic), not comparable",
}
FAMILY = {m: fam for fam, models in FAMILIES.items() for m in models}
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
         "in_order_eff": 0.7, "cache_bw": 4.0, "act_passes": 2.0, "memory_share": 0.05, "memory_share_int8": 0.05, "layer_cycles": 20000.0, "stream_eff": 0.5}
BOUNDS = {"gemm_eff": (0.05, 1.0), "width_half": (1.0, 1024.0), "dw_eff": (0.01, 1.0), "winograd": (0.1, 2.0),
          "int8_nodot": (0.5, 4.0), "int8_dot": (0.5, 8.0), "in_order_eff": (0.2, 1.5), "cache_bw": (1.0, 20.0), "act_passes": (1.0, 10.0),
          "memory_share": (0.0, 0.9), "memory_share_int8": (0.0, 0.9), "layer_cycles": (100.0, 1e6),
          "stream_eff": (0.05, 2.0)}

LOSS = "soft_l1"  # robust: a few odd rows do not drag the rest

# Held at a physical limit, not fitted: free, the fit drives them to these bounds anyway (a GEMM at
# the FMA peak before the width term; depthwise time is all memory; a cache 20x faster than DRAM).
FIXED = {"gemm_eff": 1.0, "dw_eff": 1.0, "cache_bw": 20.0, "stream_eff": 1.0}
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


def _ncnn_row(board: str, model: str, threads: str, avg_ms: str) -> Row:
    model, precision = (model[: -len("_int8")], "int8") if model.endswith("_int8") else (model, "fp32")
    return Row(board, model, precision, int(threads), float(avg_ms))


def read_ncnn_rows(reference: Path = REFERENCE) -> tuple[list[Row], list[tuple[Row, str]]]:
    rows, excluded = [], []
    with open(reference_file(reference, "ncnn-published-latency.csv")) as f:
        for r in csv.DictReader(f):
            if r["device"] not in BOARDS:
                continue
            row = _ncnn_row(BOARDS[r["device"]], r["model"], r["threads"], r["avg_ms"])
            why = EXCLUDED.get((row.board, row.model, row.precision, row.threads))
            (excluded.append((row, why)) if why else rows.append(row))
    return rows, excluded


def read_other_ncnn_rows(known: list[Row], models: set[str]) -> tuple[list[Row], list[str]]:
    """benchncnn rows of ncnn's benchmark README for boards and models beyond shared/reference/
    (benchmarks/data/ncnn-benchmark-other-boards.csv); a row the reference CSV already holds is
    skipped, and so is a model without a layer table (its graph did not run in ncnn's Python
    module with empty weights). Never a Raspberry Pi 4 or 5 row: those are the check set."""
    seen = {(r.board, r.model, r.precision, r.threads) for r in known}
    rows, skipped = [], set()
    with open(OTHER_BOARDS) as f:
        for r in csv.DictReader(f):
            if r["board"] in ("rpi4", "rpi5"):
                raise SystemExit(f"{OTHER_BOARDS.name} holds a {r['board']} row: Raspberry Pi 4/5 rows beyond "
                                 "shared/reference/ are the check set and must not be fitted on")
            row = _ncnn_row(r["board"], r["model"], r["threads"], r["avg_ms"])
            if r["board"] in UNUSED_BOARDS:
                continue
            if row.model not in models:
                skipped.add(row.model)
            elif (row.board, row.model, row.precision, row.threads) not in seen:
                rows.append(row)
    return rows, sorted(skipped)


def board_profile(board: str) -> DeviceProfile:
    """A product profile (devices/profiles/), else a fit-only board in benchmarks/data/boards/."""
    path = DATA / "boards" / f"{board}.toml"
    if path.is_file():
        return DeviceProfile.from_mapping(tomllib.loads(path.read_text()), path.name)
    return load_profile(board)


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
    """Every row's layers stacked into one array per feature (`LayerFeatures.concat`,
    `Machine.stack`), so one call of the estimator's own formula evaluates hundreds of rows."""

    def __init__(self, tables: dict[str, LayerTable], rows: list[Row], runtime: str) -> None:
        self.rows, self.runtime = rows, runtime
        self.profiles: dict[str, DeviceProfile] = {b: board_profile(b) for b in {r.board for r in rows}}
        self.features = {}
        for name in {r.model for r in rows}:
            layers, _ = runtime_graph(tables[name], runtime)
            self.features[name] = LayerFeatures.of(layers, tables[name].tensors)
        self._stacks: dict[tuple[Row, ...], tuple[LayerFeatures, Machine, np.ndarray]] = {}

    def _stack(self, rows: list[Row]) -> tuple[LayerFeatures, Machine, np.ndarray]:
        key = tuple(rows)
        if key not in self._stacks:
            feats = [self.features[r.model] for r in rows]
            counts = [len(f.macs) for f in feats]
            machines = [Machine.of(self.profiles[r.board], numerics(self.runtime, r.precision, self.profiles[r.board]),
                                   r.threads) for r in rows]
            self._stacks[key] = (LayerFeatures.concat(feats), Machine.stack(machines, counts),
                                 np.repeat(np.arange(len(rows)), counts))
        return self._stacks[key]

    def predict(self, rp: RuntimeParams, rows: list[Row] | None = None) -> np.ndarray:
        rows = rows or self.rows
        f, m, index = self._stack(rows)
        seconds = combine(*layer_seconds(f, m, self.runtime, rp))
        return np.bincount(index, weights=seconds, minlength=len(rows)) * 1e3


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
    """Stage 1: every parameter but in_order_eff (and the `fixed` ones) on the STAGE1_CORES boards
    (the goal boards' cores, A72 and A76). Stage 2: in_order_eff alone on the in-order (A53, A55)
    boards, the rest fixed. Other cores (the Jetson Nano's A57) are only predicted."""
    fixed = FIXED if fixed is None else fixed
    names = RuntimeParams.names()
    out_of_order = [r for r in rows if problem.profiles[r.board].big.core in STAGE1_CORES]
    stage1 = fit(problem, out_of_order, free=[k for k in names if k != "in_order_eff" and k not in fixed],
                 base=RuntimeParams(**{**START, **fixed}))
    in_order = [r for r in rows if problem.profiles[r.board].big.in_order]
    return fit(problem, in_order, free=["in_order_eff"], base=stage1, starts=1) if in_order else stage1


def errors(pred: np.ndarray, rows: list[Row]) -> np.ndarray:
    return np.abs(pred / np.array([r.ms for r in rows]) - 1)


def gmacs(tables: dict[str, LayerTable], row: Row) -> float:
    return tables[row.model].macs / 1e9


def baseline(tables: dict[str, LayerTable], train: list[Row], test: list[Row]) -> dict[Row, float]:
    """Plain MACs, ms = c x GMACs: c the median ms/GMAC of the training rows of the same board,
    threads and precision."""
    pred = {}
    for r in test:
        ratios = [o.ms / gmacs(tables, o) for o in train if (o.board, o.threads, o.precision) == (r.board, r.threads, r.precision)]
        pred[r] = statistics.median(ratios) * gmacs(tables, r) if ratios else float("nan")
    return pred


def peak_gmacs(profile: DeviceProfile, threads: int) -> float:
    core = profile.big
    return core.clock_ghz * core.fp32_flop_per_cycle / 2 * min(threads, core.count)


def board_baseline(tables: dict[str, LayerTable], profiles: dict[str, DeviceProfile], train: list[Row],
                   test: list[Row]) -> dict[Row, float]:
    """Plain MACs for a board never seen: ms = c x GMACs / (the board's fp32 peak GMAC/s with those
    threads), c the median over the other boards' rows of the same model family kind (precision)."""
    pred = {}
    for r in test:
        ratios = [o.ms * peak_gmacs(profiles[o.board], o.threads) / gmacs(tables, o) for o in train
                  if o.precision == r.precision]
        pred[r] = statistics.median(ratios) * gmacs(tables, r) / peak_gmacs(profiles[r.board], r.threads)
    return pred


def share_line(label: str, err: list[float]) -> str:
    e = np.array(err)
    return (f"median {100 * np.median(e):5.1f}%  worst {100 * e.max():5.1f}%  within 20% {100 * np.mean(e <= 0.2):5.1f}%"
            if len(e) else "no rows")


def summarize(title: str, rows: list[Row], model_err: dict[Row, float], base_err: dict[Row, float]) -> list[str]:
    """Per board and threads, then the goal boards and all rows: the model next to MACs-only."""
    lines = [f"{title}  (estimator | MACs-only)"]
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        groups.setdefault((r.board, r.threads), []).append(r)
    for (board, threads), rs in sorted(groups.items()):
        lines.append(f"  {board:16s} {threads}T n={len(rs):3d}  {share_line('', [model_err[r] for r in rs])}  |  "
                     f"{share_line('', [base_err[r] for r in rs])}")
    goal = [r for r in rows if r.board in GOAL_BOARDS]
    for label, rs in (("GOAL rpi4+rpi5", goal), ("all boards", rows)):
        lines.append(f"  {label:19s} n={len(rs):3d}  {share_line('', [model_err[r] for r in rs])}  |  "
                     f"{share_line('', [base_err[r] for r in rs])}")
    return lines


def evaluate_ncnn(tables: dict[str, LayerTable], rows: list[Row]) -> dict[str, float]:
    """Fit on all rows; then each family held out, then each board held out; print the tables."""
    problem = Problem(tables, rows, "ncnn")
    params = fit_both(problem, rows, FIXED)
    fit_ms = dict(zip(rows, problem.predict(params, rows), strict=True))
    fit_err = {r: abs(fit_ms[r] / r.ms - 1) for r in rows}
    fit_base = baseline(tables, rows, rows)
    family_ms: dict[Row, float] = {}
    family_base: dict[Row, float] = {}
    for family in FAMILIES:
        test = [r for r in rows if FAMILY.get(r.model) == family]
        if not test:
            continue
        train = [r for r in rows if FAMILY.get(r.model) != family]
        family_ms.update(zip(test, problem.predict(fit_both(problem, train, FIXED), test), strict=True))
        family_base.update(baseline(tables, train, test))
        print(f"  ncnn: held out {family}", file=sys.stderr)
    board_ms: dict[Row, float] = {}
    board_base: dict[Row, float] = {}
    for board in sorted({r.board for r in rows}):
        test = [r for r in rows if r.board == board]
        train = [r for r in rows if r.board != board]
        board_ms.update(zip(test, problem.predict(fit_both(problem, train, FIXED), test), strict=True))
        board_base.update(board_baseline(tables, problem.profiles, train, test))
        print(f"  ncnn: held out board {board}", file=sys.stderr)
    err = lambda pred: {r: abs(pred[r] / r.ms - 1) for r in rows}
    print("\nncnn: |estimate / measured - 1| per board and threads: median, worst, share within 20%")
    print("\n".join(summarize("FIT (every row in the fit; MACs-only c from the same rows)", rows, fit_err, err(fit_base))))
    print("\n".join(summarize("FAMILY HELD OUT (each model family predicted by a fit without it)", rows, err(family_ms),
                              err(family_base))))
    print("\n".join(summarize("BOARD HELD OUT (each board predicted by a fit without it)", rows, err(board_ms),
                              err(board_base))))
    goal = [r for r in rows if r.board in GOAL_BOARDS]
    worst = sorted(goal, key=lambda r: -abs(family_ms[r] / r.ms - 1))[:6]
    print("worst family-held-out goal rows (estimate / measured - 1): " + "; ".join(
        f"{r.board} {r.model} {r.precision} {r.threads}T {100 * (family_ms[r] / r.ms - 1):+.0f}%" for r in worst))
    by_family: dict[str, list[float]] = {}
    for r in rows:
        by_family.setdefault(FAMILY.get(r.model, "?"), []).append(family_ms[r] / r.ms - 1)
    print("family held out, all boards, median signed error per family: " + "; ".join(
        f"{fam.split(' (')[0]} {100 * statistics.median(v):+.0f}% (n={len(v)})" for fam, v in by_family.items()))
    for r in rows:
        why = REPRODUCED.get((r.board, r.model, r.precision, r.threads))
        if why:
            print(f"once an outlier, kept: {r.board} {r.model} {r.precision} {r.threads}T measured {r.ms} ms, estimate "
                  f"{fit_ms[r]:.1f} (fit) / {family_ms[r]:.1f} ms (family held out): {why}")
    print("fitted ncnn parameters: " + json.dumps({k: round(v, 4) for k, v in vars(params).items()}))
    return {k: round(v, 6) for k, v in vars(params).items()}


def evaluate(tables: dict[str, LayerTable], rows: list[Row], runtime: str, fixed: dict[str, float]) -> dict[str, float]:
    """LiteRT: one model family in its data, so each model is left out in turn (not a family)."""
    problem = Problem(tables, rows, runtime)
    params = fit_both(problem, rows, fixed)
    fit_err = dict(zip(rows, errors(problem.predict(params, rows), rows), strict=True))
    loo_ms: dict[Row, float] = {}
    for model in sorted({r.model for r in rows}):
        test = [r for r in rows if r.model == model]
        loo_ms.update(zip(test, problem.predict(fit_both(problem, [r for r in rows if r.model != model], fixed), test),
                          strict=True))
    base = {}
    for model in sorted({r.model for r in rows}):
        test = [r for r in rows if r.model == model]
        base.update(baseline(tables, [r for r in rows if r.model != model], test))
    err = lambda pred: {r: abs(pred[r] / r.ms - 1) for r in rows}
    print(f"\n{runtime}: |estimate / measured - 1| (one family: models left out one at a time)")
    print("\n".join(summarize("FIT", rows, fit_err, err(base))))
    print("\n".join(summarize("MODEL HELD OUT", rows, err(loo_ms), err(base))))
    print(f"fitted {runtime} parameters: " + json.dumps({k: round(v, 4) for k, v in vars(params).items()}))
    return {k: round(v, 6) for k, v in vars(params).items()}


def load_all_tables(rebuild: bool) -> dict[str, LayerTable]:
    tables = {} if rebuild or not TABLES.is_file() else load_tables(TABLES)
    missing = [name for name in reference_models() if name not in tables]
    if missing:
        tables.update(build_tables(missing))
        TABLES.parent.mkdir(parents=True, exist_ok=True)
        save_tables(tables, TABLES)
    return {**load_tables(NCNN_TABLES), **tables}


def ncnn_rows(tables: dict[str, LayerTable], reference: Path = REFERENCE, quiet: bool = True) -> list[Row]:
    """Every ncnn row the fit uses: the reference CSV's, then the other boards' (benchmarks/data)."""
    rows, excluded = read_ncnn_rows(reference)
    other, skipped = read_other_ncnn_rows(rows, set(tables))
    if not quiet:
        print(f"\nExcluded {len(excluded)} rows:")
        for row, why in excluded:
            print(f"  {row.board} {row.model} {row.precision} {row.threads}T {row.ms} ms: {why}")
        print(f"ncnn rows: {len(rows)} from shared/reference, {len(other)} from {OTHER_BOARDS.relative_to(ROOT)} "
              f"(models without a layer table, skipped: {', '.join(skipped)})")
    return rows + other


def run(write: bool, rebuild: bool, reference: Path = REFERENCE) -> int:
    tables = load_all_tables(rebuild)
    print("Reference rebuilds vs ncnn-benchmark-models.csv (ours / published, GMACs):")
    print("\n".join("  " + line for line in check_macs(tables, reference)))
    rows = ncnn_rows(tables, reference, quiet=False)
    ncnn = evaluate_ncnn(tables, rows)
    litert_rows = read_litert_rows(reference)
    print(f"\nLiteRT rows: {len(litert_rows)} (TFLite 2.18 benchmark_model + XNNPACK, EfficientDet-Lite0-4, rpi4 and rpi5)")
    litert = evaluate(tables, litert_rows, "litert", LITERT_FIXED)
    params = {"ncnn": ncnn, "litert": {**litert, "in_order_eff": ncnn["in_order_eff"]}}
    check_memory(tables, params["litert"], reference)
    check_other(tables, params["litert"], reference)

    shipped = load_params() if PARAMS.is_file() else None
    new = {
        "version": "3",
        "fitted_by": "python -m benchmarks.fit_estimator --write",
        "data": {"ncnn": "ncnn-published-latency.csv (boards: " + ", ".join(sorted(BOARDS)) + ") and "
                         "benchmarks/data/ncnn-benchmark-other-boards.csv",
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
