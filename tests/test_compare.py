"""`edgepack compare`: per-node divergence between a float ONNX model and its int8 (QDQ) or fp16
version. Numbers checked: which tensors match, SQNR/cosine against values computed here, the
culprit layer of a model made to break int8, the input formats, and the CLI's exit codes."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from torch import nn

from edgepack.divergence import (compare_outputs, first_below, intermediate_outputs, load_inputs, per_node_divergence,
                              random_inputs, ranked, sqnr_db)
from edgepack.errors import UsageError

SHAPE = (1, 3, 16, 16)


def _cnn() -> nn.Sequential:
    """conv-relu x3, pool, linear. Indices give the TorchScript node names (/0/Conv, /3/Relu, ...)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).eval()


def _export(m: nn.Module, path: Path) -> Path:
    torch.onnx.export(m, (torch.zeros(SHAPE),), str(path), dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["logits"])
    return path


class _Reader(CalibrationDataReader):
    def __init__(self, n: int = 16, seed: int = 100) -> None:
        rng = np.random.default_rng(seed)
        self._it = iter([{"x": rng.standard_normal(SHAPE).astype(np.float32)} for _ in range(n)])

    def get_next(self):
        return next(self._it, None)


def _quantize(src: Path, dst: Path, keep_activations: bool) -> Path:
    """Static QDQ int8 as edgepack's quantize_int8 does it (per-channel symmetric weights, int8
    activations); keep_activations keeps the Relus that ONNX Runtime otherwise folds into the ranges."""
    quantize_static(str(src), str(dst), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                                   "QDQKeepRemovableActivations": keep_activations})
    return dst


