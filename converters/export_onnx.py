"""ONNX exporter: writes the processed graph as one self-contained `.onnx` file (weights inline),
atomically. Only a model whose weights pass protobuf's 2 GB limit gets an external `.onnx.data`
file beside it."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx_ir as ir

from edgepack.fsutil import atomic_path

_PROTOBUF_LIMIT = 2_000_000_000 - 64_000_000  # leave room for the graph itself


def to_proto(model: ir.Model):
    """ModelProto of the graph without value_info entries for initializers (redundant, and stale
    the moment a tool such as ONNX Runtime's quantizer rewrites a weight)."""
    proto = ir.to_proto(model)
    inits = {i.name for i in proto.graph.initializer}
    keep = [vi for vi in proto.graph.value_info if vi.name not in inits]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(keep)
    return proto


# Node metadata the PyTorch exporter leaves that a deployed file must not carry: stack traces (with
# the user's absolute source paths) and FX node dumps. The module path (name_scopes) stays.
_PRIVATE_METADATA = ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node")


def strip_private_metadata(proto):
    """Remove stack traces, FX dumps and doc strings from every node (in place); returns `proto`."""
    import onnx

    def graphs(g):
        yield g
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    yield from graphs(a.g)
                for sub in a.graphs:
                    yield from graphs(sub)

    for g in graphs(proto.graph):
        g.doc_string = ""
        for n in g.node:
            n.doc_string = ""
            keep = [p for p in n.metadata_props if p.key not in _PRIVATE_METADATA]
            del n.metadata_props[:]
            n.metadata_props.extend(keep)
    return proto


def write_proto(proto, path: Path) -> None:
    """Write a ModelProto (e.g. the fp16 or int8 variant) to `path` atomically, weights inline,
    without the exporter's private metadata."""
    import onnx

    clean = onnx.ModelProto()
    clean.CopyFrom(proto)
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(strip_private_metadata(clean).SerializeToString())


def export_onnx(model: ir.Model, path: Path) -> list[Path]:
    """Write the processed graph to `path`; return every file written (primary first)."""
    weight_bytes = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    path = Path(path)
    if weight_bytes < _PROTOBUF_LIMIT:
        write_proto(to_proto(model), path)
        return [path]
    # Above the limit: model + external data written in a temporary folder, then both renamed.
    data_path = path.with_name(path.name + ".data")
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".edgepack-") as tmp:
        ir.save(model, Path(tmp) / path.name, external_data=data_path.name)
        os.replace(Path(tmp) / data_path.name, data_path)
        os.replace(Path(tmp) / path.name, path)
    return [path, data_path]
