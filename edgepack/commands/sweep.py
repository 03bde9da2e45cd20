"""`edgepack sweep sweep.toml`: which variant of a model to ship to each device.

A grid of models x input shapes x channel roundings x calibration methods x precisions x formats
(one cell per artifact), each exported, verified and evaluated on the `--eval` data as `edgepack
export` would, estimated on every target and, with `--bench`, benchmarked on the inventory boards
the TOML names. Cells share work where the graph is the same (edgepack.commands.sweep_tasks): one
conversion per model and input shape, one processed graph per rounding, one calibration per
(model, shape, rounding, method), reused by every precision and format. Calibration methods apply to
int8 cells only (fp32/fp16/int8-weights cells do not depend on them and are built once).

The sweep file (paths relative to it; every key optional but `models`, unknown keys are errors):

    models = ["model.pt2"]
    precisions = ["fp32", "fp16", "int8"]          # fp32 fp16 int8 int8-weights
    formats = ["onnx", "tflite", "ncnn"]
    calib_methods = ["minmax", "percentile"]        # int8 cells
    input_shapes = ["1x3x224x224", "1x3x160x160"]  # default: the model's own; several inputs: "a:1x3x8x8,b:1x10"
    round_channels = [1, 8]                         # default [1] (a target profile's rounding is not applied)
    targets = ["rpi4", "android-mid"]               # device profiles: each artifact estimated on each
    bench = ["mypi"]                                # inventory boards (edgepack bench --device), with --bench;
                                                    # "local": this machine, as the host target

    [export]            # any keyword of edgepack.export(), applied to every cell
    calib = "calib.npy"
    eval_data = "test.npz"
    eval_metric = "metrics.py:mean_iou"

    [constraints]       # the recommended variant per target meets these
    max_latency_ms = 20
    max_size_mb = 5
    min_accuracy = 0.9

Output: OUTDIR/cells/<cell>/ (the artifact, its report.json and verify.npz like an export folder,
and cell.json), OUTDIR/sweep.json (every cell, the Pareto front and recommendation per target) and
OUTDIR/sweep.html. A cell whose cell.json carries the same key (model sha256, calibration and
evaluation data sha256, the cell's options, edgepack version) is not redone.

Recommendation per target, among verified cells within max_latency_ms and max_size_mb: with
min_accuracy, the fastest that reaches it (ties: smaller); without, the most accurate (ties:
faster). Accuracy is the --eval score (top-1 or the metric), else the cosine to the reference.
Latency is the board's measured median when benchmarked, else the profile's estimate."""
from __future__ import annotations

import hashlib
import json
import re
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepack.errors import EdgepackError, UsageError

SWEEP_JSON, SWEEP_HTML, CELL_JSON = "sweep.json", "sweep.html", "cell.json"
AXES = ("models", "precisions", "formats", "calib_methods", "input_shapes", "round_channels", "targets", "bench")
PRECISION_FLAGS = {"fp32": {}, "fp16": {"fp16": True}, "int8": {"int8": True}, "int8-weights": {"int8_weights_only": True}}
AXIS_OPTIONS = {"formats", "target", "calib_method", "input_shape", "round_channels", "int8", "fp16", "int8_weights_only"}
RETRIES = 1  # a task whose worker died runs once more, then its cells are reported failed


@dataclass(frozen=True)
class Constraints:
    max_latency_ms: float | None = None
    max_size_mb: float | None = None
    min_accuracy: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_latency_ms", "max_size_mb", "min_accuracy"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or value < 0):
                raise UsageError(f"[constraints] {name} = {value!r} must be a non-negative number")


