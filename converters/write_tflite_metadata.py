"""TFLite model metadata (TFLite Support's `metadata_schema.fbs`, file identifier "M001") written
into a .tflite, so Android Studio's ML Model Binding and the TFLite Task Library know the model's
name, how to feed its inputs (image properties, normalization mean/std) and which labels name its
outputs; plus TFLite's own `min_runtime_version` entry.

Written by hand with the `flatbuffers` Builder API because the only package that ships the
schema's generated code, tflite-support 0.4.4, pins protobuf<4 (onnx needs a newer one) and numpy<2,
so it cannot be a dependency. Only the tables used are written, each field in the slot the
published schema gives it (slot i = the i-th field of the table, unions taking two slots: type,
then value):

    AssociatedFile        name, description, type, locale
    ImageSize             width, height
    ImageProperties       color_space, default_size
    Content               content_properties (type + value), range
    NormalizationOptions  mean, std
    ProcessUnit           options (type + value)
    Stats                 max, min
    TensorMetadata        name, description, dimension_names, content, process_units, stats, associated_files
    SubGraphMetadata      name, description, input_tensor_metadata, output_tensor_metadata, associated_files, ...
    ModelMetadata         name, description, version, subgraph_metadata, author, license, associated_files,
                          min_parser_version

`read_metadata` is the matching reader, derived from the same schema, used by `edgepack` and the
tests to read the metadata back (tests also read it with tflite-support's MetadataDisplayer when a
Python with tflite-support is named in EDGEPACK_TFLITE_SUPPORT_PYTHON).

Associated files (labels) are stored the way TFLite Support's MetadataPopulator stores them: an
uncompressed zip appended to the flatbuffer (zip offsets count from the start of the file), which
the interpreter ignores and the Task Library opens by name."""
from __future__ import annotations

import io
import struct
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgepack.errors import UsageError
from edgepack.tflite_schema import builtin_names

METADATA_NAME = "TFLITE_METADATA"
MIN_RUNTIME_NAME = "min_runtime_version"
FILE_IDENTIFIER = b"M001"
# Every field written here exists in schema 1.0.0, so that is the parser version a reader needs.
MIN_PARSER_VERSION = "1.0.0"

# Enum values from metadata_schema.fbs.
ASSOCIATED_FILE_TYPES = {"UNKNOWN": 0, "DESCRIPTIONS": 1, "TENSOR_AXIS_LABELS": 2, "TENSOR_VALUE_LABELS": 3}
COLOR_SPACES = {"UNKNOWN": 0, "RGB": 1, "GRAYSCALE": 2}
_CONTENT_FEATURE, _CONTENT_IMAGE = 1, 2  # ContentProperties union: FeatureProperties, ImageProperties
_UNIT_NORMALIZATION = 1  # ProcessUnitOptions union: NormalizationOptions


# ---------------------------------------------------------------- what is written


@dataclass(frozen=True)
class AssociatedFile:
    name: str
    description: str
    type: str = "TENSOR_AXIS_LABELS"

    def __post_init__(self) -> None:
        if self.type not in ASSOCIATED_FILE_TYPES:
            raise UsageError(f"associated file type {self.type!r} is not one of {', '.join(ASSOCIATED_FILE_TYPES)}")


@dataclass(frozen=True)
class ImageInfo:
    color_space: str  # RGB, GRAYSCALE or UNKNOWN
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.color_space not in COLOR_SPACES:
            raise UsageError(f"color space {self.color_space!r} is not one of {', '.join(COLOR_SPACES)}")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    description: str
    image: ImageInfo | None = None  # None: FeatureProperties
    mean: tuple[float, ...] | None = None  # NormalizationOptions, in raw input units: (x - mean) / std
    std: tuple[float, ...] | None = None
    stats_min: tuple[float, ...] | None = None
    stats_max: tuple[float, ...] | None = None
    files: tuple[AssociatedFile, ...] = ()

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise UsageError(f"tensor {self.name!r}: normalization needs both mean and std")
        if self.std is not None and any(s == 0 for s in self.std):
            raise UsageError(f"tensor {self.name!r}: normalization std has a zero entry")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    version: str
    author: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    license: str | None = None
    subgraph_name: str = "main"
    extra: dict = field(default_factory=dict, compare=False)  # not written; room for callers' notes


