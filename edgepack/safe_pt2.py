"""Refuse a `.pt2` (torch.export.save) archive that would run code from the file when loaded.

torch.export.load runs code from the archive in three places, whatever the caller asks for:
- pickled members (`data/sample_inputs/*.pt`, weights and constants saved with `use_pickle`,
  opaque and custom objects, the pre-2.7 `serialized_*.pt`): torch tries `weights_only=True` and
  then silently retries with full pickle, or uses full pickle from the start;
- symbolic-shape expressions in `models/*.json` (`expr_str`): parsed with `sympy.sympify`, which
  is Python's `eval`;
- node targets in `models/*.json`: resolved by attribute lookup from the `torch`, `_operator` and
  `math` modules, so `torch.os.system` becomes a graph call that runs when the model runs;
- AOTInductor members (`data/aotinductor/`): compiled shared libraries, loaded as native code.

`check_pt2` inspects each of those before torch sees the archive and names every member that
fails, so only a file that needs it requires `--allow-pickle`. Pickles are checked by torch's own
weights-only unpickler (`torch.load(weights_only=True)` passes the flag explicitly, so
TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot turn it off, and it raises instead of falling back):
the same allowlist torch uses, no copy of it here. Expressions are checked with `ast` against the
sympy constructors torch's serializer writes; node targets are resolved with torch's own
deserializer lookup and must be an operator overload, a higher-order operator or one of the
symbolic-int operators the deserializer accepts.

Imports torch lazily (only a `.pt2` input needs it); the caller already holds the archive's bytes
and passes the same bytes to torch, so the file cannot change between check and load."""
from __future__ import annotations

import ast
import io
import json
import re
import zipfile
from typing import Any

from edgepack.errors import PickleNotAllowed, first_line

# Members torch reads as text or JSON, never unpickles (by their path inside the archive root).
_TEXT_MEMBERS = {"archive_format", "archive_version", "version", "byteorder", ".data/version", ".data/serialization_id"}
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_GLOBAL_RE = re.compile(r"GLOBAL ([A-Za-z_][\w.]*)")
_UNPICKLER_RE = re.compile(r"WeightsUnpickler error: ([^\n]+)")

# sympy constructors that torch.export's serializer writes in expr_str (srepr form), plus the
# torch.utils._sympy functions its deserializer passes to sympify as locals.
_SYMPY_NAMES = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Mod", "Abs", "floor", "ceiling",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan",
    "Equality", "Unequality", "And", "Or", "Not", "true", "false", "oo", "zoo", "nan", "Infinity",
    "NegativeInfinity", "One", "Zero", "NegativeOne", "Half", "S", "sqrt", "Piecewise", "ITE", "BooleanTrue",
    "BooleanFalse", "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt",
    "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv", "TruncToFloat",
    "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "OpaqueUnaryFn_sqrt", "OpaqueUnaryFn_exp",
    "OpaqueUnaryFn_log", "Identity", "IsNonOverlappingAndDenseIndicator", "BitwiseFn_bitwise_and",
    "BitwiseFn_bitwise_or", "BitwiseFn_bitwise_xor", "Trunc",
})
_SYMBOL_NAME = re.compile(r"[a-z]{1,4}\d+")  # s77, u0, zuf0: the symbol names torch's ShapeEnv creates
_EXPR_NODES = (ast.Expression, ast.Call, ast.Name, ast.Load, ast.Constant, ast.keyword, ast.BinOp, ast.UnaryOp,
               ast.Compare, ast.BoolOp, ast.operator, ast.unaryop, ast.cmpop, ast.boolop, ast.Tuple)


def check_pt2(data: bytes, label: str, *, allow_pickle: bool) -> None:
    """Raise PickleNotAllowed naming every member of the `.pt2` archive `data` that would run code
    on load, unless `allow_pickle`. A damaged archive is left to torch (its own error)."""
    if allow_pickle:
        return
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return
    failures = [f"{info.filename} ({why})" for info, why in _failures(archive, infos)]
    if failures:
        shown = "; ".join(failures[:4]) + (f"; and {len(failures) - 4} more" if len(failures) > 4 else "")
        raise PickleNotAllowed(
            f"{label} would run code from the file when loaded: {shown}. Pass --allow-pickle only if you trust it, "
            "or export the model again with torch.export.save where you trust the code"
        )


def _failures(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> list[tuple[zipfile.ZipInfo, str]]:
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):  # torch's reader and zipfile may pick different copies: never written by torch
        dup = next(n for n in names if names.count(n) > 1)
        return [(next(i for i in infos if i.filename == dup), "appears twice in the archive")]
    rel_of = _relative_names(names)
    raw_tensors = _raw_tensor_members(archive, infos, rel_of)
    out = []
    for info in infos:
        if info.is_dir():
            continue
        rel = rel_of[info.filename]
        if rel in _TEXT_MEMBERS or rel.startswith("extra/") or rel in raw_tensors:
            continue
        if rel.startswith("data/aotinductor/"):
            out.append((info, "compiled native code (AOTInductor), loaded as a shared library"))
            continue
        try:
            payload = archive.read(info)
        except Exception as exc:  # a damaged member: torch reports it on load
            out.append((info, f"cannot be read: {first_line(exc, 200)}"))
            continue
        if rel.endswith(".json"):
            why = _graph_json_problem(payload)
            if why:
                out.append((info, why))
            continue
        why = _pickle_problem(payload)
        if why:
            out.append((info, why))
    return out


