"""A short way to write an ONNX op that TFLite has no builtin for as a few builtins in a row (Selu as
MAXIMUM, MINIMUM, EXP, SUB, MUL, ADD): `Chain` names the intermediate tensors after the node, works
out each result's shape by broadcasting, and gives each builtin its options table."""
from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from edgepack.converters.export_tflite.graph import TVal, _np_type
from edgepack.converters.export_tflite.registry import Ctx

OPTIONS = {"ADD": "AddOptions", "SUB": "SubOptions", "MUL": "MulOptions", "DIV": "DivOptions",
           "MAXIMUM": "MaximumMinimumOptions", "MINIMUM": "MaximumMinimumOptions", "POW": "PowOptions",
           "FLOOR_MOD": "FloorModOptions", "FLOOR_DIV": "FloorDivOptions", "SQUARED_DIFFERENCE": "SquaredDifferenceOptions",
           "LESS": "LessOptions", "GREATER": "GreaterOptions", "LESS_EQUAL": "LessEqualOptions",
           "GREATER_EQUAL": "GreaterEqualOptions", "EQUAL": "EqualOptions", "NOT_EQUAL": "NotEqualOptions",
           "SELECT_V2": "SelectV2Options", "LOGICAL_AND": "LogicalAndOptions", "LOGICAL_OR": "LogicalOrOptions",
           "LOGICAL_NOT": "LogicalNotOptions", "ABS": "AbsOptions", "SQUARE": "SquareOptions",
           "CAST": "CastOptions", "TILE": "TileOptions", "ADD_N": "AddNOptions", "BATCH_MATMUL": "BatchMatMulOptions",
           "SIGN": "SignOptions", "SUM": "ReducerOptions", "MEAN": "ReducerOptions", "REDUCE_MAX": "ReducerOptions", "EXP": "ExpOptions", "ARG_MAX": "ArgMaxOptions", "ARG_MIN": "ArgMinOptions",
           "ONE_HOT": "OneHotOptions", "GATHER": "GatherOptions", "CONCATENATION": "ConcatenationOptions", "SOFTMAX": "SoftmaxOptions",
           "RESHAPE": "ReshapeOptions", "AVERAGE_POOL_2D": "Pool2DOptions", "PADV2": "PadV2Options", "GATHER_ND": "GatherNdOptions", "SCATTER_ND": "ScatterNdOptions"}
_BOOL_RESULT = {"LESS", "GREATER", "LESS_EQUAL", "GREATER_EQUAL", "EQUAL", "NOT_EQUAL", "LOGICAL_AND", "LOGICAL_OR",
                "LOGICAL_NOT"}


class Chain:
    def __init__(self, ctx: Ctx, node: ir.Node) -> None:
        self.ctx, self.g = ctx, ctx.g
        self.name = node.name or node.outputs[0].name
        self.k = 0

    def const(self, value, dtype=np.float32) -> int:
        self.k += 1
        return self.g.const(np.asarray(value, dtype), f"{self.name}_c{self.k}")

    def op(self, builtin: str, *inputs: int, out: int | None = None, shape: list[int] | None = None,
           dtype=None, **options) -> int:
        """One builtin on tensor indices; the result is a new tensor (or `out`), shaped by broadcasting."""
        g = self.g
        if out is None:
            if shape is None:
                shape = list(np.broadcast_shapes(*(tuple(g.shape_of(i)) for i in inputs)))
            if dtype is None:
                dtype = np.bool_ if builtin in _BOOL_RESULT else _np_type(g.tensors[inputs[0]].type)
            self.k += 1
            out = g.tensor(f"{self.name}_{builtin.lower()}{self.k}", shape, dtype)
        kind = OPTIONS.get(builtin)
        g.op(builtin, list(inputs), [out], g.options(kind, **options) if kind else None)
        return out

    def output(self, value: ir.Value, like: TVal) -> int:
        """The tensor for ONNX output `value`, in the layout of `like`."""
        return self.ctx.out(value, like.perm, feature_perm=like.feature_perm).index


def erf_chain(c: Chain, x: int, out: int | None = None) -> int:
    """erf(x) in float32 to ~2e-7: a Taylor series below |x| = 0.5 (relative accuracy near 0),
    Abramowitz & Stegun 7.1.26 above (absolute error 1.5e-7), the sign put back."""
    a = c.op("ABS", x)
    sq = c.op("MUL", x, x)
    series = c.const(1 / 216)
    for coef in (-1 / 42, 1 / 10, -1 / 3, 1.0):
        series = c.op("ADD", c.op("MUL", series, sq), c.const(coef))
    small = c.op("MUL", c.op("MUL", series, x), c.const(2 / math.sqrt(math.pi)))
    t = c.op("DIV", c.const(1.0), c.op("ADD", c.op("MUL", a, c.const(0.3275911)), c.const(1.0)))
    poly = c.const(1.061405429)
    for coef in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly = c.op("ADD", c.op("MUL", poly, t), c.const(coef))
    poly = c.op("MUL", poly, t)
    large = c.op("SUB", c.const(1.0), c.op("MUL", poly, c.op("EXP", c.op("NEG", sq))))
    large = c.op("MUL", large, c.op("SIGN", x))
    return c.op("SELECT_V2", c.op("LESS", a, c.const(0.5)), small, large, out=out)
