"""The TFLite flatbuffer schema that ships in ai-edge-litert, and the operator names read off it.

One place for the builtin-code -> name table that the TFLite writer, the int8 passes, the
metadata and clustering code, `inspect` and `estimate` all need (LiteRT's schema module has the
codes as class attributes only)."""
from __future__ import annotations

import functools


@functools.cache
def builtin_names() -> dict[int, str]:
    """BuiltinOperator code -> name, e.g. 3 -> "CONV_2D"."""
    from ai_edge_litert import schema_py_generated as s

    return {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
