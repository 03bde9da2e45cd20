"""PyTorch -> ONNX with torch.onnx.export: the dynamo exporter first, the TorchScript exporter when
dynamo fails (and always for TorchScript inputs). When both fail, the error names the module and
the op that broke: from the FX node the dynamo exporter was translating (its `nn_module_stack`),
else from the scope of the failing op in the TorchScript exporter's IR dump, else from the deepest
traceback frame whose `self` is a submodule of the model."""
from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any

from edgepack.errors import ConversionError

_OP_RE = re.compile(r"(aten::[A-Za-z0-9_.]+|aten\.[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?|torch\.ops\.[A-Za-z0-9_.]+)")
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# a line of the TorchScript IR dump: `%y : Float(...) = aten::op(%x), scope: pkg.Net::/pkg.Block::block.1 # file:line`
_SCOPE_RE = re.compile(r"=\s*(?P<op>[a-z_]+::[A-Za-z0-9_]+)\(.*?\), scope: (?P<scope>\S+)")


@dataclass
class TorchExport:
    model_proto: Any  # onnx.ModelProto
    exporter: str  # "dynamo" or "torchscript"
    fallback_reason: str | None


def torch_to_onnx(model: Any, kind: str, args: tuple, input_names: list[str], output_names: list[str], opset: int) -> TorchExport:
    import numpy as np
    import torch

    args = tuple(torch.from_numpy(np.array(a, order="C")) if isinstance(a, np.ndarray) else a for a in args)
    errors: dict[str, BaseException] = {}
    logs: dict[str, str] = {}
    if kind != "torchscript":
        try:
            return TorchExport(_export_dynamo(model, args, input_names, output_names, opset, logs), "dynamo", None)
        except Exception as exc:  # any exporter failure: fall back, keep the reason
            errors["dynamo"] = exc
    try:
        target = model.module() if isinstance(model, torch.export.ExportedProgram) else model
        proto = _export_torchscript(target, args, input_names, output_names, opset, logs)
        reason = _root_line(errors["dynamo"]) if "dynamo" in errors else None
        return TorchExport(proto, "torchscript", reason)
    except Exception as exc:
        errors["torchscript"] = exc
    raise ConversionError(_describe_failure(model, errors, logs.get("torchscript", "")))


def _export_dynamo(model: Any, args: tuple, input_names: list[str], output_names: list[str], opset: int,
                   logs: dict[str, str]) -> Any:
    import torch

    with _quiet(logs, "dynamo"):
        program = torch.onnx.export(
            model, args, dynamo=True, optimize=True, opset_version=opset, input_names=input_names, output_names=output_names,
            external_data=False, verbose=False, report=False,
        )
    return program.model_proto


def _export_torchscript(model: Any, args: tuple, input_names: list[str], output_names: list[str], opset: int,
                        logs: dict[str, str]) -> Any:
    import onnx
    import torch

    buf = io.BytesIO()
    with _quiet(logs, "torchscript"):
        torch.onnx.export(
            model, args, buf, dynamo=False, opset_version=opset, input_names=input_names, output_names=output_names,
            do_constant_folding=True, training=torch.onnx.TrainingMode.EVAL,
        )
    return onnx.load_model_from_string(buf.getvalue())


@contextlib.contextmanager
def _quiet(logs: dict[str, str] | None = None, key: str = ""):
    """The exporters print progress to stdout and warn freely, and the TorchScript exporter's C++
    side dumps its whole IR graph to stderr when an op fails. Keep stdout clean for --json and
    stderr to the one-line error: both are captured at the file-descriptor level, and what was
    written is kept in `logs[key]` (the IR dump tells which module the failing op belongs to)."""
    import logging

    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "torch._export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    captured: list[str] = []
    try:
        with warnings.catch_warnings(), _capture_fds(captured), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if logs is not None:
            logs[key] = "".join(captured)


