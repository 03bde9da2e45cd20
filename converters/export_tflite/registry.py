"""Lowering table: ONNX op type -> one small function that emits the TFLite ops for a node.

`@lowering("Conv")` registers a function; a second registration of the same op type is an error
(never a silent override). `Ctx` is what a lowering works with: the ONNX value -> TFLite tensor
map with each tensor's layout, constants, and the graph being built."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from edgepack.converters import registrar
from edgepack.converters.export_tflite.graph import LOWERINGS, NHWC, TfliteGraph, TVal, identity, unsupported



def lowering(*op_types: str) -> Callable:
    """Register the TFLite lowering of `op_types` (one per ONNX op type)."""
    return registrar(LOWERINGS, "a TFLite lowering", *op_types)


FUSABLE = {"Relu": "RELU", "Relu6": "RELU6", "ReluN1To1": "RELU_N1_TO_1"}


class Ctx:
    def __init__(self, model: ir.Model, graph: TfliteGraph) -> None:
        self.model = model
        self.g = graph
        self.values: dict[str, TVal] = {}
        self.skip: set[int] = set()  # ids of nodes already lowered (fused into a previous one)
        self.outputs = {v.name for v in model.graph.outputs}

    # ---------------------------------------------------------------- values

    def val(self, value: ir.Value, node: ir.Node) -> TVal:
        if value.name in self.values:
            return self.values[value.name]
        array = self.const(value)
        if array is not None:  # a constant used as data: stored as given (ONNX layout)
            tv = TVal(self.g.const(array.astype(np.float32) if array.dtype == np.float64 else array, value.name),
                      identity(array.ndim))
            self.values[value.name] = tv
            return tv
        raise unsupported(node, f"reads {value.name!r}, which no supported op produced")

    @staticmethod
    def const(value: ir.Value | None) -> np.ndarray | None:
        if value is None:
            return None
        tensor = ir.convenience.get_const_tensor(value)
        return None if tensor is None else tensor.numpy()

    @staticmethod
    def shape(value: ir.Value) -> tuple[int, ...]:
        if value.shape is None or not all(isinstance(d, int) for d in value.shape):
            from edgepack.errors import UnsupportedError

            raise UnsupportedError(f"TFLite export: {value.name!r} has no static shape ({value.shape}); "
                                   "pass --input-shape, or use --format onnx for this model")
        return tuple(int(d) for d in value.shape)

    def out(self, value: ir.Value, perm: tuple[int, ...] | None = None, dtype=np.float32,
            feature_perm: tuple[int, ...] | None = None) -> TVal:
        """A new tensor for ONNX `value`, stored with axes `perm` (default: NHWC for images)."""
        shape = self.shape(value)
        perm = perm if perm is not None else default_perm(len(shape))
        index = self.g.tensor(value.name, [shape[p] for p in perm], dtype)
        tv = TVal(index, perm, feature_perm)
        self.values[value.name] = tv
        return tv

    def alias(self, value: ir.Value, tv: TVal) -> None:
        self.values[value.name] = tv

    def weight(self, array: np.ndarray, name: str) -> int:
        return self.g.const(np.ascontiguousarray(array, dtype=np.float32), name, weight=True)

    def int_const(self, values, name: str) -> int:
        return self.g.const(np.asarray(values, dtype=np.int32), name)

    def as_perm(self, tv: TVal, perm: tuple[int, ...], name: str) -> TVal:
        return self.g.relayout(tv, perm, name)

    # ---------------------------------------------------------------- fusion

    def fusable_activation(self, node: ir.Node) -> tuple[str, ir.Node] | None:
        """(TFLite fused activation, the activation node) when the only consumer of `node`'s
        output is a Relu / Relu6 / Clip(-1, 1) and that output is not a graph output."""
        out = node.outputs[0]
        if out.name in self.outputs or len(out.uses()) != 1:
            return None
        nxt = out.uses()[0].node
        kind = activation_kind(nxt, self)
        if kind in FUSABLE:
            return FUSABLE[kind], nxt
        return None


def activation_kind(node: ir.Node, ctx: Ctx) -> str | None:
    if node.op_type == "Relu":
        return "Relu"
    if node.op_type == "Clip":
        lo = ctx.const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
        hi = ctx.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        lo = float(lo) if lo is not None else -np.inf
        hi = float(hi) if hi is not None else np.inf
        if lo == 0 and hi == 6:
            return "Relu6"
        if lo == 0 and hi == np.inf:
            return "Relu"
        if lo == -1 and hi == 1:
            return "ReluN1To1"
    return None


def default_perm(rank: int) -> tuple[int, ...]:
    return NHWC.get(rank, identity(rank))
