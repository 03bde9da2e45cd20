"""Build one artifact (format x precision) from the processed graph, verify it, describe it.

Which module builds which format is the table in `edgepack.formats`; each format module
(`onnx.py`, `tflite.py`, `ncnn.py`) defines `BUILDERS = {precision: build(ctx, path) -> Built}`.
Every artifact comes from the same processed fp32 graph and, for int8, the same calibration
(`ctx.calibration`, made once by `edgepack.calibrate`). `build_artifact` returns the report entry; a
failure is recorded in the entry (ok=False, error, exit_code) so the other artifacts are still
built."""
from __future__ import annotations

from typing import Any

from edgepack.artifacts.context import Built, EvalSet, ExportContext, describe, int8_mac_share, io_rows
from edgepack.artifacts.guard import repair_int8
from edgepack.errors import EdgepackError, OutputError
from edgepack.formats import FORMATS, check_buildable
from edgepack.verify import check_fidelity, missed, verify_artifact

__all__ = ["Built", "EvalSet", "ExportContext", "build_artifact"]


def build_artifact(ctx: ExportContext, fmt: str, precision: str) -> dict:
    entry: dict[str, Any] = {
        "path": None, "files": [], "format": fmt, "precision": precision,
        "weights_precision": None, "compute_precision": None, "size_bytes": None,
        "inputs": io_rows(ctx.model.graph.inputs), "outputs": io_rows(ctx.model.graph.outputs),
        "fidelity": None, "ok": False, "error": None, "exit_code": 0,
    }
    try:
        kind = check_buildable(fmt, precision)
        path = ctx.out_dir / f"{ctx.name}.{precision}{kind.suffix}"
        try:
            built = kind.builders().BUILDERS[precision](ctx, path)
        except OSError as exc:
            raise OutputError(f"cannot write {path} ({exc.strerror or exc}); free space or choose another folder with -o") from None
        describe(entry, built, ctx)
        entry["fidelity"] = verify_artifact(ctx, entry, precision)
        if built.guard is not None and missed(entry["fidelity"]):
            fidelity, built, history = repair_int8(ctx, entry, built)
            describe(entry, built, ctx)
            entry["fidelity"] = fidelity
            entry["guard"] = history
        share = int8_mac_share(ctx, entry)
        if share is not None:
            entry["int8_mac_share"] = round(share, 4)
        if ctx.eval_set is not None:
            entry["accuracy"] = ctx.eval_set.entry(ctx.eval_set.score(ctx.outputs(entry, ctx.eval_set.feeds())))
        check_fidelity(entry, precision)
        entry["ok"] = True
    except EdgepackError as exc:
        entry["error"] = str(exc)
        entry["exit_code"] = exc.exit_code
    return entry


def artifact_builders(fmt: str) -> dict:
    """The precision -> builder table of a format (the test that every FORMATS row matches uses it)."""
    return FORMATS[fmt].builders().BUILDERS