@contextlib.contextmanager
def _capture_fds(captured: list[str]):
    """Point file descriptors 1 and 2 at a temporary file; on exit append what was written to `captured`."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved: list[tuple[int, int]] = []
    with tempfile.TemporaryFile() as sink:
        try:
            for fd in (1, 2):
                try:
                    saved.append((fd, os.dup(fd)))
                    os.dup2(sink.fileno(), fd)
                except OSError:  # no such descriptor (embedded interpreter): nothing to capture there
                    pass
            yield
        finally:
            for fd, original in reversed(saved):
                os.dup2(original, fd)
                os.close(original)
            sink.seek(0)
            captured.append(sink.read().decode("utf-8", "replace"))


def _describe_failure(model: Any, errors: dict[str, BaseException], ts_log: str = "") -> str:
    module_name = None
    op = None
    for exc in errors.values():  # dynamo first: its FX node knows its module exactly
        node = _failing_node(exc)
        if node is not None:
            module_name = module_name or _node_module(node)
            op = op or _node_op(node)
    scope_module, scope_op = _scope_from_ir_dump(ts_log, errors.get("torchscript"))
    module_name = module_name or scope_module
    op = op or scope_op
    for exc in errors.values():
        module_name = module_name or _blame_module(model, exc)
        op = op or _find_op(exc)
    where = []
    if module_name:
        where.append(f"module {module_name}")
    if op:
        where.append(f"op {op}")
    parts = "; ".join(f"{name} exporter: {_root_line(exc)}" for name, exc in errors.items())
    location = f" at {' / '.join(where)}" if where else ""
    return (
        f"could not convert the model to ONNX{location} ({parts}); rewrite that part with ONNX-exportable ops, "
        "or export ONNX yourself and pass the .onnx file"
    )


def _chain(exc: BaseException | None) -> list[BaseException]:
    """The exception and its causes/contexts, outermost first."""
    out: list[BaseException] = []
    while exc is not None and all(exc is not e for e in out):
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _failing_node(exc: BaseException) -> Any:
    """The torch.fx Node the dynamo exporter was translating when it failed, if any."""
    import torch

    for e in _chain(exc):
        tb = e.__traceback__
        found = None
        while tb is not None:
            node = tb.tb_frame.f_locals.get("node")
            if isinstance(node, torch.fx.Node) and node.op == "call_function":
                found = node
            tb = tb.tb_next
        if found is not None:
            return found
    return None


def _node_module(node: Any) -> str | None:
    stack = node.meta.get("nn_module_stack") or {}
    entries = [v for v in stack.values() if isinstance(v, tuple) and len(v) == 2 and v[0]]
    if not entries:
        return None
    path, type_name = entries[-1]
    return f"'{_clean_path(str(path))}' ({str(type_name).rsplit('.', 1)[-1]})"


def _clean_path(path: str) -> str:
    """`L['self'].block[1]` (older torch) -> `block.1`; `block.1` stays."""
    path = re.sub(r"^L\['self'\]\.?", "", path)
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    return path.strip(".")


def _node_op(node: Any) -> str | None:
    target = getattr(node.target, "name", None)
    name = target() if callable(target) else str(node.target)
    return name.replace("::", ".") if name else None


def _scope_from_ir_dump(log: str, exc: BaseException | None) -> tuple[str | None, str | None]:
    """The TorchScript exporter names the op (`aten::cummax`) in its error and, in the IR dump it
    writes to stderr, the scope of the node: `pkg.Net::/pkg.Block::block.1`."""
    if not log or exc is None:
        return None, None
    named = re.search(r"operator '([a-z_]+::[A-Za-z0-9_]+)'", str(exc))
    for match in _SCOPE_RE.finditer(log):
        if named and match.group("op") != named.group(1):
            continue
        # components `Type::name`; traced modules give full names (block, block.1), scripted ones local names (block, 1)
        path, type_name = "", ""
        for part in match.group("scope").strip("/").split("/")[1:]:
            type_name, _, name = part.partition("::")
            path = name if "." in name or not path else f"{path}.{name}"
        if not path:
            return None, match.group("op")
        return f"'{path}' ({type_name.rsplit('.', 1)[-1]})", match.group("op")
    return None, None


def _blame_module(model: Any, exc: BaseException) -> str | None:
    import torch

    root = model.module() if isinstance(model, torch.export.ExportedProgram) else model
    if not isinstance(root, torch.nn.Module):
        return None
    names = {id(m): (n or "<root>", type(m).__name__) for n, m in root.named_modules()}
    found = None
    for e in _chain(exc):
        tb = e.__traceback__
        while tb is not None:
            obj = tb.tb_frame.f_locals.get("self")
            if id(obj) in names and (names[id(obj)][0] != "<root>" or found is None):
                found = names[id(obj)]
            tb = tb.tb_next
    return f"'{found[0]}' ({found[1]})" if found else None


def _find_op(exc: BaseException) -> str | None:
    for e in _chain(exc):
        match = _OP_RE.search(str(e))
        if match:
            return match.group(1)
    return None


def _root_line(exc: BaseException) -> str:
    """The first line of the innermost cause: the dynamo exporter wraps the real reason ("No ONNX
    function found for aten.cummax") in a generic "step 3/3" message."""
    chain = _chain(exc)
    return _first_line(chain[-1]) if chain else _first_line(exc)


def _first_line(exc: BaseException) -> str:
    for line in _ANSI_RE.sub("", str(exc)).strip().splitlines():
        line = line.strip()
        if line and not line.startswith(("Traceback", "[torch.onnx]")):
            return line if len(line) < 240 else line[:237] + "..."
    return type(exc).__name__
