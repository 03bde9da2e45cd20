"""int8 forms XNNPACK takes: rewrite the float TFLite graph, before it is quantized, so that every
int8 operator is one LiteRT's XNNPACK delegate runs.

XNNPACK's delegate (tensorflow/lite/delegates/xnnpack/xnnpack_delegate.cc) takes HARD_SWISH and
GELU in float only (their Visit*Node functions check CheckTensorFloatType): an int8 one runs in
LiteRT's reference kernels and splits the graph into another delegate partition, with an
int8 <-> float handover at each border. Measured on timm lcnet_050 (LiteRT 2.3, x86, 1 thread):
28 int8 HARD_SWISH made 31 partitions and the int8 model 5-10x slower than the fp32 one. Each is
rewritten here as int8 arithmetic XNNPACK delegates (ADD, MUL, LOGISTIC with its fixed output
scale):

- HARD_SWISH(x) = x * relu6(x + 3) / 6: ADD(x, 3) with a fused RELU6, MUL(x, .), MUL(., 1/6);
- GELU(x) (exact or tanh form) = x * sigmoid(z), z = x (a + b x^2) with a = 2 sqrt(2 / pi) and
  b = 0.044715 a (the tanh approximation: 0.5 (1 + tanh(u)) = sigmoid(2u); it differs from the
  exact GELU by under 5e-4, far below an int8 step): MUL(x, x), MUL(., b), ADD(., a), MUL(x, .),
  LOGISTIC, MUL(x, .).

The range of each new tensor follows exactly from the calibrated range of the operator's input
(every step is monotone in x or in x^2) and of its output (x * relu6(x + 3) is 6 times the
HARD_SWISH output): no extra calibration run. Operators the accuracy guard keeps float are left
alone (XNNPACK takes them in float). Returns one row per rewritten operator type for the report.

Written by hand: no converter that writes TFLite without TensorFlow does this."""
from __future__ import annotations

import math

import numpy as np

from edgepack.converters.export_tflite.graph import TfliteGraph
from edgepack.tflite_schema import builtin_names

# Builtins XNNPACK's delegate takes in float but not in int8, with no cheap int8 form: an int8 graph
# keeps them float between DEQUANTIZE and QUANTIZE (both delegated), so the partition holds.
# Measured one op at a time with LiteRT 2.3 (int8: 2 partitions, the op outside; float between
# DEQUANTIZE and QUANTIZE: 1 partition). SOFTMAX, BATCH_MATMUL, MEAN, SUM, REDUCE_MAX, SUB, TANH,
# LOGISTIC, LEAKY_RELU and ELU are delegated in int8 (SOFTMAX too, unlike older delegates).
_FLOAT = "XNNPACK takes {} in float only: kept float between DEQUANTIZE and QUANTIZE, inside the delegate"
XNNPACK_FLOAT_ONLY = {op: _FLOAT.format(op) for op in ("SQRT", "RSQRT", "DIV", "SQUARED_DIFFERENCE", "EXP", "LOG", "ABS",
                                                        "NEG", "MAXIMUM", "MINIMUM")}

GELU_A = 2.0 * math.sqrt(2.0 / math.pi)
GELU_B = 0.044715 * GELU_A


