"""Is this .onnx / .tflite / ncnn .param (+ .bin) a well-formed model? One-line LoadErrors saying what
is wrong with the file, before `inspect`, `estimate` or `bench` read it.

ONNX: protobuf parse, at least one node, onnx's own checker. TFLite: the flatbuffer unpacked in full
with the schema module LiteRT ships (a damaged offset raises there, not later in a reader), then the
cross references a reader follows (opcode, tensor and buffer indices, shapes, constant sizes). The
flatbuffers Python package has no verifier, hence these checks by hand. ncnn: the text .param's
grammar (magic, counts, layer lines, `k=v` params, known layer types, every bottom blob produced
before use) and a .bin beside it. Whether the runtime itself accepts a well-formed file is asked in
a child process (edgepack.runtimes.isolated), since ncnn can crash on one it dislikes."""
from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path
from typing import Any

from edgepack.errors import LoadError

MAX_ELEMENTS = 1 << 34  # a tensor larger than this is a damaged shape, not a model for a phone


def check_regular_file(path: Path, what: str = "artifact") -> None:
    """A LoadError unless `path` is a non-empty regular file (not a FIFO, a device or a folder)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise LoadError(f"{what} {path} cannot be read ({exc.strerror or exc}); check the path") from None
    if not stat.S_ISREG(st.st_mode):
        raise LoadError(f"{what} {path} is not a regular file (a folder, FIFO or device); pass the model file itself")
    if st.st_size == 0:
        raise LoadError(f"{what} {path} is empty (0 bytes); the file was cut short: export or copy it again")


def check_artifact(path: Path) -> None:
    """Check an .onnx, .tflite or ncnn .param by its suffix; other files are left to their reader."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        check_onnx(Path(path))
    elif suffix == ".tflite":
        check_tflite(Path(path))
    elif suffix == ".param":
        check_ncnn_param(Path(path))


def ask_litert(path: Path) -> None:
    """Whether LiteRT accepts a TFLite file the checks above passed (its flatbuffer verifier and
    kernel prepare steps go further than they do), asked in a child process; skipped when no
    LiteRT is installed (nothing here could run the file then)."""
    import importlib.util

    if importlib.util.find_spec("ai_edge_litert") is None and importlib.util.find_spec("tflite_runtime") is None:
        return
    from edgepack.runtimes import isolated
    from edgepack.runtimes.litert import check_loads

    isolated.call(check_loads, str(path), artifact=path, what="litert", timeout=120)


def check_onnx(path: Path) -> Any:
    """The parsed onnx.ModelProto of a well-formed ONNX file."""
    import onnx

    check_regular_file(path)
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001  (protobuf raises DecodeError, RuntimeError, ...)
        raise LoadError(f"{path.name} is not a valid ONNX model (protobuf cannot parse it: {_line(exc)}); "
                        "the file is damaged or of another format: export it again") from None
    if len(proto.graph.node) == 0:
        raise LoadError(f"{path.name} is not a valid ONNX model: it has no graph nodes (damaged or not ONNX); export it again")
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    checked = proto
    try:
        onnx.checker.check_model(str(path) if external else proto)  # the path: the checker finds the data files
    except Exception as exc:  # noqa: BLE001  (ValidationError, and C++ errors surfacing as others)
        if not str(exc).startswith("Nodes in a graph must be topologically sorted"):
            raise LoadError(f"{path.name} is not a valid ONNX model: {_line(exc)}; export it again") from None
        checked = _sorted_copy(proto, path)  # runtimes sort the graph themselves: check a sorted copy
        try:
            onnx.checker.check_model(checked)
        except Exception as exc2:  # noqa: BLE001
            raise LoadError(f"{path.name} is not a valid ONNX model: {_line(exc2)}; export it again") from None
    bad = [f"{v.name} {[d.dim_value for d in v.type.tensor_type.shape.dim]}" for v in (*proto.graph.input, *proto.graph.output)
           if any(d.HasField("dim_value") and not 0 < d.dim_value <= MAX_ELEMENTS for d in v.type.tensor_type.shape.dim)]
    if bad:
        raise LoadError(f"{path.name} is not a valid ONNX model: impossible dimensions in {bad[0][:80]}; export it again")
    try:
        onnx.shape_inference.infer_shapes(checked, strict_mode=True)
    except Exception as exc:  # noqa: BLE001  (InferenceError; ops onnx has no schema for are not its business)
        if "registered" not in str(exc).lower():
            raise LoadError(f"{path.name} is not a valid ONNX model: its shapes do not agree "
                            f"({_line(exc).replace('[ShapeInferenceError] ', '')}); export it again") from None
    if external:
        try:
            onnx.load_external_data_for_model(proto, str(path.parent))
        except Exception as exc:  # noqa: BLE001  (a missing or short data file)
            raise LoadError(f"{path.name}: its external weights cannot be read ({_line(exc)}); keep the data file "
                            "beside the .onnx") from None
    return proto


