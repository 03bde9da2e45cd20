"""Build one artifact (format x precision) from the processed graph, verify it, describe it.

Every artifact comes from the same processed fp32 graph and, for int8, the same calibration file.
`build_artifact` returns the report entry; a failure is recorded in the entry (ok=False, error,
exit_code) so the other artifacts are still built."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from edgepack.converters.cast_fp16 import cast_fp16
from edgepack.converters.export_onnx import export_onnx, to_proto, write_proto
from edgepack.converters.quantize_int8 import Int8Result, quantize_int8, quantize_int8_weights
from edgepack.errors import EdgepackError, OutputError, UnsupportedError, VerificationFailed
from edgepack.formats import FORMATS, check_buildable
from edgepack.fsutil import deflated_size, file_entry
from edgepack.options import ExportOptions
from edgepack.runtimes import get_runtime
from edgepack.runtimes.ort import ort_message
from edgepack.verify import VerificationSet, compare, run_all, tolerance_for

CALIBRATION_NAME = "calibration.json"
# Without a user target, quantized artifacts are only warned about below these.
POOR_COSINE = 0.99
POOR_TOP1 = 0.95


@dataclass
class EvalSet:
    """Labelled data for task accuracy (--eval): x (M, *input_shape[1:]), y (M,)."""

    path: Path
    x: np.ndarray
    y: np.ndarray
    input_name: str
    input_shape: tuple[int, ...]
    reference_top1: float | None = None

    def accuracy(self, run: Callable[[dict[str, np.ndarray]], list[np.ndarray]]) -> float:
        batch = self.input_shape[0]
        n = (len(self.x) // batch) * batch
        correct = 0
        for i in range(0, n, batch):
            logits = run({self.input_name: self.x[i : i + batch].reshape(self.input_shape)})[0]
            correct += int((logits.reshape(batch, -1).argmax(-1) == self.y[i : i + batch]).sum())
        return correct / n


@dataclass
class ExportContext:
    """What every artifact is built and verified from."""

    model: ir.Model
    name: str
    out_dir: Path
    vset: VerificationSet
    reference: list[np.ndarray]
    output_names: list[str]
    options: ExportOptions
    calib_feeds: list[dict[str, np.ndarray]] | None = None
    already_quantized: bool = False
    eval_set: EvalSet | None = None
    int8_float_nodes: list[str] = field(default_factory=list)  # the accuracy guard's choice for the int8 ONNX
    tflite_measured: dict | None = field(default=None, repr=False)  # ranges of TFLite-only tensors
    _proto: Any = field(default=None, repr=False)

    @property
    def fp32_proto(self) -> Any:
        if self._proto is None:
            self._proto = to_proto(self.model)
        return self._proto

    @property
    def calibration_path(self) -> Path:
        return self.out_dir / CALIBRATION_NAME


def build_artifact(ctx: ExportContext, fmt: str, precision: str) -> dict:
    entry: dict[str, Any] = {
        "path": None, "files": [], "format": fmt, "precision": precision,
        "weights_precision": None, "compute_precision": None, "size_bytes": None,
        "inputs": _io(ctx.model.graph.inputs), "outputs": _io(ctx.model.graph.outputs),
        "fidelity": None, "ok": False, "error": None, "exit_code": 0,
    }
    try:
        check_buildable(fmt, precision)
        path = ctx.out_dir / f"{ctx.name}.{precision}.{FORMATS[fmt].extension}"
        try:
            if fmt == "tflite":
                files, details = _export_tflite(ctx, path, precision)
            elif fmt == "ncnn":
                files, details = _export_ncnn(ctx, path, precision)
            else:
                files, details = _export_onnx_precision(ctx, path, precision)
        except OSError as exc:
            raise OutputError(f"cannot write {path} ({exc.strerror or exc}); free space or choose another folder with -o") from None
        entry.update(details)
        entry["path"] = path.name
        entry["files"] = [file_entry(f, ctx.out_dir) for f in files]
        entry["size_bytes"] = sum(f["size_bytes"] for f in entry["files"])
        entry["deflated_bytes"] = sum(deflated_size(f) for f in files)  # what a download of it costs
        if fmt in ("tflite", "ncnn"):
            entry["inputs"], entry["outputs"] = details.pop("io")
        else:
            entry["inputs"], entry["outputs"] = _io_of_file(path, entry["inputs"], entry["outputs"])
        entry["fidelity"] = verify_artifact(ctx, entry, precision)
        if precision == "int8" and fmt != "ncnn" and not ctx.already_quantized and _missed(entry["fidelity"]):
            from edgepack.accuracy_guard import repair_int8

            rebuild = None
            if fmt == "tflite":
                def rebuild(float_nodes: list[str]) -> None:
                    entry.update(_export_tflite_int8(ctx, path, float_nodes)[1])
                    entry["inputs"], entry["outputs"] = entry.pop("io")
            repaired = repair_int8(ctx, path, entry["fidelity"], entry=entry, rebuild=rebuild,
                                   start=entry.get("float_nodes") or [])
            entry["fidelity"] = repaired.fidelity
            entry["float_nodes"] = list(repaired.float_nodes)
            if fmt == "onnx":
                entry["nodes"] = {"quantized": repaired.result.quantized_nodes, "float": repaired.result.float_nodes}
                ctx.int8_float_nodes = list(repaired.float_nodes)
            entry["guard"] = repaired.history
            entry["files"] = [file_entry(f, ctx.out_dir) for f in files]
            entry["size_bytes"] = sum(f["size_bytes"] for f in entry["files"])
            entry["deflated_bytes"] = sum(deflated_size(f) for f in files)
        if ctx.eval_set is not None:
            entry["accuracy"] = {"top1": ctx.eval_set.accuracy(run_artifact(ctx, entry)), "samples": len(ctx.eval_set.y)}
        _check(entry, precision)
        entry["ok"] = True
    except EdgepackError as exc:
        entry["error"] = str(exc)
        entry["exit_code"] = exc.exit_code
    return entry


# ---------------------------------------------------------------- export per precision


def _export_onnx_precision(ctx: ExportContext, path: Path, precision: str) -> tuple[list[Path], dict]:
    opts = ctx.options
    io_dtype = "float32"
    if precision == "fp32" or (ctx.already_quantized and precision == "int8"):
        files = export_onnx(ctx.model, path)
        details = {"weights_precision": "int8" if ctx.already_quantized else "fp32",
                   "compute_precision": "int8" if ctx.already_quantized else "fp32"}
        if ctx.already_quantized:
            details["note"] = "the model was already quantized: its own quantization is kept, not redone"
        return files, details
    if precision == "fp16":
        write_proto(cast_fp16(ctx.fp32_proto, io_fp16=opts.fp16_io), path)
        io_dtype = "float16" if opts.fp16_io else "float32"
        return [path], {"weights_precision": "fp16", "compute_precision": "fp16",
                        "dtypes": {"weights": "float16", "activations": "float16", "io": io_dtype}}
    if precision == "int8":
        result = quantize_int8(ctx.fp32_proto, path, cache_path=ctx.calibration_path, method=opts.calib_method,
                               calib_feeds=ctx.calib_feeds)
        return [path], _int8_details(result, ctx, full_integer=True)
    # int8-weights
    result = quantize_int8_weights(ctx.fp32_proto, path)
    return [path], {"weights_precision": "int8", "compute_precision": "int8 (dynamic activations)",
                    "dtypes": {"weights": "int8", "activations": "float32 (quantized at run time)", "io": io_dtype},
                    "nodes": {"quantized": result.quantized_nodes, "float": result.float_nodes}}


def _int8_details(result: Int8Result, ctx: ExportContext, full_integer: bool) -> dict:
    return {
        "weights_precision": "int8", "compute_precision": "int8",
        "dtypes": {"weights": "int8 (per output channel, symmetric)", "activations": "int8", "io": "float32"},
        "nodes": {"quantized": result.quantized_nodes, "float": result.float_nodes},
        "float_nodes": list(result.excluded),
        "calibration": {"file": CALIBRATION_NAME, "method": ctx.options.calib_method,
                        "samples": len(ctx.calib_feeds or [])},
    }


def _export_tflite(ctx: ExportContext, path: Path, precision: str) -> tuple[list[Path], dict]:
    from edgepack.converters.export_tflite import export_tflite

    if precision == "int8":
        # start from the nodes the accuracy guard kept in float for the int8 ONNX of this export
        return _export_tflite_int8(ctx, path, ctx.int8_float_nodes)
    result = export_tflite(ctx.model, path, precision, nchw_io=ctx.options.tflite_nchw_io)
    if precision == "int8-weights":
        return result.files, {
            "weights_precision": "int8", "compute_precision": "int8 (dynamic activations)",
            "dtypes": {"weights": "int8 (per output channel, symmetric) for CONV_2D / FULLY_CONNECTED",
                       "activations": "float32 (quantized at run time by hybrid kernels)", "io": "float32"},
            "nodes": {"quantized": result.weights_only["quantized"], "kept_float": result.weights_only["kept_float"]},
            "op_census": result.op_census, "transposes": result.transposes, "io": (result.inputs, result.outputs),
        }
    return result.files, {
        "weights_precision": "fp16" if precision == "fp16" else "fp32",
        "compute_precision": "fp32",
        "dtypes": {"weights": "float16 (DEQUANTIZE to float32 at load)" if precision == "fp16" else "float32",
                   "activations": "float32", "io": "float32"},
        "op_census": result.op_census,
        "transposes": result.transposes,
        "io": (result.inputs, result.outputs),
    }


def _export_tflite_int8(ctx: ExportContext, path: Path, float_nodes: list[str] = ()) -> tuple[list[Path], dict]:
    """Full-integer TFLite from the same calibration file as the int8 ONNX (calibrated here if the
    ONNX int8 was not requested); tensors that exist only in the TFLite graph get the range measured
    on the float TFLite graph over the same calibration samples. The operators of `float_nodes` stay
    float, with QUANTIZE/DEQUANTIZE at their borders."""
    import tempfile

    from edgepack.converters.export_tflite import Int8Ranges, export_tflite
    from edgepack.converters.export_tflite.quantize import measure_ranges
    from edgepack.converters.quantize_int8 import load_ranges

    opts = ctx.options
    if ctx.tflite_measured is None:  # measured once per export (the guard rebuilds the graph)
        with tempfile.TemporaryDirectory(prefix="edgepack-tflite-") as tmp:
            if not ctx.calibration_path.is_file():
                quantize_int8(ctx.fp32_proto, Path(tmp) / "calibrate.onnx", cache_path=ctx.calibration_path,
                              method=opts.calib_method, calib_feeds=ctx.calib_feeds)
            float_path = Path(tmp) / "float.tflite"
            float_graph = export_tflite(ctx.model, float_path, "fp32", nchw_io=opts.tflite_nchw_io)
            ctx.tflite_measured = measure_ranges(float_path, ctx.calib_feeds or [],
                                                 {d["name"]: d["perm"] for d in float_graph.inputs})
    ranges = Int8Ranges(load_ranges(ctx.calibration_path), ctx.tflite_measured, int8_io=opts.int8_io,
                        float_nodes=tuple(float_nodes))
    result = export_tflite(ctx.model, path, "int8", nchw_io=opts.tflite_nchw_io, int8=ranges)
    io = "int8 (scale and zero point in inputs/outputs)" if opts.int8_io else "float32 (one QUANTIZE per input, DEQUANTIZE per output)"
    return result.files, {
        "weights_precision": "int8", "compute_precision": "int8",
        "dtypes": {"weights": "int8 (per output channel, symmetric); bias int32", "activations": "int8", "io": io},
        "op_census": result.op_census,
        "transposes": result.transposes,
        "constrained_ranges": result.constrained,
        "float_ops": result.float_ops,
        "calibration": {"file": CALIBRATION_NAME, "method": opts.calib_method, "samples": len(ctx.calib_feeds or [])},
        "float_nodes": list(float_nodes),
        "io": (result.inputs, result.outputs),
    }


def _export_ncnn(ctx: ExportContext, path: Path, precision: str) -> tuple[list[Path], dict]:
    """ncnn via pnnx from the processed graph; int8 from the same calibration file as the int8 ONNX."""
    from edgepack.converters.export_ncnn import export_ncnn

    if ctx.already_quantized:
        raise UnsupportedError("the model is already quantized (Q/DQ ops): pnnx cannot convert those to ncnn; "
                               "export the float model with --int8 --calib DATA instead")
    if precision == "int8":
        return _export_ncnn_int8(ctx, path)
    result = export_ncnn(ctx.model, path, fp16=precision == "fp16")
    return result.files, {
        "weights_precision": precision,
        "compute_precision": "fp16 where the CPU has it (ncnn's default options), else fp32" if precision == "fp16"
        else "fp32 (run with ncnn's opt.use_fp16_storage/packed/arithmetic = False; ncnn turns them on by default)",
        "dtypes": {"weights": "float16" if precision == "fp16" else "float32", "io": "float32"},
        "layer_census": result.census,
        "pnnx_blob_names": result.pnnx_names,
        "io": _ncnn_io(ctx, result.blob_names),
    }


def _export_ncnn_int8(ctx: ExportContext, path: Path) -> tuple[list[Path], dict]:
    import functools
    import tempfile

    from edgepack.converters.export_ncnn import NcnnParam, export_ncnn
    from edgepack.converters.quantize_int8 import load_ranges
    from edgepack.converters.quantize_ncnn_int8 import quantize_ncnn_int8

    opts = ctx.options
    table = path.with_suffix(".table")
    with tempfile.TemporaryDirectory(prefix="edgepack-ncnn-") as tmp:
        if not ctx.calibration_path.is_file():
            quantize_int8(ctx.fp32_proto, Path(tmp) / "calibrate.onnx", cache_path=ctx.calibration_path,
                          method=opts.calib_method, calib_feeds=ctx.calib_feeds)
        base = export_ncnn(ctx.model, Path(tmp) / "fp32.param", fp16=False)
        io = _ncnn_io(ctx, base.blob_names)
        ranges = load_ranges(ctx.calibration_path)
        requantize = functools.partial(quantize_ncnn_int8, ctx.model, base.files[0], base.files[1], ranges, path, table,
                                       float_onnx_nodes=frozenset(ctx.int8_float_nodes))
        result = requantize()
        guard: list[dict] = []
        if opts.min_cosine is not None or opts.min_top1 is not None:
            result, guard = _guard_ncnn_int8(ctx, path, base.files[0], io, requantize, result)
    census = NcnnParam.parse(path.read_text()).census()
    return [path, path.with_suffix(".bin"), table], {
        "weights_precision": "int8", "compute_precision": "int8",
        "dtypes": {"weights": "int8 (per output channel, symmetric, scale 127/absmax); bias float32",
                   "activations": "int8 at the input of each int8 layer (symmetric), float32 between layers",
                   "io": "float32"},
        "layer_census": census,
        "pnnx_blob_names": base.pnnx_names,
        "nodes": {"quantized": len(result.quantized), "float": len(result.float_layers)},
        "int8_layers": result.quantized,
        "requantized_layers": result.requantized,
        "float_nodes": [f["layer"] for f in result.float_layers],
        "float_layers": result.float_layers,
        "calibration": {"file": CALIBRATION_NAME, "method": opts.calib_method, "samples": len(ctx.calib_feeds or []),
                        "ncnn_table": table.name},
        **({"guard": guard} if guard else {}),
        "io": io,
    }


def _guard_ncnn_int8(ctx: ExportContext, path: Path, fp32_param: Path, io: tuple[list[dict], list[dict]],
                     requantize: Callable[..., Any], result: Any) -> tuple[Any, list[dict]]:
    """The accuracy guard for ncnn int8: while --min-cosine/--min-top1 is missed, keep the int8 layer
    that loses most SQNR (`layer_divergence`, on held-out samples) in fp32 and write the model again."""
    from edgepack.accuracy_guard import GUARD_SAMPLES, MAX_ROUNDS
    from edgepack.converters.quantize_ncnn_int8 import layer_divergence

    entry = {"path": path.name, "format": "ncnn", "precision": "int8", "inputs": io[0], "outputs": io[1]}
    blob = {d["name"]: d["ncnn_blob"] for d in io[0]}
    feeds = [{blob[k]: v[0] for k, v in feed.items()} for feed in ctx.vset.feeds()[:GUARD_SAMPLES]]
    keep: set[str] = set()
    history = []
    for _ in range(MAX_ROUNDS):
        fid = verify_artifact(ctx, entry, "int8")
        history.append({"float_layers": [f["layer"] for f in result.float_layers], "cosine": fid["cosine"],
                        "top1_agreement": fid.get("top1_agreement")})
        if not _missed(fid):
            break
        rows = [r for r in layer_divergence(fp32_param, path, feeds) if r["int8"]]
        if not rows:
            break
        worst = max(rows, key=lambda r: r["sqnr_drop_db"])
        history[-1]["worst"] = worst
        keep.add(worst["layer"])
        result = requantize(keep_float=frozenset(keep))
    return result, history


def _ncnn_io(ctx: ExportContext, blob_names: dict[str, str]) -> tuple[list[dict], list[dict]]:
    """The ONNX IO rows plus the blob name to pass to ncnn's Extractor.input / extract."""
    def add(rows: list[dict]) -> list[dict]:
        return [{**r, "ncnn_blob": blob_names[r["name"]]} for r in rows]

    return add(_io(ctx.model.graph.inputs)), add(_io(ctx.model.graph.outputs))