# ---------------------------------------------------------------- writer


def build_metadata(info: ModelInfo) -> bytes:
    """The ModelMetadata flatbuffer (identifier M001)."""
    import flatbuffers

    b = flatbuffers.Builder(1024)

    def string(text: str | None) -> int | None:
        return None if text is None else b.CreateString(text)

    def offsets(items: list[int]) -> int:
        b.StartVector(4, len(items), 4)
        for off in reversed(items):
            b.PrependUOffsetTRelative(off)
        return b.EndVector()

    def floats(values) -> int:
        return b.CreateNumpyVector(np.asarray(values, dtype=np.float32))

    def table(fields: list[tuple[int, str, Any]]) -> int:
        """fields: (slot, kind, value) with kind 'off' (an offset made before), 'u8', 'i8' or 'u32'."""
        b.StartObject(max(slot for slot, _, _ in fields) + 1 if fields else 0)
        for slot, kind, value in fields:
            if value is None:
                continue
            if kind == "off":
                b.PrependUOffsetTRelativeSlot(slot, value, 0)
            elif kind == "u8":
                b.PrependUint8Slot(slot, value, 0)
            elif kind == "i8":
                b.PrependInt8Slot(slot, value, 0)
            elif kind == "u32":
                b.PrependUint32Slot(slot, value, 0)
        return b.EndObject()

    def associated_file(f: AssociatedFile) -> int:
        name, desc = string(f.name), string(f.description)
        return table([(0, "off", name), (1, "off", desc), (2, "i8", ASSOCIATED_FILE_TYPES[f.type])])

    def tensor(t: TensorInfo) -> int:
        name, desc = string(t.name), string(t.description)
        if t.image is not None:
            size = table([(0, "u32", t.image.width), (1, "u32", t.image.height)])
            props = table([(0, "i8", COLOR_SPACES[t.image.color_space]), (1, "off", size)])
            content = table([(0, "u8", _CONTENT_IMAGE), (1, "off", props)])
        else:
            content = table([(0, "u8", _CONTENT_FEATURE), (1, "off", table([]))])
        units = None
        if t.mean is not None:
            mean, std = floats(t.mean), floats(t.std)
            norm = table([(0, "off", mean), (1, "off", std)])
            units = offsets([table([(0, "u8", _UNIT_NORMALIZATION), (1, "off", norm)])])
        stats = None
        if t.stats_min is not None or t.stats_max is not None:
            hi = floats(t.stats_max) if t.stats_max is not None else None
            lo = floats(t.stats_min) if t.stats_min is not None else None
            stats = table([(0, "off", hi), (1, "off", lo)])
        files = offsets([associated_file(f) for f in t.files]) if t.files else None
        return table([(0, "off", name), (1, "off", desc), (3, "off", content), (4, "off", units), (5, "off", stats),
                      (6, "off", files)])

    ins = offsets([tensor(t) for t in info.inputs])
    outs = offsets([tensor(t) for t in info.outputs])
    sub_name = string(info.subgraph_name)
    subgraph = table([(0, "off", sub_name), (2, "off", ins), (3, "off", outs)])
    subgraphs = offsets([subgraph])
    name, desc, version = string(info.name), string(info.description), string(info.version)
    author, lic, parser = string(info.author), string(info.license), string(MIN_PARSER_VERSION)
    root = table([(0, "off", name), (1, "off", desc), (2, "off", version), (3, "off", subgraphs), (4, "off", author),
                  (5, "off", lic), (7, "off", parser)])
    b.Finish(root, file_identifier=FILE_IDENTIFIER)
    return bytes(b.Output())


