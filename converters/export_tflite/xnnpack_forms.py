"""int8 forms XNNPACK takes: which builtins an int8 TFLite graph keeps float, between one
DEQUANTIZE and one QUANTIZE, so that every operator stays inside LiteRT's XNNPACK delegate.

XNNPACK's delegate (tensorflow/lite/delegates/xnnpack/xnnpack_delegate.cc) takes some builtins in
float only (their Visit*Node functions check CheckTensorFloatType): an int8 one runs in LiteRT's
reference kernels and splits the graph into another delegate partition, with an int8 <-> float
handover at each border. Measured on timm lcnet_050 (LiteRT 2.3, x86, 1 thread): 28 int8
HARD_SWISH made 31 partitions and the int8 model 5-10x slower than the fp32 one. DEQUANTIZE and
QUANTIZE are delegated, so the op kept float between them stays inside the one partition.

The list was measured one op at a time with `python benchmarks/xnnpack_int8.py --ops` (LiteRT 2.3,
this 2-core AVX2 x86 host without VNNI, 1 thread, [1, 56, 56, 64], the op between two int8 ADDs):
(a) the op in int8 vs (b) kept float between DEQUANTIZE and QUANTIZE, latency a/b:
HARD_SWISH 2 partitions vs 1, a/b 4.9; GELU 1.8; SOFTMAX 1.9; SQRT 5.1; RSQRT 289;
SQUARED_DIFFERENCE 67; EXP 1.8; LOG 1.7; ABS 6.0; NEG 1.1 (each: 2 partitions in int8, 1 in float).
LOGISTIC, TANH, ELU, ADD, SUB and MUL are delegated in int8 (a/b 0.8-1.0: they stay int8).
MAXIMUM and MINIMUM are refused in int8 too, but their float form measured slower (a/b 0.66), so
they stay int8. For HARD_SWISH and GELU an int8 form made of delegated ops exists (x * relu6(x + 3)
/ 6 as ADD with a fused RELU6 and two MULs; x * sigmoid(x (a + b x^2)) as MULs, ADD, LOGISTIC):
HARD_SWISH's ran as fast as the float op between DEQUANTIZE and QUANTIZE (0.94x), GELU's 2.7x
slower; so both stay float (more accurate, too)."""
from __future__ import annotations

_FLOAT = "XNNPACK takes {} in float only: kept float between DEQUANTIZE and QUANTIZE, inside the delegate"
XNNPACK_FLOAT_ONLY = {op: _FLOAT.format(op) for op in ("HARD_SWISH", "GELU", "SOFTMAX", "SQRT", "RSQRT", "DIV",
                                                        "SQUARED_DIFFERENCE", "EXP", "LOG", "ABS", "NEG")}
