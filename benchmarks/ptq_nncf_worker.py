"""Runs inside NNCF's own venv (never a product dependency), called by ptq_compare.py:

    /work/nncf-venv/bin/python benchmarks/ptq_nncf_worker.py model.onnx calib.npy out.onnx [transformer]

Quantizes with `nncf.quantize` (defaults, subset_size = all samples; model_type=TRANSFORMER when
asked) and prints {"seconds": ...} as JSON on the last line."""
import json
import sys
import time

import nncf
import numpy as np
import onnx

model = onnx.load(sys.argv[1])
data = np.load(sys.argv[2])
name = model.graph.input[0].name
dataset = nncf.Dataset(list(data), lambda x: {name: x[None]})
kwargs = {"model_type": nncf.ModelType.TRANSFORMER} if sys.argv[4:] == ["transformer"] else {}
start = time.perf_counter()
quantized = nncf.quantize(model, dataset, subset_size=len(data), **kwargs)
seconds = time.perf_counter() - start
onnx.save(quantized, sys.argv[3])
print(json.dumps({"seconds": seconds}))
