"""The layer table the estimator works on: one row per compute op with its MACs, weight and
activation element counts, kernel geometry and the activation tensors it reads and writes.

Read from an ONNX graph (shape-inferred with onnx's own `infer_shapes`) or from a TFLite flatbuffer
(with the schema module LiteRT ships, `ai_edge_litert.schema_py_generated`). Written here because
no library gives a per-layer table in a runtime-neutral form: onnx-tool and nn-Meter do parts of
it but pull in their own dependency trees; this is ~200 lines and needs only onnx (or LiteRT).

Element counts, not bytes: precision is applied by the estimator, so one table serves fp32, fp16
and int8 artifacts of the same graph. Ops that only rename a buffer (Reshape, Flatten, Squeeze,
Identity, Dropout, Q/DQ pairs) are not layers: their output is an alias of their input."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgepack.errors import UsageError
from edgepack.tflite_schema import builtin_names

# ONNX op type -> layer kind
ACTIVATIONS = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSwish", "HardSigmoid", "Tanh", "PRelu", "Elu", "Selu",
               "Softplus", "Mish", "Gelu", "Erf", "BatchNormalization", "Exp", "Log", "Sqrt", "Neg", "Abs",
               "Reciprocal", "Pow", "Softmax", "LogSoftmax", "InstanceNormalization", "LayerNormalization"}
ELTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Greater", "Less"}
POOLS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LRN", "ReduceMean", "ReduceMax", "ReduceSum"}
ALIASES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "QuantizeLinear", "DequantizeLinear",
           "Shape", "Constant", "ConstantOfShape", "Size", "Range"}


@dataclass(frozen=True)
class Layer:
    name: str
    op: str  # the source op type (ONNX op type or TFLite builtin name)
    kind: str  # conv | dwconv | fc | matmul | pool | eltwise | act | copy
    inputs: tuple[str, ...]  # activation tensors read (not weights)
    outputs: tuple[str, ...]
    macs: int = 0
    weight_elems: int = 0
    kernel: int = 1  # kh * kw
    stride: int = 1
    cin: int = 0  # input channels per group (the GEMM reduction is cin * kernel)
    cout: int = 0
    groups: int = 1
    out_hw: int = 1  # output spatial size (pixels)


@dataclass
class LayerTable:
    layers: list[Layer]
    tensors: dict[str, int]  # activation tensor -> elements
    inputs: list[str]
    outputs: list[str]
    source: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def weight_elems(self) -> int:
        return sum(layer.weight_elems for layer in self.layers)

    def to_json(self) -> dict:
        return {"source": self.source, "inputs": self.inputs, "outputs": self.outputs, "tensors": self.tensors,
                "notes": self.notes, "layers": [asdict(layer) for layer in self.layers]}

    @classmethod
    def from_json(cls, data: dict) -> LayerTable:
        layers = [Layer(**{**row, "inputs": tuple(row["inputs"]), "outputs": tuple(row["outputs"])}) for row in data["layers"]]
        return cls(layers, dict(data["tensors"]), list(data["inputs"]), list(data["outputs"]), data.get("source", ""),
                   list(data.get("notes", [])))


def read_layers(path: Path, input_shapes: dict[str, tuple[int, ...]] | None = None, *, ask_runtime: bool = True) -> LayerTable:
    """The layer table of an .onnx, .tflite or ncnn .param file (.param needs `input_shapes`).
    `ask_runtime`: also have LiteRT accept a .tflite (in a child process); off when the runtime
    has just verified the file (export)."""
    from edgepack.check_artifact import ask_litert, check_ncnn_param, check_onnx, check_tflite

    suffix = path.suffix.lower()
    try:
        if suffix == ".param":
            from edgepack.runtimes import isolated

            check_ncnn_param(path)  # ncnn runs the net to learn blob shapes: in a child, it may crash
            return isolated.call(layers_from_ncnn, path, input_shapes or {}, artifact=path, what="ncnn", timeout=300)
        if suffix == ".onnx":
            return layers_from_onnx(check_onnx(path), source=path.name)
        if suffix == ".tflite":
            table = layers_from_tflite(check_tflite(path), source=path.name)
            if ask_runtime:
                ask_litert(path)
            return table
    except (IndexError, KeyError, ValueError, TypeError, ZeroDivisionError, AttributeError, OverflowError) as exc:
        # the checks above passed, but the graph is still inconsistent (e.g. an op with fewer inputs than it needs)
        raise UsageError(f"cannot estimate {path.name}: its graph is inconsistent ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:150] if str(exc) else ''}); the file may be damaged: export it again") from None
    raise UsageError(f"cannot estimate {path.name}: the file is {suffix or 'without suffix'}; "
                     "edgepack estimate reads .onnx, .tflite and ncnn .param artifacts")


# ---------------------------------------------------------------- ONNX


def layers_from_onnx(model: Any, source: str = "") -> LayerTable:
    """Layer table of an onnx.ModelProto (shapes inferred here; inputs must have static shapes)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    graph = model.graph
    shapes: dict[str, list[int]] = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    consts: dict[str, list[int]] = {t.name: list(t.dims) for t in graph.initializer}
    for node in graph.node:  # constants and whatever is computed only from constants (Q/DQ of weights)
        if node.op_type == "Constant":
            value = next((a for a in node.attribute if a.name == "value"), None)
            consts[node.output[0]] = list(numpy_helper.to_array(value.t).shape) if value is not None else []
        elif node.input and all(i in consts or i == "" for i in node.input):
            for out in node.output:
                consts[out] = shapes.get(out) or consts.get(node.input[0], [])
    alias: dict[str, str] = {}
    root = lambda name: alias.get(name, name)
    tensors: dict[str, int] = {}
    layers: list[Layer] = []
    graph_inputs = [i.name for i in graph.input if i.name not in consts]
    for name in graph_inputs:
        tensors[name] = _elems(shapes.get(name))
    for idx, node in enumerate(graph.node):
        if node.output and node.output[0] in consts:
            continue
        acts = [root(i) for i in node.input if i and i not in consts]
        if node.op_type in ALIASES:
            if acts:
                for out in node.output:
                    alias[out] = acts[0]
            continue
        outs = [o for o in node.output if o]
        for out in outs:
            tensors[out] = _elems(shapes.get(out))
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        layers.append(_onnx_layer(node, idx, acts, outs, attrs, shapes, consts))
    outputs = [root(o.name) for o in graph.output]
    unknown = [t for t, n in tensors.items() if n < 0]
    if unknown:
        raise UsageError(f"cannot estimate {source or 'the model'}: tensor shapes are not static ({unknown[:3]}); "
                         "export with a fixed --input-shape")
    return LayerTable(layers, tensors, graph_inputs, outputs, source)