# ---------------------------------------------------------------- verification


def _tflite_runner(path: Path, inputs: list[dict], outputs: list[dict]) -> Callable:
    """Run a TFLite artifact on ONNX-layout feeds; outputs come back in ONNX layout."""
    from edgepack.converters.export_tflite import to_onnx_layout, to_stored

    session = get_runtime("litert").load(path)
    ins = {d["name"]: d for d in inputs}

    def quantize(x: np.ndarray, d: dict) -> np.ndarray:  # int8 IO (--int8-io)
        if "scale" not in d:
            return x
        return np.clip(np.round(x / d["scale"]) + d["zero_point"], -128, 127).astype(np.int8)

    def dequantize(y: np.ndarray, d: dict) -> np.ndarray:
        return (y.astype(np.float32) - d["zero_point"]) * d["scale"] if "scale" in d else y.astype(np.float32)

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        got = session.run({k: quantize(to_stored(v, ins[k]["perm"]), ins[k]) for k, v in feed.items()})
        return [to_onnx_layout(dequantize(got[d["name"]], d), d["perm"]) for d in outputs]

    return run


def _ncnn_runner(path: Path, precision: str, inputs: list[dict], outputs: list[dict]) -> Callable:
    """Run an ncnn artifact (NCHW like ONNX; no batch axis inside, the adapter loops over it). ncnn
    stores activations in fp16 by default where the CPU can (x86 with F16C too): the fp32 artifact
    is run with that off, the others with ncnn's defaults, as deployed."""
    session = get_runtime("ncnn").load(path, fp16=False if precision == "fp32" else None)
    blob = {d["name"]: d["ncnn_blob"] for d in inputs}

    def shaped(y: np.ndarray, d: dict) -> np.ndarray:
        shape = d.get("shape")
        fits = shape and all(isinstance(n, int) for n in shape) and int(np.prod(shape)) == y.size
        return y.reshape(shape) if fits else y

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        got = session.run({blob[k]: v for k, v in feed.items()})
        return [shaped(got[d["ncnn_blob"]], d) for d in outputs]

    return run