@dataclass(frozen=True)
class SweepSpec:
    models: tuple[Path, ...]
    precisions: tuple[str, ...] = ("fp32",)
    formats: tuple[str, ...] = ("onnx",)
    calib_methods: tuple[str, ...] = ("minmax",)
    input_shapes: tuple[str | None, ...] = (None,)
    round_channels: tuple[int, ...] = (1,)
    targets: tuple[str, ...] = ("host",)
    bench: tuple[str, ...] = ()
    export: dict = field(default_factory=dict)
    constraints: Constraints = field(default_factory=Constraints)

    def __post_init__(self) -> None:
        from edgepack.devices import list_profiles
        from edgepack.formats import FORMATS
        from edgepack.options import CALIB_METHODS, InputSpec

        for axis in AXES:
            values = getattr(self, axis)
            if axis != "bench" and not values:
                raise UsageError(f"sweep axis {axis} is empty; give at least one value")
            if len(set(values)) != len(values):
                raise UsageError(f"sweep axis {axis} lists a value twice: {list(values)}")
        checks = [("precisions", self.precisions, tuple(PRECISION_FLAGS)), ("formats", self.formats, tuple(FORMATS)),
                  ("calib_methods", self.calib_methods, CALIB_METHODS), ("targets", self.targets, tuple(list_profiles()))]
        for axis, values, known in checks:
            bad = [v for v in values if v not in known]
            if bad:
                raise UsageError(f"sweep {axis}: {bad} unknown; choose from {', '.join(known)}")
        for shape in self.input_shapes:
            if shape is not None:
                for part in shape.split(","):
                    InputSpec.parse(part)
        if any(not isinstance(r, int) or r < 1 for r in self.round_channels):
            raise UsageError(f"sweep round_channels {list(self.round_channels)}: each must be an integer >= 1")
        clash = sorted(set(self.export) & AXIS_OPTIONS)
        if clash:
            raise UsageError(f"[export] sets {clash}: these are sweep axes; list their values in the axes instead")


