"""Export options: grouped frozen dataclasses, validated on construction, defined once.

Each option is one dataclass field. Its metadata (`opt(...)`) carries the help text, the command-line
flag and the parser for text values; `edgepack export`'s click options and the keyword arguments of
`edgepack.export()` are both derived from these fields (`option_fields()`), so the Python name and
the flag can never drift apart. No string-keyed option bags: an unknown keyword is an error, and
nothing the user asked for is rewritten silently."""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepack.errors import UsageError
from edgepack.formats import parse_formats

_SHAPE_RE = re.compile(r"^\d+(x\d+)*$")
SCALAR = "scalar"  # --input-shape spelling of a rank-0 input
LAYOUTS = ("nchw", "nhwc")
CALIB_METHODS = ("minmax", "percentile", "entropy", "mse")


@dataclass(frozen=True)
class Opt:
    """How an option appears on the command line. `flag` defaults to --<field-name-with-dashes>;
    `off_flag` makes a boolean that defaults to True a flag that turns it off (--no-prune);
    `parse` turns text (a flag value, or a str given to the Python API) into the field's value."""

    help: str
    flag: str | None = None
    off_flag: str | None = None
    short: str | None = None
    parse: Callable[[Any], Any] | None = None
    kind: type = str  # click type for the raw text: str, int, float or Path
    is_flag: bool = False
    multiple: bool = False
    choices: tuple[str, ...] | None = None
    cli: bool = True  # False: Python API only

    def flag_for(self, name: str) -> str:
        return self.off_flag or self.flag or "--" + name.replace("_", "-")


def opt(help: str, **kw: Any) -> dict:
    return {"opt": Opt(help, **kw)}


# ---------------------------------------------------------------- value parsers


@dataclass(frozen=True)
class InputSpec:
    """One model input: optional name and a static shape (`()` for a rank-0 scalar)."""

    name: str | None
    shape: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> "InputSpec":
        """`1x3x224x224`, `name:1x3x224x224`, or `scalar` / `name:scalar` for a rank-0 input."""
        name, _, dims = text.strip().rpartition(":")
        dims = dims.lower().replace(",", "x").replace(" ", "")
        if dims == SCALAR:
            return cls(name or None, ())
        if not _SHAPE_RE.match(dims) or any(int(d) == 0 for d in dims.split("x")):
            raise UsageError(
                f"--input-shape {text!r} is not a shape; write positive dims joined by 'x', e.g. 1x3x224x224 or "
                f"image:1x3x224x224, or {SCALAR} (name:{SCALAR}) for a rank-0 input"
            )
        return cls(name or None, tuple(int(d) for d in dims.split("x")))

    def __str__(self) -> str:
        dims = "x".join(map(str, self.shape)) if self.shape else SCALAR
        return f"{self.name}:{dims}" if self.name else dims


def parse_input_shapes(value: Any) -> tuple[InputSpec, ...]:
    """"1x3x224x224", "name:1x3x224x224", a tuple of ints, a list of those, or a dict name -> shape."""
    if value is None:
        return ()
    if isinstance(value, InputSpec):
        return (value,)
    if isinstance(value, str):
        return (InputSpec.parse(value),)
    if isinstance(value, dict):
        return tuple(InputSpec(str(k), tuple(int(d) for d in v)) for k, v in value.items())
    if isinstance(value, (list, tuple)) and value and all(isinstance(d, int) for d in value):
        return (InputSpec(None, tuple(value)),)
    return tuple(v if isinstance(v, InputSpec) else InputSpec.parse(v) if isinstance(v, str) else InputSpec(None, tuple(v))
                 for v in value)


def parse_size(text: Any, flag: str = "--resize") -> tuple[int, int] | None:
    """`224` -> (224, 224); `256x320` -> (256, 320) as (height, width); ints and pairs pass through."""
    if text is None:
        return None
    if isinstance(text, int):
        return (text, text)
    if isinstance(text, (list, tuple)):
        return (int(text[0]), int(text[-1]))
    parts = str(text).lower().replace(" ", "").split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise UsageError(f"{flag} {text!r} is not a size; write N for a square or HxW, e.g. 256 or 224x320")
    dims = [int(p) for p in parts]
    return (dims[0], dims[-1])


