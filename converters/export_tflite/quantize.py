"""int8 for the TFLite graph: full integer from the one calibration of the ONNX graph
(`quantize_graph`), or dynamic range with int8 weights only (`quantize_weights_only`).

The float TFLite graph is built first (same lowerings as fp32), then rewritten in place:
- every float activation tensor becomes int8 with a per-tensor scale and zero point derived from
  its calibrated range. Tensors named like an ONNX tensor take that tensor's range from
  `calibration.json` (the single source of truth, shared with the int8 ONNX); tensors that exist
  only in the TFLite graph (e.g. the output of a PAD the layout needed) take the range measured
  by running the float TFLite graph on the same calibration samples;
- TFLite's kernel constraints are honoured: ops that move data without computing (pooling, concat,
  reshape, pad, slice, gather, resize, split) share one scale between inputs and output (the union
  of their ranges), and LOGISTIC / SOFTMAX / TANH / LOG_SOFTMAX outputs take their fixed scales
  (and so does every tensor that must share a scale with one); every range a constraint changed
  is reported;
- weights of CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED and TRANSPOSE_CONV are int8 per output
  channel (symmetric, zero point 0), biases int32 with scale = input scale x weight scale; other
  float constants are int8 per tensor;
- builtins XNNPACK's delegate takes in float only (HARD_SWISH, GELU, SQRT, DIV, ...:
  `xnnpack_forms.XNNPACK_FLOAT_ONLY`) stay float between DEQUANTIZE and QUANTIZE, so that every
  operator stays inside the one XNNPACK partition;
- one QUANTIZE at each float input and one DEQUANTIZE at each float output (`int8_io` makes the
  model's inputs and outputs int8 instead);
- the operators lowered from the accuracy guard's `float_nodes`, and those a lowering registered in
  `graph.no_int8` (recurrent layers), stay float (weights too), with a
  DEQUANTIZE before each int8 tensor they read and a QUANTIZE after each tensor of theirs that an
  int8 operator reads: the only QUANTIZE/DEQUANTIZE inside the graph.

Written by hand because the only tools that do this (TensorFlow's converter, litert-torch's PT2E
path) need TensorFlow or leave QUANTIZE/DEQUANTIZE pairs inside the graph."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgepack.converters.export_tflite.graph import TfliteGraph
from edgepack.converters.export_tflite.xnnpack_forms import XNNPACK_FLOAT_ONLY
from edgepack.errors import ConversionError
from edgepack.tflite_schema import builtin_names

SAME_SCALE = {"MAX_POOL_2D", "AVERAGE_POOL_2D", "RESHAPE", "CONCATENATION", "GATHER", "STRIDED_SLICE", "SLICE",
              "SPLIT_V", "SPLIT", "PAD", "PADV2", "TRANSPOSE", "RESIZE_NEAREST_NEIGHBOR", "RESIZE_BILINEAR",
              "MIRROR_PAD", "REDUCE_MAX", "REDUCE_MIN", "SQUEEZE", "EXPAND_DIMS", "MAXIMUM", "MINIMUM"}
FIXED = {"LOGISTIC": (1.0 / 256.0, -128), "SOFTMAX": (1.0 / 256.0, -128), "TANH": (1.0 / 128.0, 0),
         "LOG_SOFTMAX": (16.0 / 256.0, 127)}
PER_CHANNEL_WEIGHTS = {"CONV_2D": (1, 0), "DEPTHWISE_CONV_2D": (1, 3), "FULLY_CONNECTED": (1, 0),
                       "TRANSPOSE_CONV": (1, 0)}  # op -> (weight input index, channel axis)
BIAS_INPUT = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2}
INT32_BIAS_LIMIT = 2**31 - 2**16  # the largest int32 bias written, with a margin for the kernels' own rounding


# Builtins that LiteRT runs in float only; an int8 graph keeps them float (see _keep_float).
NO_INT8_KERNEL = {"POW"}
# Dynamic range: smaller weight tensors stay float (TensorFlow's converter uses the same threshold).
MIN_WEIGHTS_ELEMENTS = 1024
HYBRID_WEIGHTS = {"CONV_2D": (1, 0), "FULLY_CONNECTED": (1, 0)}  # op -> (weight input index, channel axis)


@dataclass
class QuantReport:
    constrained: list[dict] = field(default_factory=list)  # ranges a kernel constraint changed
    float_ops: list[dict] = field(default_factory=list)  # ops kept float because LiteRT has no int8 kernel
    requantized: list[dict] = field(default_factory=list)  # concat inputs given a QUANTIZE to the output's scale


def _qparams(lo: float, hi: float) -> tuple[float, int]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo < 1e-12:
        return 1.0, 0
    scale = (hi - lo) / 255.0
    zp = int(np.clip(round(-128 - lo / scale), -128, 127))
    return float(scale), zp


def quantize_graph(graph: TfliteGraph, onnx_ranges: dict[str, tuple[float, float]],
                   measured: dict[str, tuple[float, float]], *, int8_io: bool = False,
                   float_nodes: set[str] | frozenset[str] = frozenset()) -> QuantReport:
    s = graph.s
    report = QuantReport()
    keep = {id(op) for op in graph.operators if graph.origin.get(id(op), set()) & set(float_nodes) or id(op) in graph.no_int8}
    consts = {i for i, t in enumerate(graph.tensors) if t.buffer != 0}
    names = builtin_names()
    code_of = {i: c for c, i in graph.opcodes.items()}
    no_kernel = [op for op in graph.operators if names[code_of[op.opcodeIndex]] in NO_INT8_KERNEL]
    for op in no_kernel:
        report.float_ops.append({"op": names[code_of[op.opcodeIndex]], "from": sorted(graph.origin.get(id(op), ())),
                                 "why": "LiteRT has no int8 kernel for it: kept float between DEQUANTIZE and QUANTIZE"})
    report.float_ops += _lowered_float(graph, names, code_of)
    io = set(graph.inputs) | set(graph.outputs) if int8_io else set()  # int8 IO: an op at the IO stays int8
    xnn_float = [op for op in graph.operators
                 if names[code_of[op.opcodeIndex]] in XNNPACK_FLOAT_ONLY and id(op) not in keep and op not in no_kernel
                 and not io & {*op.inputs, *op.outputs}]
    for op in xnn_float:
        name = names[code_of[op.opcodeIndex]]
        report.float_ops.append({"op": name, "from": sorted(graph.origin.get(id(op), ())),
                                 "why": XNNPACK_FLOAT_ONLY[name]})
    no_kernel += xnn_float
    for op, ratio in _wide_concats(graph, names, code_of, lambda n: onnx_ranges.get(n) or measured.get(n), keep | {id(o) for o in no_kernel}):
        report.float_ops.append({"op": "CONCATENATION", "from": sorted(graph.origin.get(id(op), ())),
                                 "why": f"its inputs' ranges differ {ratio:.0f}x: requantizing the narrow ones to the "
                                        "output's scale leaves them a few steps, beyond what XNNPACK's int8 QUANTIZE "
                                        "takes (2^-8); kept float between DEQUANTIZE and QUANTIZE"})
        no_kernel.append(op)
    no_kernel += [op for op in graph.operators if id(op) in graph.no_int8]
    already_float = {id(op) for op in no_kernel}  # one float_ops entry per op: a float-only op is not also 'narrow'
    narrow = [t for t in _narrow_fixed_outputs(graph, names, code_of, onnx_ranges, measured) if id(t[0]) not in already_float]
    for op, name, hi in narrow:
        report.float_ops.append({"op": name, "from": sorted(graph.origin.get(id(op), ())),
                                 "why": f"calibrated output tops at {hi:.3g}: the fixed int8 scale {FIXED[name][0]:.4g} would leave "
                                        f"it {max(int(hi / FIXED[name][0]), 0)} steps; kept float, its output quantized to its own range"})
    kept_float, range_of, borders = _keep_float(graph, float_nodes, consts,
                                                {id(op) for op in no_kernel} | {id(op) for op, _, _ in narrow})
    code_of = {i: c for c, i in graph.opcodes.items()}  # _keep_float may have added QUANTIZE / DEQUANTIZE
    ops = [(names[code_of[op.opcodeIndex]], op) for op in graph.operators if id(op) not in kept_float]
    # tensors (weights too) that only float operators touch, and the float side of each QUANTIZE border
    float_only = _read_only_by(graph, kept_float) | borders
    consts -= float_only
    float_acts = {i for i, t in enumerate(graph.tensors)
                  if t.type == s.TensorType.FLOAT32 and t.buffer == 0 and i not in float_only}

    # 1. ranges per activation tensor
    rng: dict[int, tuple[float, float]] = {}
    for i in float_acts:
        name = range_of.get(i, graph.tensors[i].name)
        r = onnx_ranges.get(name) or measured.get(name)
        if r is not None:
            rng[i] = r
    for name, op in ops:  # a PADV2 output holds the pad value (-FLT_MAX before a max pool): not a range
        if name == "PADV2":
            rng.pop(op.outputs[0], None)
    # 2. constraints: union-find of tensors that must share one scale
    parent = {i: i for i in float_acts}

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(a: int, b: int) -> None:
        a, b = find(a), find(b)
        if a != b:
            parent[a] = b

    for name, op in ops:
        if name in SAME_SCALE and name != "CONCATENATION":
            for t in [i for i in op.inputs if i in float_acts] + [o for o in op.outputs if o in float_acts]:
                union(t, op.outputs[0])
    # a fixed output scale (LOGISTIC, SOFTMAX, ...) holds for every tensor that must share it
    fixed = {op.outputs[0]: (name, FIXED[name]) for name, op in ops if name in FIXED and op.outputs[0] in float_acts}
    _share_concat_scales(ops, float_acts, rng, fixed, find, union)
    groups: dict[int, list[int]] = {}
    for i in float_acts:
        groups.setdefault(find(i), []).append(i)
    qp: dict[int, tuple[float, int]] = {}
    for members in groups.values():
        pinned = [fixed[m] for m in members if m in fixed]
        known = [rng[m] for m in members if m in rng]
        if pinned:
            op_name, params = pinned[0]
            for m in members:
                qp[m] = params
                if m in rng and _qparams(*rng[m]) != params:
                    report.constrained.append({"tensor": graph.tensors[m].name, "calibrated": list(rng[m]),
                                               "used_scale": params[0], "used_zero_point": params[1],
                                               "why": f"{op_name} output has a fixed int8 scale" + (
                                                   "" if m in fixed else f", shared with the {op_name} output")})
            continue
        if not known:
            continue
        lo, hi = min(r[0] for r in known), max(r[1] for r in known)
        params = _qparams(lo, hi)
        for m in members:
            qp[m] = params
            if m in rng and len(members) > 1 and (rng[m][0] > lo + 1e-9 or rng[m][1] < hi - 1e-9):
                report.constrained.append({"tensor": graph.tensors[m].name, "calibrated": list(rng[m]),
                                           "used": [lo, hi], "why": "shares one scale with the tensors it is moved to/from"})
    missing = [graph.tensors[i].name for i in float_acts if i not in qp]
    if missing:
        raise ConversionError(f"int8 TFLite: no calibrated range for tensors {missing[:5]} (neither in calibration.json nor "
                              "measured on the float TFLite graph); the other artifacts are unaffected: report the model")
    report.constrained += _fit_add_scales(graph, ops, qp, {find(t) for t in fixed}, find)
    report.constrained += _symmetric_matmul_rhs(graph, ops, qp, {find(t) for t in fixed}, find)
    # 3. weights and biases
    requant: dict[int, int] = {}  # const tensor -> already rewritten
    for name, op in ops:
        if name in PER_CHANNEL_WEIGHTS:
            w_idx, axis = PER_CHANNEL_WEIGHTS[name]
            w = op.inputs[w_idx]
            data_in = op.inputs[2] if name == "TRANSPOSE_CONV" else op.inputs[0]
            b_in = BIAS_INPUT.get(name)
            bias = op.inputs[b_in] if b_in is not None and len(op.inputs) > b_in and op.inputs[b_in] >= 0 else None
            # int32 bias = bias / (input scale x weight scale): an input with a tiny range (a layer
            # that random init or pruning left almost silent) would overflow it, so that channel's
            # weight scale grows until the bias fits (ONNX Runtime's quantizer does the same)
            floor = None if bias is None else np.abs(_buffer_array(graph, bias)).astype(np.float64) / (
                qp[data_in][0] * INT32_BIAS_LIMIT)
            w_scales = _quantize_weight(graph, w, axis, floor) if w not in requant else requant[w]
            requant[w] = w_scales
            if bias is not None:
                _quantize_bias(graph, bias, qp[data_in][0] * w_scales)
    for name, op in ops:  # float constants of same-scale ops (pad values, clip bounds) use the data's scale
        if name in SAME_SCALE and op.inputs and op.inputs[0] in qp:
            scale, zp = qp[op.inputs[0]]
            for i in op.inputs[1:]:
                if i in consts and graph.tensors[i].type == s.TensorType.FLOAT32 and i not in requant:
                    _quantize_per_tensor(graph, i, scale, zp)
                    requant[i] = np.array([scale])
    floor = _add_operand_floor(ops, qp)
    for i in sorted(consts):
        t = graph.tensors[i]
        if t.type == s.TensorType.FLOAT32 and i not in requant and t.quantization is None:
            arr = _buffer_array(graph, i)
            _quantize_per_tensor(graph, i, *_with_min_scale(_qparams(float(arr.min()), float(arr.max())), floor.get(i, 0.0)))
    # 4. activations
    for i, (scale, zp) in qp.items():
        graph.tensors[i].type = s.TensorType.INT8
        _set_quant(graph, i, [scale], [zp])
    report.requantized = _requantize_concat_inputs(graph, ops, qp)
    # 5. IO
    if not int8_io:
        _float_io(graph)
    return report


# XNNPACK's int8 ADD / SUB take an input whose scale is at least this fraction of the output's
# (xnnpack_delegate.cc: input-to-output scale ratio in [2^-10, 2^8)); below it the whole input spans
# under a quarter of an output step. Such an input (a layer-scale branch with gamma ~1e-5, a
# LayerNorm epsilon) gets that scale: it still covers its range, at a resolution 1024x finer than
# the output's, and the ADD stays inside the delegate.
ADD_MIN_SCALE_RATIO = 2.0**-10


# XNNPACK's int8 MUL: input1 scale x input2 scale / output scale in [2^-16, 2^8). A constant factor
# far below its output's resolution (a layer scale of ~1e-5 after the ADD rule above raised the
# output's scale) gets the scale that meets it.
MUL_MIN_PRODUCT_RATIO = 2.0**-16 * 1.01


def _add_operand_floor(ops: list, qp: dict[int, tuple[float, int]]) -> dict[int, float]:
    """For each input of an int8 ADD / SUB, and each constant input of an int8 MUL whose other
    input is an activation: the smallest scale XNNPACK takes for it."""
    floor: dict[int, float] = {}
    for name, op in ops:
        out = op.outputs[0]
        if name in ("ADD", "SUB") and out in qp:
            for t in op.inputs:
                floor[t] = max(floor.get(t, 0.0), qp[out][0] * ADD_MIN_SCALE_RATIO)
        if name == "MUL" and out in qp and len(op.inputs) == 2:
            for t, other in ((op.inputs[0], op.inputs[1]), (op.inputs[1], op.inputs[0])):
                if t not in qp and other in qp:  # t: a constant
                    floor[t] = max(floor.get(t, 0.0), MUL_MIN_PRODUCT_RATIO * qp[out][0] / qp[other][0])
    return floor


def _with_min_scale(params: tuple[float, int], min_scale: float) -> tuple[float, int]:
    """(scale, zero point) with the scale raised to `min_scale`, the real value at -128 kept."""
    scale, zp = params
    if scale >= min_scale:
        return params
    lo = (-128 - zp) * scale
    return float(min_scale), int(np.clip(round(-128 - lo / min_scale), -128, 127))


def _fit_add_scales(graph: TfliteGraph, ops: list, qp: dict[int, tuple[float, int]], pinned: set[int], find) -> list[dict]:
    """Raise the scale of the activations that feed an int8 ADD / SUB below ADD_MIN_SCALE_RATIO of
    its output's (with every tensor sharing their scale; never a fixed-scale group). Returns the
    report rows."""
    rows = []
    for t, min_scale in _add_operand_floor(ops, qp).items():
        if t not in qp or qp[t][0] >= min_scale or find(t) in pinned:
            continue
        root = find(t)
        new = _with_min_scale(qp[t], min_scale)
        for m in [m for m in qp if find(m) == root]:
            qp[m] = new
        rows.append({"tensor": graph.tensors[t].name, "used_scale": new[0], "used_zero_point": new[1],
                     "why": "an int8 ADD / SUB input needs at least 1/1024 of the output's scale (XNNPACK); it spans "
                            "under a quarter of an output step"})
    return rows


# XNNPACK's int8 QUANTIZE (int8 -> int8) takes an input-to-output scale ratio of at least 2^-8.
CONCAT_MAX_RANGE_RATIO = 256.0


def _wide_concats(graph: TfliteGraph, names: dict, code_of: dict, range_of, skip: set[int]) -> list[tuple]:
    """(op, ratio) of the CONCATENATIONs whose inputs' calibrated ranges differ more than
    CONCAT_MAX_RANGE_RATIO (a detector head's box coordinates in pixels next to class scores in 0-1)."""
    found = []
    for op in graph.operators:
        if names[code_of[op.opcodeIndex]] != "CONCATENATION" or id(op) in skip:
            continue
        widths = []
        for t in op.inputs:
            r = range_of(graph.tensors[t].name) if graph.tensors[t].buffer == 0 else None
            if r is not None:
                widths.append(max(r[1], 0.0) - min(r[0], 0.0))
        if len(widths) > 1 and min(widths) > 0 and max(widths) / min(widths) > CONCAT_MAX_RANGE_RATIO:
            found.append((op, max(widths) / min(widths)))
    return found


def _symmetric_matmul_rhs(graph: TfliteGraph, ops: list, qp: dict[int, tuple[float, int]], pinned: set[int],
                          find) -> list[dict]:
    """XNNPACK's int8 BATCH_MATMUL takes a second input with zero point 0 only (measured, LiteRT 2.3:
    an asymmetric one leaves the op to the reference kernels): that input (and every tensor sharing
    its scale) becomes symmetric over its range."""
    rows = []
    for name, op in ops:
        if name != "BATCH_MATMUL" or len(op.inputs) < 2 or op.inputs[1] not in qp or qp[op.inputs[1]][1] == 0:
            continue
        t = op.inputs[1]
        if find(t) in pinned:
            continue
        scale, zp = qp[t]
        bound = max((128 + zp) * scale, (127 - zp) * scale)
        new = (float(bound / 127.0), 0)
        root = find(t)
        for m in [m for m in qp if find(m) == root]:
            qp[m] = new
        rows.append({"tensor": graph.tensors[t].name, "used_scale": new[0], "used_zero_point": 0,
                     "why": "the second input of an int8 BATCH_MATMUL is symmetric (zero point 0) in XNNPACK"})
    return rows


def _lowered_float(graph: TfliteGraph, names: dict, code_of: dict) -> list[dict]:
    """One report row per ONNX node whose lowering asked for float operators (`graph.no_int8`)."""
    rows: dict[tuple, dict] = {}
    for op in graph.operators:
        why = graph.no_int8.get(id(op))
        if why is None:
            continue
        origin = tuple(sorted(graph.origin.get(id(op), ())))
        row = rows.setdefault(origin, {"op": "", "from": list(origin), "why": why, "operators": {}})
        builtin = names[code_of[op.opcodeIndex]]
        row["operators"][builtin] = row["operators"].get(builtin, 0) + 1
    for row in rows.values():
        row["op"] = ", ".join(sorted(row["operators"]))
    return list(rows.values())


# A concat input shares the output's scale (no requantization) when that costs it at most this
# factor of resolution; a wider gap (box coordinates in pixels next to class scores in 0-1) keeps
# the input's own scale and a QUANTIZE to the output's, as the int8 ONNX does (one Q/DQ per input).
CONCAT_SHARE_MAX_RATIO = 2.0


def _share_concat_scales(ops: list, float_acts: set[int], rng: dict[int, tuple[float, float]],
                         fixed: dict[int, tuple], find, union) -> None:
    """Merge each CONCATENATION input into its output's scale group when the shared range is at
    most CONCAT_SHARE_MAX_RATIO times wider than either's own range and neither has a fixed scale."""

    def span(root: int) -> tuple[float, float] | None:
        known = [rng[m] for m in float_acts if find(m) == root and m in rng]
        if not known:
            return None
        return min(0.0, *(r[0] for r in known)), max(0.0, *(r[1] for r in known))

    pinned = {find(t) for t in fixed}
    for name, op in ops:
        if name != "CONCATENATION" or op.outputs[0] not in float_acts:
            continue
        for t in op.inputs:
            if t not in float_acts:
                continue
            a, b = find(t), find(op.outputs[0])
            if a == b:
                continue
            if a in pinned or b in pinned:
                continue
            ra, rb = span(a), span(b)
            if ra is None or rb is None:
                union(a, b)
                continue
            both = (min(ra[0], rb[0]), max(ra[1], rb[1]))
            width = both[1] - both[0]
            if width <= CONCAT_SHARE_MAX_RATIO * max(ra[1] - ra[0], 1e-12) and width <= CONCAT_SHARE_MAX_RATIO * max(rb[1] - rb[0], 1e-12):
                union(a, b)


def _requantize_concat_inputs(graph: TfliteGraph, ops: list, qp: dict[int, tuple[float, int]]) -> list[dict]:
    """TFLite's int8 CONCATENATION (and XNNPACK's) takes inputs with the output's scale and zero
    point: an input quantized otherwise goes through one QUANTIZE (int8 -> int8) first."""
    done = []
    for name, op in ops:
        if name != "CONCATENATION" or op.outputs[0] not in qp:
            continue
        want = qp[op.outputs[0]]
        for pos, t in enumerate(op.inputs):
            if t not in qp or qp[t] == want:
                continue
            q = graph.tensor(graph.tensors[t].name + "_requant", graph.shape_of(t), np.int8)
            _set_quant(graph, q, [want[0]], [want[1]])
            graph.op("QUANTIZE", [t], [q])
            graph.operators.insert(graph.operators.index(op), graph.operators.pop())
            op.inputs[pos] = q
            done.append({"tensor": graph.tensors[t].name, "scale": qp[t][0], "to_scale": want[0]})
    return done


def quantize_weights_only(graph: TfliteGraph) -> dict:
    """Dynamic-range int8: the weights of CONV_2D and FULLY_CONNECTED become int8 per output
    channel (symmetric, zero point 0); activations, biases and IO stay float, and LiteRT's hybrid
    kernels quantize each layer's input at run time (asymmetrically, for FULLY_CONNECTED).
    DEPTHWISE_CONV_2D keeps float weights: its hybrid kernel is not taken by XNNPACK, and on
    MobileNetV2 it made the whole model 2.3x slower for 1% of the weight bytes. Returns what was
    quantized and what was kept float, with the reason."""
    s = graph.s
    names = builtin_names()
    code_of = {i: c for c, i in graph.opcodes.items()}
    done: set[int] = set()
    quantized, kept = 0, {}
    for op in graph.operators:
        name = names[code_of[op.opcodeIndex]]
        if name == "DEPTHWISE_CONV_2D":
            kept["DEPTHWISE_CONV_2D"] = kept.get("DEPTHWISE_CONV_2D", 0) + 1
            continue
        if name not in HYBRID_WEIGHTS:
            continue
        w_idx, axis = HYBRID_WEIGHTS[name]
        w = op.inputs[w_idx]
        t = graph.tensors[w]
        if w in done or t.buffer == 0 or t.type != s.TensorType.FLOAT32:
            continue
        if int(np.prod(t.shape)) < MIN_WEIGHTS_ELEMENTS:
            kept["small weights"] = kept.get("small weights", 0) + 1
            continue
        _quantize_weight(graph, w, axis)
        done.add(w)
        quantized += 1
        if name == "FULLY_CONNECTED":
            op.builtinOptions.asymmetricQuantizeInputs = True
    why = {"DEPTHWISE_CONV_2D": "no accelerated hybrid kernel (XNNPACK runs it in float; hybrid was 2.3x slower)",
           "small weights": f"fewer than {MIN_WEIGHTS_ELEMENTS} weights: not worth a hybrid kernel"}
    return {"quantized": quantized, "kept_float": [{"what": k, "ops": n, "why": why[k]} for k, n in kept.items()]}


# A LOGISTIC / SOFTMAX output whose calibrated range holds fewer of its fixed scale's steps than
# this stays float (the class scores of a detector whose objects are rare or absent: 1e-4 rounds
# to 0 with LOGISTIC's 1/256; the int8 ONNX gives that tensor its own, finer scale).
MIN_FIXED_SCALE_STEPS = 32


def _narrow_fixed_outputs(graph: TfliteGraph, names: dict, code_of: dict, onnx_ranges: dict, measured: dict) -> list:
    """(op, builtin name, calibrated max) of the fixed-scale ops whose output range is too narrow for it."""
    found = []
    for op in graph.operators:
        name = names[code_of[op.opcodeIndex]]
        if name not in ("LOGISTIC", "SOFTMAX"):
            continue
        t = graph.tensors[op.outputs[0]].name
        r = onnx_ranges.get(t) or measured.get(t)
        if r is not None and r[1] < MIN_FIXED_SCALE_STEPS * FIXED[name][0]:
            found.append((op, name, float(r[1])))
    return found


def _keep_float(graph: TfliteGraph, float_nodes: set[str] | frozenset[str], consts: set[int],
                also: set[int] = frozenset()) -> tuple[set[int], dict[int, str], set[int]]:
    """Mark the operators lowered from `float_nodes` as float and put DEQUANTIZE / QUANTIZE at the
    borders between them and the int8 operators. Returns the ids of the float operators (the new
    DEQUANTIZEs included), for each new int8 tensor the name whose range it takes, and the float
    tensors that a new QUANTIZE reads."""
    float_ops = {id(op) for op in graph.operators if graph.origin.get(id(op), set()) & set(float_nodes)} | set(also)
    if not float_ops:
        return set(), {}, set()
    producer = {o: op for op in graph.operators for o in op.outputs}
    readers: dict[int, list] = {}
    for op in graph.operators:
        for i in op.inputs:
            readers.setdefault(i, []).append(op)
    graph_inputs = set(graph.inputs)

    def is_float(t: int) -> bool:  # a tensor that stays float: made by a float op, or an input only they read
        if t in producer:
            return id(producer[t]) in float_ops
        return t in graph_inputs and all(id(r) in float_ops for r in readers.get(t, []))

    range_of: dict[int, str] = {}
    borders: set[int] = set()
    new_ops: list = []
    dequantized: dict[int, int] = {}
    for op in graph.operators:
        if id(op) in float_ops:
            for pos, t in enumerate(op.inputs):
                if t < 0 or t in consts or is_float(t) or graph.tensors[t].type != graph.s.TensorType.FLOAT32:
                    continue
                if t not in dequantized:  # an int8 tensor read by a float op: one DEQUANTIZE per tensor
                    dequantized[t] = graph.tensor(graph.tensors[t].name + "_float", graph.shape_of(t), np.float32)
                    graph.op("DEQUANTIZE", [t], [dequantized[t]])
                    deq = graph.operators.pop()
                    float_ops.add(id(deq))
                    new_ops.append(deq)
                op.inputs[pos] = dequantized[t]
            new_ops.append(op)
            for t in op.outputs:
                int8_readers = [r for r in readers.get(t, []) if id(r) not in float_ops]
                if not int8_readers:
                    continue
                q = graph.tensor(graph.tensors[t].name + "_int8", graph.shape_of(t), np.float32)
                range_of[q] = graph.tensors[t].name
                borders.add(t)
                graph.op("QUANTIZE", [t], [q])
                new_ops.append(graph.operators.pop())
                for r in int8_readers:
                    r.inputs = [q if i == t else i for i in r.inputs]
        else:
            new_ops.append(op)
    graph.operators = new_ops
    return float_ops, range_of, borders


def _read_only_by(graph: TfliteGraph, float_ops: set[int]) -> set[int]:
    """Tensors that only float operators produce or read (they keep float32)."""
    touched_int8 = {i for op in graph.operators if id(op) not in float_ops for i in [*op.inputs, *op.outputs]}
    touched_float = {i for op in graph.operators if id(op) in float_ops for i in [*op.inputs, *op.outputs]}
    return touched_float - touched_int8


def _quantize_weight(graph: TfliteGraph, index: int, axis: int, min_scales: np.ndarray | None = None) -> np.ndarray:
    arr = _buffer_array(graph, index)
    moved = np.moveaxis(arr, axis, 0).reshape(arr.shape[axis], -1)
    amax = np.abs(moved).max(axis=1)
    scales = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float64)
    if min_scales is not None:
        scales = np.maximum(scales, np.broadcast_to(min_scales, scales.shape))
    shape = [1] * arr.ndim
    shape[axis] = -1
    q = np.clip(np.round(arr / scales.reshape(shape)), -127, 127).astype(np.int8)
    _set_buffer(graph, index, q)
    _set_quant(graph, index, scales.tolist(), [0] * len(scales), axis=axis)
    return scales


