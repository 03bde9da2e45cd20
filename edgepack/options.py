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
    resize: tuple[int, int] | None = None  # square N: shorter side to N; HxW: exactly that (see calib.py)
    crop: tuple[int, int] | None = None  # (height, width) of the centre crop

    def __post_init__(self) -> None:
        for flag, size in (("--resize", self.resize), ("--crop", self.crop)):
            if size is not None and (len(size) != 2 or any(int(d) < 1 for d in size)):
                raise UsageError(f"{flag} {size} must be a positive size: N (square) or HxW")
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
            "resize": list(self.resize) if self.resize is not None else None,
            "crop": list(self.crop) if self.crop is not None else None,
        }


def parse_size(text: str | None, flag: str) -> tuple[int, int] | None:
    """`224` -> (224, 224); `256x320` -> (256, 320) as (height, width)."""
    if text is None:
        return None
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise UsageError(f"{flag} {text!r} is not a size; write N for a square or HxW, e.g. 256 or 224x320")
    dims = [int(p) for p in parts]
    return (dims[0], dims[-1])


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
    round_channels: int | None = None  # None: the target profile's round_channels
    int8: bool = False
    fp16: bool = False
    int8_weights_only: bool = False
    fp16_io: bool = False
    calib_method: str = "minmax"
    calib_samples: int | None = None
    min_cosine: float | None = None
    min_top1: float | None = None
    eval_data: Path | None = None
    tflite_nchw_io: bool = False
    int8_io: bool = False
    ncnn_fp32: bool = False

    @property
    def precisions(self) -> tuple[str, ...]:
        """fp32 always (the base every other precision is made from and compared with)."""
        wanted = [("fp32", True), ("fp16", self.fp16), ("int8", self.int8), ("int8-weights", self.int8_weights_only)]
        return tuple(p for p, on in wanted if on)

    def __post_init__(self) -> None:
        object.__setattr__(self, "formats", parse_formats(self.formats))
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        if self.calib is not None:
            object.__setattr__(self, "calib", Path(self.calib))
        if self.int8 and self.calib is None:
            raise UsageError(
                "--int8 needs calibration data: pass --calib DATA (.npy/.npz or an image folder), "
                "or use --int8-weights-only for dynamic-range int8 weights without data"
            )
        if self.calib_method not in ("minmax", "percentile", "entropy"):
            raise UsageError(f"--calib-method {self.calib_method!r} is not one of minmax, percentile, entropy")
        if self.calib_samples is not None and self.calib_samples < 1:
            raise UsageError(f"--calib-samples {self.calib_samples} must be 1 or more")
        if self.int8_io and not (self.int8 and "tflite" in self.formats):
            raise UsageError("--int8-io applies to the int8 TFLite artifact: add --int8 and --format tflite")
        if self.ncnn_fp32 and "ncnn" not in self.formats:
            raise UsageError("--ncnn-fp32 applies to the ncnn artifact: add --format ncnn")
        if self.fp16_io and not self.fp16:
            raise UsageError("--fp16-io applies to the fp16 artifact: add --fp16")
        for flag, value in (("--min-cosine", self.min_cosine), ("--min-top1", self.min_top1)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise UsageError(f"{flag} {value} must be between 0 and 1 (e.g. 0.99)")
        if (self.min_cosine is not None or self.min_top1 is not None) and not (self.int8 or self.fp16 or self.int8_weights_only):
            raise UsageError("--min-cosine/--min-top1 are targets for quantized artifacts: add --int8, --fp16 or --int8-weights-only")
        if self.eval_data is not None:
            object.__setattr__(self, "eval_data", Path(self.eval_data))
        if self.round_channels is not None and self.round_channels < 1:
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
