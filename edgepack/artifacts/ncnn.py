"""ncnn artifacts via pnnx from the processed graph: fp16 weight storage (the default, as ncnn's
mobile deployments run), fp32 (--ncnn-fp32) and int8 from the export's calibration (ncnn's table)."""
from __future__ import annotations

from pathlib import Path

from edgepack.artifacts.context import Built, ExportContext, io_rows
from edgepack.artifacts.guard import GUARD_SAMPLES, Guard
from edgepack.errors import UnsupportedError


def _refuse_quantized(ctx: ExportContext) -> None:
    if ctx.already_quantized:
        raise UnsupportedError("the model is already quantized (Q/DQ ops): pnnx cannot convert those to ncnn; "
                               "export the float model with --int8 --calib DATA instead")


def _io(ctx: ExportContext, blob_names: dict[str, str]) -> tuple[list[dict], list[dict]]:
    """The ONNX IO rows plus the blob name to pass to ncnn's Extractor.input / extract."""
    def add(rows: list[dict]) -> list[dict]:
        return [{**r, "ncnn_blob": blob_names[r["name"]]} for r in rows]

    return add(io_rows(ctx.model.graph.inputs)), add(io_rows(ctx.model.graph.outputs))


def _build_float(ctx: ExportContext, path: Path, precision: str) -> Built:
    from edgepack.converters.export_ncnn import export_ncnn

    _refuse_quantized(ctx)
    result = export_ncnn(ctx.model, path, fp16=precision == "fp16")
    inputs, outputs = _io(ctx, result.blob_names)
    return Built(result.files, {
        "weights_precision": precision,
        "compute_precision": "fp16 where the CPU has it (ncnn's default options), else fp32" if precision == "fp16"
        else "fp32 (run with ncnn's opt.use_fp16_storage/packed/arithmetic = False; ncnn turns them on by default)",
        "dtypes": {"weights": "float16" if precision == "fp16" else "float32", "io": "float32"},
        "layer_census": result.census,
        "pnnx_blob_names": result.pnnx_names,
    }, inputs, outputs)


def build_fp32(ctx: ExportContext, path: Path) -> Built:
    return _build_float(ctx, path, "fp32")


def build_fp16(ctx: ExportContext, path: Path) -> Built:
    return _build_float(ctx, path, "fp16")


def build_int8(ctx: ExportContext, path: Path) -> Built:
    """int8 layers from the export's calibration; the layers of the int8 ONNX's float nodes stay
    fp32. The guard keeps the int8 layer that loses most SQNR in fp32 and writes the model again."""
    from edgepack.converters.export_ncnn import NcnnParam, export_ncnn
    from edgepack.converters.quantize_ncnn_int8 import layer_divergence, quantize_ncnn_int8

    _refuse_quantized(ctx)
    cal = ctx.calibration
    table = path.with_suffix(".table")
    base = export_ncnn(ctx.quant_model, ctx.work_dir / "ncnn-base.fp32.param", fp16=False)
    inputs, outputs = _io(ctx, base.blob_names)
    blob = {d["name"]: d["ncnn_blob"] for d in inputs}
    float_onnx_nodes = frozenset(ctx.int8_float_nodes)

    def rebuild(keep_float: list[str]) -> Built:
        result = quantize_ncnn_int8(ctx.quant_model, base.files[0], base.files[1], cal.ranges, path, table,
                                    float_onnx_nodes=float_onnx_nodes, keep_float=frozenset(keep_float))
        census = NcnnParam.parse(path.read_text()).census()
        return Built([path, path.with_suffix(".bin"), table], {
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
            "calibration": {**cal.summary(), "ncnn_table": table.name},
        }, inputs, outputs, guard)

    def rank(keep_float: list[str]) -> list[dict]:
        feeds = [{blob[k]: v[0] for k, v in feed.items()} for feed in ctx.vset.feeds()[:GUARD_SAMPLES]]
        rows = [r for r in layer_divergence(base.files[0], path, feeds) if r["int8"] and r["layer"] not in keep_float]
        if not rows:
            return []
        worst = max(rows, key=lambda r: r["sqnr_drop_db"])
        return [{"unit": worst["layer"], "op": worst.get("type"), "sqnr_drop_db": worst["sqnr_drop_db"]}]

    guard = Guard(rank, rebuild)
    return rebuild([])


BUILDERS = {"fp32": build_fp32, "fp16": build_fp16, "int8": build_int8}
