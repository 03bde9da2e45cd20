"""ncnn exporter: the processed ONNX graph (BatchNorm folded, pruned channels removed) converted by
pnnx (the converter ncnn ships, from the `pnnx` wheel) into an ncnn `.param` + `.bin`.

pnnx's executable is run on the ONNX file in a temporary folder (it writes half a dozen side files:
pnnx.param, .py, .onnx); only the ncnn `.param`/`.bin` are kept, written atomically beside each
other. pnnx names the blobs `in0`, `out0`, `1`, `2`, ...: the graph's inputs and outputs are renamed
back to their ONNX names in the `.param` (when a name is a valid ncnn blob name), so the report's
input/output names are the names a device program passes to `Extractor.input/extract`; the mapping
from pnnx's names is recorded. Weights are stored fp16 by default (pnnx `fp16=1`: half the file; ncnn
computes in fp16 where the CPU supports it, else widens to fp32 at load) or fp32 (`fp16=0`).

The `.param` reader/writer (`NcnnParam`) is written here because neither wheel exposes one; the int8
pass (quantize_ncnn_int8.py) reuses it."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from edgepack.converters.onnx_checks import transposed_conv_grows
from edgepack.errors import ConversionError, UnsupportedError
from edgepack.fsutil import atomic_path

PARAM_MAGIC = "7767517"
INSTALL_HINT = "pip install 'edgepack[ncnn-export]' (or: pip install pnnx ncnn)"
_PNNX_TYPES = {"float32": "f32", "float16": "f16", "float64": "f64", "int64": "i64", "int32": "i32", "int8": "i8",
               "uint8": "u8", "bool": "bool"}


# ---------------------------------------------------------------- .param text format


@dataclass
class NcnnLayer:
    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: list[tuple[str, str]] = field(default_factory=list)  # (key, value text), order kept

    def get(self, key: int, default: int = 0) -> int:
        for k, v in self.params:
            if k == str(key):
                return int(float(v))
        return default

    def set(self, key: int, value: int) -> None:
        for i, (k, _) in enumerate(self.params):
            if k == str(key):
                self.params[i] = (k, str(value))
                return
        self.params.append((str(key), str(value)))

    def line(self) -> str:
        head = f"{self.type:<24} {self.name:<24} {len(self.bottoms)} {len(self.tops)}"
        return " ".join([head, *self.bottoms, *self.tops, *(f"{k}={v}" for k, v in self.params)])


@dataclass
class NcnnParam:
    layers: list[NcnnLayer]

    @classmethod
    def parse(cls, text: str) -> NcnnParam:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if not lines or lines[0].strip() != PARAM_MAGIC:
            raise ConversionError(f"not an ncnn text .param (first line {lines[0][:20] if lines else ''!r}, expected {PARAM_MAGIC})")
        layers = []
        for ln in lines[2:]:
            parts = ln.split()
            nb, nt = int(parts[2]), int(parts[3])
            bottoms, tops = parts[4 : 4 + nb], parts[4 + nb : 4 + nb + nt]
            params = [tuple(p.split("=", 1)) for p in parts[4 + nb + nt :]]
            layers.append(NcnnLayer(parts[0], parts[1], bottoms, tops, params))  # type: ignore[arg-type]
        return cls(layers)

    def text(self) -> str:
        blobs = {b for layer in self.layers for b in layer.bottoms + layer.tops}
        return "\n".join([PARAM_MAGIC, f"{len(self.layers)} {len(blobs)}", *(layer.line() for layer in self.layers)]) + "\n"

    def census(self) -> dict[str, int]:
        return dict(Counter(layer.type for layer in self.layers))

    def rename_blob(self, old: str, new: str) -> None:
        for layer in self.layers:
            if layer.type == "Input" and layer.name == old:
                layer.name = new
            layer.bottoms = [new if b == old else b for b in layer.bottoms]
            layer.tops = [new if t == old else t for t in layer.tops]


# ---------------------------------------------------------------- export


@dataclass
class NcnnExport:
    files: list[Path]
    census: dict[str, int]
    blob_names: dict[str, str]  # ONNX input/output name -> blob name in the .param
    pnnx_names: dict[str, str]  # ONNX input/output name -> pnnx's original blob name


def pnnx_executable() -> Path:
    """The `pnnx` binary inside the pnnx wheel, found without importing the package (which imports
    torch). Raises UnsupportedError with the install command when pnnx or ncnn is missing."""
    spec = importlib.util.find_spec("pnnx")
    exe = None
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            for name in ("pnnx", "pnnx.exe"):
                if (Path(folder) / name).is_file():
                    exe = Path(folder) / name
    missing = [pkg for pkg, ok in (("pnnx", exe is not None), ("ncnn", importlib.util.find_spec("ncnn") is not None)) if not ok]
    if missing:
        raise UnsupportedError(f"--format ncnn needs the optional packages pnnx (converter) and ncnn (runtime, to verify); "
                               f"{' and '.join(missing)} not installed: {INSTALL_HINT}")
    return exe  # type: ignore[return-value]


def export_ncnn(model: ir.Model, path: Path, *, fp16: bool) -> NcnnExport:
    """Convert the processed graph to `path` (.param) and `path.with_suffix('.bin')`."""
    from edgepack.converters.export_onnx import export_onnx

    exe = pnnx_executable()
    why = cannot_represent(model)
    if why:
        raise UnsupportedError(f"ncnn cannot represent this model: {why}; use --format onnx or tflite for it")
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="edgepack-pnnx-") as tmp:
        work = Path(tmp)
        src = work / "model.onnx"
        export_onnx(model, src)
        shapes = ",".join(_shape_arg(v) for v in model.graph.inputs)
        outs = {k: str(work / f"model.{k}") for k in ("ncnnparam", "ncnnbin", "ncnnpy", "pnnxparam", "pnnxbin",
                                                         "pnnxpy", "pnnxonnx")}
        cmd = [str(exe), str(src), f"inputshape={shapes}", "device=cpu", f"fp16={int(fp16)}",
               *(f"{k}={v}" for k, v in outs.items())]
        try:
            proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConversionError(f"pnnx could not run ({exc}); reinstall it: {INSTALL_HINT}") from None
        param_file, bin_file = Path(outs["ncnnparam"]), Path(outs["ncnnbin"])
        if proc.returncode != 0 or not param_file.is_file() or not bin_file.is_file():
            how = f"crashed, signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
            raise ConversionError(f"pnnx failed on the processed ONNX ({how}): {_last_words(proc.stderr + proc.stdout)}; "
                                  f"run `{exe} model.fp32.onnx inputshape={shapes}` on the ONNX artifact for the full log, "
                                  "(export it with --format onnx), or use --format onnx or tflite for this model")
        param = NcnnParam.parse(param_file.read_text())
        _check_layers(param)
        if _fix_reduction_axes(param, model):
            param_file.write_text(param.text())
        _check_runs_in_child(param_file, bin_file, model)
        blob_names, pnnx_names = _rename_io(param, [v.name for v in model.graph.inputs], [v.name for v in model.graph.outputs])
        _declare_input_shapes(param, {blob_names[v.name]: v.shape for v in model.graph.inputs})
        bin_path = path.with_suffix(".bin")
        with atomic_path(bin_path) as tmp_bin:
            os.replace(bin_file, tmp_bin)
        with atomic_path(path) as tmp_param:
            tmp_param.write_text(param.text())
    return NcnnExport([path, bin_path], param.census(), blob_names, pnnx_names)


# ---------------------------------------------------------------- what ncnn cannot hold


_FLOAT = {"FLOAT", "FLOAT16", None}


def cannot_represent(model: ir.Model) -> str | None:
    """Why ncnn cannot hold this graph exactly (None when it can). ncnn's Mats have no batch axis
    (edgepack feeds a batch one item at a time): a value whose leading axis is not a batch of 1, or
    with fewer than 2 or more than 5 axes, has no faithful ncnn form: pnnx drops or misreads that
    axis and the artifact computes something else. Ops whose ncnn kernels differ from ONNX are named."""
    values = [*model.graph.inputs, *model.graph.outputs, *(o for n in model.graph for o in n.outputs if o is not None and o.name)]
    # ONNX LSTM/GRU/RNN (layout 0) hold sequences as [T, batch, C] and Y as [T, directions, batch, H]:
    # pnnx maps those recurrent blocks onto ncnn's LSTM/GRU/RNN layers, batch 1 included (and the
    # artifact is verified against the reference like every other).
    recurrent = any(n.op_type in ("LSTM", "GRU", "RNN") for n in model.graph)
    for v in values:
        if v.shape is None or (v.dtype is not None and v.dtype.name not in _FLOAT):
            continue
        dims = list(v.shape)
        if not all(isinstance(d, int) for d in dims):
            continue
        if not 2 <= len(dims) <= 5:
            return f"{v.name!r} has shape {dims}: ncnn holds 2- to 5-axis tensors whose first axis is a batch of 1"
        sequence_first = recurrent and (dims[1] == 1 or (len(dims) == 4 and dims[2] == 1))
        if dims[0] != 1 and not sequence_first:
            return (f"{v.name!r} has shape {dims}: its leading axis is not a batch of 1 (ncnn has no batch axis: "
                    "it would drop or misread it)")
    from edgepack.converters.channel_rules import match_shuffle

    shuffles = set()  # Reshape -> Transpose(0,2,1,3,4) -> Reshape: pnnx turns it into ncnn's ShuffleChannel
    for node in model.graph:
        found = match_shuffle(node)
        if found is not None:
            shuffles.update(id(n) for n in found[:3])
    for node in model.graph:
        five = [o for o in node.outputs if o is not None and o.shape is not None and len(o.shape) == 5]
        if five and node.op_type in _SHAPE_OPS and id(node) not in shuffles:
            return (f"{node.op_type} node {node.name!r} makes the 5-axis {five[0].name!r}: pnnx maps such reshapes onto "
                    "ncnn's 4-axis Mat wrongly")
        why = _op_limit(node)
        if why:
            return f"{node.op_type} node {node.name!r} {why}"
    return None


_SHAPE_OPS = {"Reshape", "Expand", "Unsqueeze", "Squeeze", "Gather", "MatMul", "Transpose", "Tile", "Concat", "Flatten"}
# Resize that ncnn's Interp computes as ONNX does: (mode, coordinate transform[, nearest rounding])
_NCNN_RESIZE = {("nearest", "asymmetric", "floor"), ("linear", "half_pixel"), ("linear", "pytorch_half_pixel"),
                ("linear", "align_corners"), ("cubic", "half_pixel"), ("cubic", "align_corners")}


def _resize_limit(node: ir.Node) -> str | None:
    attr = node.attributes
    mode = attr.get_string("mode", "nearest")
    coord = attr.get_string("coordinate_transformation_mode", "half_pixel")
    key = (mode, coord, attr.get_string("nearest_mode", "round_prefer_floor")) if mode == "nearest" else (mode, coord)
    if node.op_type == "Upsample" or len(node.inputs) == 2:
        key = (mode, "asymmetric", "floor") if mode == "nearest" else (mode, "asymmetric")
    if key not in _NCNN_RESIZE or attr.get_int("antialias", 0) or attr.get_int("exclude_outside", 0) or (
            mode == "cubic" and attr.get_float("cubic_coeff_a", -0.75) != -0.75):
        return f"uses mode={mode!r} with {coord!r} coordinates (ncnn's Interp matches ONNX for {sorted(_NCNN_RESIZE)})"
    x, y = node.inputs[0].shape, node.outputs[0].shape
    if x is None or y is None:
        return None
    if coord == "pytorch_half_pixel" and any(o == 1 for o in list(y)[2:]):
        return "resizes an axis to length 1 with pytorch_half_pixel"
    scales_value = node.inputs[1] if len(node.inputs) == 2 else (node.inputs[2] if len(node.inputs) > 2 else None)
    scales = ir.convenience.get_const_tensor(scales_value) if scales_value is not None else None
    if scales is not None and scales.numpy().size == len(x):
        for s, i, o in zip(scales.numpy().reshape(-1), list(x), list(y)):
            if abs(float(s) - o / i) > 1e-6:
                return f"has a scale {float(s):g} that is not output / input size ({o} / {i}); ncnn resizes by the sizes"
    return None


def _pool_limit(node: ir.Node) -> str | None:
    attr = node.attributes
    if node.op_type == "AveragePool" and attr.get_string("auto_pad", "NOTSET") != "NOTSET":
        return "pads with auto_pad SAME (ncnn's average counts the padding differently)"
    x, y = node.inputs[0].shape, node.outputs[0].shape
    if not attr.get_int("ceil_mode", 0) or x is None or y is None:
        return None
    kernel = list(attr.get_ints("kernel_shape", []))
    spatial = len(kernel)
    strides = list(attr.get_ints("strides", [1] * spatial))
    dil = list(attr.get_ints("dilations", [1] * spatial))
    pads = list(attr.get_ints("pads", [0] * 2 * spatial))
    for i in range(spatial):
        span = x[2 + i] + pads[i] + pads[i + spatial] - ((kernel[i] - 1) * dil[i] + 1)
        if y[2 + i] != -(-span // strides[i]) + 1:
            return "has ceil_mode=1 with a last window starting in the padding (ONNX drops it; ncnn keeps it)"
    return None


def _op_limit(node: ir.Node) -> str | None:
    const = ir.convenience.get_const_tensor
    if node.op_type in ("Resize", "Upsample"):
        return _resize_limit(node)
    if node.op_type in ("AveragePool", "MaxPool"):
        return _pool_limit(node)
    if node.op_type in ("Conv", "ConvTranspose") and len(node.inputs) > 1 and const(node.inputs[1]) is None:
        return "has weights computed at run time (ncnn's convolutions take constant weights)"
    if transposed_conv_grows(node):
        return "is larger than its full transposed convolution (output_shape pads it)"
    if node.op_type == "Pow" and const(node.inputs[0]) is None:
        exponent = const(node.inputs[1])
        if exponent is None or not np.isin(exponent.numpy(), (1.0, 2.0, 3.0, 0.5)).all():
            return "raises a run-time base to a power (ncnn's pow is exp(y * log(x)): wrong for x <= 0)"
    if node.op_type == "GridSample":
        mode = node.attributes.get_string("mode", "linear")
        padding = node.attributes.get_string("padding_mode", "zeros")
        if mode not in ("linear", "bilinear") or padding == "reflection":
            return f"uses mode={mode!r}, padding_mode={padding!r} (ncnn matches ONNX only for bilinear with zeros/border)"
    return None


def _check_runs_in_child(param_file: Path, bin_file: Path, model: ir.Model) -> None:
    """Load the converted model in ncnn and run it once on zeros, in a child process: a model that
    crashes ncnn is a conversion error here, not a crash of the export."""
    import json
    import sys

    shapes = json.dumps([list(v.shape)[1:] for v in model.graph.inputs])
    code = ("import json, sys, numpy as np, ncnn\n"
            "net = ncnn.Net(); net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = False\n"
            "assert net.load_param(sys.argv[1]) == 0 and net.load_model(sys.argv[2]) == 0\n"
            "ex = net.create_extractor()\n"
            "for name, shape in zip(net.input_names(), json.loads(sys.argv[3])):\n"
            "    ex.input(name, ncnn.Mat(np.zeros(shape, np.float32)).clone())\n"
            "for name in net.output_names():\n"
            "    ex.extract(name)\n")
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(param_file), str(bin_file), shapes], capture_output=True,
                              text=True, timeout=300, check=False)
    except subprocess.TimeoutExpired:
        raise ConversionError("ncnn hung running the converted model once (5 min); use --format onnx or tflite for it") from None
    if proc.returncode < 0:
        raise ConversionError(f"ncnn crashed running the converted model (signal {-proc.returncode}); "
                              "use --format onnx or tflite for it")


def _last_words(log: str) -> str:
    """The last informative line of pnnx's log: no colour codes, progress lines or runtime warnings."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in log.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#") and "..." not in ln and "[W:" not in ln]
    return (lines[-1] if lines else "no output")[:300]


