"""ONNX artifacts: fp32 (the processed graph), fp16, int8 (static QDQ from the export's
calibration) and int8-weights (dynamic range)."""
from __future__ import annotations

from pathlib import Path

from edgepack.artifacts.context import Built, ExportContext, io_rows
from edgepack.artifacts.guard import Guard, onnx_node_rank


def build_fp32(ctx: ExportContext, path: Path) -> Built:
    from edgepack.converters.export_onnx import export_onnx

    files = export_onnx(ctx.model, path)
    q = ctx.already_quantized
    details = {"weights_precision": "int8" if q else "fp32", "compute_precision": "int8" if q else "fp32"}
    if q:
        details["note"] = "the model was already quantized: its own quantization is kept, not redone"
    return _built(files, details, path, ctx)


def build_fp16(ctx: ExportContext, path: Path) -> Built:
    from edgepack.converters.cast_fp16 import cast_fp16
    from edgepack.converters.export_onnx import write_proto

    fp16_io = ctx.options.precision.fp16_io
    write_proto(cast_fp16(ctx.fp32_proto, io_fp16=fp16_io), path)
    io_dtype = "float16" if fp16_io else "float32"
    return _built([path], {"weights_precision": "fp16", "compute_precision": "fp16",
                           "dtypes": {"weights": "float16", "activations": "float16", "io": io_dtype}}, path, ctx)


def build_int8(ctx: ExportContext, path: Path) -> Built:
    if ctx.already_quantized:  # its own quantization is kept
        return build_fp32(ctx, path)

    from edgepack.runtimes.ort import int8_products_saturate

    weights = ("int8 (per output channel, symmetric; 7-bit range: ONNX Runtime's int8 kernels on this x86 CPU without "
               "VNNI saturate with 8-bit weights)" if int8_products_saturate() else "int8 (per output channel, symmetric)")

    def rebuild(float_nodes: list[str]) -> Built:
        from edgepack.converters.quantize_int8 import quantize_int8

        cal = ctx.calibration
        result = quantize_int8(ctx.quant_proto, path, cache_path=cal.path, method=cal.ort_method, calib_feeds=cal.feeds,
                               nodes_to_exclude=float_nodes)
        ctx.int8_float_nodes = list(float_nodes)  # the int8 TFLite and ncnn start from the same float nodes
        details = {
            "weights_precision": "int8", "compute_precision": "int8",
            "dtypes": {"weights": weights, "activations": "int8", "io": "float32"},
            "nodes": {"quantized": result.quantized_nodes, "float": result.float_nodes},
            "float_nodes": list(float_nodes),
            "calibration": cal.summary(),
        }
        return _built([path], details, path, ctx, Guard(onnx_node_rank(ctx, lambda: path), rebuild))

    return rebuild([])


def build_int8_weights(ctx: ExportContext, path: Path) -> Built:
    from edgepack.converters.quantize_int8 import quantize_int8_weights

    result = quantize_int8_weights(ctx.fp32_proto, path)
    return _built([path], {"weights_precision": "int8", "compute_precision": "int8 (dynamic activations)",
                           "dtypes": {"weights": "int8", "activations": "float32 (quantized at run time)", "io": "float32"},
                           "nodes": {"quantized": result.quantized_nodes, "float": result.float_nodes}}, path, ctx)


def _built(files: list[Path], details: dict, path: Path, ctx: ExportContext, guard: Guard | None = None) -> Built:
    """IO dtypes as written (fp16 IO differs from the graph the artifact came from)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dtypes = {v.name: onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
              for v in list(model.graph.input) + list(model.graph.output)}
    fix = lambda rows: [{**r, "dtype": dtypes.get(r["name"], r["dtype"])} for r in rows]  # noqa: E731
    return Built(files, details, fix(io_rows(ctx.model.graph.inputs)), fix(io_rows(ctx.model.graph.outputs)), guard)


BUILDERS = {"fp32": build_fp32, "fp16": build_fp16, "int8": build_int8, "int8-weights": build_int8_weights}