def _onnx_layer(node: Any, idx: int, acts: list[str], outs: list[str], attrs: dict, shapes: dict[str, list[int]],
                consts: dict[str, list[int]]) -> Layer:
    name = node.name or f"{node.op_type}_{idx}"
    op = node.op_type
    out = shapes.get(outs[0]) or [] if outs else []
    base = {"name": name, "op": op, "inputs": tuple(acts), "outputs": tuple(outs)}
    if op in ("Conv", "ConvTranspose", "QLinearConv", "ConvInteger"):
        w = consts.get(node.input[3 if op == "QLinearConv" else 1]) or shapes.get(node.input[1]) or []
        if len(w) < 3 or len(out) < 3:
            return Layer(kind="conv", **base)
        groups = int(attrs.get("group", 1))
        kernel = math.prod(w[2:])
        strides = attrs.get("strides") or [1]
        out_hw = math.prod(out[2:])
        if op == "ConvTranspose":
            x = shapes.get(node.input[0]) or out
            macs = math.prod(x) * math.prod(w[1:])
            cin, cout = w[0] // groups, w[1] * groups
        else:
            macs = math.prod(out) * math.prod(w[1:])
            cin, cout = w[1], w[0]
        kind = "dwconv" if groups > 1 and cin == 1 else "conv"
        return Layer(kind=kind, macs=int(macs), weight_elems=math.prod(w), kernel=kernel, stride=int(max(strides)),
                     cin=int(cin), cout=int(cout), groups=groups, out_hw=int(out_hw), **base)
    if op in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"):
        weight_in = [i for i in node.input[:2] if i in consts]
        a = shapes.get(node.input[0]) or []
        k = (a[0] if op == "Gemm" and attrs.get("transA", 0) else a[-1]) if a else 0
        macs = _elems(out) * k if out else 0
        if weight_in:
            w = consts[weight_in[0]]
            return Layer(kind="fc", macs=int(macs), weight_elems=math.prod(w), cin=int(k), cout=int(out[-1]) if out else 0,
                         **base)
        return Layer(kind="matmul", macs=int(macs), cin=int(k), cout=int(out[-1]) if out else 0, **base)
    kind = ("act" if op in ACTIVATIONS else "eltwise" if op in ELTWISE else "pool" if op in POOLS else "copy")
    weight = sum(math.prod(consts[i]) for i in node.input if i in consts and op in ("PRelu", "BatchNormalization"))
    return Layer(kind=kind, weight_elems=int(weight), out_hw=int(math.prod(out[2:])) if len(out) > 2 else 1, **base)


