"""ncnn int8 walks the .bin of layers it keeps float (LSTM / GRU / RNN, MultiHeadAttention, Gemm):
a model with them is quantized where it can be instead of refused. Heavy: PP-OCRv4 rec (real
weights, from rapidocr-onnxruntime) has MultiHeadAttention and Gemm layers after pnnx."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgepack


@pytest.mark.heavy
def test_ppocr_v4_rec_ncnn_int8(tmp_path, monkeypatch):
    rapidocr = pytest.importorskip("rapidocr_onnxruntime", reason="pip install rapidocr-onnxruntime==1.4.4 (benchmark extra)")
    import edgepack.pipeline as pipeline
    from edgepack.converters.fold_shape_subgraphs import fold_shape_subgraphs

    if not any(name == "fold_shape_subgraphs" for name, _ in pipeline.graph_passes(_options())):  # until wired
        original = pipeline.graph_passes
        monkeypatch.setattr(pipeline, "graph_passes", lambda o: [("fold_shape_subgraphs", fold_shape_subgraphs)] + original(o))
    path = Path(rapidocr.__file__).parent / "models" / "ch_PP-OCRv4_rec_infer.onnx"
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).uniform(-1, 1, (20, 3, 48, 320)).astype(np.float32))
    report = edgepack.export(path, output_dir=tmp_path / "out", input_shape="1x3x48x320", formats=("ncnn",), int8=True,
                             calib=calib)
    art = next(a for a in report["artifacts"] if a["precision"] == "int8")
    assert art["ok"], art.get("error")
    assert art["nodes"]["quantized"] >= 30  # the convolutions
    assert art["fidelity"]["cosine"] >= 0.95, art["fidelity"]


def _options():
    from edgepack.options import ExportOptions

    return ExportOptions(output_dir=Path("."))