def _relative_names(names: list[str]) -> dict[str, str]:
    """Member name -> path below the archive's root folder (torch.export.save puts everything in
    one; the pre-2.7 format has no root folder)."""
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) == 1 and all("/" in n for n in names):
        return {n: n.split("/", 1)[1] for n in names}
    return {n: n for n in names}


def _raw_tensor_members(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], rel_of: dict[str, str]) -> set[str]:
    """Paths (below the archive root) of weights and constants stored as raw bytes, not pickled:
    the payload configs list them with use_pickle false."""
    raw: set[str] = set()
    for info in infos:
        rel = rel_of[info.filename]
        folder = "data/weights/" if rel.startswith("data/weights/") else "data/constants/" if rel.startswith("data/constants/") else None
        if folder is None or not rel.endswith("_config.json"):
            continue
        try:
            config = json.loads(archive.read(info)).get("config", {})
        except Exception:
            continue
        for meta in config.values() if isinstance(config, dict) else ():
            if isinstance(meta, dict) and meta.get("use_pickle") is False and isinstance(meta.get("path_name"), str):
                name = meta["path_name"]
                if folder == "data/constants/" and not name.startswith("tensor_"):
                    continue  # custom and opaque objects are unpickled whatever the flag says
                raw.add(folder + name)
    return raw


def _pickle_problem(payload: bytes) -> str | None:
    """None when torch's weights-only unpickler accepts `payload` (a torch.save archive, a legacy
    torch.save stream or a bare pickle); else why not."""
    import torch
    from torch import _weights_only_unpickler

    try:
        if payload[:4] == b"PK\x03\x04":
            torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
            return None
        first = _weights_only_unpickler.load(io.BytesIO(payload), encoding="utf-8")
        if first == _TORCH_LEGACY_MAGIC:
            torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        return None
    except Exception as exc:
        text = str(exc)
        found = _GLOBAL_RE.search(text)
        if found:
            return f"pickle needs {found.group(1)}, which torch's weights-only allowlist refuses"
        detail = _UNPICKLER_RE.search(text)
        return f"pickle refused by torch's weights-only loader: {detail.group(1)[:150] if detail else first_line(exc, 200)}"


def _graph_json_problem(payload: bytes) -> str | None:
    try:
        doc = json.loads(payload)
    except Exception:
        return None  # torch refuses it with its own error, running nothing
    for item in _dicts(doc):
        expr, target = item.get("expr_str"), item.get("target")
        why = None
        if isinstance(expr, str):
            why = _expression_problem(expr)
        if why is None and isinstance(target, str) and "inputs" in item and "outputs" in item:  # a graph node
            why = _target_problem(target)
        if why:
            return why
    return None


def _dicts(doc: Any):
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _expression_problem(text: str) -> str | None:
    """torch parses expr_str with sympy.sympify (eval): accept only sympy constructors, symbol
    names, literals and arithmetic."""
    bad = f"shape expression {text[:60]!r} is not a plain sympy expression (it would be run by eval)"
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        return bad
    for node in ast.walk(tree):
        if not isinstance(node, _EXPR_NODES):
            return bad
        if isinstance(node, ast.Name) and node.id not in _SYMPY_NAMES and not _SYMBOL_NAME.fullmatch(node.id):
            return bad
        if isinstance(node, ast.Call) and not isinstance(node.func, ast.Name):
            return bad
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and not re.fullmatch(r"[A-Za-z_]\w{0,63}", node.value):
            return bad
    return None


def _target_problem(target: str) -> str | None:
    """Resolve a node target the way torch's deserializer does; accept operator overloads,
    higher-order operators and the symbolic-int operators, nothing else callable."""
    if not target.startswith(("torch", "_operator", "math")):
        return None if not target.startswith("#") else f"graph node target {target[:60]!r} is an extension operator"
    if any(part.startswith("__") for part in target.split(".")):
        return f"graph node target {target[:60]!r} reaches a Python internal"
    import torch
    from torch._export.serde import serialize

    resolved = serialize.GraphModuleDeserializer.deserialize_operator(None, target)  # type: ignore[arg-type]
    if isinstance(resolved, str) or not callable(resolved):
        return None  # unresolved: torch refuses the node itself
    if isinstance(resolved, (torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator)):
        return None
    if resolved in serialize._SYM_OPS or target == "_operator.getitem":
        return None
    if target.startswith("math.") and type(resolved).__name__ == "builtin_function_or_method" and resolved.__module__ == "math":
        return None
    return f"graph node target {target[:60]!r} is a Python function, not an operator"