def _elems(shape: list[int] | None) -> int:
    if not shape or any(d <= 0 for d in shape):
        return -1 if shape is None or any(d <= 0 for d in shape) else 1
    return int(math.prod(shape))


# ---------------------------------------------------------------- TFLite

_TFLITE_KIND = {
    "CONV_2D": "conv", "DEPTHWISE_CONV_2D": "dwconv", "TRANSPOSE_CONV": "conv", "FULLY_CONNECTED": "fc",
    "BATCH_MATMUL": "matmul", "ADD": "eltwise", "SUB": "eltwise", "MUL": "eltwise", "DIV": "eltwise",
    "MAXIMUM": "eltwise", "MINIMUM": "eltwise", "MAX_POOL_2D": "pool", "AVERAGE_POOL_2D": "pool", "MEAN": "pool",
    "SUM": "pool", "REDUCE_MAX": "pool", "RELU": "act", "RELU6": "act", "RELU_N1_TO_1": "act", "LEAKY_RELU": "act",
    "LOGISTIC": "act", "HARD_SWISH": "act", "TANH": "act", "PRELU": "act", "SOFTMAX": "act", "EXP": "act",
}
_TFLITE_ALIAS = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "QUANTIZE", "DEQUANTIZE"}


def layers_from_tflite(buffer: bytes, source: str = "") -> LayerTable:
    """Layer table of a TFLite flatbuffer (first subgraph). Activations fused into an op
    (fused_activation_function) are not separate layers, exactly as the interpreter runs them.
    DEQUANTIZE of a constant (fp16 weights) is a load-time step, not a layer."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # pragma: no cover - LiteRT has wheels for Linux x86_64/aarch64 and macOS arm64 only
        raise UsageError("reading .tflite needs ai-edge-litert (pip install ai-edge-litert); "
                         "or estimate the .onnx artifact of the same export") from None
    model = schema.Model.GetRootAs(buffer, 0)
    names = builtin_names()
    graph = model.Subgraphs(0)

    def tensor(i: int) -> tuple[str, list[int], bool]:
        t = graph.Tensors(i)
        shape = [int(d) for d in t.ShapeAsNumpy()] if t.ShapeLength() else []
        buf = model.Buffers(t.Buffer())
        const = buf is not None and (buf.DataLength() > 0 or buf.Size() > 0)
        return t.Name().decode(), shape, const

    consts: set[int] = set()
    for i in range(graph.TensorsLength()):
        if tensor(i)[2]:
            consts.add(i)
    alias: dict[str, str] = {}
    root = lambda name: alias.get(name, name)
    tensors: dict[str, int] = {}
    inputs = [tensor(int(i))[0] for i in graph.InputsAsNumpy()]
    for i in graph.InputsAsNumpy():
        tensors[tensor(int(i))[0]] = math.prod(tensor(int(i))[1])
    layers: list[Layer] = []
    for idx in range(graph.OperatorsLength()):
        op = graph.Operators(idx)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        opname = names.get(builtin, f"OP_{builtin}")
        ins = [int(i) for i in op.InputsAsNumpy() if i >= 0] if op.InputsLength() else []
        outs = [int(i) for i in op.OutputsAsNumpy()]
        if all(i in consts for i in ins):  # a constant computed at load time (fp16 weight DEQUANTIZE)
            consts.update(outs)
            continue
        act_in = [root(tensor(i)[0]) for i in ins if i not in consts]
        out_names = [tensor(i)[0] for i in outs]
        if opname in _TFLITE_ALIAS:
            for o in out_names:
                alias[o] = act_in[0]
            continue
        for i in outs:
            tensors[tensor(i)[0]] = math.prod(tensor(i)[1])
        base = {"name": f"{opname.lower()}_{idx}", "op": opname, "inputs": tuple(act_in), "outputs": tuple(out_names)}
        kind = _TFLITE_KIND.get(opname, "copy")
        out_shape = tensor(outs[0])[1]
        if kind in ("conv", "dwconv") and len(ins) > 1:
            w = tensor(ins[1])[1]  # CONV_2D: [O, H, W, I]; DEPTHWISE: [1, H, W, C]; TRANSPOSE_CONV weights are input 1 too
            if opname == "TRANSPOSE_CONV":
                w = tensor(ins[1])[1]
                x = tensor(ins[2])[1]
                macs = math.prod(x) * w[0] * w[1] * w[2]
                layers.append(Layer(kind="conv", macs=macs, weight_elems=math.prod(w), kernel=w[1] * w[2], cin=x[-1],
                                    cout=w[0], out_hw=math.prod(out_shape[1:3]), **base))
                continue
            x = tensor(ins[0])[1]
            kernel = w[1] * w[2]
            stride = max(1, round(x[1] / out_shape[1])) if len(x) == 4 and out_shape[1] else 1
            out_hw = math.prod(out_shape[1:3])
            if kind == "dwconv":
                layers.append(Layer(kind="dwconv", macs=out_hw * out_shape[3] * kernel, weight_elems=math.prod(w),
                                    kernel=kernel, stride=stride, cin=1, cout=out_shape[3], groups=x[3], out_hw=out_hw, **base))
            else:
                cin = w[3]
                groups = max(1, x[3] // cin)
                layers.append(Layer(kind="dwconv" if groups > 1 and cin == 1 else "conv",
                                    macs=out_hw * w[0] * kernel * cin, weight_elems=math.prod(w), kernel=kernel,
                                    stride=stride, cin=cin, cout=w[0], groups=groups, out_hw=out_hw, **base))
        elif kind == "fc" and len(ins) > 1:
            w = tensor(ins[1])[1]
            rows = math.prod(out_shape[:-1]) if out_shape else 1
            layers.append(Layer(kind="fc", macs=rows * w[0] * w[1], weight_elems=math.prod(w), cin=w[1], cout=w[0], **base))
        elif kind == "matmul":
            a = tensor(ins[0])[1]
            layers.append(Layer(kind="matmul", macs=math.prod(out_shape) * a[-1], cin=a[-1], cout=out_shape[-1], **base))
        else:
            out_hw = math.prod(out_shape[1:3]) if len(out_shape) == 4 else 1
            layers.append(Layer(kind=kind, out_hw=out_hw, **base))
    outputs = [root(tensor(int(i))[0]) for i in graph.OutputsAsNumpy()]
    return LayerTable(layers, tensors, inputs, outputs, source)


# ---------------------------------------------------------------- ncnn

_NCNN_KIND = {
    "Convolution": "conv", "ConvolutionDepthWise": "dwconv", "Deconvolution": "conv", "DeconvolutionDepthWise": "dwconv",
    "InnerProduct": "fc", "Gemm": "matmul", "MatMul": "matmul", "Pooling": "pool", "Reduction": "pool", "LRN": "pool",
    "BinaryOp": "eltwise", "Eltwise": "eltwise", "ReLU": "act", "Clip": "act", "Sigmoid": "act", "HardSwish": "act",
    "HardSigmoid": "act", "Swish": "act", "Mish": "act", "TanH": "act", "PReLU": "act", "ELU": "act", "GELU": "act",
    "Softmax": "act", "BatchNorm": "act", "Scale": "act", "UnaryOp": "act", "LayerNorm": "act",
}
_NCNN_ALIAS = {"Split", "Noop", "Dropout", "Flatten", "Reshape", "Quantize", "Dequantize", "Requantize"}


def _ncnn_params(tokens: list[str]) -> dict[int, list[float]]:
    """`0=16 1=3 -23310=2,8,16`: key -> values (an array key is -23300 - key)."""
    params: dict[int, list[float]] = {}
    for token in tokens:
        key, _, value = token.partition("=")
        k = int(key)
        values = [float(v) for v in value.split(",")]
        params[-k - 23300 if k <= -23300 else k] = values[1:] if k <= -23300 else values
    return params


def _declared_input_shapes(rows: list) -> dict[str, tuple[int, ...]]:
    """Shapes an Input layer declares (`0=w 1=h 2=c`, as edgepack's ncnn exporter writes them), NCHW
    with batch 1; inputs that declare none are left out."""
    out = {}
    for kind, _, _, tops, params in rows:
        if kind == "Input" and params.get(0):
            dims = [int(params[k][0]) for k in (2, 1, 0) if params.get(k)]  # c, h, w
            out[tops[0]] = (1, *dims)
    return out


def layers_from_ncnn(path: Path, input_shapes: dict[str, tuple[int, ...]], empty_weights: bool = False) -> LayerTable:
    """Layer table of an ncnn .param (+ its .bin next to it). A .param stores no blob shapes: ncnn
    itself runs the net once on zeros (input shape from `input_shapes`, NCHW) and every blob is
    extracted for its shape. ncnn's graph is already fused (activation_type in the conv).
    `empty_weights`: no .bin, zero weights (as ncnn's benchncnn runs its benchmark graphs)."""
    try:
        import ncnn
    except ImportError:
        raise UsageError("reading an ncnn .param needs the ncnn package (pip install ncnn); "
                         "or estimate the .onnx of the same export with --runtime ncnn") from None
    import numpy as np

    lines = [line.split() for line in path.read_text().splitlines()[2:] if line.strip()]
    rows = [(t[0], t[1], t[4:4 + int(t[2])], t[4 + int(t[2]):4 + int(t[2]) + int(t[3])],
             _ncnn_params(t[4 + int(t[2]) + int(t[3]):])) for t in lines]
    inputs = [tops[0] for kind, _, _, tops, _ in rows if kind == "Input"]
    input_shapes = {**_declared_input_shapes(rows), **dict(input_shapes or {})}
    missing = [name for name in inputs if name not in input_shapes and len(input_shapes) != 1]
    if missing or not input_shapes:
        raise UsageError(f"{path.name} does not store its input shape: pass --input-shape (e.g. 1x3x224x224), "
                         "or keep the artifact next to its export's report.json")
    net = ncnn.Net()
    net.opt.lightmode = False
    net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = net.opt.use_fp16_packed = False
    bin_path = path.with_suffix(".bin")
    if empty_weights:
        if net.load_param(str(path)) != 0 or net.load_model(ncnn.DataReaderFromEmpty()) != 0:
            raise UsageError(f"ncnn cannot load {path.name}")
    elif net.load_param(str(path)) != 0 or not bin_path.is_file() or net.load_model(str(bin_path)) != 0:
        raise UsageError(f"ncnn cannot load {path.name} with {bin_path.name}; both files of the export are needed")
    ex = net.create_extractor()
    shapes = list(input_shapes.values())
    for i, name in enumerate(inputs):
        shape = input_shapes.get(name, shapes[min(i, len(shapes) - 1)])
        ex.input(name, ncnn.Mat(np.zeros(shape[1:], dtype=np.float32)))
    tensors: dict[str, int] = {}
    alias: dict[str, str] = {}
    layers: list[Layer] = []
    for kind, name, bottoms, tops, params in rows:
        if kind == "Input":
            tensors[tops[0]] = int(np.prod(input_shapes.get(tops[0], shapes[0])))
            continue
        acts = [alias.get(b, b) for b in bottoms]
        if kind in _NCNN_ALIAS:
            for top in tops:
                alias[top] = acts[0]
            continue
        dims = []
        for top in tops:
            _, mat = ex.extract(top)
            arr = np.array(mat)
            tensors[top] = int(arr.size)
            dims.append(arr.shape)
        out = tensors[tops[0]]
        base = {"name": name, "op": kind, "inputs": tuple(acts), "outputs": tuple(tops)}
        layer_kind = _NCNN_KIND.get(kind, "copy")
        if layer_kind in ("conv", "dwconv", "fc"):
            num_output = int(params.get(0, [0])[0])
            weights = int(params.get(2 if kind == "InnerProduct" else 6, [0])[0])
            kw = int(params.get(1, [1])[0])
            kernel = 1 if kind == "InnerProduct" else kw * int(params.get(11, [kw])[0])
            per_output = weights // max(num_output, 1)  # cin/group x kernel
            groups = int(params.get(7, [1])[0]) if "DepthWise" in kind else 1
            cin = per_output // kernel
            if layer_kind == "dwconv" and cin != 1:
                layer_kind = "conv"
            # a deconvolution multiplies every input element by its kernel for each output channel of its group
            macs = tensors[acts[0]] * num_output * kernel // groups if kind.startswith("Deconvolution") else out * per_output
            layers.append(Layer(kind=layer_kind, macs=int(macs), weight_elems=weights, kernel=kernel,
                                stride=int(params.get(3, [1])[0]), cin=cin, cout=num_output, groups=groups,
                                out_hw=int(np.prod(dims[0][1:])) if len(dims[0]) > 1 else 1, **base))
        else:
            layers.append(Layer(kind=layer_kind, out_hw=int(np.prod(dims[0][1:])) if len(dims[0]) > 1 else 1, **base))
    outputs = [t for _, _, _, tops, _ in rows for t in tops if t.startswith("out")] or [rows[-1][3][0]]
    return LayerTable(layers, tensors, inputs, outputs, path.name)


def save_tables(tables: dict[str, LayerTable], path: Path) -> None:
    from edgepack.fsutil import atomic_write_bytes

    text = json.dumps({k: v.to_json() for k, v in sorted(tables.items())}, separators=(",", ":")) + "\n"
    atomic_write_bytes(path, text.encode())


def load_tables(path: Path) -> dict[str, LayerTable]:
    return {k: LayerTable.from_json(v) for k, v in json.loads(path.read_text()).items()}