def load_sweep(path: Path) -> SweepSpec:
    """Read and validate a sweep TOML; paths in it are relative to its folder."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"sweep file {path} not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the sweep file: {exc}") from None
    unknown = sorted(set(data) - set(AXES) - {"export", "constraints"})
    if unknown:
        raise UsageError(f"{path}: unknown key(s) {unknown}; allowed: {', '.join(AXES)}, [export], [constraints]")
    if "models" not in data:
        raise UsageError(f"{path}: no models = [...]; list the model files to sweep")
    base = path.resolve().parent
    kw: dict[str, Any] = {}
    for axis in AXES:
        if axis in data:
            values = data[axis]
            if not isinstance(values, list):
                raise UsageError(f"{path}: {axis} must be a list, e.g. {axis} = [{values!r}]")
            kw[axis] = tuple(values)
    kw["models"] = tuple(_resolve(base, m) for m in kw["models"])
    export = dict(data.get("export") or {})
    for key in ("calib", "eval_data"):
        if isinstance(export.get(key), str):
            export[key] = str(_resolve(base, export[key]))
    metric = export.get("eval_metric")
    if isinstance(metric, str) and ".py:" in metric:
        file, _, fn = metric.rpartition(":")
        export["eval_metric"] = f"{_resolve(base, file)}:{fn}"
    try:
        constraints = Constraints(**(data.get("constraints") or {}))
    except TypeError as exc:
        raise UsageError(f"{path}: [constraints]: {exc}; allowed: max_latency_ms, max_size_mb, min_accuracy") from None
    return SweepSpec(**kw, export=export, constraints=constraints)


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


# ---------------------------------------------------------------- the grid


@dataclass(frozen=True)
class Cell:
    model: Path
    input_shape: str | None
    round_channels: int
    calib_method: str | None  # None: the precision needs no calibration
    precision: str
    format: str

    @property
    def graph(self) -> tuple:  # one conversion
        return (self.model, self.input_shape)

    @property
    def processed(self) -> tuple:  # one processed graph
        return (self.model, self.input_shape, self.round_channels)

    @property
    def calibration(self) -> tuple | None:  # one calibration
        return None if self.calib_method is None else (*self.processed, self.calib_method)

    @property
    def id(self) -> str:
        shape = "model-shape" if self.input_shape is None else self.input_shape.replace(":", "-").replace(",", "+")
        parts = [self.model.stem, shape, f"r{self.round_channels}", self.calib_method or "", self.precision, self.format]
        return re.sub(r"[^A-Za-z0-9._+-]", "_", "-".join(p for p in parts if p))

    def to_json(self) -> dict:
        return {"model": str(self.model), "input_shape": self.input_shape, "round_channels": self.round_channels,
                "calib_method": self.calib_method, "precision": self.precision, "format": self.format}


def grid(spec: SweepSpec) -> tuple[list[Cell], list[dict]]:
    """The cells to build, and the combinations no exporter makes ({cell, why}: listed, not failed)."""
    from edgepack.formats import FORMATS, artifact_precisions

    cells, skipped = [], []
    ncnn_fp32 = bool(spec.export.get("ncnn_fp32"))
    for model in spec.models:
        for shape in spec.input_shapes:
            for r in spec.round_channels:
                for precision in spec.precisions:
                    methods = spec.calib_methods if precision == "int8" else (None,)
                    for method in methods:
                        for fmt in spec.formats:
                            cell = Cell(model, shape, r, method, precision, fmt)
                            if precision not in FORMATS[fmt].precisions:
                                skipped.append({"cell": cell.id, "why": f"{fmt} does not support {precision}"})
                            elif precision not in artifact_precisions(fmt, (precision,), ncnn_fp32):
                                skipped.append({"cell": cell.id, "why": f"{fmt} stores fp32 as fp16 (the fp16 cell); "
                                                "set ncnn_fp32 = true in [export] for fp32 weights"})
                            else:
                                cells.append(cell)
    stems = [m.stem for m in spec.models]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise UsageError(f"sweep models: two files named {twice[0]!r} (cells are named after the file); rename one")
    return cells, skipped


def cell_options(spec: SweepSpec, cell: Cell, output_dir: Path) -> Any:
    """The ExportOptions of one cell (validated: a bad [export] fails before any work)."""
    from edgepack.options import ExportOptions

    kw = dict(spec.export)
    if cell.format != "ncnn":
        kw.pop("ncnn_fp32", None)
    if not (cell.format == "tflite" and cell.precision == "int8"):
        kw.pop("int8_io", None)
    if cell.precision != "fp16":
        kw.pop("fp16_io", None)
    if cell.precision == "fp32":  # targets for quantized artifacts only
        kw.pop("min_cosine", None)
        kw.pop("min_top1", None)
    kw.update(PRECISION_FLAGS[cell.precision], formats=(cell.format,), target=spec.targets[0],
              round_channels=cell.round_channels)
    if cell.calib_method is not None:
        kw["calib_method"] = cell.calib_method
    if cell.input_shape is not None:
        kw["input_shape"] = cell.input_shape.split(",")
    return ExportOptions.create(output_dir, **kw)


def _sha256(path: Path, cache: dict) -> str | None:
    path = Path(path)
    if path not in cache:
        if not path.is_file():
            cache[path] = None
        else:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            cache[path] = digest.hexdigest()
    return cache[path]


def cell_key(spec: SweepSpec, cell: Cell, hashes: dict) -> str:
    """What makes a finished cell reusable: the model's and data files' bytes, the cell and the
    export options, the edgepack version."""
    from edgepack import __version__

    data = {k: _sha256(Path(v), hashes) for k, v in spec.export.items() if k in ("calib", "eval_data") and v}
    metric = spec.export.get("eval_metric") or ""
    if ".py:" in metric:
        data["eval_metric_file"] = _sha256(Path(metric.rpartition(":")[0]), hashes)
    text = json.dumps({"model": _sha256(cell.model, hashes), "cell": {**cell.to_json(), "model": cell.model.name},
                       "export": {k: str(v) for k, v in sorted(spec.export.items())}, "data": data,
                       "edgepack": __version__}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


# ---------------------------------------------------------------- running


class _Progress:
    """A live table of cells (rich) on a terminal; otherwise one line per finished cell."""

    def __init__(self, console: Any | None, cells: list[Cell], where: str) -> None:
        self.console = console
        self.state = {c.id: "queued" for c in cells}
        self.live = None
        if console is not None and getattr(console, "is_terminal", False):
            from rich.live import Live

            self.live = Live(self._render(), console=console, refresh_per_second=4, transient=True)
            self.live.start()
        if console is not None:
            console.print(f"sweep: {len(cells)} cell(s) on {where}")

    def _render(self) -> Any:
        from rich.table import Table

        table = Table(box=None, show_header=False, pad_edge=False)
        order = {"running": 0, "converting": 0, "calibrating": 0, "building": 0, "queued": 1}
        rows = sorted(self.state.items(), key=lambda kv: order.get(kv[1].split(" ")[0], 2))
        for cid, state in rows[:30]:
            colour = "green" if state.startswith("ok") else "red" if state.startswith("failed") else "yellow"
            table.add_row(cid, f"[{colour}]{state}[/]")
        done = sum(s.startswith(("ok", "failed", "reused")) for s in self.state.values())
        table.add_row(f"[bold]{done}/{len(self.state)} done[/]", "")
        return table

    def set(self, cid: str, state: str) -> None:
        self.state[cid] = state
        if self.live is not None:
            self.live.update(self._render())
        elif self.console is not None and state.startswith(("ok", "failed")):
            from rich.markup import escape

            self.console.print(f"{escape(cid)}: {escape(state)}", soft_wrap=True)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()


def run_sweep(spec: SweepSpec, output_dir: Path, *, executor: Any = None, bench: bool = False,
              inventory: Path | None = None, console: Any | None = None) -> dict:
    """Run every cell not already finished in `output_dir`; write sweep.json and sweep.html; return the result."""
    from edgepack.commands import sweep_tasks as tasks
    from edgepack.commands.sweep_exec import LocalPool
    from edgepack.fsutil import prepare_output_dir

    start = time.perf_counter()
    out = prepare_output_dir(output_dir)
    cells, skipped = grid(spec)
    options = {c: cell_options(spec, c, out / "cells" / c.id) for c in cells}
    if bench and not spec.bench:
        raise UsageError("--bench: the sweep file names no boards; add bench = [\"mypi\"] (boards of the device inventory)")
    hashes: dict = {}
    keys = {c: cell_key(spec, c, hashes) for c in cells}
    records: dict[Cell, dict] = {}
    for c in cells:
        old = _read_json(out / "cells" / c.id / CELL_JSON)
        if old and old.get("key") == keys[c] and old.get("status") in ("ok", "failed") and not old.get("crashed"):
            records[c] = {**old, "reused": True}
    todo = [c for c in cells if c not in records]
    executor = executor or LocalPool()
    progress = _Progress(console, cells, executor.description)
    for c in records:
        progress.set(c.id, f"reused ({records[c]['status']})")
    counts = {"convert": 0, "calibrate": 0, "build": 0}
    try:
        _schedule(spec, todo, options, keys, records, executor, tasks, progress, counts, out)
        executor.close()  # every export has finished: boards are measured with nothing else running here
        _estimate_all(spec, cells, records, out)
        if bench:
            _bench_all(spec, cells, records, out, inventory, progress)
    finally:
        progress.stop()
        executor.close()
    result = _result(spec, cells, skipped, records, counts, time.perf_counter() - start, executor.description)
    from edgepack.commands.sweep_html import write_html
    from edgepack.fsutil import atomic_write_bytes
    from edgepack.report import to_json_text

    atomic_write_bytes(out / SWEEP_JSON, to_json_text(result).encode())
    write_html(result, out / SWEEP_HTML)
    return result


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _schedule(spec: SweepSpec, todo: list[Cell], options: dict, keys: dict, records: dict, executor: Any, tasks: Any,
              progress: _Progress, counts: dict, out: Path) -> None:
    """Submit conversions; as each finishes, its calibrations and non-int8 cells; as each
    calibration finishes, its int8 cells. A crashed task runs RETRIES more times."""
    running: dict[int, dict] = {}  # handle -> {kind, key, fn, args, attempts, cells}

    def submit(kind: str, key: Any, fn: Any, args: tuple, members: list[Cell], attempts: int = 1, **extra: Any) -> None:
        handle = executor.submit(fn, *args)
        running[handle] = {"kind": kind, "key": key, "fn": fn, "args": args, "attempts": attempts, "cells": members, **extra}
        counts[kind] += 1
        label = {"convert": "converting", "calibrate": "calibrating", "build": "building"}[kind]
        for c in members:
            progress.set(c.id, label + (f" (attempt {attempts})" if attempts > 1 else ""))

    def fail(members: list[Cell], status: dict, attempts: int, crashed: bool = False) -> None:
        for c in members:
            if c in records:
                continue
            records[c] = {"id": c.id, "key": keys[c], "cell": c.to_json(), "status": "failed", "error": status["error"],
                          "exit_code": status["exit_code"], "attempts": attempts, "crashed": crashed}
            _write_cell(out, c, records[c], None)
            progress.set(c.id, f"failed: {status['error']}")

    by_graph: dict[tuple, list[Cell]] = {}
    for c in todo:
        by_graph.setdefault(c.graph, []).append(c)
    for graph, members in by_graph.items():
        roundings = tuple(sorted({c.round_channels for c in members}))
        first = options[members[0]]
        submit("convert", graph, tasks.convert, (graph[0], first, roundings), members)

    while executor.pending():
        for handle, (outcome, value) in executor.wait(0.5):
            job = running.pop(handle)
            if outcome == "crashed":
                counts.setdefault("crashes", []).append({"kind": job["kind"], "cells": [c.id for c in job["cells"]],
                                                         "attempt": job["attempts"], "why": value})
                if job["attempts"] <= RETRIES:
                    submit(job["kind"], job["key"], job["fn"], job["args"], job["cells"], job["attempts"] + 1,
                           **{k: v for k, v in job.items() if k == "preps"})
                else:
                    fail(job["cells"], {"error": f"{value}; retried {RETRIES} time(s)", "exit_code": 1}, job["attempts"], True)
                continue
            status = value[0]
            if not status["ok"] and job["kind"] != "build":
                fail(job["cells"], status, job["attempts"])
                continue
            if job["kind"] == "convert":
                preps = executor.payload(handle, value)  # {rounding: Prepared} (a Ray object reference on Ray)
                groups: dict[tuple, list[Cell]] = {}
                for c in job["cells"]:
                    groups.setdefault(c.calibration or (c.processed, None), []).append(c)
                for gkey, members in groups.items():
                    r = members[0].round_channels
                    if members[0].calib_method is None:
                        for c in members:
                            submit("build", c, tasks.build_cell, (preps, r, None, options[c], c.format, c.precision), [c])
                    else:
                        submit("calibrate", gkey, tasks.calibrate_ranges, (preps, r, members[0].calib_method), members,
                               preps=preps)
            elif job["kind"] == "calibrate":
                cal = executor.payload(handle, value)
                for c in job["cells"]:
                    submit("build", c, tasks.build_cell, (job["preps"], c.round_channels, cal, options[c], c.format,
                                                          c.precision), [c])
            else:
                c = job["cells"][0]
                report, files = executor.fetch(value[1]) or (None, None)
                art = report["artifacts"][0] if report else None
                records[c] = {"id": c.id, "key": keys[c], "cell": c.to_json(), "status": "ok" if status["ok"] else "failed",
                              "error": status["error"], "exit_code": status["exit_code"], "attempts": job["attempts"],
                              "seconds": status["seconds"], "artifact": art,
                              "evaluation": report.get("evaluation") if report else None}
                _write_cell(out, c, records[c], files)
                progress.set(c.id, "ok" if status["ok"] else f"failed: {status['error']}")


def _write_cell(out: Path, cell: Cell, record: dict, files: dict | None) -> None:
    import shutil

    from edgepack.fsutil import atomic_write_bytes
    from edgepack.report import to_json_text

    folder = out / "cells" / cell.id
    if files is not None and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in (files or {}).items():
        (folder / name).write_bytes(data)
    atomic_write_bytes(folder / CELL_JSON, to_json_text({k: v for k, v in record.items() if k != "reused"}).encode())


def _estimate_all(spec: SweepSpec, cells: list[Cell], records: dict, out: Path) -> None:
    """Each built artifact's estimate on every target (in the driver: the files are here now)."""
    from edgepack.devices import load_profile
    from edgepack.devices.estimate import report_estimate

    profiles = [load_profile(t) for t in spec.targets]
    for c in cells:
        rec = records.get(c)
        if not rec or rec["status"] != "ok":
            continue
        if set(rec.get("estimates") or {}) != set(spec.targets):
            rec["estimates"] = {p.name: report_estimate(out / "cells" / c.id, rec["artifact"], p) for p in profiles}
            _write_cell(out, c, rec, None)