def rewrite_for_xnnpack(graph: TfliteGraph, range_of, keep: set[int]) -> tuple[list[dict], dict[str, tuple[float, float]]]:
    """Rewrite the HARD_SWISH and GELU operators not in `keep` (ids of operators that stay float).
    `range_of(tensor name)` gives a calibrated (min, max) or None. Returns the report rows and the
    ranges of the new tensors, by name. An operator whose input or output range is unknown stays."""
    names = builtin_names()
    code_of = {i: c for c, i in graph.opcodes.items()}
    done: dict[str, int] = {}
    ranges: dict[str, tuple[float, float]] = {}
    new_ops: list = []
    for op in graph.operators:
        name = names[code_of[op.opcodeIndex]]
        if name not in _REWRITES or id(op) in keep:
            new_ops.append(op)
            continue
        x, y = op.inputs[0], op.outputs[0]
        rx, ry = range_of(graph.tensors[x].name), range_of(graph.tensors[y].name)
        if rx is None or ry is None:
            new_ops.append(op)
            continue
        start = len(graph.operators)
        _REWRITES[name](_Emit(graph, graph.tensors[y].name, ranges), x, y, rx, ry)
        made = graph.operators[start:]
        del graph.operators[start:]
        for new in made:
            graph.origin[id(new)] = graph.origin.get(id(op), set())
        new_ops += made
        done[name] = done.get(name, 0) + 1
    graph.operators = new_ops
    why = {"HARD_SWISH": "XNNPACK takes HARD_SWISH in float only: written as int8 ADD (fused RELU6) and MUL",
           "GELU": "XNNPACK takes GELU in float only: written as int8 x * sigmoid(x (a + b x^2)) (MUL, ADD, LOGISTIC)"}
    return [{"op": k, "count": n, "why": why[k]} for k, n in done.items()], ranges


class _Emit:
    """Appends float operators for one rewritten operator, naming its new tensors after it and
    recording each one's range."""

    def __init__(self, graph: TfliteGraph, base: str, ranges: dict) -> None:
        self.g, self.base, self.ranges, self.k = graph, base, ranges, 0

    def const(self, value: float) -> int:
        self.k += 1
        return self.g.const(np.asarray([value], np.float32), f"{self.base}_xnn_c{self.k}")

    def op(self, builtin: str, a: int, b: int | None, lo: float, hi: float, out: int | None = None,
           activation: str = "NONE") -> int:
        g = self.g
        if out is None:
            self.k += 1
            out = g.tensor(f"{self.base}_xnn{self.k}", g.shape_of(a), np.float32)
            self.ranges[g.tensors[out].name] = (float(lo), float(hi))
        act = getattr(g.s.ActivationFunctionType, activation)
        options = {"ADD": ("AddOptions", {"fusedActivationFunction": act}),
                   "MUL": ("MulOptions", {"fusedActivationFunction": act}), "LOGISTIC": (None, {})}[builtin]
        g.op(builtin, [a] if b is None else [a, b], [out], g.options(options[0], **options[1]) if options[0] else None)
        return out


def _hard_swish(e: _Emit, x: int, y: int, rx: tuple, ry: tuple) -> None:
    lo, hi = rx
    relu6 = e.op("ADD", x, e.const(3.0), min(max(lo + 3.0, 0.0), 6.0), min(max(hi + 3.0, 0.0), 6.0), activation="RELU6")
    times6 = e.op("MUL", x, relu6, 6.0 * ry[0], 6.0 * ry[1])
    e.op("MUL", times6, e.const(1.0 / 6.0), *ry, out=y)


def _gelu(e: _Emit, x: int, y: int, rx: tuple, ry: tuple) -> None:
    lo, hi = rx
    sq_hi = max(lo * lo, hi * hi)
    sq_lo = 0.0 if lo <= 0.0 <= hi else min(lo * lo, hi * hi)
    square = e.op("MUL", x, x, sq_lo, sq_hi)
    cubic = e.op("MUL", square, e.const(GELU_B), GELU_B * sq_lo, GELU_B * sq_hi)
    slope = e.op("ADD", cubic, e.const(GELU_A), GELU_A + GELU_B * sq_lo, GELU_A + GELU_B * sq_hi)
    z = e.op("MUL", x, slope, lo * (GELU_A + GELU_B * lo * lo), hi * (GELU_A + GELU_B * hi * hi))
    gate = e.op("LOGISTIC", z, None, _sigmoid(lo * (GELU_A + GELU_B * lo * lo)), _sigmoid(hi * (GELU_A + GELU_B * hi * hi)))
    e.op("MUL", x, gate, *ry, out=y)


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(min(v, 80.0), -80.0)))


_REWRITES = {"HARD_SWISH": _hard_swish, "GELU": _gelu}