def run_artifact(ctx: ExportContext, entry: dict) -> Callable:
    """A function running a built artifact on ONNX-layout feeds, returning outputs in ONNX layout."""
    path = ctx.out_dir / entry["path"]
    if entry["format"] == "tflite":
        return _tflite_runner(path, entry["inputs"], entry["outputs"])
    if entry["format"] == "ncnn":
        return _ncnn_runner(path, entry["precision"], entry["inputs"], entry["outputs"])
    session = get_runtime("onnxruntime").load(path)
    return lambda feed: [session.run(feed)[n].astype(np.float32) for n in ctx.output_names]


def verify_artifact(ctx: ExportContext, entry: dict, precision: str) -> dict:
    """Run the artifact on the verification set in its runtime and compare with the reference.
    Every non-fp32 artifact is held to the user's --min-cosine / --min-top1 when given."""
    fmt = entry["format"]
    runtime = get_runtime({"tflite": "litert", "ncnn": "ncnn"}.get(fmt, "onnxruntime"))
    try:
        actual = run_all(run_artifact(ctx, entry), ctx.vset)
    except Exception as exc:  # the artifact itself is broken: it cannot be verified
        why = ort_message(exc) if fmt == "onnx" else str(exc).splitlines()[0][:300]
        label = {"tflite": "LiteRT", "ncnn": "ncnn"}.get(fmt, "ONNX Runtime")
        raise VerificationFailed(
            f"{label} cannot run {entry['path']}: {why}; the artifact is kept for inspection"
        ) from None
    result = compare(ctx.reference, actual, ctx.output_names)
    opts = ctx.options
    mode = "approx" if opts.prune_approx else "exact"
    # fp16 TFLite computes in fp32 (weights dequantized once): it is judged by the fp16 tolerance too.
    tol, enforced = tolerance_for(precision, mode, opts.fp32_tolerance if precision == "fp32" else None)
    result["tolerance"] = {"rel_error": tol, "enforced": enforced}
    if precision != "fp32" and (opts.min_cosine is not None or opts.min_top1 is not None):
        result["tolerance"].update({"min_cosine": opts.min_cosine, "min_top1": opts.min_top1, "enforced": True})
    result["samples"] = ctx.vset.count
    result["runtime"] = f"{runtime.name} {runtime.version()}"
    return result