def _bench_all(spec: SweepSpec, cells: list[Cell], records: dict, out: Path, inventory: Path | None, progress: Any) -> None:
    """After every export has finished (never alongside them), each verified artifact on each board."""
    from edgepack.commands.sweep_tasks import bench_cell

    for board in spec.bench:
        for c in cells:
            rec = records.get(c)
            if not rec or rec["status"] != "ok" or board in (rec.get("bench") or {}):
                continue
            progress.set(c.id, f"benchmarking on {board}")
            result = bench_cell(out / "cells" / c.id / rec["artifact"]["path"], rec["artifact"],
                                None if board == "local" else board, inventory)
            progress.set(c.id, "ok" if result["ok"] else f"ok; bench on {board} failed: {result['error']}")
            rec.setdefault("bench", {})[board] = result
            _write_cell(out, c, rec, None)


# ---------------------------------------------------------------- the result


def _score(rec: dict) -> tuple[float | None, str]:
    acc = (rec.get("artifact") or {}).get("accuracy")
    if acc:
        return (acc["value"] if "value" in acc else acc["top1"]), acc.get("metric", "top1")
    fid = (rec.get("artifact") or {}).get("fidelity") or {}
    return fid.get("cosine"), "cosine"


def _board_profiles(spec: SweepSpec, inventory: Path | None) -> dict[str, str]:
    if not spec.bench:
        return {}
    from edgepack.commands.device_inventory import inventory_path, load_inventory

    boards = {"local": "host"}
    names = [b for b in spec.bench if b != "local"]
    if names:
        try:
            known = load_inventory(inventory_path(inventory))
            boards.update({n: known[n].profile for n in names if n in known})
        except EdgepackError:
            pass
    return boards


