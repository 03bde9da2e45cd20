"""Graph passes and exporters: one module per pass (verb_object) or per exporter.

Every pass takes an `onnx_ir.Model`, rewrites it in place and returns a `PassResult` saying what
changed and, for what it left alone, why."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir


@dataclass
class PassResult:
    name: str
    modified: bool
    counts: dict[str, int] = field(default_factory=dict)
    details: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "modified": self.modified,
            "counts": dict(self.counts),
            "details": list(self.details),
            "skipped": list(self.skipped),
            **({"extra": dict(self.extra)} if self.extra else {}),
        }


class UniqueNames:
    """Fresh value names for what a pass adds (initializers, node outputs), unique in the graph."""

    def __init__(self, graph: ir.Graph) -> None:
        self.used = {v.name for v in graph.initializers.values()} | {v.name for v in graph.inputs}
        for node in graph:
            self.used.update(o.name for o in node.outputs if o.name)
            self.used.update(i.name for i in node.inputs if i is not None and i.name)

    def fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name


# ---------------------------------------------------------------- small graph helpers shared by passes


def const_value(value: ir.Value | None) -> np.ndarray | None:
    """The value's constant array (an initializer or a Constant's output), else None."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def static_shape(value: ir.Value | None) -> tuple[int | ir.SymbolicDim, ...] | None:
    """The shape when every dimension but the batch (axis 0, often symbolic) is known."""
    if value is None or value.shape is None:
        return None
    dims = tuple(value.shape)
    return dims if all(isinstance(d, int) for d in dims[1:]) else None


def has_padding(node: ir.Node) -> bool:
    """A Conv/Pool that pads (explicit pads or SAME auto_pad)."""
    if node.attributes.get_string("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER"):
        return True
    return any(p != 0 for p in (node.attributes.get_ints("pads", []) or []))


def attr_f(node: ir.Node, name: str, default: float) -> float:
    return node.attributes.get_float(name, default)


def registrar(table: dict[str, Callable], what: str, *keys: str) -> Callable[[Callable], Callable]:
    """A decorator putting its function in `table` under each of `keys` (per-op tables: channel rules,
    TFLite lowerings); a key registered twice is a ValueError naming both functions, never a silent
    replacement."""
    def register(fn: Callable) -> Callable:
        for key in keys:
            if key in table:
                raise ValueError(f"{what} for {key} is already registered ({table[key].__name__}; again by {fn.__name__})")
            table[key] = fn
        return fn

    return register
