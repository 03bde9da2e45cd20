"""The one artifact table: format -> file suffix, the runtime that runs it, the precisions it can be
built in, and the module that builds it.

Adding a format is one row here plus one module in `edgepack/artifacts/` that defines
`BUILDERS = {precision: build}` (a test checks that the two agree). Which runtime runs which file is
read from `edgepack.runtimes.RUNTIME_FOR_SUFFIX` (the device side's own table), never restated.
This module stays light: the CLI validates `--format` against it before anything heavy is imported,
and device-side commands (bench, inspect, estimate, pack) read it without converters or torch."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from edgepack.errors import UnsupportedError, UsageError
from edgepack.runtimes import RUNTIME_FOR_SUFFIX


@dataclass(frozen=True)
class Format:
    name: str
    suffix: str  # of the file a runtime loads (an ncnn model is its .param with the .bin beside it)
    precisions: tuple[str, ...]
    module: str  # edgepack.artifacts.<module>: BUILDERS = {precision: build}
    note: str = ""

    @property
    def runtime(self) -> str:
        return RUNTIME_FOR_SUFFIX[self.suffix]

    @property
    def extension(self) -> str:
        return self.suffix.lstrip(".")

    def builders(self) -> ModuleType:
        return importlib.import_module(self.module)


FORMATS: dict[str, Format] = {
    "onnx": Format("onnx", ".onnx", ("fp32", "fp16", "int8", "int8-weights"), "edgepack.artifacts.onnx"),
    "tflite": Format("tflite", ".tflite", ("fp32", "fp16", "int8", "int8-weights"), "edgepack.artifacts.tflite"),
    "ncnn": Format("ncnn", ".param", ("fp32", "fp16", "int8"), "edgepack.artifacts.ncnn",
                   note="weights stored fp16 unless --ncnn-fp32; needs the ncnn extra (pnnx + ncnn)"),
}


def parse_formats(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """`"onnx,tflite"` -> ("onnx", "tflite"); an unknown name is a usage error."""
    names = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    if not names:
        raise UsageError("--format is empty; give one or more of: " + ", ".join(FORMATS))
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise UsageError(f"unknown format(s) {', '.join(unknown)}; known formats: {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(names))


def artifact_precisions(fmt: str, precisions: tuple[str, ...], ncnn_fp32: bool = False) -> tuple[str, ...]:
    """The precisions built for `fmt`. ncnn stores weights fp16 by default (its mobile deployments
    do): the base artifact is the fp16 one, labelled fp16, unless --ncnn-fp32 keeps an fp32 one."""
    if fmt != "ncnn" or ncnn_fp32:
        return precisions
    return tuple(dict.fromkeys("fp16" if p == "fp32" else p for p in precisions))


def check_buildable(fmt: str, precision: str) -> Format:
    cap = FORMATS[fmt]
    if precision not in cap.precisions:
        raise UnsupportedError(
            f"format {fmt!r} does not support precision {precision!r} yet; it supports: {', '.join(cap.precisions)}"
            + (f" ({cap.note})" if cap.note else "")
        )
    return cap
