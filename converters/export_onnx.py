"""ONNX exporter: writes the processed graph as one self-contained `.onnx` file (weights inline),
atomically. Only a model whose weights pass protobuf's 2 GB limit gets an external `.onnx.data`
file beside it."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx_ir as ir

from edgepack.formats import check_buildable
from edgepack.fsutil import atomic_path

_PROTOBUF_LIMIT = 2_000_000_000 - 64_000_000  # leave room for the graph itself


def export_onnx(model: ir.Model, path: Path, precision: str) -> list[Path]:
    """Write `model` at `precision` to `path`; return every file written (primary first)."""
    check_buildable("onnx", precision)
    weight_bytes = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    path = Path(path)
    if weight_bytes < _PROTOBUF_LIMIT:
        proto = ir.to_proto(model)
        with atomic_path(path) as tmp:
            tmp.write_bytes(proto.SerializeToString())
        return [path]
    # Above the limit: model + external data written in a temporary folder, then both renamed.
    data_path = path.with_name(path.name + ".data")
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".edgepack-") as tmp:
        ir.save(model, Path(tmp) / path.name, external_data=data_path.name)
        os.replace(Path(tmp) / data_path.name, data_path)
        os.replace(Path(tmp) / path.name, path)
    return [path, data_path]
