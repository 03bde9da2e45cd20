"""Export options: frozen dataclasses validated on construction.

No string-keyed option bags: a typo is an error, and nothing the user asked for is rewritten
silently."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from edgepack.errors import UsageError
from edgepack.formats import parse_formats

_SHAPE_RE = re.compile(r"^\d+(x\d+)*$")
LAYOUTS = ("nchw", "nhwc")


@dataclass(frozen=True)
class InputSpec:
    """One model input: optional name and a static shape."""

    name: str | None
    shape: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> "InputSpec":
        """`1x3x224x224` or `name:1x3x224x224`."""
        name, _, dims = text.strip().rpartition(":")
        dims = dims.lower().replace(",", "x").replace(" ", "")
        if not _SHAPE_RE.match(dims) or any(int(d) == 0 for d in dims.split("x")):
            raise UsageError(
                f"--input-shape {text!r} is not a shape; write positive dims joined by 'x', e.g. 1x3x224x224 or image:1x3x224x224"
            )
        return cls(name or None, tuple(int(d) for d in dims.split("x")))

    def __str__(self) -> str:
        dims = "x".join(map(str, self.shape))
        return f"{self.name}:{dims}" if self.name else dims


@dataclass(frozen=True)
class Preprocessing:
    """How raw data becomes the model input; recorded in the report for `pack` to reproduce."""

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: float | None = None
    bgr: bool = False
    layout: str | None = None

    def __post_init__(self) -> None:
        if self.layout is not None and self.layout not in LAYOUTS:
            raise UsageError(f"--layout {self.layout!r} is not one of {', '.join(LAYOUTS)}")
        if self.std is not None and any(s == 0 for s in self.std):
            raise UsageError("--std has a zero entry; every std must be non-zero")
        if self.mean is not None and self.std is not None and len(self.mean) not in (1, len(self.std)) and len(self.std) != 1:
            raise UsageError(f"--mean has {len(self.mean)} values and --std {len(self.std)}; give one per channel for both")

    def is_empty(self) -> bool:
        return self == Preprocessing()

    def to_json(self) -> dict | None:
        if self.is_empty():
            return None
        return {
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
            "scale": self.scale,
            "color_order": "bgr" if self.bgr else "rgb",
            "layout": self.layout or "nchw",
        }


def parse_floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not a comma-separated list of numbers, e.g. 0.485,0.456,0.406") from None


@dataclass(frozen=True)
class ExportOptions:
    output_dir: Path
    formats: tuple[str, ...] = ("onnx",)
    target: str = "host"
    inputs: tuple[InputSpec, ...] = ()
    name: str | None = None
    allow_pickle: bool = False
    arch: str | None = None
    calib: Path | None = None
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    opset: int = 18
    seed: int = 0
    verify_samples: int = 8
    holdout_fraction: float = 0.2
    fp32_tolerance: float | None = None
    prune: bool = True
    prune_approx: bool = False
    round_channels: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "formats", parse_formats(self.formats))
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        if self.calib is not None:
            object.__setattr__(self, "calib", Path(self.calib))
        if self.round_channels < 1:
            raise UsageError(f"--round-channels {self.round_channels} must be 1 or more (1 = no rounding)")
        if self.prune_approx and not self.prune:
            raise UsageError("--prune-approx and --no-prune contradict each other; pass one of them")
        if self.opset < 17:
            raise UsageError(f"--opset {self.opset} is too old; edgepack exports opset 17 or newer")
        if not 0 < self.holdout_fraction < 1:
            raise UsageError("holdout_fraction must be between 0 and 1")
        if self.verify_samples < 1:
            raise UsageError("verify_samples must be >= 1")
        named = [i.name for i in self.inputs]
        if len(self.inputs) > 1 and any(n is None for n in named):
            raise UsageError("with several --input-shape flags, name each one: --input-shape name:1x3x224x224")
        if len(set(named)) != len(named):
            raise UsageError(f"--input-shape names an input twice: {named}")
        if self.arch is not None and ":" not in self.arch:
            raise UsageError(f"--arch {self.arch!r} must be 'package.module:factory' (a callable that returns the nn.Module)")
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")):
            raise UsageError(f"--name {self.name!r} must be a plain file name stem, e.g. mobilenet")