def load_model(data: bytes) -> Any:
    """A .tflite's flatbuffer (an appended zip is ignored) as the schema's object API (ModelT)."""
    from ai_edge_litert import schema_py_generated as s

    if len(data) < 8 or data[4:8] != b"TFL3":
        raise UsageError("not a TFLite flatbuffer (file identifier TFL3 missing); pass a .tflite exported by edgepack")
    return s.ModelT.InitFromPackedBuf(bytearray(data), 0)


def serialize_model(model: Any) -> bytes:
    import flatbuffers

    weights = sum(len(b.data) for b in model.buffers or [] if b.data is not None)
    builder = flatbuffers.Builder(weights + 1024 * 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def add_metadata(model: Any, metadata: bytes, min_runtime: str) -> None:
    """Set the TFLITE_METADATA and min_runtime_version entries of `model` (ModelT), replacing any
    there: each is a Metadata {name, buffer} whose buffer holds the bytes."""
    from ai_edge_litert import schema_py_generated as s

    if len(min_runtime) >= 16:
        raise ValueError(f"min_runtime_version {min_runtime!r} does not fit TFLite's 16-byte field")
    runtime = min_runtime.encode().ljust(16, b"\0")  # TFLite writes it zero-padded to 16 bytes
    kept = [m for m in (model.metadata or []) if _name(m.name) not in (METADATA_NAME, MIN_RUNTIME_NAME)]
    for name, payload in ((MIN_RUNTIME_NAME, runtime), (METADATA_NAME, metadata)):
        buf = s.BufferT()
        buf.data = np.frombuffer(payload, dtype=np.uint8)
        model.buffers.append(buf)
        entry = s.MetadataT()
        entry.name = name
        entry.buffer = len(model.buffers) - 1
        kept.append(entry)
    model.metadata = kept


def append_associated_files(model_bytes: bytes, files: dict[str, bytes]) -> bytes:
    """The model followed by an uncompressed zip of `files` (TFLite Support's layout)."""
    if not files:
        return model_bytes
    out = io.BytesIO(model_bytes)
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as z:
        for name, data in files.items():
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return out.getvalue()


def _name(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------- min_runtime_version

# The first TFLite runtime with version 1 of each builtin edgepack emits, from TFLite's
# tools/versioning/runtime_version.cc; an op missing here does not raise the minimum.
_OP_RUNTIME = {
    "ADD": "1.5.0", "AVERAGE_POOL_2D": "1.5.0", "BATCH_MATMUL": "2.3.0", "CONCATENATION": "1.5.0", "CONV_2D": "1.5.0",
    "DEPTHWISE_CONV_2D": "1.5.0", "DEQUANTIZE": "1.13.1", "DIV": "1.6.0", "EXP": "1.7.0", "EXPAND_DIMS": "1.10.0",
    "FULLY_CONNECTED": "1.5.0", "GATHER": "1.6.0", "GELU": "2.9.0", "HARD_SWISH": "1.15.0", "LEAKY_RELU": "1.13.1",
    "LOG": "1.14.0", "LOGISTIC": "1.14.0", "LOG_SOFTMAX": "1.14.0", "MAXIMUM": "1.14.0", "MAX_POOL_2D": "1.5.0",
    "MEAN": "1.6.0", "MINIMUM": "1.14.0", "MIRROR_PAD": "1.13.1", "MUL": "1.5.0", "PAD": "1.5.0", "PADV2": "1.9.0",
    "POW": "1.10.0", "PRELU": "1.8.0", "QUANTIZE": "1.14.0", "REDUCE_MAX": "1.11.0", "REDUCE_MIN": "1.11.0",
    "RELU": "1.5.0", "RELU6": "1.5.0", "RELU_0_TO_1": "2.10.0", "RELU_N1_TO_1": "1.5.0", "RESHAPE": "1.5.0",
    "RESIZE_BILINEAR": "1.7.0", "RESIZE_NEAREST_NEIGHBOR": "1.13.1", "RSQRT": "1.10.0", "SLICE": "1.14.0",
    "SOFTMAX": "1.5.0", "SPLIT": "1.5.0", "SPLIT_V": "1.13.1", "SQRT": "1.10.0", "SQUEEZE": "1.6.0",
    "STRIDED_SLICE": "1.6.0", "SUB": "1.6.0", "SUM": "1.10.0", "TANH": "1.14.0", "TRANSPOSE": "1.6.0",
    "TRANSPOSE_CONV": "1.9.0", "BROADCAST_TO": "2.5.0",
}
# Kernels for int8 tensors (full-integer models) arrived in 1.14.0; DEQUANTIZE of float16 weights
# (version 3) and QUANTIZE to int8 (version 2) in 1.15.0.
_INT8_RUNTIME = "1.14.0"
_FP16_DEQUANTIZE_RUNTIME = "1.15.0"
_INT8_QUANTIZE_RUNTIME = "1.15.0"


def min_runtime_version(model: Any) -> str:
    """The oldest TFLite runtime that has every kernel the model uses, by op and tensor type (the
    op versions edgepack declares are 1, so the tensor types say which kernel is needed)."""
    from ai_edge_litert import schema_py_generated as s

    names = builtin_names()
    best = "1.5.0"
    for sub in model.subgraphs or []:
        for op in sub.operators or []:
            code = model.operatorCodes[op.opcodeIndex]
            op_name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "")
            io = [*_ints(op.inputs), *_ints(op.outputs)]
            types = {sub.tensors[i].type for i in io if i >= 0}
            need = [_OP_RUNTIME.get(op_name, "1.5.0")]
            if s.TensorType.INT8 in types:
                need.append(_INT8_RUNTIME)
            if op_name == "DEQUANTIZE" and s.TensorType.FLOAT16 in types:
                need.append(_FP16_DEQUANTIZE_RUNTIME)
            if op_name == "QUANTIZE" and s.TensorType.INT8 in types:
                need.append(_INT8_QUANTIZE_RUNTIME)
            best = max([best, *need], key=_version_key)
    return best


def _ints(values: Any) -> list[int]:
    return [] if values is None else [int(v) for v in values]


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


# ---------------------------------------------------------------- reader (same schema)


class _Table:
    """One flatbuffer table: field i is at vtable slot 4 + 2 i."""

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf, self.pos = buf, pos
        self.vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vt_size = struct.unpack_from("<H", buf, self.vtable)[0]

    def _field(self, slot: int) -> int:
        at = 4 + 2 * slot
        if at >= self.vt_size:
            return 0
        off = struct.unpack_from("<H", self.buf, self.vtable + at)[0]
        return self.pos + off if off else 0

    def _deref(self, at: int) -> int:
        return at + struct.unpack_from("<I", self.buf, at)[0]

    def scalar(self, slot: int, fmt: str, default: Any = 0) -> Any:
        at = self._field(slot)
        return struct.unpack_from("<" + fmt, self.buf, at)[0] if at else default

    def string(self, slot: int) -> str | None:
        at = self._field(slot)
        if not at:
            return None
        start = self._deref(at)
        n = struct.unpack_from("<I", self.buf, start)[0]
        return self.buf[start + 4 : start + 4 + n].decode()

    def table(self, slot: int) -> _Table | None:
        at = self._field(slot)
        return _Table(self.buf, self._deref(at)) if at else None

    def tables(self, slot: int) -> list[_Table]:
        at = self._field(slot)
        if not at:
            return []
        start = self._deref(at)
        n = struct.unpack_from("<I", self.buf, start)[0]
        return [_Table(self.buf, self._deref(start + 4 + 4 * i)) for i in range(n)]

    def floats(self, slot: int) -> list[float] | None:
        at = self._field(slot)
        if not at:
            return None
        start = self._deref(at)
        n = struct.unpack_from("<I", self.buf, start)[0]
        return [float(v) for v in np.frombuffer(self.buf, dtype="<f4", count=n, offset=start + 4)]


def parse_metadata(buf: bytes) -> dict:
    """ModelMetadata flatbuffer -> dict with the schema's field names (as TFLite Support's JSON)."""
    if buf[4:8] != FILE_IDENTIFIER:
        raise UsageError(f"metadata buffer has identifier {buf[4:8]!r}, expected {FILE_IDENTIFIER!r} (TFLite Support's schema)")
    root = _Table(buf, struct.unpack_from("<I", buf, 0)[0])
    types = {v: k for k, v in ASSOCIATED_FILE_TYPES.items()}
    spaces = {v: k for k, v in COLOR_SPACES.items()}

    def files(t: _Table, slot: int) -> list[dict]:
        return [{"name": f.string(0), "description": f.string(1), "type": types.get(f.scalar(2, "b"), "UNKNOWN")}
                for f in t.tables(slot)]

    def tensor(t: _Table) -> dict:
        out: dict[str, Any] = {"name": t.string(0), "description": t.string(1)}
        content = t.table(3)
        if content is not None:
            kind = content.scalar(0, "B")
            props = content.table(1)
            if kind == _CONTENT_IMAGE and props is not None:
                size = props.table(1)
                out["content"] = {"content_properties_type": "ImageProperties", "content_properties": {
                    "color_space": spaces.get(props.scalar(0, "b"), "UNKNOWN"),
                    "default_size": {"width": size.scalar(0, "I"), "height": size.scalar(1, "I")} if size else None}}
            elif kind == _CONTENT_FEATURE:
                out["content"] = {"content_properties_type": "FeatureProperties", "content_properties": {}}
        units = []
        for unit in t.tables(4):
            opts = unit.table(1)
            if unit.scalar(0, "B") == _UNIT_NORMALIZATION and opts is not None:
                units.append({"options_type": "NormalizationOptions",
                              "options": {"mean": opts.floats(0), "std": opts.floats(1)}})
        if units:
            out["process_units"] = units
        stats = t.table(5)
        if stats is not None:
            out["stats"] = {"max": stats.floats(0), "min": stats.floats(1)}
        if t.tables(6):
            out["associated_files"] = files(t, 6)
        return out

    subgraphs = [{"name": g.string(0), "input_tensor_metadata": [tensor(t) for t in g.tables(2)],
                  "output_tensor_metadata": [tensor(t) for t in g.tables(3)]} for g in root.tables(3)]
    return {"name": root.string(0), "description": root.string(1), "version": root.string(2),
            "subgraph_metadata": subgraphs, "author": root.string(4), "license": root.string(5),
            "min_parser_version": root.string(7)}


def read_metadata(data: bytes) -> dict:
    """A .tflite's metadata: {"metadata": parsed ModelMetadata or None, "min_runtime_version",
    "associated_files": {name: bytes} from the appended zip}."""
    model = load_model(data)
    entries = {_name(m.name): m.buffer for m in model.metadata or []}
    raw = {k: np.asarray(model.buffers[v].data, dtype=np.uint8).tobytes() for k, v in entries.items()
           if model.buffers[v].data is not None}
    files: dict[str, bytes] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            files = {i.filename: z.read(i) for i in z.infolist()}
    except zipfile.BadZipFile:
        pass
    return {
        "metadata": parse_metadata(raw[METADATA_NAME]) if METADATA_NAME in raw else None,
        "min_runtime_version": raw[MIN_RUNTIME_NAME].rstrip(b"\0").decode() if MIN_RUNTIME_NAME in raw else None,
        "associated_files": files,
    }
