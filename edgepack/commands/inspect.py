"""`edgepack inspect`: what an artifact holds, read from the file itself (no runtime session, no
torch): op census, parameters, MACs, inputs and outputs with layout and quantization parameters
(.onnx, .tflite; ncnn .param without MACs, since it stores no shapes).

`inspect_artifact(path) -> dict` is the reusable core. ONNX is read with onnx + onnx_ir (MACs from
edgepack.model_stats on the shape-inferred graph); TFLite with the flatbuffer schema that ships in
ai-edge-litert. Layouts: taken from report.json beside the artifact when it lists the file, else
the format's convention (ONNX image tensors NCHW, TFLite NHWC), marked as such."""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from edgepack.errors import LoadError, UnsupportedError
from edgepack.tflite_schema import builtin_names

ONNX_LAYOUTS = {2: "NC", 3: "NCW", 4: "NCHW", 5: "NCDHW"}
TFLITE_LAYOUTS = {2: "NC", 3: "NWC", 4: "NHWC", 5: "NDHWC"}
WEIGHT_DTYPES = ("float32", "float16", "bfloat16", "float64", "int8", "uint8", "int4", "uint4")


def inspect_artifact(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise LoadError(f"{path} not found; pass an .onnx or .tflite file")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        result = _inspect_onnx(path)
    elif suffix == ".tflite":
        result = _inspect_tflite(path)
        result["xnnpack"] = _delegation(path)  # LiteRT loads it: never an op census of a file LiteRT refuses
    elif suffix == ".param":
        from edgepack.runtimes import isolated
        from edgepack.runtimes.ncnn import check_loads

        result = _inspect_ncnn(path)
        isolated.call(check_loads, path, artifact=path, what="ncnn", timeout=120)  # ncnn may crash on a damaged file
    else:
        raise UnsupportedError(f"{path.name}: inspect reads .onnx, .tflite and ncnn .param files")
    _layouts_from_report(path, result)
    from edgepack.runtimes.bench_runner import artifact_files

    size = sum(f.stat().st_size for f in artifact_files(path) if f.is_file())  # ncnn: .param + .bin
    return {"path": str(path), "size_bytes": size, **result}


def _delegation(path: Path) -> dict | None:
    """XNNPACK partitions and the ops left outside the delegate (edgepack.runtimes.litert_delegation),
    asked in a child process; None when no LiteRT is installed."""
    from edgepack.runtimes.litert import available

    if not available():
        return None
    from edgepack.runtimes import isolated
    from edgepack.runtimes.litert_delegation import delegation

    return isolated.call(delegation, str(path), artifact=path, what="litert", timeout=120)


def _layouts_from_report(path: Path, result: dict) -> None:
    """Use the export's report.json layouts (e.g. a TFLite file kept NCHW with --tflite-nchw-input)."""
    from edgepack.report import report_beside

    _, entry = report_beside(path)
    if entry is None:
        return
    for key in ("inputs", "outputs"):
        known = {d["name"]: d for d in entry.get(key) or []}
        for d in result[key]:
            if d["name"] in known and known[d["name"]].get("layout"):
                d["layout"], d["layout_source"] = known[d["name"]]["layout"], "report.json"


def _io(name: str, shape: list[int] | None, dtype: str, layouts: dict[int, str], quant: dict | None) -> dict:
    layout = layouts.get(len(shape)) if shape else None
    d = {"name": name, "shape": shape, "dtype": dtype, "layout": layout, "layout_source": "convention" if layout else None}
    if quant:
        d.update(quant)
    return d


# ---------------------------------------------------------------- ONNX


def _inspect_onnx(path: Path) -> dict:
    import onnx
    import onnx_ir as ir

    from edgepack.model_stats import node_macs

    from edgepack.check_artifact import check_onnx

    proto = check_onnx(path)
    try:
        proto = onnx.shape_inference.infer_shapes(proto)
        model = ir.from_proto(proto)
    except Exception as exc:  # noqa: BLE001  (protobuf and onnx raise several types for a bad file)
        raise LoadError(f"{path.name} is not a readable ONNX model: {str(exc).splitlines()[0][:200]}") from None
    graph = model.graph
    qparams = {"DequantizeLinear", "QuantizeLinear"}
    scale_inputs = {id(node.inputs[i]) for node in graph for i in (1, 2) if node.op_type in qparams and len(node.inputs) > i}
    params = 0
    for value in graph.initializers.values():
        tensor = value.const_value
        if tensor is None or id(value) in scale_inputs or not (value.uses() or value.is_graph_output()):
            continue
        dtype = tensor.dtype.numpy().name
        consumed_by_dq = any(user.op_type == "DequantizeLinear" for user, _ in value.uses())
        if dtype in WEIGHT_DTYPES or (dtype == "int32" and consumed_by_dq):  # int32: a quantized bias
            params += math.prod(tensor.shape)

    def quant_of(value: ir.Value, as_output: bool) -> dict | None:
        """Scale and zero point when the graph (de)quantizes this input/output directly."""
        nodes = [u for u, _ in value.uses()] if not as_output else [value.producer()]
        for node in nodes:
            if node is not None and node.op_type in qparams and len(node.inputs) > 1:
                scale = node.inputs[1].const_value if node.inputs[1] is not None else None
                zp = node.inputs[2].const_value if len(node.inputs) > 2 and node.inputs[2] is not None else None
                if scale is not None:
                    return {"scale": scale.numpy().tolist(), "zero_point": zp.numpy().tolist() if zp is not None else 0,
                            "quantized_by": node.op_type}
        return None

    def io(values, as_output: bool) -> list[dict]:
        out = []
        for v in values:
            shape = [d if isinstance(d, int) else -1 for d in v.shape] if v.shape is not None else None
            out.append(_io(v.name, shape, v.dtype.numpy().name if v.dtype is not None else "unknown", ONNX_LAYOUTS,
                           quant_of(v, as_output)))
        return out

    ops = Counter(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}" for node in graph)
    dtypes = Counter(v.const_value.dtype.numpy().name for v in graph.initializers.values() if v.const_value is not None)
    return {
        "format": "onnx",
        "opset": model.opset_imports.get("", None),
        "producer": f"{model.producer_name or ''} {model.producer_version or ''}".strip() or None,
        "ops": dict(sorted(ops.items())),
        "nodes": sum(ops.values()),
        "params": int(params),
        "macs": int(sum(node_macs(node) for node in graph)),
        "constants_by_dtype": dict(sorted(dtypes.items())),
        "inputs": io(graph.inputs, False),
        "outputs": io(graph.outputs, True),
    }


# ---------------------------------------------------------------- TFLite


def _inspect_tflite(path: Path) -> dict:
    try:
        from ai_edge_litert import schema_py_generated as s
    except ImportError:
        raise UnsupportedError("reading .tflite needs the schema in ai-edge-litert (pip install ai-edge-litert)") from None
    from edgepack.check_artifact import check_tflite

    data = check_tflite(path)
    try:
        model = s.ModelT.InitFromPackedBuf(data, 0)
    except Exception as exc:  # noqa: BLE001  (flatbuffers raises several types for a bad buffer)
        raise LoadError(f"{path.name} is not a readable TFLite flatbuffer: {exc}") from None
    op_names = builtin_names()
    type_names = {v: k.lower() for k, v in vars(s.TensorType).items() if not k.startswith("_")}
    codes = [op_names.get(max(c.builtinCode, c.deprecatedBuiltinCode), f"CUSTOM:{(c.customCode or b'').decode(errors='replace')}")
             for c in model.operatorCodes]
    sub = model.subgraphs[0]
    tensors = sub.tensors
    buffers = model.buffers

    def is_const(i: int) -> bool:
        t = tensors[i]
        return t.buffer > 0 and buffers[t.buffer].data is not None and len(buffers[t.buffer].data) > 0

    def shape(i: int) -> list[int]:
        return [int(x) for x in (tensors[i].shape if tensors[i].shape is not None else [])]

    from edgepack.devices.layers import layers_from_tflite

    ops: Counter = Counter()
    bias_like: set[int] = set()
    for op in sub.operators:
        name = codes[op.opcodeIndex]
        ops[name] += 1
        ins = list(op.inputs) if op.inputs is not None else []
        if name in ("CONV_2D", "FULLY_CONNECTED", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV") and len(ins) > 2 and ins[2] >= 0:
            bias_like.add(ins[2])
    macs = layers_from_tflite(data, source=path.name).macs  # the estimator's count: one place
    params = 0
    const_dtypes: Counter = Counter()
    for i, t in enumerate(tensors):
        if not is_const(i):
            continue
        dtype = type_names.get(t.type, str(t.type))
        const_dtypes[dtype] += 1
        if dtype in WEIGHT_DTYPES or (dtype == "int32" and i in bias_like):
            params += math.prod(shape(i))

    def io(indices) -> list[dict]:
        out = []
        for i in indices if indices is not None else []:
            t = tensors[i]
            sig = t.shapeSignature if t.shapeSignature is not None and len(t.shapeSignature) else t.shape
            q = t.quantization
            quant = None
            if q is not None and q.scale is not None and len(q.scale):
                quant = {"scale": [float(x) for x in q.scale] if len(q.scale) > 1 else float(q.scale[0]),
                         "zero_point": [int(x) for x in q.zeroPoint] if len(q.zeroPoint) > 1 else int(q.zeroPoint[0])}
            out.append(_io(t.name.decode() if isinstance(t.name, bytes) else t.name,
                           [int(x) for x in sig] if sig is not None else None, type_names.get(t.type, str(t.type)),
                           TFLITE_LAYOUTS, quant))
        return out

    return {
        "format": "tflite",
        "schema_version": int(model.version),
        "ops": dict(sorted(ops.items())),
        "nodes": sum(ops.values()),
        "params": int(params),
        "macs": int(macs),
        "constants_by_dtype": dict(sorted(const_dtypes.items())),
        "subgraphs": len(model.subgraphs),
        "inputs": io(sub.inputs),
        "outputs": io(sub.outputs),
    }


# ---------------------------------------------------------------- ncnn


def _ncnn_params(layer: str, kv: dict[str, str]) -> int:
    """Weights + biases of the layers that hold them, from the .param's own size fields."""
    get = lambda k: _int(kv.get(k, "0"))
    if layer in ("Convolution", "ConvolutionDepthWise", "Deconvolution", "DeconvolutionDepthWise", "Convolution1D"):
        return get("6") + (get("0") if get("5") else 0)
    if layer == "InnerProduct":
        return get("2") + (get("0") if get("1") else 0)
    if layer == "MemoryData":
        return max(get("0"), 1) * max(get("1"), 1) * max(get("2"), 1)
    return 0


def _int(value: str) -> int:
    """An ncnn integer parameter (the .param grammar also allows 1e3 or 2.0 there)."""
    number = float(value)
    return int(number) if math.isfinite(number) else 0


def _inspect_ncnn(path: Path) -> dict:
    """A text .param: op census, params from each layer's size fields, inputs from Input layers.
    MACs need the blob shapes, which a .param does not store: None."""
    from edgepack.check_artifact import check_ncnn_param

    ops: Counter = Counter()
    params = 0
    inputs, produced, consumed = [], [], set()
    for layer, _, bottoms, tops, tokens in check_ncnn_param(path):
        kv = dict(x.split("=", 1) for x in tokens)
        ops[layer] += 1
        params += _ncnn_params(layer, kv)
        consumed.update(bottoms)
        produced.extend(tops)
        if layer == "Input":
            dims = [_int(kv[k]) for k in ("2", "1", "0") if _int(kv.get(k, "0")) > 0]  # c, h, w
            inputs += [_io(t, [1, *dims] if dims else None, "float32", ONNX_LAYOUTS, None) for t in tops]
    outputs = [_io(b, None, "float32", ONNX_LAYOUTS, None) for b in produced if b not in consumed and b not in
               {d["name"] for d in inputs}]
    return {"format": "ncnn", "ops": dict(sorted(ops.items())), "nodes": sum(ops.values()) - ops.get("Input", 0),
            "params": int(params), "macs": None, "constants_by_dtype": {},
            "weights_file": path.with_suffix(".bin").name if path.with_suffix(".bin").is_file() else None,
            "inputs": inputs, "outputs": outputs}


def render_inspect(info: dict, console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    console.print(f"[bold]{escape(Path(info['path']).name)}[/]: {info['format']}, {info['size_bytes'] / 1024:.1f} KB; "
                  f"{info['params'] / 1e6:.3f} M params, "
                  + ("MACs unknown (no shapes stored)" if info["macs"] is None else f"{info['macs'] / 1e6:.2f} M MACs")
                  + f", {info['nodes']} ops")
    table = Table(title_justify="left")
    for col in ("", "name", "shape", "dtype", "layout", "scale", "zero point"):
        table.add_column(col)
    for kind in ("inputs", "outputs"):
        for d in info[kind]:
            layout = (d["layout"] or "-") + (" (convention)" if d.get("layout_source") == "convention" else "")
            table.add_row(kind[:-1], escape(d["name"]), str(d["shape"]), d["dtype"], layout,
                          str(d.get("scale", "-")), str(d.get("zero_point", "-")))
    console.print(table)
    console.print("ops: " + ", ".join(f"{k} {v}" for k, v in info["ops"].items()), markup=False)
    if info.get("format") == "tflite" and "xnnpack" in info:
        from edgepack.runtimes.litert_delegation import summary

        console.print("XNNPACK: " + summary(info["xnnpack"]), markup=False)
        for row in (info["xnnpack"] or {}).get("outside", []):
            console.print(f"  outside the delegate: node {row['index']} {row['op']}: {row['why']}", markup=False)
    if info["constants_by_dtype"]:
        console.print("constants by dtype: " + ", ".join(f"{k} {v}" for k, v in info["constants_by_dtype"].items()),
                      markup=False)