def _shape_arg(value: ir.Value) -> str:
    if value.shape is None or not all(isinstance(d, int) for d in value.shape):
        raise UnsupportedError(f"input {value.name!r} has no static shape ({value.shape}); pass --input-shape")
    dtype = value.dtype.numpy().name if value.dtype is not None else "float32"
    return "[" + ",".join(str(d) for d in value.shape) + "]" + _PNNX_TYPES.get(dtype, "f32")


def _check_layers(param: NcnnParam) -> None:
    """pnnx writes ops it cannot map to ncnn under their pnnx/torch names; ncnn cannot load those."""
    import ncnn

    unknown = sorted({layer.type for layer in param.layers if ncnn.layer_to_index(layer.type) < 0})
    if unknown:
        raise UnsupportedError(f"pnnx left op(s) that ncnn has no layer for: {', '.join(unknown)}; "
                               "ncnn cannot run this model: use --format onnx or tflite for it")


# ONNX reduction -> ncnn Reduction operation (param 0)
_NCNN_REDUCE = {"ReduceSum": 0, "ReduceSumSquare": 2, "ReduceMean": 3, "ReduceMax": 4, "ReduceMin": 5, "ReduceProd": 6,
                "ReduceL1": 7, "ReduceL2": 8, "ReduceLogSum": 9, "ReduceLogSumExp": 10}


