"""int8 forms XNNPACK takes: which builtins an int8 TFLite graph keeps float, between one
DEQUANTIZE and one QUANTIZE, so that every operator stays inside LiteRT's XNNPACK delegate.

XNNPACK's delegate (tensorflow/lite/delegates/xnnpack/xnnpack_delegate.cc) takes some builtins in
float only (their Visit*Node functions check CheckTensorFloatType): an int8 one runs in LiteRT's
reference kernels and splits the graph into another delegate partition, with an int8 <-> float
handover at each border. Measured on timm lcnet_050 (LiteRT 2.3, x86, 1 thread): 28 int8
HARD_SWISH made 31 partitions and the int8 model 5-10x slower than the fp32 one. DEQUANTIZE and
QUANTIZE are delegated, so the op kept float between them stays inside the one partition.

The list was measured one op at a time (a [1, 8, 8, 16] graph quantized by quantize.py, LiteRT 2.3):
int8 gave 2 partitions with the op outside, float between DEQUANTIZE and QUANTIZE gave 1. SOFTMAX,
BATCH_MATMUL, MEAN, SUM, REDUCE_MAX, SUB, TANH, LOGISTIC, LEAKY_RELU and ELU are delegated in int8.
For HARD_SWISH and GELU an int8 form made of delegated ops exists (x * relu6(x + 3) / 6 as ADD
with a fused RELU6 and two MULs; x * sigmoid(x (a + b x^2)) as five MULs/ADDs and a LOGISTIC),
but it was slower than the float op between DEQUANTIZE and QUANTIZE, measured side by side on a
[1, 112, 112, 32] tensor: HARD_SWISH 0.141 vs 0.069 ms, GELU 0.672 vs 0.222 ms (and on
[1, 56, 56, 64]: 0.070 vs 0.036, 0.255 vs 0.097 ms); so they stay float too (more accurate as well)."""
from __future__ import annotations

_FLOAT = "XNNPACK takes {} in float only: kept float between DEQUANTIZE and QUANTIZE, inside the delegate"
XNNPACK_FLOAT_ONLY = {op: _FLOAT.format(op) for op in ("HARD_SWISH", "GELU", "SQRT", "RSQRT", "DIV", "SQUARED_DIFFERENCE",
                                                        "EXP", "LOG", "ABS", "NEG", "MAXIMUM", "MINIMUM")}
