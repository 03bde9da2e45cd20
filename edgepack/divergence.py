"""Compare two ONNX models of one network tensor by tensor, to find the layer that breaks int8.

A is the reference (usually the export's fp32 ONNX), B the model under test (its int8 or fp16
ONNX). Both run in ONNX Runtime on the CPU with graph optimizations off, every float
intermediate tensor exposed as an extra output. Tensors with the same name in both models are
the same tensor: edgepack's exporters keep ONNX tensor names, and ONNX Runtime's QDQ quantizer
keeps the original name for the float output of each quantized node.

A tensor's value in a model is the value its consumers see: when the tensor goes through a
QuantizeLinear -> DequantizeLinear pair (or a Cast to another float type), the value after that
pair. So a row's SQNR includes the rounding of the node's own int8 output, the layer whose output
range cannot be held in int8 (an outlier) is the one blamed, and ONNX Runtime's quantizer removing
a Relu into its output's quantized range still compares like for like. A tensor whose consumers in
A are all one Relu/Clip is compared after that clamp (only those values reach the network; the
quantizer gives such a Conv output the Relu's range, which drops its negatives).

Per node: SQNR in dB with A as the reference (10 log10(sum ref^2 / sum (ref - other)^2), inf when
identical), cosine over the flattened values, max abs error, and `sqnr_drop_db`: the SQNR of the
worst input of the node (a matched tensor or a graph input, as the node sees it) minus the SQNR of
its output, the damage done by that node alone. Weights are part of the node. The node with the
largest drop is the culprit. The drop is 0 when exact inputs give an exact output and inf when
exact inputs give an inexact one (dynamic int8 quantizes its inputs inside the node). Metrics are accumulated sample by sample, so memory holds one
sample's intermediate tensors at a time.

onnx and onnxruntime are imported inside the functions, and torch not at all: this runs on a
device without torch.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.errors import UnsupportedError, UsageError, first_line

# ONNX Runtime's QDQ quantizer names the tensors it adds after the tensor they quantize.
QDQ_HELPER_SUFFIXES = ("_QuantizeLinear_Output", "_DequantizeLinear_Output", "_QuantizeLinear_Input")
# A common int8 rule of thumb: below this SQNR a tensor has lost too much to trust.
SQNR_THRESHOLD_DB = 20.0
DEFAULT_SAMPLES = 16  # per-node comparison: intermediate tensors are large
DEFAULT_RANDOM_SAMPLES = 4
VERIFY_FILE = "verify.npz"  # what `edgepack export` writes next to its artifacts

_TORCH_SUFFIXES = (".pt", ".pt2", ".pth")
_FLOAT_TYPES = {1: "float32", 10: "float16", 11: "float64"}  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE


# ---------------------------------------------------------------- loading models and inputs


def load_model(model: Any, role: str = "model") -> Any:
    """An onnx.ModelProto from a path or a ModelProto. `role` ("A", "B") names it in errors."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.exists():
        raise UsageError(f"{role}: model file {path} not found; check the path")
    if path.is_dir():
        raise UsageError(f"{role}: {path} is a directory; pass an .onnx file")
    from edgepack.check_artifact import check_onnx, check_regular_file

    try:
        check_regular_file(path, "model file")  # before reading: a FIFO or device would block or never end
    except UsageError as exc:
        raise UsageError(f"{role}: {exc}") from None
    with open(path, "rb") as f:
        head = f.read(8)
    suffix = path.suffix.lower()
    if suffix == ".tflite" or head[4:8] == b"TFL3":
        raise UnsupportedError(f"{role}: {path} is a TFLite model; TFLite comparison arrives with the TFLite exporter: "
                               "compare the ONNX artifacts for now")
    if suffix in _TORCH_SUFFIXES or head[:2] == b"PK" or head[:1] == b"\x80":
        raise UsageError(f"{role}: {path} is a PyTorch file; compare ONNX files: use the export's fp32 ONNX "
                         "(OUT/<name>.fp32.onnx), which stands in for the PyTorch model and was verified against it")
    try:
        proto = check_onnx(path)  # a damaged file: one line saying what is wrong, before ONNX Runtime sees it
    except UsageError as exc:
        raise UsageError(f"{role}: {exc}") from None
    return proto