def _quantize_per_tensor(graph: TfliteGraph, index: int, scale: float, zp: int) -> None:
    arr = _buffer_array(graph, index)
    with np.errstate(over="ignore"):  # a max pool's -FLT_MAX pad value saturates to -128, as it should
        _set_buffer(graph, index, np.clip(np.round(arr / scale) + zp, -128, 127).astype(np.int8))
    _set_quant(graph, index, [scale], [zp])


def _quantize_bias(graph: TfliteGraph, index: int, scales: np.ndarray) -> None:
    arr = _buffer_array(graph, index).astype(np.float64)
    scales = np.broadcast_to(scales, arr.shape)
    q = np.clip(np.round(arr / scales), -(2**31), 2**31 - 1).astype(np.int32)
    _set_buffer(graph, index, q)
    graph.tensors[index].type = graph.s.TensorType.INT32
    _set_quant(graph, index, scales.tolist(), [0] * len(scales), axis=0)


def _buffer_array(graph: TfliteGraph, index: int) -> np.ndarray:
    t = graph.tensors[index]
    data = np.asarray(graph.buffers[t.buffer].data, dtype=np.uint8).tobytes()
    return np.frombuffer(data, dtype=np.float32).reshape(t.shape)


def _set_buffer(graph: TfliteGraph, index: int, array: np.ndarray) -> None:
    t = graph.tensors[index]
    graph.buffers[t.buffer].data = np.frombuffer(np.ascontiguousarray(array).tobytes(), dtype=np.uint8)
    t.type = {np.dtype(np.int8): graph.s.TensorType.INT8, np.dtype(np.int32): graph.s.TensorType.INT32}[array.dtype]


