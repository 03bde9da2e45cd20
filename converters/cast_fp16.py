"""fp16: weights and compute in float16, with fp32 inputs and outputs unless `io_fp16`.

Uses the converter that ships with ONNX Runtime (`onnxruntime.transformers.float16`), which keeps
ops without fp16 kernels in float32 behind Casts."""
from __future__ import annotations

import contextlib
import io
import logging


def cast_fp16(model_proto, *, io_fp16: bool = False):
    """Return a new ModelProto in fp16 (the input proto is not changed)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    copy = onnx.ModelProto.FromString(model_proto.SerializeToString())
    logger = logging.getLogger("onnxruntime.transformers.float16")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return convert_float_to_float16(copy, keep_io_types=not io_fp16)
    finally:
        logger.setLevel(level)
