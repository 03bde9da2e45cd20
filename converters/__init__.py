"""Graph passes and exporters: one module per pass (verb_object) or per exporter.

Every pass takes an `onnx_ir.Model`, rewrites it in place and returns a `PassResult` saying what
changed and, for what it left alone, why."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