def _to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and compute, fp32 input and output (Casts at both ends), tensor names kept."""
    m = onnx.ModelProto.FromString(proto.SerializeToString())
    g = m.graph
    for init in g.initializer:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    out = g.output[0].name
    producer = next(n for n in g.node if out in n.output)
    producer.output[list(producer.output).index(out)] = out + "_fp16"
    for n in g.node:
        for k, name in enumerate(n.input):
            if name == "x":
                n.input[k] = "x_fp16"
    g.node.insert(0, helper.make_node("Cast", ["x"], ["x_fp16"], to=TensorProto.FLOAT16, name="cast_in"))
    g.node.append(helper.make_node("Cast", [out + "_fp16"], [out], to=TensorProto.FLOAT, name="cast_out"))
    del g.value_info[:]
    return m


def _feeds(n: int, seed: int = 7) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal(SHAPE).astype(np.float32)} for _ in range(n)]


def _float_outputs(path: Path) -> list[str]:
    return [o for n in onnx.load(str(path)).graph.node for o in n.output]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("compare")
    fp32 = _export(_cnn(), d / "model.fp32.onnx")
    broken = _cnn()
    with torch.no_grad():
        # conv0's channel 3 is dead (zero weights, negative bias: always 0 after the ReLU), so a
        # huge weight on it in conv2 changes nothing in fp32; in int8 it sets the per-channel scale
        # of every output channel of conv2 and rounds all its other weights to zero.
        broken[0].weight[3] = 0.0
        broken[0].bias[3] = -1.0
        broken[2].weight[:, 3, 1, 1] = 1000.0
    broken_fp32 = _export(broken, d / "broken.fp32.onnx")
    return {
        "dir": d,
        "fp32": fp32,
        "int8": _quantize(fp32, d / "model.int8.onnx", keep_activations=True),
        "int8_default": _quantize(fp32, d / "model.int8_default.onnx", keep_activations=False),
        "broken_fp32": broken_fp32,
        "broken_int8": _quantize(broken_fp32, d / "broken.int8.onnx", keep_activations=True),
        "broken_int8_default": _quantize(broken_fp32, d / "broken.int8_default.onnx", keep_activations=False),
    }


# ---------------------------------------------------------------- library


def test_int8_matches_every_float_tensor_with_sane_sqnr(models):
    rows = per_node_divergence(models["fp32"], models["int8"], _feeds(6))
    assert [r["tensor"] for r in rows] == _float_outputs(models["fp32"])  # all 9, in A's order
    assert [r["op"] for r in rows] == ["Conv", "Relu"] * 3 + ["GlobalAveragePool", "Flatten", "Gemm"]
    for r in rows:
        assert math.isfinite(r["sqnr_db"]) and r["sqnr_db"] > 20.0, r
        assert 0.99 < r["cosine"] <= 1.0
        assert 0.0 < r["max_abs_error"] < 0.5
        assert math.isfinite(r["sqnr_drop_db"])
    assert first_below(rows) is None


def test_sqnr_cosine_and_drop_are_the_documented_formulas(models):
    feeds = _feeds(3)
    rows = {r["tensor"]: r for r in per_node_divergence(models["fp32"], models["int8"], feeds)}
    # B's value of a tensor is the one its consumers see: after its QuantizeLinear -> DequantizeLinear
    a = intermediate_outputs(models["fp32"], feeds)
    b = intermediate_outputs(models["int8"], feeds)
    for name in ("/1/Relu_output_0", "/2/Conv_output_0", "logits"):
        ref = a[name].astype(np.float64)
        seen = b[name + "_DequantizeLinear_Output"] if name + "_DequantizeLinear_Output" in b else b[name]
        other = seen.astype(np.float64)
        if name == "/2/Conv_output_0":  # consumed only by a Relu: compared after it
            assert rows[name]["compared_after"] == "Relu"
            ref, other = np.maximum(ref, 0.0), np.maximum(other, 0.0)
        else:
            assert rows[name]["compared_after"] is None
        expected = 10 * np.log10((ref**2).sum() / ((ref - other) ** 2).sum())
        assert rows[name]["sqnr_db"] == pytest.approx(expected, abs=1e-6)
        cos = (ref * other).sum() / np.sqrt((ref**2).sum() * (other**2).sum())
        assert rows[name]["cosine"] == pytest.approx(cos, abs=1e-9)
        assert rows[name]["max_abs_error"] == pytest.approx(np.abs(ref - other).max(), rel=1e-9)
    # drop = worst input's SQNR - own SQNR; conv2's only data input is relu1's output
    r2, relu1 = rows["/2/Conv_output_0"], rows["/1/Relu_output_0"]
    assert r2["upstream_sqnr_db"] == relu1["sqnr_db"]
    assert r2["sqnr_drop_db"] == pytest.approx(relu1["sqnr_db"] - r2["sqnr_db"])
    # the first conv's input is x as B's conv sees it: quantized, so a finite SQNR
    x = feeds[0]["x"]
    assert math.isfinite(rows["/0/Conv_output_0"]["upstream_sqnr_db"])
    assert rows["/0/Conv_output_0"]["upstream_sqnr_db"] > 30.0
    assert sqnr_db(x, x) == math.inf


def test_identical_models_are_exact(models):
    rows = per_node_divergence(models["fp32"], models["fp32"], _feeds(2))
    assert len(rows) == len(_float_outputs(models["fp32"]))
    for r in rows:
        assert r["sqnr_db"] == math.inf
        assert r["cosine"] == 1.0
        assert r["max_abs_error"] == 0.0
        assert r["sqnr_drop_db"] == 0.0


def test_relus_folded_by_the_quantizer_are_covered_by_their_row(models):
    """ONNX Runtime's default QDQ removes a Relu after a Conv (the int8 range clips instead): the
    Conv's output has no counterpart, and the Relu row carries the Conv's damage."""
    rows = per_node_divergence(models["fp32"], models["int8_default"], _feeds(4))
    convs = {"/0/Conv_output_0", "/2/Conv_output_0", "/4/Conv_output_0"}
    assert [r["tensor"] for r in rows] == [t for t in _float_outputs(models["fp32"]) if t not in convs]
    relus = {r["node"]: r for r in rows if r["op"] == "Relu"}
    assert {n: r["covers"] for n, r in relus.items()} == {"/1/Relu": ["/0/Conv"], "/3/Relu": ["/2/Conv"],
                                                          "/5/Relu": ["/4/Conv"]}
    assert all(r["sqnr_db"] > 20.0 for r in rows)


def test_largest_drop_names_the_layer_that_breaks_int8(models):
    feeds = _feeds(4)
    relu1 = intermediate_outputs(models["broken_fp32"], feeds, names=["/1/Relu_output_0"])["/1/Relu_output_0"]
    assert not relu1[:, :, 3].any()  # the huge weights multiply a dead channel: no effect in fp32
    rows = per_node_divergence(models["broken_fp32"], models["broken_int8"], feeds)
    top = ranked(rows, 3)
    assert top[0]["node"] == "/2/Conv"
    assert top[0]["sqnr_db"] < 5.0
    assert top[0]["sqnr_drop_db"] > 25.0 > top[1]["sqnr_drop_db"]
    before = [r for r in rows if r["node"] in ("/0/Conv", "/1/Relu")]
    assert all(r["sqnr_db"] > 30.0 for r in before)  # the layers before it are fine
    assert first_below(rows)["node"] == "/2/Conv"
    # with the Relus folded away (edgepack's int8 setting), the culprit row is the Relu covering that Conv
    top = ranked(per_node_divergence(models["broken_fp32"], models["broken_int8_default"], feeds), 1)[0]
    assert (top["node"], top["covers"]) == ("/3/Relu", ["/2/Conv"])


def test_fp16_tensors_are_compared_in_float64(models):
    fp16 = _to_fp16(onnx.load(str(models["fp32"])))
    rows = per_node_divergence(models["fp32"], fp16, _feeds(2))
    assert [r["tensor"] for r in rows] == _float_outputs(models["fp32"])
    for r in rows:
        assert 45.0 < r["sqnr_db"] < 120.0, r  # fp16 rounding: ~60-80 dB, never exact, never broken
        assert r["cosine"] > 0.99999
    assert rows[0]["upstream_sqnr_db"] > 60.0  # x as the conv sees it: cast to fp16
    out = compare_outputs(models["fp32"], fp16, _feeds(2))
    assert 0.0 < out["rel_error"] < 1e-2


def test_intermediate_outputs_stack_every_float_tensor(models):
    feeds = _feeds(3)
    values = intermediate_outputs(models["int8"], feeds)
    proto = onnx.load(str(models["int8"]))
    float_outputs = [o for n in proto.graph.node if n.op_type != "QuantizeLinear" for o in n.output]
    assert set(values) == set(float_outputs)  # Q outputs are int8: skipped
    assert values["/0/Conv_output_0"].shape == (3, 1, 8, 16, 16)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(models["int8"]), opts, providers=["CPUExecutionProvider"])
    for i, feed in enumerate(feeds):
        np.testing.assert_array_equal(values["logits"][i], session.run(["logits"], feed)[0])


def test_output_metrics_match_by_name(models):
    out = compare_outputs(models["fp32"], models["int8"], _feeds(8))
    assert out["outputs_compared"] == ["logits"]
    assert 0.0 < out["rel_error"] < 0.1
    assert out["cosine"] > 0.99
    assert out["top1_agreement"] is not None and out["top1_agreement"] >= 0.75
    renamed = onnx.load(str(models["int8"]))
    renamed.graph.node[-1].output[0] = renamed.graph.output[0].name = "scores"
    with pytest.raises(UsageError, match=r"no output name in common \(A: \['logits'\], B: \['scores'\]\)"):
        compare_outputs(models["fp32"], renamed, _feeds(1))


# ---------------------------------------------------------------- inputs


def test_input_formats(models, tmp_path):
    x = np.random.default_rng(0).standard_normal((5,) + SHAPE).astype(np.float32)
    np.savez(tmp_path / "verify.npz", **{"input/x": x, "reference/logits": np.zeros((5, 1, 5))})
    np.savez(tmp_path / "stacked.npz", x=x)
    np.savez(tmp_path / "single.npz", x=x[0])
    for name, count in (("verify.npz", 5), ("stacked.npz", 5), ("single.npz", 1)):
        feeds = load_inputs(tmp_path / name, models["fp32"])
        assert len(feeds) == count
        np.testing.assert_array_equal(feeds[-1]["x"], x[count - 1])
    np.savez(tmp_path / "wrong_name.npz", image=x)
    np.savez(tmp_path / "wrong_shape.npz", x=x[:, :, :2])
    with pytest.raises(UsageError, match=r"holds \['image'\]; the model's inputs are \['x'\]"):
        load_inputs(tmp_path / "wrong_name.npz", models["fp32"])
    with pytest.raises(UsageError, match=r"input 'x' has shape \[5, 1, 2, 16, 16\]; the model expects \[1,3,16,16\]"):
        load_inputs(tmp_path / "wrong_shape.npz", models["fp32"])
    feeds = random_inputs(models["fp32"], n=4, seed=3)
    assert len(feeds) == 4 and feeds[0]["x"].shape == SHAPE
    np.testing.assert_array_equal(feeds[2]["x"], random_inputs(models["fp32"], n=4, seed=3)[2]["x"])


def test_dynamic_shapes_need_inputs(tmp_path):
    path = tmp_path / "dyn.onnx"
    torch.onnx.export(_cnn(), (torch.zeros(SHAPE),), str(path), dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}})
    with pytest.raises(UsageError, match=r"input 'x' has dynamic shape \[\?,3,16,16\]; pass --inputs"):
        random_inputs(path)


# ---------------------------------------------------------------- CLI


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgepack", "compare", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def runs(models) -> dict[str, subprocess.CompletedProcess]:
    """All CLI cases at once: each process is mostly interpreter and ONNX Runtime start-up."""
    d = models["dir"]
    export_dir = d / "export"
    export_dir.mkdir()
    for key in ("fp32", "int8"):
        (export_dir / models[key].name).write_bytes(models[key].read_bytes())
    x = np.random.default_rng(1).standard_normal((6,) + SHAPE).astype(np.float32)
    np.savez(export_dir / "verify.npz", **{"input/x": x})
    renamed = onnx.load(str(models["fp32"]))
    mapping = {o: f"other_{i}" for i, o in enumerate(o for n in renamed.graph.node for o in n.output)}
    for n in renamed.graph.node:
        n.input[:] = [mapping.get(i, i) for i in n.input]
        n.output[:] = [mapping[o] for o in n.output]
    renamed.graph.output[0].name = mapping["logits"]
    onnx.save(renamed, str(d / "renamed.onnx"))
    (d / "model.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))
    (d / "notonnx.onnx").write_bytes(b"\x01\x02garbage" * 10)
    cases = {
        "per_node_json": ("export/model.fp32.onnx", "export/model.int8.onnx", "--per-node", "--json", "--top", "3",
                          "--samples", "4"),
        "table": (models["broken_fp32"].name, models["broken_int8"].name, "--per-node"),
        "missing": ("nope.onnx", models["int8"].name),
        "tflite": (models["fp32"].name, "model.tflite"),
        "torch": (models["fp32"].name, "weights.pt"),
        "not_onnx": (models["fp32"].name, "notonnx.onnx"),
        "no_common": (models["fp32"].name, "renamed.onnx", "--per-node"),
        "bad_inputs": (models["fp32"].name, models["int8"].name, "--inputs", "small.npz"),
    }
    np.savez(d / "small.npz", **{"input/x": x[:, :, :, :8]})
    (d / "weights.pt").write_bytes(b"\x80\x02" + bytes(16))
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {k: pool.submit(_cli, *args, cwd=d) for k, args in cases.items()}
        return {k: f.result() for k, f in futures.items()}


def test_cli_per_node_json_uses_the_exports_verify_npz(runs):
    r = runs["per_node_json"]
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert set(data) == {"a", "b", "runtime", "inputs", "outputs", "per_node"}
    assert data["inputs"] == {"source": str(Path("export") / "verify.npz"), "samples": 6, "per_node_samples": 4}
    assert data["outputs"]["outputs_compared"] == ["logits"] and data["outputs"]["cosine"] > 0.99
    pn = data["per_node"]
    assert pn["matched_tensors"] == pn["a_float_tensors"] == 9 == len(pn["nodes"])
    assert len(pn["top"]) == 3 and pn["threshold_db"] == 20.0 and pn["first_below_threshold"] is None
    assert set(pn["nodes"][0]) == {"tensor", "op", "node", "sqnr_db", "cosine", "max_abs_error", "upstream_sqnr_db",
                                   "sqnr_drop_db", "covers", "compared_after"}
    drops = [t["sqnr_drop_db"] for t in pn["top"]]
    assert drops == sorted(drops, reverse=True)


def test_cli_table_names_the_culprit(runs):
    r = runs["table"]
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    first_row = next(line for line in lines if line.startswith("│"))
    assert "/2/Conv" in first_row
    assert any(line.startswith("first node below 20 dB SQNR: /2/Conv (Conv") for line in lines)
    assert "top-1 agreement" in r.stdout


@pytest.mark.parametrize("case, code, message", [
    ("missing", 2, "A: model file nope.onnx not found"),
    ("tflite", 4, "TFLite comparison arrives with the TFLite exporter"),
    ("torch", 2, "use the export's fp32 ONNX"),
    ("not_onnx", 2, "B: notonnx.onnx is not a valid ONNX model"),
    ("no_common", 2, "A and B share no tensor names"),
    ("bad_inputs", 2, "--inputs small.npz: input 'x' has shape [6, 1, 3, 8, 16]; the model expects [1,3,16,16]"),
])
def test_cli_errors_are_one_line(runs, case, code, message):
    r = runs[case]
    assert r.returncode == code, (r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgepack: error: ") and message in lines[0], r.stderr