def _fix_reduction_axes(param: NcnnParam, model: ir.Model) -> bool:
    """pnnx (from ONNX) writes a Reduction's axes counting the batch axis, which ncnn's Reduction
    (5=1) does not count, and drops axes given as an input (opset 18): every reduction came out one
    axis off or empty. Each Reduction layer is matched, in order, with the ONNX reduction it came
    from and given that node's axes without the batch axis; a reduction that cannot be matched, or
    that drops the batch axis, is refused. Returns whether a layer changed."""
    layers = [layer for layer in param.layers if layer.type == "Reduction"]
    if not layers:
        return False
    nodes = [n for n in model.graph if n.op_type in _NCNN_REDUCE]
    if len(nodes) != len(layers) or any(layer.get(0, -1) != _NCNN_REDUCE[n.op_type] for layer, n in zip(layers, nodes)):
        raise UnsupportedError(f"ncnn cannot represent this model: pnnx turned its {len(nodes)} ONNX reduction(s) into "
                               f"{len(layers)} ncnn Reduction layer(s) that do not match them one to one, so their axes "
                               "cannot be checked; use --format onnx or tflite for it")
    for layer, node in zip(layers, nodes):
        if node.inputs[0].shape is None:
            raise UnsupportedError(f"ncnn cannot represent this model: {node.op_type} node {node.name!r} reads a value of "
                                   "unknown rank, so its ncnn axes cannot be set; use --format onnx or tflite for it")
        rank = len(node.inputs[0].shape)
        axes = _reduce_axes(node, rank)
        keep = node.attributes.get_int("keepdims", 1)
        if 0 in axes and (not keep or axes == [0]):
            raise UnsupportedError(f"ncnn cannot represent this model: {node.op_type} node {node.name!r} reduces the batch "
                                   "axis (ncnn has none); use --format onnx or tflite for it")
        kept = [a - 1 for a in axes if a != 0]
        layer.params = [(k, v) for k, v in layer.params if k not in ("1", "3", "-23303", "4", "5")]
        layer.params += [("1", "0"), ("-23303", ",".join(map(str, [len(kept), *kept]))), ("4", str(keep)), ("5", "1")]
    return True


