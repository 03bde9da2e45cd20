"""TFLite artifacts (edgepack's own writer, `edgepack.converters.export_tflite`): fp32, fp16
(float16 weights), int8 (full integer from the export's calibration) and int8-weights (dynamic
range). For int8, tensors that exist only in the TFLite graph take the range measured by running
the float TFLite graph in LiteRT on the same calibration samples (here, not in the writer: the
writer never runs a runtime)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from edgepack.artifacts.context import Built, ExportContext
from edgepack.artifacts.guard import Guard, onnx_node_rank


def _export(ctx: ExportContext, path: Path, precision: str, model=None, **kw):
    from edgepack.converters.export_tflite import export_tflite
    from edgepack.errors import UnsupportedError

    if ctx.already_quantized:
        raise UnsupportedError("the model is already quantized (Q/DQ ops): edgepack's TFLite writer reads float graphs; "
                               "export the float model with --int8 --calib DATA instead (the ONNX artifact keeps this "
                               "model's own quantization)")

    return export_tflite(model if model is not None else ctx.model, path, precision, nchw_io=ctx.options.target.tflite_nchw_input, **kw)


def _float_details(precision: str, result) -> dict:
    return {
        "weights_precision": "fp16" if precision == "fp16" else "fp32",
        "compute_precision": "fp32",
        "dtypes": {"weights": "float16 (DEQUANTIZE to float32 at load)" if precision == "fp16" else "float32",
                   "activations": "float32", "io": "float32"},
        "op_census": result.op_census,
        "transposes": result.transposes,
    }


def build_fp32(ctx: ExportContext, path: Path) -> Built:
    result = _export(ctx, path, "fp32")
    return Built(result.files, _float_details("fp32", result), result.inputs, result.outputs)


def build_fp16(ctx: ExportContext, path: Path) -> Built:
    result = _export(ctx, path, "fp16")
    return Built(result.files, _float_details("fp16", result), result.inputs, result.outputs)


def build_int8_weights(ctx: ExportContext, path: Path) -> Built:
    result = _export(ctx, path, "int8-weights")
    return Built(result.files, {
        "weights_precision": "int8", "compute_precision": "int8 (dynamic activations)",
        "dtypes": {"weights": "int8 (per output channel, symmetric) for CONV_2D / FULLY_CONNECTED",
                   "activations": "float32 (quantized at run time by hybrid kernels)", "io": "float32"},
        "nodes": {"quantized": result.weights_only["quantized"], "kept_float": result.weights_only["kept_float"]},
        "op_census": result.op_census, "transposes": result.transposes,
    }, result.inputs, result.outputs)


def build_int8(ctx: ExportContext, path: Path) -> Built:
    """Full integer from the export's calibration. The operators of `float_nodes` stay float, with
    QUANTIZE/DEQUANTIZE at their borders; it starts from the nodes the accuracy guard kept in float
    for the int8 ONNX of this export. When it still misses the target, the guard ranks nodes on a
    stand-in int8 ONNX with the same float nodes and the same calibration (tensors are matched by
    ONNX name) and writes the TFLite again."""
    from edgepack.converters.export_tflite import Int8Ranges
    from edgepack.converters.quantize_int8 import quantize_int8

    cal = ctx.calibration
    measured = _measured_ranges(ctx)
    standin = ctx.work_dir / "tflite-guard.int8.onnx"
    int8_io = ctx.options.precision.int8_io
    float_now = list(ctx.int8_float_nodes)

    def standin_onnx() -> Path:
        quantize_int8(ctx.quant_proto, standin, cache_path=cal.path, method=cal.ort_method, calib_feeds=cal.feeds,
                      nodes_to_exclude=float_now)
        return standin

    def rebuild(float_nodes: list[str]) -> Built:
        float_now[:] = float_nodes
        ranges = Int8Ranges(cal.ranges, measured, int8_io=int8_io, float_nodes=tuple(float_nodes))
        result = _export(ctx, path, "int8", model=ctx.quant_model, int8=ranges)
        io = ("int8 (scale and zero point in inputs/outputs)" if int8_io
              else "float32 (one QUANTIZE per input, DEQUANTIZE per output)")
        details = {
            "weights_precision": "int8", "compute_precision": "int8",
            "dtypes": {"weights": "int8 (per output channel, symmetric); bias int32", "activations": "int8", "io": io},
            "op_census": result.op_census,
            "transposes": result.transposes,
            "constrained_ranges": result.constrained,
            "float_ops": result.float_ops,
            "calibration": cal.summary(),
            "float_nodes": list(float_nodes),
        }
        return Built(result.files, details, result.inputs, result.outputs, guard)

    guard = Guard(onnx_node_rank(ctx, standin_onnx), rebuild, start=list(float_now))
    return rebuild(list(float_now))


def _measured_ranges(ctx: ExportContext) -> dict[str, tuple[float, float]]:
    """The float TFLite graph's ranges over the calibration samples, once per export (the guard
    rebuilds the int8 graph, not the float one)."""
    if "tflite_measured" not in ctx.cache:
        float_path = ctx.work_dir / "measure.fp32.tflite"
        graph = _export(ctx, float_path, "fp32", model=ctx.quant_model)
        ctx.cache["tflite_measured"] = measure_ranges(float_path, ctx.calibration.feeds,
                                                      {d["name"]: d["perm"] for d in graph.inputs})
    return ctx.cache["tflite_measured"]


def measure_ranges(tflite_path: Path, feeds: list[dict[str, np.ndarray]], in_perm: dict[str, list[int]]) -> dict[str, tuple[float, float]]:
    """Min/max of every float tensor of a float TFLite graph over `feeds` (ONNX layout)."""
    from ai_edge_litert.interpreter import Interpreter

    from edgepack.runtimes.artifact import to_stored

    with warnings.catch_warnings():  # it warns that keeping every tensor is a debugging aid: that is the point here
        warnings.simplefilter("ignore")
        it = Interpreter(model_path=str(tflite_path), experimental_preserve_all_tensors=True, num_threads=2)
    it.allocate_tensors()
    details = [d for d in it.get_tensor_details() if d["dtype"] == np.float32]
    ranges: dict[str, tuple[float, float]] = {}
    inputs = it.get_input_details()
    for feed in feeds:
        for d in inputs:
            it.set_tensor(d["index"], to_stored(feed[d["name"]], in_perm[d["name"]]))
        it.invoke()
        for d in details:
            try:
                value = it.get_tensor(d["index"])
            except ValueError:  # constants and tensors without data
                continue
            if value.size == 0:
                continue
            lo, hi = float(value.min()), float(value.max())
            old = ranges.get(d["name"])
            ranges[d["name"]] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
    return ranges


BUILDERS = {"fp32": build_fp32, "fp16": build_fp16, "int8": build_int8, "int8-weights": build_int8_weights}