def _point(spec: SweepSpec, rec: dict, target: str, boards: dict[str, str]) -> dict:
    est = (rec.get("estimates") or {}).get(target) or {}
    latency, source = est.get("latency_ms"), "estimate"
    for board, result in (rec.get("bench") or {}).items():
        p50 = ((result.get("result") or {}).get("latency_ms") or {}).get("p50")
        if boards.get(board) == target and result.get("ok") and p50 is not None:
            latency, source = p50, f"bench:{board}"
    score, metric = _score(rec)
    return {"cell": rec["id"], "accuracy": score, "metric": metric, "latency_ms": latency, "latency_source": source,
            "size_mb": (rec["artifact"]["size_bytes"] or 0) / 1e6, "peak_memory_mb": est.get("peak_memory_mb"),
            "fits_memory": est.get("fits_memory")}


def pareto(points: list[dict], x: str) -> list[str]:
    """Cells no other cell beats on both accuracy (higher) and `x` (lower)."""
    usable = [p for p in points if p["accuracy"] is not None and p[x] is not None]
    front = []
    for p in usable:
        dominated = any(q["accuracy"] >= p["accuracy"] and q[x] <= p[x] and (q["accuracy"] > p["accuracy"] or q[x] < p[x])
                        for q in usable)
        if not dominated:
            front.append(p["cell"])
    return sorted(front)