def parse_floats(text: Any, flag: str = "--mean") -> tuple[float, ...] | None:
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return (float(text),)
    if isinstance(text, (list, tuple)):
        return tuple(float(v) for v in text)
    try:
        return tuple(float(t) for t in str(text).replace(" ", "").split(",") if t)
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not a comma-separated list of numbers, e.g. 0.485,0.456,0.406") from None


def _path(value: Any) -> Path | None:
    return None if value is None else Path(value)


def _size_parser(flag: str) -> Callable[[Any], tuple[int, int] | None]:
    return lambda v: parse_size(v, flag)


def _floats_parser(flag: str) -> Callable[[Any], tuple[float, ...] | None]:
    return lambda v: parse_floats(v, flag)


def _finite(flag: str, value: float | None, lo: float | None = None, hi: float | None = None) -> None:
    if value is None:
        return
    if not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
        span = f" between {lo} and {hi}" if lo is not None and hi is not None else (f" >= {lo}" if lo is not None else "")
        raise UsageError(f"{flag} {value} must be a finite number{span}")


# ---------------------------------------------------------------- the groups


@dataclass(frozen=True)
class SourceOptions:
    """What the model is and how to read it."""

    input_shape: tuple[InputSpec, ...] = field(default=(), metadata=opt(
        "1x3x224x224 or name:1x3x224x224 (name:scalar for a rank-0 input); repeat per input.", multiple=True, parse=parse_input_shapes))
    name: str | None = field(default=None, metadata=opt("Artifact base name (default: the model file's name)."))
    allow_pickle: bool = field(default=False, metadata=opt(
        "Allow unpickling code from the model file (a pickled nn.Module, an ultralytics checkpoint).", is_flag=True))
    arch: str | None = field(default=None, metadata=opt("package.module:factory that builds the model for a state dict."))

    def __post_init__(self) -> None:
        named = [i.name for i in self.input_shape]
        if len(self.input_shape) > 1 and any(n is None for n in named):
            raise UsageError("with several --input-shape flags, name each one: --input-shape name:1x3x224x224")
        if len(set(named)) != len(named):
            raise UsageError(f"--input-shape names an input twice: {named}")
        if self.arch is not None and ":" not in self.arch:
            raise UsageError(f"--arch {self.arch!r} must be 'package.module:factory' (a callable that returns the nn.Module)")
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}", self.name):
            raise UsageError(f"--name {self.name!r} must be a plain file name stem of letters, digits, '.', '_', '+' "
                             "or '-' (at most 100 characters), e.g. mobilenet")


@dataclass(frozen=True)
class Preprocessing:
    """How raw data becomes the model input; recorded in the report for `pack` to reproduce."""

    mean: tuple[float, ...] | None = field(default=None, metadata=opt(
        "Preprocessing mean per channel, e.g. 0.485,0.456,0.406 (recorded).", parse=_floats_parser("--mean")))
    std: tuple[float, ...] | None = field(default=None, metadata=opt(
        "Preprocessing std per channel (recorded).", parse=_floats_parser("--std")))
    scale: float | None = field(default=None, metadata=opt(
        "Preprocessing scale, e.g. 0.00392 for 1/255 (recorded).", kind=float))
    bgr: bool = field(default=False, metadata=opt("Input colour order is BGR (recorded).", is_flag=True))
    layout: str | None = field(default=None, metadata=opt("Layout of the raw input (recorded).", choices=LAYOUTS))
    # square N: shorter side to N; HxW: exactly that (see calib.py)
    resize: tuple[int, int] | None = field(default=None, metadata=opt(
        "Images: resize, N (shorter side) or HxW (recorded).", parse=_size_parser("--resize")))
    crop: tuple[int, int] | None = field(default=None, metadata=opt(
        "Images: centre crop, N or HxW (recorded).", parse=_size_parser("--crop")))

    def __post_init__(self) -> None:
        for flag, size in (("--resize", self.resize), ("--crop", self.crop)):
            if size is not None and (len(size) != 2 or any(int(d) < 1 for d in size)):
                raise UsageError(f"{flag} {size} must be a positive size: N (square) or HxW")
        if self.layout is not None and self.layout not in LAYOUTS:
            raise UsageError(f"--layout {self.layout!r} is not one of {', '.join(LAYOUTS)}")
        for flag, values in (("--mean", self.mean), ("--std", self.std)):
            for v in values or ():
                _finite(flag, v)
        _finite("--scale", self.scale)
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