def _sorted_copy(proto: Any, path: Path) -> Any:
    """A copy of `proto` with its nodes in topological order (a LoadError on a cycle)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    known = {i.name for i in copy.graph.input} | {i.name for i in copy.graph.initializer} | {""}
    pending, ordered = list(copy.graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            missing = next(i for i in pending[0].input if i not in known)
            raise LoadError(f"{path.name} is not a valid ONNX model: its graph has a cycle or reads a tensor nothing "
                            f"writes ({missing[:60]!r}); export it again")
        for n in ready:
            known.update(n.output)
        ordered += ready
        taken = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in taken]
    nodes = [onnx.NodeProto() for _ in ordered]
    for dst, src in zip(nodes, ordered):
        dst.CopyFrom(src)
    del copy.graph.node[:]
    copy.graph.node.extend(nodes)
    return copy


def check_tflite(path: Path) -> bytes:
    """The bytes of a well-formed TFLite flatbuffer."""
    check_regular_file(path)
    data = path.read_bytes()
    if len(data) < 16 or data[4:8] != b"TFL3":
        raise LoadError(f"{path.name} is not a valid TFLite model: no TFL3 file identifier at byte 4 "
                        "(damaged, cut short or another format); export it again")
    try:
        from ai_edge_litert import schema_py_generated as s
    except ImportError:
        return data  # nothing to check with; the runtime (also absent) cannot read it either
    try:
        model = s.ModelT.InitFromPackedBuf(data, 0)
    except Exception as exc:  # noqa: BLE001  (struct.error, IndexError, UnicodeDecodeError, ... on bad offsets)
        raise LoadError(f"{path.name} is not a valid TFLite model: the flatbuffer is damaged "
                        f"({type(exc).__name__}: {_line(exc)}); export it again") from None
    problem = _tflite_problem(model, len(data), s)
    if problem:
        raise LoadError(f"{path.name} is not a valid TFLite model: {problem}; export it again")
    return data


_TFLITE_ITEMSIZE = {"FLOAT32": 4, "FLOAT16": 2, "INT32": 4, "UINT8": 1, "INT64": 8, "BOOL": 1, "INT16": 2,
                    "INT8": 1, "FLOAT64": 8, "UINT64": 8, "UINT32": 4, "UINT16": 2, "BFLOAT16": 2}


def _tflite_problem(model: Any, size: int, s: Any) -> str | None:
    from edgepack.tflite_schema import builtin_names

    if model.version != 3:
        return f"schema version {model.version} (TFLite files are version 3)"
    if not model.subgraphs:
        return "it has no subgraph"
    buffers = model.buffers or []
    codes = model.operatorCodes or []
    names = builtin_names()
    type_names = {v: k for k, v in vars(s.TensorType).items() if not k.startswith("_")}
    for c in codes:
        code = max(c.builtinCode, c.deprecatedBuiltinCode)
        if code not in names:
            return f"operator code {code} is not a TFLite builtin"
        if names[code] == "CUSTOM" and not c.customCode:
            return "a custom operator has no name"
    for b, buf in enumerate(buffers):
        if buf.offset and (buf.offset < 0 or buf.size < 0 or buf.offset + buf.size > size):
            return f"buffer {b} points past the end of the file"
    for g, sub in enumerate(model.subgraphs):
        tensors = sub.tensors or []
        n = len(tensors)
        for i, t in enumerate(tensors):
            if t.type not in type_names:
                return f"tensor {i} of subgraph {g} has unknown type {t.type}"
            shape = list(t.shape) if t.shape is not None else []
            if any(d < 0 for d in shape) or math.prod(shape) > MAX_ELEMENTS:
                return f"tensor {i} of subgraph {g} has an impossible shape {shape[:8]}"
            if not 0 <= t.buffer < max(len(buffers), 1):
                return f"tensor {i} of subgraph {g} refers to buffer {t.buffer} of {len(buffers)}"
            data = buffers[t.buffer].data if buffers else None
            itemsize = _TFLITE_ITEMSIZE.get(type_names[t.type])
            if data is not None and len(data) and itemsize and t.sparsity is None and len(data) != math.prod(shape) * itemsize:
                return (f"constant tensor {i} of subgraph {g} holds {len(data)} bytes; its shape {shape} and type "
                        f"{type_names[t.type].lower()} need {math.prod(shape) * itemsize}")
        for kind, idx in (("input", sub.inputs), ("output", sub.outputs)):
            for i in idx if idx is not None else []:
                if not 0 <= i < n:
                    return f"subgraph {g} {kind} {i} is not one of its {n} tensors"
        for k, op in enumerate(sub.operators or []):
            if not 0 <= op.opcodeIndex < len(codes):
                return f"operator {k} of subgraph {g} has opcode index {op.opcodeIndex} of {len(codes)}"
            ins = list(op.inputs) if op.inputs is not None else []
            outs = list(op.outputs) if op.outputs is not None else []
            if any(not -1 <= i < n for i in ins) or any(not 0 <= i < n for i in outs) or not outs:
                return f"operator {k} ({names.get(max(codes[op.opcodeIndex].builtinCode, codes[op.opcodeIndex].deprecatedBuiltinCode))}) of subgraph {g} refers to a tensor that does not exist"
    return None


_INT = re.compile(r"-?\d+")
_NUMBER = re.compile(r"-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def check_ncnn_param(path: Path) -> list[tuple[str, str, list[str], list[str], list[str]]]:
    """The layer rows (type, name, bottoms, tops, param tokens) of a well-formed text .param with
    its .bin beside it."""
    check_regular_file(path)
    bin_path = path.with_suffix(".bin")
    if not bin_path.is_file():
        raise LoadError(f"{path.name} has no {bin_path.name} beside it; an ncnn artifact is both files: copy both")
    try:
        text = path.read_bytes().decode("ascii")
    except UnicodeDecodeError:
        raise LoadError(f"{path.name} is not a valid ncnn .param: it is not ASCII text (damaged or binary); export it again") from None
    lines = [line for line in text.split("\n") if line.strip()]

    def bad(what: str) -> LoadError:
        return LoadError(f"{path.name} is not a valid ncnn .param: {what}; export it again")

    if not lines or lines[0].strip() != "7767517":
        raise bad("the first line is not the magic number 7767517")
    head = lines[1].split() if len(lines) > 1 else []
    if len(head) != 2 or not all(_INT.fullmatch(x) for x in head) or int(head[0]) < 1 or int(head[1]) < 1:
        raise bad("the second line must hold the layer and blob counts")
    layer_count, blob_count = int(head[0]), int(head[1])
    if len(lines) - 2 != layer_count:
        raise bad(f"it declares {layer_count} layers and has {len(lines) - 2} layer lines")
    import ncnn

    rows = []
    produced: set[str] = set()
    for number, line in enumerate(lines[2:], start=3):
        t = line.split()
        if len(t) < 4 or not _INT.fullmatch(t[2]) or not _INT.fullmatch(t[3]) or int(t[2]) < 0 or int(t[3]) < 0:
            raise bad(f"line {number} is not 'type name inputs outputs ...'")
        n_in, n_out = int(t[2]), int(t[3])
        if len(t) < 4 + n_in + n_out:
            raise bad(f"line {number} lists fewer blobs than its counts {n_in} and {n_out}")
        kind, name = t[0], t[1]
        bottoms, tops, params = t[4:4 + n_in], t[4 + n_in:4 + n_in + n_out], t[4 + n_in + n_out:]
        if ncnn.layer_to_index(kind) < 0:
            raise bad(f"line {number}: {kind[:40]!r} is not an ncnn layer type")
        missing = [b for b in bottoms if b not in produced]
        if missing:
            raise bad(f"line {number}: layer {name[:40]!r} reads blob {missing[0][:40]!r} before any layer writes it")
        if any(top in produced for top in tops):
            raise bad(f"line {number}: layer {name[:40]!r} writes a blob another layer already wrote")
        for token in params:
            problem = _param_token_problem(token)
            if problem:
                raise bad(f"line {number}: parameter {token[:40]!r} {problem}")
        produced.update(tops)
        rows.append((kind, name, bottoms, tops, params))
    if len(produced) != blob_count:
        raise bad(f"it declares {blob_count} blobs and its layers write {len(produced)}")
    return rows


def _param_token_problem(token: str) -> str | None:
    key, eq, value = token.partition("=")
    if not eq or not _INT.fullmatch(key):
        return "is not key=value"
    if int(key) <= -23300:  # an array: count,v1,...,vn
        parts = value.split(",")
        if not _INT.fullmatch(parts[0]) or int(parts[0]) != len(parts) - 1:
            return "is an array whose count does not match its values"
        values = parts[1:]
    else:
        values = [value]
    if not all(_NUMBER.fullmatch(v) for v in values):
        return "has a value that is not a number"
    return None


def _line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