def recommend(points: list[dict], constraints: Constraints) -> tuple[str | None, str]:
    c = constraints
    ok = [p for p in points if p["accuracy"] is not None and p["latency_ms"] is not None and p["fits_memory"] is not False
          and (c.max_latency_ms is None or p["latency_ms"] <= c.max_latency_ms)
          and (c.max_size_mb is None or p["size_mb"] <= c.max_size_mb)
          and (c.min_accuracy is None or p["accuracy"] >= c.min_accuracy)]
    if not ok:
        return None, "no verified cell meets the constraints"
    if c.min_accuracy is not None:
        best = min(ok, key=lambda p: (p["latency_ms"], p["size_mb"], p["cell"]))
        return best["cell"], f"fastest reaching {best['metric']} >= {c.min_accuracy}"
    best = min(ok, key=lambda p: (-p["accuracy"], p["latency_ms"], p["cell"]))
    return best["cell"], f"most accurate ({best['metric']}) within the constraints"


def _result(spec: SweepSpec, cells: list[Cell], skipped: list[dict], records: dict, counts: dict, seconds: float,
            where: str) -> dict:
    from edgepack import __version__
    from edgepack.pipeline import exit_code_for

    boards = _board_profiles(spec, None)
    recs = [records[c] for c in cells if c in records]
    targets = {}
    for t in spec.targets:
        points = [_point(spec, r, t, boards) for r in recs if r["status"] == "ok"]
        best, why = recommend(points, spec.constraints)
        targets[t] = {"points": points, "pareto_latency": pareto(points, "latency_ms"), "pareto_size": pareto(points, "size_mb"),
                      "recommended": best, "why": why}
    failed = [r for r in recs if r["status"] != "ok"]
    return {
        "edgepack": __version__, "where": where, "seconds": round(seconds, 3),
        "grid": {a: [str(v) if isinstance(v, Path) else v for v in getattr(spec, a)] for a in AXES},
        "constraints": {k: getattr(spec.constraints, k) for k in ("max_latency_ms", "max_size_mb", "min_accuracy")},
        "tasks_run": {k: v for k, v in counts.items() if k != "crashes"}, "crashes": counts.get("crashes", []),
        "reused": sum(bool(r.get("reused")) for r in recs),
        "cells": [{k: v for k, v in r.items() if k != "reused"} for r in recs], "skipped": skipped,
        "targets": targets, "ok": not failed,
        "exit_code": exit_code_for([{"ok": r["status"] == "ok", "exit_code": r["exit_code"] or 1} for r in recs]),
    }