def _set_quant(graph: TfliteGraph, index: int, scales: list[float], zps: list[int], axis: int = 0) -> None:
    q = graph.s.QuantizationParametersT()
    q.scale = [float(x) for x in scales]
    q.zeroPoint = [int(z) for z in zps]
    q.quantizedDimension = axis
    graph.tensors[index].quantization = q


def _rename_int8(graph: TfliteGraph, index: int) -> str:
    """Give an int8 IO tensor a new name and free its ONNX name for the float tensor beside it."""
    t = graph.tensors[index]
    name = t.name
    t.name = graph._unique(name + "_int8")
    graph.names.discard(name)
    return name


def _float_io(graph: TfliteGraph) -> None:
    """Float inputs/outputs: one QUANTIZE after each input, one DEQUANTIZE before each output."""
    s = graph.s
    first: list = []
    for pos, i in enumerate(list(graph.inputs)):
        t = graph.tensors[i]
        if t.type != s.TensorType.INT8:
            continue
        f = graph.tensor(_rename_int8(graph, i), t.shape, np.float32)
        graph.inputs[pos] = f
        graph.op("QUANTIZE", [f], [i])
        first.append(graph.operators.pop())
    graph.operators[:0] = first
    for pos, i in enumerate(list(graph.outputs)):
        t = graph.tensors[i]
        if t.type != s.TensorType.INT8:
            continue
        f = graph.tensor(_rename_int8(graph, i), t.shape, np.float32)
        graph.outputs[pos] = f
        graph.op("DEQUANTIZE", [i], [f])