def load_inputs(path: Path, model: Any) -> list[dict[str, np.ndarray]]:
    """Feeds from an .npz: edgepack's verify.npz (`input/<name>`, (S, *shape)) or one array per
    input name, (S, *shape) or (*shape). Checked against `model`'s inputs."""
    path = Path(path)
    graph = _Graph(load_model(model, "A"))
    if not path.is_file():
        raise UsageError(f"--inputs {path} not found; pass an .npz with one array per input (or an export's verify.npz)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:
        raise UsageError(f"--inputs {path} is not a readable .npz ({first_line(exc)}); pass an .npz with one array per "
                         "input name") from None
    if any(k.startswith("input/") for k in arrays):
        arrays = {k[len("input/"):]: v for k, v in arrays.items() if k.startswith("input/")}
        stacked = True
    else:
        stacked = None  # decided per array from its rank
    expected = graph.input_names
    if set(arrays) != set(expected):
        raise UsageError(f"--inputs {path} holds {sorted(arrays)}; the model's inputs are {expected}: "
                         "name one array per model input")
    batches = {}
    for name in expected:
        arr = arrays[name]
        shape = graph.input_shapes[name]
        if stacked is None and shape is not None and arr.ndim == len(shape):
            arr = arr[None]
        if arr.ndim == 0 or not _fits(arr.shape[1:], shape):
            raise UsageError(f"--inputs {path}: input {name!r} has shape {list(arr.shape)}; the model expects "
                             f"{_dims(shape)} per sample, stacked as (S, ...)")
        batches[name] = arr
    counts = {len(a) for a in batches.values()}
    if len(counts) != 1 or 0 in counts:
        raise UsageError(f"--inputs {path}: inputs have {sorted(counts)} samples; give every input the same number (> 0)")
    n = counts.pop()
    return [{name: batches[name][i, ...] for name in expected} for i in range(n)]


def random_inputs(model: Any, n: int = DEFAULT_RANDOM_SAMPLES, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """`n` seeded N(0,1) samples from the model's static input shapes."""
    graph = _Graph(load_model(model, "A"))
    rng = np.random.default_rng(seed)
    for name in graph.input_names:
        shape, elem = graph.input_shapes[name], graph.types.get(name)
        if shape is None or any(d is None for d in shape):
            raise UsageError(f"input {name!r} has dynamic shape {_dims(shape)}; pass --inputs FILE.npz with samples of "
                             "the shape to compare")
        if elem not in _FLOAT_TYPES:
            raise UsageError(f"input {name!r} is not a float tensor; random samples would be meaningless: pass --inputs FILE.npz")
    return [{name: rng.standard_normal(graph.input_shapes[name]).astype(np.float32) for name in graph.input_names}
            for _ in range(n)]


def resolve_inputs(a: Any, inputs_path: Path | None = None, seed: int = 0,
                   a_path: Path | None = None) -> tuple[list[dict[str, np.ndarray]], str]:
    """(feeds, where they came from): --inputs, else the verify.npz in A's folder (an edgepack
    export directory), else random samples. `a_path` locates A when `a` is a ModelProto."""
    if isinstance(a, (str, Path)):
        a_path = Path(a)
    proto = load_model(a, "A")
    if inputs_path is not None:
        return load_inputs(inputs_path, proto), str(inputs_path)
    if a_path is not None and (a_path.parent / VERIFY_FILE).is_file():
        beside = a_path.parent / VERIFY_FILE
        return load_inputs(beside, proto), str(beside)
    return random_inputs(proto, seed=seed), f"{DEFAULT_RANDOM_SAMPLES} random N(0,1) samples (seed {seed})"


# ---------------------------------------------------------------- running


def intermediate_outputs(model: Any, feeds_list: Sequence[Mapping[str, np.ndarray]],
                         names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Every float node output of `model` (or only `names`), stacked over the feeds: name -> (S, ...).
    float16 values come back as float32."""
    graph = _Graph(load_model(model))
    wanted = list(names) if names is not None else [t for t in graph.node_outputs if graph.is_float(t)]
    runner = _Runner(graph, wanted, "model")
    per_sample = [runner.run(feed) for feed in feeds_list]
    return {t: np.stack([_as_float(s[t]) for s in per_sample]) for t in runner.fetched if per_sample}


def per_node_divergence(a: Any, b: Any, feeds_list: Sequence[Mapping[str, np.ndarray]]) -> list[dict]:
    """One row per tensor that A and B share, in A's topological order (see the module doc):
    tensor, op and node (its producer in A), sqnr_db, cosine, max_abs_error, upstream_sqnr_db
    (worst input as the node sees it), sqnr_drop_db, covers (A nodes without a counterpart in B
    whose damage counts in this row, e.g. a Conv whose Relu the quantizer folded) and
    compared_after (the Relu/Clip applied before comparing, or None)."""
    return _divergence(load_model(a, "A"), load_model(b, "B"), feeds_list).rows


def compare_outputs(a: Any, b: Any, feeds_list: Sequence[Mapping[str, np.ndarray]]) -> dict:
    """Final outputs matched by name: edgepack.verify.compare's metrics (worst over outputs and
    per output) plus the names compared and the ones only one model has."""
    from edgepack.verify import compare

    ga, gb = _Graph(load_model(a, "A")), _Graph(load_model(b, "B"))
    _check_same_inputs(ga, gb)
    names = [n for n in ga.output_names if n in set(gb.output_names)]
    if not names:
        raise UsageError(f"A and B have no output name in common (A: {ga.output_names}, B: {gb.output_names}); "
                         "compare an export's artifacts with each other")
    ra, rb = _Runner(ga, names, "A", outputs_only=True), _Runner(gb, names, "B", outputs_only=True)
    sa = [ra.run(f) for f in feeds_list]
    sb = [rb.run(f) for f in feeds_list]
    ref = [np.stack([s[n] for s in sa]) for n in names]
    act = [np.stack([s[n] for s in sb]) for n in names]
    result = compare(ref, act, names)
    if "error" in result:
        raise UsageError(f"B does not compute what A computes: {result['error']}")
    result["outputs_compared"] = names
    result["only_in_a"] = [n for n in ga.output_names if n not in names]
    result["only_in_b"] = [n for n in gb.output_names if n not in names]
    return result


def ranked(rows: Sequence[dict], top: int = 10) -> list[dict]:
    """The `top` rows with the largest SQNR drop (then the lowest SQNR)."""
    return sorted(rows, key=lambda r: (-r["sqnr_drop_db"], r["sqnr_db"]))[:top]


def first_below(rows: Sequence[dict], threshold_db: float = SQNR_THRESHOLD_DB) -> dict | None:
    """The first row, in A's topological order, whose SQNR is below `threshold_db`."""
    return next((r for r in rows if r["sqnr_db"] < threshold_db), None)


def sqnr_db(reference: np.ndarray, other: np.ndarray) -> float:
    """10 log10(sum ref^2 / sum (ref - other)^2); inf when identical."""
    acc = _Accumulator()
    acc.add(np.asarray(reference), np.asarray(other))
    return acc.sqnr_db()


# ---------------------------------------------------------------- internals


@dataclass
class _Divergence:
    rows: list[dict]
    a_float_tensors: int
    skipped: list[dict] = field(default_factory=list)


class _Graph:
    """What compare needs to know about a model: tensor types (from shape inference), producers,
    consumers, graph inputs and outputs."""

    def __init__(self, proto: Any) -> None:
        import onnx

        self.proto = proto
        try:
            inferred = onnx.shape_inference.infer_shapes(proto)
        except Exception:  # ops shape inference does not know: ONNX Runtime reports their types later
            inferred = proto
        g = inferred.graph
        self.types: dict[str, int] = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                self.types[vi.name] = vi.type.tensor_type.elem_type
        self.initializers = {i.name for i in proto.graph.initializer} | {
            i.name for i in proto.graph.sparse_initializer}
        self.input_names = [i.name for i in proto.graph.input if i.name not in self.initializers]
        # per input: a dim or None where it is symbolic; None for the whole shape when the rank is unknown
        self.input_shapes: dict[str, tuple[int | None, ...] | None] = {
            i.name: tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                          for d in i.type.tensor_type.shape.dim) if i.type.tensor_type.HasField("shape") else None
            for i in proto.graph.input if i.name in self.input_names}
        self.output_names = [o.name for o in proto.graph.output]
        self.nodes = list(proto.graph.node)
        self.producer: dict[str, Any] = {o: n for n in self.nodes for o in n.output if o}
        self.consumers: dict[str, list[Any]] = {}
        for n in self.nodes:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.node_outputs = [o for n in self.nodes for o in n.output if o]

    def is_float(self, name: str) -> bool:
        """Float by shape inference; unknown types count too (ONNX Runtime reports theirs)."""
        return self.types.get(name, 1) in _FLOAT_TYPES

    def matchable(self, name: str) -> bool:
        """A float tensor that is not a weight, a constant or a Q/DQ helper."""
        node = self.producer.get(name)
        return (self.is_float(name) and name not in self.initializers and not name.endswith(QDQ_HELPER_SUFFIXES)
                and not (node is not None and node.op_type == "Constant"))

    def seen_as(self, name: str) -> str:
        """The tensor that carries `name`'s value as its consumers see it: after a
        QuantizeLinear -> DequantizeLinear pair, or a lone Cast to another float type."""
        for _ in range(8):  # a chain of a few pairs at most
            nxt = self._next_view(name)
            if nxt is None:
                return name
            name = nxt
        return name

    def _next_view(self, name: str) -> str | None:
        users = self.consumers.get(name, [])
        for q in users:
            if q.op_type == "QuantizeLinear" and q.input[0] == name:
                dq = [d for d in self.consumers.get(q.output[0], []) if d.op_type == "DequantizeLinear"]
                if dq:
                    return dq[0].output[0]
        if len(users) == 1 and users[0].op_type == "Cast" and self.types.get(users[0].output[0]) in _FLOAT_TYPES:
            return users[0].output[0]
        return None

    def clamp_of_consumers(self, name: str) -> tuple[str, float, float] | None:
        """(op, low, high) when every consumer of `name` is the same Relu/Clip: only the clamped
        values reach the rest of the network, so only they are compared. ONNX Runtime's quantizer
        gives a Conv followed by a Relu the Relu's int8 range, which drops the negatives early."""
        users = self.consumers.get(name, [])
        bounds = set()
        for u in users:
            if u.op_type == "Relu":
                bounds.add((u.op_type, 0.0, math.inf))
            elif u.op_type == "Clip" and u.input[0] == name:
                lo_hi = self._clip_bounds(u)
                if lo_hi is None:
                    return None
                bounds.add((u.op_type, *lo_hi))
            else:
                return None
        return bounds.pop() if len(bounds) == 1 else None

    def _clip_bounds(self, node: Any) -> tuple[float, float] | None:
        attrs = {a.name: a.f for a in node.attribute if a.name in ("min", "max")}  # opset < 11
        bounds = [attrs.get("min", -math.inf), attrs.get("max", math.inf)]
        for k in (1, 2):
            if len(node.input) > k and node.input[k]:
                value = self._scalar(node.input[k])
                if value is None:
                    return None
                bounds[k - 1] = value
        return bounds[0], bounds[1]

    def _scalar(self, name: str) -> float | None:
        from onnx import numpy_helper

        for init in self.proto.graph.initializer:
            if init.name == name:
                arr = numpy_helper.to_array(init)
                return float(arr.reshape(-1)[0]) if arr.size == 1 else None
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    arr = numpy_helper.to_array(a.t)
                    return float(arr.reshape(-1)[0]) if arr.size == 1 else None
        return None

    def origin(self, node: Any) -> Any:
        """The compute node behind a DequantizeLinear <- QuantizeLinear pair (for labels)."""
        for _ in range(8):
            if node.op_type != "DequantizeLinear":
                return node
            q = self.producer.get(node.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                return node
            up = self.producer.get(q.input[0])
            if up is None:
                return node
            node = up
        return node


class _Runner:
    """An ONNX Runtime session (CPU, optimizations off) with `names` exposed as outputs; feeds are
    checked against the model's inputs and cast to its input types."""

    def __init__(self, graph: _Graph, names: Sequence[str], role: str, outputs_only: bool = False) -> None:
        import onnx
        import onnxruntime as ort

        self.graph, self.role = graph, role
        proto = graph.proto
        existing = set(graph.output_names)
        extra = [] if outputs_only else [n for n in dict.fromkeys(names) if n not in existing and n in graph.producer]
        if extra:
            proto = onnx.ModelProto.FromString(proto.SerializeToString())
            for n in extra:
                vi = onnx.ValueInfoProto(name=n)
                if n in graph.types:
                    vi.type.tensor_type.elem_type = graph.types[n]
                proto.graph.output.append(vi)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            self.session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            text = first_line(exc)
            cls = UnsupportedError if "NOT_IMPLEMENTED" in text or "not a registered function/op" in text else UsageError
            raise cls(f"{role}: ONNX Runtime cannot load the model: {text}") from None
        float_out = {o.name for o in self.session.get_outputs()
                     if o.type in ("tensor(float)", "tensor(float16)", "tensor(double)")}
        self.fetched = [n for n in dict.fromkeys(names) if n in float_out or (outputs_only and n in existing)]
        self.input_types = {i.name: i.type for i in self.session.get_inputs()}

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = self.cast(feed)
        try:
            values = self.session.run(self.fetched, feed)
        except Exception as exc:
            raise UsageError(f"{self.role}: ONNX Runtime failed on the inputs: {first_line(exc)}; check --inputs "
                             "against the model's input shapes") from None
        return dict(zip(self.fetched, values, strict=True))

    def cast(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self.graph.input_names
        if set(feed) != set(names):
            raise UsageError(f"{self.role}: the inputs are named {sorted(feed)}; the model's inputs are {names}")
        out = {}
        for name in names:
            arr = np.asarray(feed[name])
            shape = self.graph.input_shapes[name]
            if not _fits(arr.shape, shape):
                raise UsageError(f"{self.role}: input {name!r} has shape {list(arr.shape)}; the model expects {_dims(shape)}")
            out[name] = arr.astype(_NP_TYPES.get(self.input_types[name], arr.dtype), copy=False)
        return out


_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8,
             "tensor(bool)": np.bool_}


class _Accumulator:
    """Running sums over samples for SQNR, cosine and max abs error of one tensor (float64)."""

    def __init__(self) -> None:
        self.ref2 = self.err2 = self.other2 = self.dot = self.max_abs = 0.0
        self.nonfinite = False  # NaN/Inf in one model where the other has a different value

    def add(self, ref: np.ndarray, other: np.ndarray) -> None:
        r = np.asarray(ref, dtype=np.float64).ravel()
        o = np.asarray(other, dtype=np.float64).ravel()
        finite = np.isfinite(r) & np.isfinite(o)
        if not finite.all():
            same = (r == o) | (np.isnan(r) & np.isnan(o))
            if not (finite | same).all():
                self.nonfinite = True
            r, o = r[finite], o[finite]
        d = r - o
        self.ref2 += float(r @ r)
        self.other2 += float(o @ o)
        self.err2 += float(d @ d)
        self.dot += float(r @ o)
        if d.size:
            self.max_abs = max(self.max_abs, float(np.abs(d).max()))

    def sqnr_db(self) -> float:
        if self.nonfinite:
            return float("-inf")
        if self.err2 == 0.0:
            return float("inf")
        if self.ref2 == 0.0:
            return float("-inf")
        return 10.0 * math.log10(self.ref2 / self.err2)

    def cosine(self) -> float:
        if self.nonfinite:
            return 0.0
        if self.ref2 > 0.0 and self.other2 > 0.0:
            return max(-1.0, min(1.0, self.dot / math.sqrt(self.ref2 * self.other2)))
        return 1.0 if self.err2 == 0.0 else 0.0

    def max_abs_error(self) -> float:
        return float("inf") if self.nonfinite else self.max_abs


def _divergence(pa: Any, pb: Any, feeds_list: Sequence[Mapping[str, np.ndarray]]) -> _Divergence:
    ga, gb = _Graph(pa), _Graph(pb)
    _check_same_inputs(ga, gb)
    if not feeds_list:
        raise UsageError("no input samples to compare on; pass --inputs with at least one sample")
    a_tensors = [t for t in ga.node_outputs if ga.matchable(t)]
    b_known = set(gb.node_outputs) | set(gb.input_names)
    common = [t for t in a_tensors if t in b_known and gb.matchable(t)]
    if not common:
        raise UsageError(f"A and B share no tensor names (A has {len(a_tensors)} float tensors, e.g. "
                         f"{a_tensors[:3]}): compare models made from the same export, e.g. OUT/<name>.fp32.onnx "
                         "and OUT/<name>.int8.onnx")
    # graph inputs too: the first nodes' drop is measured from the input as they see it (quantized or cast)
    tracked = list(ga.input_names) + common
    view_a = {t: ga.seen_as(t) for t in tracked}
    view_b = {t: gb.seen_as(t) for t in tracked}
    ra = _Runner(ga, [view_a[t] for t in tracked if view_a[t] in ga.producer], "A")
    rb = _Runner(gb, [view_b[t] for t in tracked if view_b[t] in gb.producer], "B")
    clamp = {t: ga.clamp_of_consumers(t) for t in tracked}
    acc = {t: _Accumulator() for t in tracked}
    skipped: dict[str, dict] = {}
    for feed in feeds_list:
        fa, fb = ra.cast(feed), rb.cast(feed)
        va, vb = ra.run(feed), rb.run(feed)
        va.update(fa)
        vb.update(fb)
        for t in tracked:
            if t in skipped:
                continue
            x, y = va.get(view_a[t]), vb.get(view_b[t])
            if x is None or y is None:
                skipped[t] = {"tensor": t, "reason": "not a float tensor in both models"}
            elif x.shape != y.shape:
                skipped[t] = {"tensor": t, "reason": f"shape {list(x.shape)} in A, {list(y.shape)} in B"}
            elif clamp[t] is not None:
                _, lo, hi = clamp[t]
                acc[t].add(np.clip(x, lo, hi), np.clip(y, lo, hi))
            else:
                acc[t].add(x, y)
    sqnr = {t: acc[t].sqnr_db() for t in tracked if t not in skipped}
    upstream = _Upstream(ga, sqnr)
    rows = []
    for t in common:
        if t in skipped:
            continue
        node = ga.producer[t]
        label = ga.origin(node)
        level, covers = upstream.of_node(node)
        covers = [c for c in covers if c != label.name]
        rows.append({
            "tensor": t,
            "op": label.op_type,
            "node": label.name or t,
            "sqnr_db": sqnr[t],
            "cosine": acc[t].cosine(),
            "max_abs_error": acc[t].max_abs_error(),
            "upstream_sqnr_db": level,
            "sqnr_drop_db": _drop(level, sqnr[t]),
            "covers": covers,
            "compared_after": clamp[t][0] if clamp[t] else None,
        })
    if not rows:
        raise UsageError(f"A and B share {len(common)} tensor name(s) but none with the same shape and a float type in "
                         f"both ({next(iter(skipped.values()))['reason']}); they are not the same network")
    return _Divergence(rows, len(a_tensors), [s for t, s in skipped.items() if t in set(common)])


class _Upstream:
    """The worst SQNR among a node's inputs: matched tensors and graph inputs by their own SQNR;
    tensors B has no counterpart for, through their producers (their nodes' damage then counts in
    this node's row: `covers` names them). Weights and constants are part of the node."""

    def __init__(self, graph: _Graph, sqnr: Mapping[str, float]) -> None:
        self.graph, self.sqnr = graph, sqnr
        self._memo: dict[str, tuple[float, list[str]]] = {}

    def of_node(self, node: Any) -> tuple[float, list[str]]:
        level, covers = float("inf"), []
        for name in node.input:
            if not name or name in self.graph.initializers:
                continue
            lv, cv = self._of_tensor(name)
            level = min(level, lv)
            covers += [c for c in cv if c not in covers]
        return level, covers

    def _of_tensor(self, name: str) -> tuple[float, list[str]]:
        if name in self.sqnr:
            return self.sqnr[name], []
        if name in self._memo:
            return self._memo[name]
        self._memo[name] = (float("inf"), [])  # guards against cycles in a malformed graph
        node = self.graph.producer.get(name)
        if node is None or node.op_type == "Constant":
            result: tuple[float, list[str]] = (float("inf"), [])
        else:
            level, covers = self.of_node(node)
            if node.op_type not in ("QuantizeLinear", "DequantizeLinear") and self.graph.is_float(name):
                covers = covers + [node.name or name]
            result = (level, covers)
        self._memo[name] = result
        return result


def _drop(upstream: float, sqnr: float) -> float:
    if upstream == sqnr:  # includes inf == inf: exact stays exact
        return 0.0
    return upstream - sqnr


def _check_same_inputs(ga: _Graph, gb: _Graph) -> None:
    if set(ga.input_names) != set(gb.input_names):
        raise UsageError(f"A takes inputs {ga.input_names}, B takes {gb.input_names}: compare two models of one network "
                         "(same input names)")
    for name in ga.input_names:
        sa, sb = ga.input_shapes[name], gb.input_shapes[name]
        if sa is None or sb is None:
            continue
        if len(sa) != len(sb) or any(x is not None and y is not None and x != y for x, y in zip(sa, sb, strict=True)):
            raise UsageError(f"input {name!r} is {_dims(sa)} in A and {_dims(sb)} in B: compare two models of one network "
                             "(same input shapes)")


def _fits(actual: Sequence[int], expected: Sequence[int | None] | None) -> bool:
    if expected is None:
        return True
    return len(actual) == len(expected) and all(e is None or a == e for a, e in zip(actual, expected, strict=True))


def _dims(shape: Sequence[int | None] | None) -> str:
    if shape is None:
        return "[unknown rank]"
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def _as_float(value: np.ndarray) -> np.ndarray:
    return value.astype(np.float32) if value.dtype == np.float16 else value
