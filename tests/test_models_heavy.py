"""Full-size models end to end (marked heavy: ~20 s together on 2 cores)."""
from __future__ import annotations

import io
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import edgepack
from benchmarks.zoo import MobileNetV2, randomize_batchnorm

pytestmark = pytest.mark.heavy


def _ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_mobilenetv2_through_dynamo_is_exact_and_bn_free(tmp_path):
    model = randomize_batchnorm(MobileNetV2())
    report = edgepack.export(model, output_dir=tmp_path, input_shape="1x3x224x224", target="rpi4", name="mnv2")
    art = report["artifacts"][0]
    assert art["ok"] and art["fidelity"]["rel_error"] <= 1e-4
    ops = _ops(tmp_path / art["path"])
    assert ops["BatchNormalization"] == 0 and ops["Conv"] == 52
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224), dtype=np.float32)
    sess = ort.InferenceSession(str(tmp_path / art["path"]), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref, rtol=1e-4, atol=1e-4)
    assert report["model"]["macs"] == pytest.approx(300.8e6, rel=0.01)  # MobileNetV2 1.0 at 224: ~300 M MACs
    assert report["model"]["params"] == pytest.approx(3.50e6, rel=0.01)


def test_mobilenetv2_onnx_with_52_batchnorms_folds_all_into_convs(tmp_path):
    model = randomize_batchnorm(MobileNetV2())
    buf = io.BytesIO()
    x = torch.randn(1, 3, 224, 224)
    torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17, training=torch.onnx.TrainingMode.PRESERVE,
                      input_names=["x"])
    src = tmp_path / "mnv2_bn.onnx"
    src.write_bytes(buf.getvalue())
    assert _ops(src)["BatchNormalization"] == 52
    report = edgepack.export(src, output_dir=tmp_path / "out")
    fold = [p for p in report["passes"] if p["name"] == "fold_batchnorm"][0]
    assert fold["counts"]["into_producer"] == 52 and fold["counts"]["to_mul_add"] == 0
    art = report["artifacts"][0]
    assert art["ok"] and art["fidelity"]["rel_error"] <= 1e-4
    assert _ops(tmp_path / "out" / art["path"])["BatchNormalization"] == 0
    sess = ort.InferenceSession(str(tmp_path / "out" / art["path"]), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(sess.run(None, {"x": x.numpy()})[0], ref, rtol=1e-4, atol=1e-4)
