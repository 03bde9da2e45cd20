"""PyTorch -> ONNX with torch.onnx.export: the dynamo exporter first, the TorchScript exporter when
dynamo fails (and always for TorchScript inputs). When both fail, the error names the module and
the op that broke, found by walking the exception's traceback for the deepest frame whose `self`
is a submodule of the model."""
from __future__ import annotations

import contextlib
import io
import re
import warnings
from dataclasses import dataclass
from typing import Any

from edgepack.errors import ConversionError

_OP_RE = re.compile(r"(aten::[A-Za-z0-9_.]+|aten\.[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?|torch\.ops\.[A-Za-z0-9_.]+)")


@dataclass
class TorchExport:
    model_proto: Any  # onnx.ModelProto
    exporter: str  # "dynamo" or "torchscript"
    fallback_reason: str | None


def torch_to_onnx(model: Any, kind: str, args: tuple, input_names: list[str], output_names: list[str], opset: int) -> TorchExport:
    import torch

    errors: dict[str, BaseException] = {}
    if kind != "torchscript":
        try:
            return TorchExport(_export_dynamo(model, args, input_names, output_names, opset), "dynamo", None)
        except Exception as exc:  # any exporter failure: fall back, keep the reason
            errors["dynamo"] = exc
    try:
        target = model.module() if isinstance(model, torch.export.ExportedProgram) else model
        proto = _export_torchscript(target, args, input_names, output_names, opset)
        reason = _first_line(errors["dynamo"]) if "dynamo" in errors else None
        return TorchExport(proto, "torchscript", reason)
    except Exception as exc:
        errors["torchscript"] = exc
    raise ConversionError(_describe_failure(model, errors))


def _export_dynamo(model: Any, args: tuple, input_names: list[str], output_names: list[str], opset: int) -> Any:
    import torch

    with _quiet():
        program = torch.onnx.export(
            model, args, dynamo=True, optimize=True, opset_version=opset, input_names=input_names, output_names=output_names,
            external_data=False, verbose=False, report=False,
        )
    return program.model_proto


def _export_torchscript(model: Any, args: tuple, input_names: list[str], output_names: list[str], opset: int) -> Any:
    import onnx
    import torch

    buf = io.BytesIO()
    with _quiet():
        torch.onnx.export(
            model, args, buf, dynamo=False, opset_version=opset, input_names=input_names, output_names=output_names,
            do_constant_folding=True, training=torch.onnx.TrainingMode.EVAL,
        )
    return onnx.load_model_from_string(buf.getvalue())


@contextlib.contextmanager
def _quiet():
    """The exporters print progress to stdout and warn freely; keep stdout clean for --json."""
    import logging

    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "torch._export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _describe_failure(model: Any, errors: dict[str, BaseException]) -> str:
    module_name = None
    op = None
    for exc in errors.values():
        module_name = module_name or _blame_module(model, exc)
        op = op or _find_op(exc)
    where = []
    if module_name:
        where.append(f"module {module_name}")
    if op:
        where.append(f"op {op}")
    parts = "; ".join(f"{name} exporter: {_first_line(exc)}" for name, exc in errors.items())
    location = f" at {' / '.join(where)}" if where else ""
    return (
        f"could not convert the model to ONNX{location} ({parts}); rewrite that part with ONNX-exportable ops, "
        "or export ONNX yourself and pass the .onnx file"
    )


def _blame_module(model: Any, exc: BaseException) -> str | None:
    import torch

    root = model.module() if isinstance(model, torch.export.ExportedProgram) else model
    if not isinstance(root, torch.nn.Module):
        return None
    names = {id(m): (n or "<root>", type(m).__name__) for n, m in root.named_modules()}
    found = None
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        tb = exc.__traceback__
        while tb is not None:
            obj = tb.tb_frame.f_locals.get("self")
            if id(obj) in names and names[id(obj)][0] != "<root>" or (found is None and id(obj) in names):
                found = names[id(obj)]
            tb = tb.tb_next
        exc = exc.__cause__ or exc.__context__
    return f"'{found[0]}' ({found[1]})" if found else None


def _find_op(exc: BaseException) -> str | None:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        match = _OP_RE.search(str(exc))
        if match:
            return match.group(1)
        exc = exc.__cause__ or exc.__context__
    return None


def _first_line(exc: BaseException) -> str:
    for line in str(exc).strip().splitlines():
        line = line.strip()
        if line and not line.startswith(("Traceback", "[torch.onnx]")):
            return line if len(line) < 240 else line[:237] + "..."
    return type(exc).__name__