def _data_file(flag: str, path: Path | None, folder_ok: bool = False) -> None:
    """A data path that exists must be a regular file (or a folder where allowed): reading a FIFO or
    a device would wait or read forever. (A missing one is reported where it is read.)"""
    if path is None or not Path(path).exists():
        return
    if Path(path).is_file() or (folder_ok and Path(path).is_dir()):
        return
    kind = "a folder" if Path(path).is_dir() else "not a regular file (a pipe or a device)"
    raise UsageError(f"{flag} {path} is {kind}; pass the data file itself" + (" or an image folder" if folder_ok else ""))


@dataclass(frozen=True)
class CalibrationOptions:
    calib: Path | None = field(default=None, metadata=opt(
        ".npy (N, ...), .npz (one array per input) or a folder of images; a seeded 20% of it verifies the "
        "artifacts, the rest calibrates int8.", kind=Path, parse=_path))
    calib_method: str = field(default="mse", metadata=opt(
        "How activation ranges are calibrated: mse = min/max, then per tensor the clipping range of least int8 "
        "error, kept where it raises the int8 cosine on the calibration samples.", choices=CALIB_METHODS))
    calib_samples: int | None = field(default=None, metadata=opt(
        "Use at most N calibration samples (seeded shuffle).", kind=int))
    equalize: bool = field(default=True, metadata=opt(
        "int8: no cross-layer equalization (conv -> [relu] -> conv weight ranges balanced in the float graph the "
        "int8 exporters quantize; kept only where it raises the int8 cosine on the calibration samples).",
        off_flag="--no-equalize", is_flag=True))
    correct_bias: bool = field(default=True, metadata=opt(
        "int8: no bias correction (each layer's mean int8 error on the calibration samples subtracted from its "
        "bias; kept only where it raises the int8 cosine).", off_flag="--no-correct-bias", is_flag=True))
    fold_affine: bool = field(default=True, metadata=opt(
        "Keep constant Mul/Add after convs and written-out hard-swish as they are (by default they are folded into "
        "the convs and fused, exactly in float, so int8 rounds once per layer instead of at every node).",
        off_flag="--no-fold-affine", is_flag=True))

    def __post_init__(self) -> None:
        if self.calib_method not in CALIB_METHODS:
            raise UsageError(f"--calib-method {self.calib_method!r} is not one of {', '.join(CALIB_METHODS)}")
        if self.calib_samples is not None and self.calib_samples < 1:
            raise UsageError(f"--calib-samples {self.calib_samples} must be 1 or more")
        _data_file("--calib", self.calib, folder_ok=True)


@dataclass(frozen=True)
class PruneOptions:
    prune: bool = field(default=True, metadata=opt(
        "Keep pruned (constant) channels instead of removing them.", off_flag="--no-prune", is_flag=True))
    prune_approx: bool = field(default=False, metadata=opt(
        "Also remove constant channels that enter zero-padded convs (inexact at borders; error reported).", is_flag=True))
    round_channels: int | None = field(default=None, metadata=opt(
        "Keep each layer's remaining width a multiple of N (keeps a few dead channels); default: the --target "
        "profile's round_channels (1 = no rounding).", kind=int))

    def __post_init__(self) -> None:
        if self.round_channels is not None and self.round_channels < 1:
            raise UsageError(f"--round-channels {self.round_channels} must be 1 or more (1 = no rounding)")
        if self.prune_approx and not self.prune:
            raise UsageError("--prune-approx and --no-prune contradict each other; pass one of them")