def _reduce_axes(node: ir.Node, rank: int) -> list[int]:
    """The axes an ONNX reduction reduces (attribute, or the axes input from opset 18), non-negative."""
    given = node.attributes.get_ints("axes", None)
    if given is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        tensor = ir.convenience.get_const_tensor(node.inputs[1])
        if tensor is None:
            raise UnsupportedError(f"ncnn cannot represent this model: {node.op_type} node {node.name!r} has axes "
                                   "computed at run time; use --format onnx or tflite for it")
        given = tensor.numpy().reshape(-1).tolist()
    if not given:
        return [] if node.attributes.get_int("noop_with_empty_axes", 0) else list(range(rank))
    return sorted(int(a) % rank for a in given)


def _declare_input_shapes(param: NcnnParam, shapes: dict[str, ir.Shape]) -> None:
    """Write each batch-1 input's shape into its Input layer (0=w 1=h 2=c, ncnn's order without the
    batch axis), so the .param alone says what to feed; pnnx leaves them out."""
    for layer in param.layers:
        shape = shapes.get(layer.tops[0]) if layer.type == "Input" and layer.tops else None
        if shape is None or len(shape) not in (2, 3, 4) or shape[0] != 1 or layer.params:
            continue
        for key, dim in zip((0, 1, 2), reversed(list(shape)[1:])):
            layer.set(key, int(dim))


def _rename_io(param: NcnnParam, inputs: list[str], outputs: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """pnnx numbers the graph inputs in0, in1, ... and outputs out0, ... in ONNX order: give them
    back their ONNX names where ncnn can hold them (no whitespace, < 256 chars, not already a blob)."""
    blobs = {b for layer in param.layers for b in layer.bottoms + layer.tops}
    blob_names, pnnx_names = {}, {}
    for prefix, names in (("in", inputs), ("out", outputs)):
        for i, onnx_name in enumerate(names):
            old = f"{prefix}{i}"
            if old not in blobs:
                raise ConversionError(f"pnnx output has no blob {old!r} for ONNX {('input', 'output')[prefix == 'out']} "
                                      f"{onnx_name!r}; the .param cannot be mapped back to the ONNX names")
            pnnx_names[onnx_name] = old
            ok = onnx_name == old or (onnx_name and len(onnx_name) < 256 and not any(c.isspace() for c in onnx_name)
                                      and "=" not in onnx_name and onnx_name not in blobs)
            new = onnx_name if ok else old
            if new != old:
                param.rename_blob(old, new)
                blobs.discard(old)
                blobs.add(new)
            blob_names[onnx_name] = new
    return blob_names, pnnx_names
