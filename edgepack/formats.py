"""What each exporter can produce: the one capability table the CLI and API validate against.

A format is listed with the precisions it supports and whether its exporter is built yet. Asking
for an unknown format is a usage error; asking for one that is listed but not built yet is an
`UnsupportedError` (exit 4) for that artifact only, so the other formats still get exported."""
from __future__ import annotations

from dataclasses import dataclass

from edgepack.errors import UnsupportedError, UsageError


@dataclass(frozen=True)
class FormatCapability:
    name: str
    extension: str
    precisions: tuple[str, ...]
    built: bool
    note: str = ""


FORMATS: dict[str, FormatCapability] = {
    "onnx": FormatCapability("onnx", "onnx", ("fp32", "fp16", "int8", "int8-weights"), built=True),
    "tflite": FormatCapability("tflite", "tflite", ("fp32", "fp16", "int8", "int8-weights"), built=True),
    "ncnn": FormatCapability("ncnn", "param", ("fp32", "fp16", "int8"), built=True,
                             note="weights stored fp16 unless --ncnn-fp32; needs the ncnn extra (pnnx + ncnn)"),
}


def built_formats() -> list[str]:
    return [name for name, cap in FORMATS.items() if cap.built]


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


def check_buildable(fmt: str, precision: str) -> FormatCapability:
    cap = FORMATS[fmt]
    if not cap.built:
        raise UnsupportedError(
            f"format {fmt!r} is not supported yet ({cap.note}); supported formats: {', '.join(built_formats())}; use --format onnx"
        )
    if precision not in cap.precisions:
        raise UnsupportedError(
            f"format {fmt!r} does not support precision {precision!r} yet; it supports: {', '.join(cap.precisions)}"
            + (f" ({cap.note})" if cap.note else "")
        )
    return cap