@dataclass(frozen=True)
class PrecisionOptions:
    int8: bool = field(default=False, metadata=opt("Also export full-integer int8 (static, needs --calib).", is_flag=True))
    fp16: bool = field(default=False, metadata=opt(
        "Also export fp16 (weights and compute; fp32 IO unless --fp16-io).", is_flag=True))
    int8_weights_only: bool = field(default=False, metadata=opt(
        "Also export dynamic-range int8 (int8 weights only; no data needed).", is_flag=True))
    fp16_io: bool = field(default=False, metadata=opt("Make the fp16 artifact's inputs and outputs fp16 too.", is_flag=True))
    int8_io: bool = field(default=False, metadata=opt(
        "int8 TFLite: int8 inputs and outputs (scale and zero point in the report).", is_flag=True))
    ncnn_fp32: bool = field(default=False, metadata=opt(
        "ncnn: keep fp32 weights (default: fp16 weight storage, labelled fp16).", is_flag=True))

    @property
    def precisions(self) -> tuple[str, ...]:
        """fp32 always (the base every other precision is made from and compared with)."""
        wanted = [("fp32", True), ("fp16", self.fp16), ("int8", self.int8), ("int8-weights", self.int8_weights_only)]
        return tuple(p for p, on in wanted if on)

    def __post_init__(self) -> None:
        if self.fp16_io and not self.fp16:
            raise UsageError("--fp16-io applies to the fp16 artifact: add --fp16")


@dataclass(frozen=True)
class VerifyOptions:
    seed: int = field(default=0, metadata=opt("Seed for verification samples.", kind=int))
    tolerance: float | None = field(default=None, metadata=opt(
        "Relative-error target for fp32 artifacts (default 1e-4).", kind=float))
    min_cosine: float | None = field(default=None, metadata=opt(
        "Target cosine vs the reference for quantized artifacts.", kind=float))
    min_top1: float | None = field(default=None, metadata=opt(
        "Target top-1 agreement vs the reference for quantized artifacts.", kind=float))
    eval_data: Path | None = field(default=None, metadata=opt(
        ".npz with labels y and the inputs (x, or one array per input name): report each artifact's top-1 accuracy "
        "(or --eval-metric).", flag="--eval", kind=Path, parse=_path))
    eval_metric: str | None = field(default=None, metadata=opt(
        "Score --eval with module:function(outputs, labels) -> float (or file.py:function): outputs is a list of (M, ...) "
        "arrays, one per model output; default: top-1 of the first output."))
    verify_samples: int = field(default=8, metadata=opt("Random verification samples without --calib.", cli=False))
    holdout_fraction: float = field(default=0.2, metadata=opt("Share of --calib held out for verification.", cli=False))

    def __post_init__(self) -> None:
        if self.seed < 0 or self.seed >= 2**32:
            raise UsageError(f"--seed {self.seed} must be between 0 and 2**32-1")
        _finite("--tolerance", self.tolerance, 0.0, None)
        if self.tolerance is not None and self.tolerance <= 0:
            raise UsageError(f"--tolerance {self.tolerance} must be a positive number, e.g. 1e-4")
        for flag, value in (("--min-cosine", self.min_cosine), ("--min-top1", self.min_top1)):
            if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise UsageError(f"{flag} {value} must be between 0 and 1 (e.g. 0.99)")
        if self.eval_metric is not None and (self.eval_data is None or ":" not in self.eval_metric):
            raise UsageError(f"--eval-metric {self.eval_metric!r} needs --eval DATA.npz and the form module:function "
                             "(or file.py:function)")
        if not 0 < self.holdout_fraction < 1:
            raise UsageError("holdout_fraction must be between 0 and 1")
        _data_file("--eval", self.eval_data)
        if self.verify_samples < 1:
            raise UsageError("verify_samples must be >= 1")