def _missed(fidelity: dict) -> bool:
    """True when a user target (--min-cosine / --min-top1) is set and missed."""
    tol = fidelity.get("tolerance") or {}
    if fidelity.get("error"):
        return False
    if tol.get("min_cosine") is not None and fidelity["cosine"] < tol["min_cosine"]:
        return True
    top1 = fidelity.get("top1_agreement")
    return tol.get("min_top1") is not None and top1 is not None and top1 < tol["min_top1"]


def _check(entry: dict, precision: str) -> None:
    fid = entry["fidelity"]
    if fid.get("error"):
        raise VerificationFailed(fid["error"])
    tol = fid["tolerance"]
    if tol["enforced"] and tol["rel_error"] is not None and not fid["rel_error"] <= tol["rel_error"]:
        raise VerificationFailed(
            f"relative error {fid['rel_error']:.3g} exceeds the {precision} tolerance {tol['rel_error']:.0e}; "
            "the artifact is kept for inspection"
        )
    if _missed(fid):
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


# ---------------------------------------------------------------- description


def _io(values: Any) -> list[dict]:
    layouts = {2: "NC", 3: "NCW", 4: "NCHW", 5: "NCDHW"}
    out = []
    for v in values:
        shape = [d if isinstance(d, int) else str(d) for d in v.shape] if v.shape is not None else None
        dtype = v.dtype.numpy().name if v.dtype is not None else None
        out.append({"name": v.name, "shape": shape, "dtype": dtype, "layout": layouts.get(len(shape)) if shape else None})
    return out


def _io_of_file(path: Path, inputs: list[dict], outputs: list[dict]) -> tuple[list[dict], list[dict]]:
    """IO dtypes as written (fp16 IO differs from the graph the artifact came from)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dtypes = {v.name: onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
              for v in list(model.graph.input) + list(model.graph.output)}
    fix = lambda rows: [{**r, "dtype": dtypes.get(r["name"], r["dtype"])} for r in rows]  # noqa: E731
    return fix(inputs), fix(outputs)