def render_table(result: dict, console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    targets = list(result["targets"])
    table = Table(title=f"sweep: {len(result['cells'])} cell(s), {result['seconds']:.1f} s on {result['where']}")
    for col in ("cell", "size", "accuracy", *[f"{t} ms" for t in targets], "ok"):
        table.add_column(col, overflow="fold")
    recommended = {t: v["recommended"] for t, v in result["targets"].items()}
    for rec in result["cells"]:
        if rec["status"] != "ok":
            table.add_row(escape(rec["id"]), "-", "-", *["-" for _ in targets], f"[red]{escape(rec['error'] or 'failed')}[/]")
            continue
        score, metric = _score(rec)
        lat = []
        for t in targets:
            p = next((p for p in result["targets"][t]["points"] if p["cell"] == rec["id"]), None)
            mark = " *" if recommended[t] == rec["id"] else ""
            lat.append("-" if not p or p["latency_ms"] is None else f"{p['latency_ms']:.3g}{mark}")
        table.add_row(escape(rec["id"]), f"{rec['artifact']['size_bytes'] / 1024:.1f} KB",
                      "-" if score is None else f"{score:.4g} {metric}", *lat, "[green]yes[/]")
    console.print(table)
    for t, v in result["targets"].items():
        console.print(f"{t}: recommended {escape(v['recommended'] or '-')} ({escape(v['why'])})")
    if result["reused"]:
        console.print(f"{result['reused']} finished cell(s) reused")


def sweep(sweep_file: str | Path | SweepSpec, output_dir: str | Path = "sweep-out", *, ray: str | None = None,
          jobs: int | None = None, bench: bool = False, inventory: str | Path | None = None, console: Any = None,
          ray_init: dict | None = None) -> dict:
    """The Python entry point of `edgepack sweep`: run the grid of `sweep_file` (a TOML path or a
    SweepSpec) in a local pool of `jobs` processes (default: one per CPU) or, with `ray` ("auto" or a
    cluster address), as Ray tasks; returns the result also written to OUTDIR/sweep.json."""
    from edgepack.commands.sweep_exec import LocalPool, RayExecutor

    spec = sweep_file if isinstance(sweep_file, SweepSpec) else load_sweep(Path(sweep_file))
    if jobs is not None and jobs < 1:
        raise UsageError(f"--jobs {jobs} must be 1 or more")
    executor = RayExecutor(ray, ray_init) if ray else LocalPool(jobs)
    return run_sweep(spec, Path(output_dir), executor=executor, bench=bench,
                     inventory=Path(inventory) if inventory else None, console=console)