@dataclass(frozen=True)
class TargetOptions:
    formats: tuple[str, ...] = field(default=("onnx",), metadata=opt(
        "Comma-separated: onnx,tflite,ncnn.", flag="--format", parse=parse_formats))
    target: str = field(default="host", metadata=opt("Device profile (see `edgepack devices`)."))
    opset: int = field(default=18, metadata=opt("ONNX opset (17 to 23).", kind=int))
    tflite_nchw_input: bool = field(default=False, metadata=opt(
        "TFLite: keep NCHW image inputs and 4-D outputs (one TRANSPOSE at each) instead of NHWC.", is_flag=True))

    def __post_init__(self) -> None:
        object.__setattr__(self, "formats", parse_formats(self.formats))
        if not 17 <= self.opset <= 23:
            raise UsageError(f"--opset {self.opset} is not supported; edgepack exports opset 17 to 23")


GROUPS: dict[str, type] = {
    "source": SourceOptions, "target": TargetOptions, "preprocessing": Preprocessing,
    "calibration": CalibrationOptions, "prune": PruneOptions, "precision": PrecisionOptions, "verify": VerifyOptions,
}


def option_fields() -> Iterator[tuple[str, dataclasses.Field, Opt]]:
    """(group, field, Opt) for every export option, in the order the CLI lists them."""
    for group, cls in GROUPS.items():
        for f in dataclasses.fields(cls):
            yield group, f, f.metadata["opt"]


@dataclass(frozen=True)
class ExportOptions:
    output_dir: Path
    source: SourceOptions = field(default_factory=SourceOptions)
    target: TargetOptions = field(default_factory=TargetOptions)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    prune: PruneOptions = field(default_factory=PruneOptions)
    precision: PrecisionOptions = field(default_factory=PrecisionOptions)
    verify: VerifyOptions = field(default_factory=VerifyOptions)

    @classmethod
    def create(cls, output_dir: str | Path = "out", **values: Any) -> "ExportOptions":
        """From flat keyword arguments named like the fields (the Python API; the CLI passes its
        flags here too). Text values go through each option's parser."""
        known = {f.name: (group, f, o) for group, f, o in option_fields()}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise UsageError(f"unknown export option(s) {', '.join(unknown)}; known: {', '.join(known)}")
        grouped: dict[str, dict[str, Any]] = {g: {} for g in GROUPS}
        for name, value in values.items():
            group, f, o = known[name]
            if o.parse is not None and value is not None and not (isinstance(value, tuple) and f.name == "formats"):
                value = o.parse(value)
            grouped[group][name] = value
        return cls(Path(output_dir), **{g: GROUPS[g](**kw) for g, kw in grouped.items()})

    def replace(self, group: str, **changes: Any) -> "ExportOptions":
        return dataclasses.replace(self, **{group: dataclasses.replace(getattr(self, group), **changes)})

    @property
    def precisions(self) -> tuple[str, ...]:
        return self.precision.precisions

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        p, c, t = self.precision, self.calibration, self.target
        if p.int8 and c.calib is None:
            raise UsageError(
                "--int8 needs calibration data: pass --calib DATA (.npy/.npz or an image folder), "
                "or use --int8-weights-only for dynamic-range int8 weights without data"
            )
        if p.int8_io and not (p.int8 and "tflite" in t.formats):
            raise UsageError("--int8-io applies to the int8 TFLite artifact: add --int8 and --format tflite")
        if p.ncnn_fp32 and "ncnn" not in t.formats:
            raise UsageError("--ncnn-fp32 applies to the ncnn artifact: add --format ncnn")
        v = self.verify
        if (v.min_cosine is not None or v.min_top1 is not None) and not (p.int8 or p.fp16 or p.int8_weights_only):
            raise UsageError("--min-cosine/--min-top1 are targets for quantized artifacts: add --int8, --fp16 or --int8-weights-only")
