"""What a sweep's workers run: one function per kind of shared work, each called in a worker process
(the local pool or a Ray task) and returning `(status, payload)`:

- `convert`: per model and input shape, steps 1-3 of an export once (load, reference, ONNX), then the
  graph passes on a copy per channel rounding; payload {rounding: Prepared};
- `calibrate_ranges`: per (model, input shape, rounding, calibration method), the int8 ranges once;
  payload (Calibration, calibration.json bytes, warnings);
- `build_cell`: per cell (format x precision), the artifact built from those, verified, evaluated;
  payload (report.json dict, {file name: bytes}) -- the files travel back to the driver, which writes
  them into the sweep's output folder (a Ray worker may be another machine).

`status` is {"ok": bool, "error": one line, "exit_code": int, "seconds": float}: an edgepack error
(bad model, unsupported op) is a result, not an exception; only a dying worker is a crash."""
from __future__ import annotations

import dataclasses
import pickle
import tempfile
import time
from pathlib import Path
from typing import Any

from edgepack.errors import EdgepackError


def _status(start: float, exc: BaseException | None = None) -> dict:
    if exc is None:
        return {"ok": True, "error": None, "exit_code": 0, "seconds": round(time.perf_counter() - start, 3)}
    if isinstance(exc, EdgepackError):
        return {"ok": False, "error": str(exc), "exit_code": exc.exit_code, "seconds": round(time.perf_counter() - start, 3)}
    text = (str(exc).strip().splitlines() or [""])[0][:300]
    return {"ok": False, "error": f"internal error: {type(exc).__name__}: {text}", "exit_code": 1,
            "seconds": round(time.perf_counter() - start, 3)}


def convert(model: Path, options: Any, roundings: tuple[int, ...]) -> tuple[dict, dict | None]:
    """One conversion for a model and input shape; the graph passes per channel rounding on copies."""
    from edgepack.pipeline import Steps, prepare_export, run_graph_passes

    start = time.perf_counter()
    try:
        base = prepare_export(model, options, Steps(None), passes=False)
        blob = pickle.dumps(base)  # the converted graph, before passes, as ONNX bytes (Prepared.__getstate__)
        out = {}
        for r in roundings:
            prep = pickle.loads(blob)
            prep.options = prep.options.replace("prune", round_channels=r)
            prep.round_source = "sweep"
            run_graph_passes(prep, Steps(None))
            out[r] = prep
        return _status(start), out
    except Exception as exc:  # noqa: BLE001 - reported as this group's one-line error
        return _status(start, exc), None


def calibrate_ranges(preps: dict, rounding: int, method: str) -> tuple[dict, tuple | None]:
    """The int8 ranges of one processed graph (`preps[rounding]`) with one method."""
    from edgepack.calibrate import CALIBRATION_NAME
    from edgepack.pipeline import Steps, calibrate_export

    start = time.perf_counter()
    try:
        prep = preps[rounding]
        prep.options = prep.options.replace("calibration", calib_method=method).replace("precision", int8=True)
        warnings: list[str] = []
        with tempfile.TemporaryDirectory(prefix="edgepack-sweep-") as tmp:
            cal = calibrate_export(prep, Path(tmp), Steps(None), warnings)
            data = (Path(tmp) / CALIBRATION_NAME).read_bytes() if cal is not None else None
        return _status(start), (cal, data, warnings)
    except Exception as exc:  # noqa: BLE001
        return _status(start, exc), None


def build_cell(preps: dict, rounding: int, calibration: tuple | None, options: Any, fmt: str,
               precision: str) -> tuple[dict, tuple | None]:
    """One artifact of `preps[rounding]` in a scratch folder, as `edgepack export` would write it; its
    files come back as bytes."""
    from edgepack.calibrate import CALIBRATION_NAME
    from edgepack.pipeline import Steps, write_export

    start = time.perf_counter()
    try:
        prep = preps[rounding]
        prep.options = dataclasses.replace(options, prune=prep.options.prune)  # the rounding this graph was made with
        with tempfile.TemporaryDirectory(prefix="edgepack-sweep-") as tmp:
            out = Path(tmp)
            cal = None
            if calibration is not None and calibration[0] is not None:
                cal, data, warnings = calibration
                (out / CALIBRATION_NAME).write_bytes(data)
                cal = dataclasses.replace(cal, path=out / CALIBRATION_NAME)
                prep.warnings = prep.warnings + warnings
            report = write_export(prep, out, Steps(None), start, calibration=cal, cells=[(fmt, precision)])
            files = {f.name: f.read_bytes() for f in sorted(out.iterdir()) if f.is_file()}
        status = _status(start)
        art = report["artifacts"][0]
        if not art["ok"]:
            status.update(ok=False, error=art["error"], exit_code=art["exit_code"])
        return status, (report, files)
    except Exception as exc:  # noqa: BLE001
        return _status(start, exc), None


def bench_cell(path: Path, entry: dict, board: str | None, inventory: Path | None) -> dict:
    """Latency of one built artifact (`entry`: its report entry) on an inventory board (None: this
    machine); one-line error on failure."""
    import contextlib

    from edgepack.commands.bench import BenchOptions, _with_report_shapes, bench_artifact

    start = time.perf_counter()
    try:
        if board is None:
            session = contextlib.nullcontext(None)
        else:
            from edgepack.commands.bench_cli import ssh_target
            from edgepack.commands.remote import RemoteHost

            target = ssh_target(remote=None, device=board, inventory=inventory, remote_python=None, ssh_config=None,
                                accept_new_host_key=False, send_runner=False)
            session = RemoteHost(target)
        with session as host:
            result = bench_artifact(path, _with_report_shapes(BenchOptions(), entry), remote=host)
        return {**_status(start), "result": result}
    except Exception as exc:  # noqa: BLE001
        return _status(start, exc)
