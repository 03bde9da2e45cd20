"""`edgepack pack`: bundle contents per platform, the TFLite metadata read back with the schema,
the packed model loading and running (bit-identical to the exported one when not clustered),
run.py on the Pi layout, weight clustering's download size and accuracy on the digits CNN, the
latency and precision choices, and the errors a user meets.

One export of the shipped digits example (TFLite fp32, fp16, and int8 with int8 IO, --scale 1/16 recorded,
--eval) is shared by the module."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from edgepack.converters.cluster_weights import kmeans_1d, share_values
from edgepack.converters.write_tflite_metadata import (
    AssociatedFile,
    ImageInfo,
    ModelInfo,
    TensorInfo,
    add_metadata,
    build_metadata,
    load_model,
    min_runtime_version,
    parse_metadata,
    read_metadata,
    serialize_model,
)
from edgepack.runtimes import get_runtime

import edgepack
from edgepack.cli import main
from edgepack.errors import UsageError
from edgepack.commands.pack import PackOptions, choose_artifact, latency, normalization, pack

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
LABELS = EXAMPLES / "digits_labels.txt"
EVAL = EXAMPLES / "digits_test.npz"


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export")
    report = edgepack.export(EXAMPLES / "digits_cnn.pt2", output_dir=out, formats="tflite", target="rpi4",
                             calib=EXAMPLES / "digits_calib.npy", int8=True, fp16=True, int8_io=True, scale=1 / 16,
                             eval_data=EVAL)
    assert report["ok"], report
    return out


def _pack(export_dir: Path, tmp_path: Path, platform: str, **kw) -> tuple[dict, zipfile.ZipFile]:
    summary = pack(PackOptions(export_dir=export_dir, platform=platform, output=tmp_path / f"{platform}.zip", **kw))
    return summary, zipfile.ZipFile(tmp_path / f"{platform}.zip")


# ---------------------------------------------------------------- bundle layout per platform


@pytest.mark.parametrize("platform, expected", [
    ("android", {"assets/digits_cnn.tflite", "assets/labels.txt", "assets/edgepack.json", "README.md"}),
    ("ios", {"digits_cnn.tflite", "labels.txt", "edgepack.json", "README.md"}),
    ("rpi", {"digits_cnn.tflite", "labels.txt", "edgepack.json", "README.md", "run.py"}),
])
def test_bundle_contents_per_platform(export_dir, tmp_path, platform, expected):
    summary, z = _pack(export_dir, tmp_path, platform, labels=LABELS, precision="fp32")
    assert set(z.namelist()) == expected
    prefix = "assets/" if platform == "android" else ""
    manifest = json.loads(z.read(prefix + "edgepack.json"))
    # every file the manifest lists is in the zip with that size and sha256
    assert [f["path"] for f in manifest["files"]] == ["digits_cnn.tflite", "labels.txt"]
    for f in manifest["files"]:
        data = z.read(prefix + f["path"])
        assert (len(data), hashlib.sha256(data).hexdigest()) == (f["size_bytes"], f["sha256"])
        assert 0 < f["deflated_bytes"] <= len(data) + 16
    assert z.read(prefix + "labels.txt").decode().splitlines() == [str(i) for i in range(10)]
    # the IO contract
    assert manifest["model"]["precision"] == "fp32" and manifest["platform"] == platform
    (inp,), (out,) = manifest["inputs"], manifest["outputs"]
    assert (inp["name"], inp["shape"], inp["onnx_shape"], inp["layout"], inp["perm"], inp["dtype"]) == \
        ("x", [1, 8, 8, 1], [1, 1, 8, 8], "NHWC", [0, 2, 3, 1], "float32")
    assert (out["name"], out["shape"], out["dtype"]) == ("output", [1, 10], "float32")
    assert manifest["preprocessing"]["scale"] == pytest.approx(1 / 16)
    assert manifest["labels"] == {"file": "labels.txt", "count": 10, "output": "output"}
    assert manifest["target"]["name"] == "rpi4"
    # no bench ran: the latency is the export's estimate for the target, and the manifest says so
    report = json.loads((export_dir / "report.json").read_text())
    art = next(a for a in report["artifacts"] if a["format"] == "tflite" and a["precision"] == "fp32")
    assert manifest["latency"]["source"] == "estimate"
    assert manifest["latency"]["ms"] == pytest.approx(art["estimate"]["latency_ms"])
    readme = z.read("README.md").decode()
    snippet = {"android": "import org.tensorflow.lite.Interpreter", "ios": "import TensorFlowLite",
               "rpi": "python3 run.py sample.npy"}[platform]
    assert snippet in readme and "[1, 8, 8, 1]" in readme
    assert summary["files"][0]["size_bytes"] == manifest["files"][0]["size_bytes"]


def test_int8_io_contract_has_scale_and_zero_point(export_dir, tmp_path):
    report = json.loads((export_dir / "report.json").read_text())
    art = next(a for a in report["artifacts"] if a["path"] == "digits_cnn.int8.tflite")
    if art.get("slower_than_fp32"):  # the speed check found this tiny model's int8 slower: pack takes fp32 then
        _, z = _pack(export_dir, tmp_path, "ios", labels=LABELS)
        manifest = json.loads(z.read("edgepack.json"))
        assert manifest["model"]["precision"] == "fp32" and "slower than fp32" in manifest["model"]["precision_choice"]
    _, z = _pack(export_dir, tmp_path, "ios", labels=LABELS, precision="int8")
    manifest = json.loads(z.read("edgepack.json"))
    assert manifest["model"]["precision"] == "int8"
    if not art.get("slower_than_fp32"):
        _, z2 = _pack(export_dir, tmp_path, "ios", labels=LABELS)  # rpi4 prefers int8
        assert json.loads(z2.read("edgepack.json"))["model"]["precision_choice"] == "target rpi4 prefers int8, fp32"
    for got, want in zip(manifest["inputs"] + manifest["outputs"], art["inputs"] + art["outputs"]):
        assert got["dtype"] == "int8"
        assert (got["scale"], got["zero_point"]) == (want["scale"], want["zero_point"])
    assert "Int8(clamping:" in z.read("README.md").decode()


# ---------------------------------------------------------------- TFLite metadata


def test_metadata_read_back_with_the_schema(export_dir, tmp_path):
    _, z = _pack(export_dir, tmp_path, "rpi", labels=LABELS, precision="fp32", author="tests", version="2.1")
    got = read_metadata(z.read("digits_cnn.tflite"))
    meta = got["metadata"]
    assert (meta["name"], meta["version"], meta["author"], meta["min_parser_version"]) == \
        ("digits_cnn", "2.1", "tests", "1.0.0")
    assert meta["description"].startswith("digits_cnn: fp32 TFLite exported by edgepack")
    (sub,) = meta["subgraph_metadata"]
    (inp,), (out,) = sub["input_tensor_metadata"], sub["output_tensor_metadata"]
    assert inp["name"] == "x"
    assert inp["content"] == {"content_properties_type": "ImageProperties", "content_properties": {
        "color_space": "GRAYSCALE", "default_size": {"width": 8, "height": 8}}}
    # recorded x * (1/16), no mean/std -> TFLite's (x - 0) / 16 on raw pixels 0..16
    assert inp["process_units"] == [{"options_type": "NormalizationOptions", "options": {"mean": [0.0], "std": [16.0]}}]
    assert inp["stats"] == {"min": [0.0], "max": [16.0]}
    assert out["name"] == "output"
    assert out["content"]["content_properties_type"] == "FeatureProperties"
    assert out["associated_files"] == [{"name": "labels.txt", "description": "Labels for the 10 classes of output",
                                        "type": "TENSOR_AXIS_LABELS"}]
    assert got["associated_files"] == {"labels.txt": LABELS.read_bytes()}
    assert got["min_runtime_version"] == "1.6.0"  # float CONV_2D/RESHAPE/... ; SUB and DIV v1 need 1.6.0


def test_metadata_builder_round_trip_every_field():
    info = ModelInfo("m", "d", "3", "a", license="Apache-2.0", inputs=(
        TensorInfo("img", "rgb", ImageInfo("RGB", 224, 160), mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375),
                   stats_min=(0.0,), stats_max=(255.0,)),
        TensorInfo("extra", "features"),
    ), outputs=(TensorInfo("p", "probs", files=(AssociatedFile("l.txt", "labels"), AssociatedFile("v.txt", "values",
                                                                                                   "TENSOR_VALUE_LABELS"))),))
    meta = parse_metadata(build_metadata(info))
    assert (meta["name"], meta["description"], meta["version"], meta["author"], meta["license"]) == ("m", "d", "3", "a", "Apache-2.0")
    img, extra = meta["subgraph_metadata"][0]["input_tensor_metadata"]
    assert img["content"]["content_properties"] == {"color_space": "RGB", "default_size": {"width": 224, "height": 160}}
    np.testing.assert_allclose(img["process_units"][0]["options"]["mean"], [123.675, 116.28, 103.53], rtol=1e-6)
    np.testing.assert_allclose(img["process_units"][0]["options"]["std"], [58.395, 57.12, 57.375], rtol=1e-6)
    assert img["stats"] == {"min": [0.0], "max": [255.0]}
    assert extra == {"name": "extra", "description": "features",
                     "content": {"content_properties_type": "FeatureProperties", "content_properties": {}}}
    files = meta["subgraph_metadata"][0]["output_tensor_metadata"][0]["associated_files"]
    assert [(f["name"], f["type"]) for f in files] == [("l.txt", "TENSOR_AXIS_LABELS"), ("v.txt", "TENSOR_VALUE_LABELS")]
    with pytest.raises(UsageError, match="identifier"):
        parse_metadata(b"\0" * 4 + b"TFL3" + b"\0" * 8)


def test_min_runtime_version_follows_tensor_types(export_dir):
    models = {p: load_model((export_dir / f"digits_cnn.{p}.tflite").read_bytes()) for p in ("fp32", "fp16", "int8")}
    assert min_runtime_version(models["fp32"]) == "1.6.0"  # SUB, DIV v1
    assert min_runtime_version(models["fp16"]) == "1.15.0"  # DEQUANTIZE of float16 weights (v3)
    assert min_runtime_version(models["int8"]) == "1.14.0"  # int8 kernels; int8 IO, so no QUANTIZE (v2 needs 1.15.0)
    meta = build_metadata(ModelInfo("a", "b", "1", "c", inputs=(), outputs=()))
    model = models["fp32"]
    add_metadata(model, meta, "1.6.0")
    add_metadata(model, meta, "1.6.0")  # replaces, never duplicates
    assert sorted(m.name.decode() if isinstance(m.name, bytes) else m.name for m in model.metadata) == \
        ["TFLITE_METADATA", "min_runtime_version"]
    got = read_metadata(serialize_model(model))
    assert got["min_runtime_version"] == "1.6.0" and got["metadata"]["name"] == "a"


TFLITE_SUPPORT_PYTHON = os.environ.get("EDGEPACK_TFLITE_SUPPORT_PYTHON")
_DISPLAY = """
import json, sys
from tflite_support import metadata
d = metadata.MetadataDisplayer.with_model_file(sys.argv[1])
print(json.dumps({"metadata": json.loads(d.get_metadata_json()), "files": d.get_packed_associated_file_list(),
                  "labels": d.get_associated_file_buffer("labels.txt").decode()}))
"""


@pytest.mark.skipif(not TFLITE_SUPPORT_PYTHON,
                    reason="tflite-support pins protobuf<4 and numpy<2, so it lives in a separate venv: set "
                           "EDGEPACK_TFLITE_SUPPORT_PYTHON to its python (.ci/run does; by hand: python3.11 -m venv v && v/bin/pip install "
                           "tflite-support==0.4.4 'numpy<2'; needs libusb-1.0-0)")
def test_metadata_read_by_tflite_support(export_dir, tmp_path):
    """TFLite Support's own MetadataDisplayer parses what we wrote and sees the same fields."""
    _, z = _pack(export_dir, tmp_path, "rpi", labels=LABELS, precision="fp32")
    model = tmp_path / "m.tflite"
    model.write_bytes(z.read("digits_cnn.tflite"))
    proc = subprocess.run([TFLITE_SUPPORT_PYTHON, "-c", _DISPLAY, str(model)], check=False, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    theirs = json.loads(proc.stdout)
    ours = read_metadata(model.read_bytes())["metadata"]
    assert theirs["files"] == ["labels.txt"]
    assert theirs["labels"] == LABELS.read_text()
    meta = theirs["metadata"]
    for key in ("name", "description", "version", "author", "min_parser_version"):
        assert meta[key] == ours[key]
    sub, our_sub = meta["subgraph_metadata"][0], ours["subgraph_metadata"][0]
    inp, our_inp = sub["input_tensor_metadata"][0], our_sub["input_tensor_metadata"][0]
    assert inp["content"] == our_inp["content"]
    assert inp["process_units"] == our_inp["process_units"]
    assert inp["stats"] == our_inp["stats"]
    assert sub["output_tensor_metadata"][0]["associated_files"] == our_sub["output_tensor_metadata"][0]["associated_files"]


# ---------------------------------------------------------------- the packed model runs


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_packed_model_runs_like_the_exported_one(export_dir, tmp_path, precision):
    summary, z = _pack(export_dir, tmp_path, "android", labels=LABELS, precision=precision)
    packed = tmp_path / "packed.tflite"
    packed.write_bytes(z.read("assets/digits_cnn.tflite"))
    runtime = get_runtime("litert")
    a, b = runtime.load(export_dir / f"digits_cnn.{precision}.tflite"), runtime.load(packed)
    assert a.input_names == b.input_names and a.output_names == b.output_names
    x = np.load(EVAL)["x"][:8]
    for sample in x:
        feed = np.ascontiguousarray(sample.reshape(1, 1, 8, 8).transpose(0, 2, 3, 1))
        if precision == "int8":
            q = json.loads(z.read("assets/edgepack.json"))["inputs"][0]
            feed = np.clip(np.round(feed / q["scale"]) + q["zero_point"], -128, 127).astype(np.int8)
        np.testing.assert_array_equal(a.run({"x": feed})["output"], b.run({"x": feed})["output"])
    fid = summary["verification"]["fidelity"]
    report = json.loads((export_dir / "report.json").read_text())
    exported = next(x for x in report["artifacts"] if x["path"] == f"digits_cnn.{precision}.tflite")["fidelity"]
    assert fid["samples"] == 40 and fid["cosine"] == pytest.approx(exported["cosine"], abs=1e-9)
    acc = summary["verification"]["accuracy"]
    assert acc["samples"] == 360 and acc["packed_top1"] == acc["export_top1"]


def test_rpi_script_runs_with_numpy_and_litert(export_dir, tmp_path):
    for precision in ("fp32", "int8"):
        _, z = _pack(export_dir, tmp_path, "rpi", labels=LABELS, precision=precision)
        folder = tmp_path / f"pi-{precision}"
        z.extractall(folder)
        data = np.load(EVAL)
        raw = data["x"][:3] * 16  # raw pixels 0..16; run.py applies the recorded scale 1/16
        for i, sample in enumerate(raw):
            np.save(folder / "s.npy", sample)
            proc = subprocess.run([sys.executable, "run.py", "s.npy", "--json", "--top", "3"], cwd=folder, check=False,
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stderr
            top = json.loads(proc.stdout.strip().splitlines()[-1])["top"]
            assert len(top) == 3 and top[0]["label"] == str(data["y"][i])  # these 3 are classified right by both


# ---------------------------------------------------------------- weight clustering


def test_kmeans_1d_linear_init_finds_the_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([-1.0, 0.0, 0.5, 2.0])
    x = np.concatenate([c + 0.01 * rng.standard_normal(500) for c in centres])
    c, labels = kmeans_1d(x, 4)
    np.testing.assert_allclose(c, centres, atol=0.005)
    assert np.array_equal(np.bincount(labels), [500] * 4)
    shared = share_values(x.astype(np.float32), 4)
    assert shared.dtype == np.float32 and np.unique(shared).size == 4
    ints = share_values(np.arange(-128, 128, dtype=np.int8), 16)
    assert ints.dtype == np.int8 and np.unique(ints).size == 16
    assert np.abs(ints.astype(int) - np.arange(-128, 128)).max() <= 8  # 16 even bins of width 16


def test_cluster_16_halves_download_and_keeps_accuracy(export_dir, tmp_path):
    """The issue's bar: on the digits CNN, --cluster 16 shrinks the deflated model at least 2x with
    top-1 accuracy within 1 point."""
    summary, z = _pack(export_dir, tmp_path, "android", labels=LABELS, precision="fp32", cluster=16)
    cl = summary["clustering"]
    assert cl["clusters"] == 16 and cl["layers_clustered"] == 4  # 3 convs + the linear layer
    assert all(layer["distinct_after"] <= 16 < layer["distinct_before"] for layer in cl["layers"])
    assert cl["deflated_before"] / cl["deflated_after"] >= 2.0
    assert abs(cl["accuracy_after"] - cl["accuracy_before"]) <= 0.01
    assert cl["fidelity_after"]["cosine"] > 0.98 and cl["fidelity_after"]["top1_agreement"] >= 0.95
    manifest = json.loads(z.read("assets/edgepack.json"))
    assert manifest["clustering"]["deflate_ratio"] == pytest.approx(cl["deflate_ratio"])
    # what the bundle's file really deflates to
    from edgepack.fsutil import deflated_size

    assert deflated_size(z.read("assets/digits_cnn.tflite")) == cl["deflated_after"]


def test_cluster_int8_shares_integer_levels(export_dir, tmp_path):
    summary, _ = _pack(export_dir, tmp_path, "rpi", precision="int8", cluster=16)
    cl = summary["clustering"]
    assert {layer["dtype"] for layer in cl["layers"]} == {"int8"} and len(cl["layers"]) == 4
    assert cl["deflate_ratio"] > 1.2
    assert abs(cl["accuracy_after"] - cl["accuracy_before"]) <= 0.02


# ---------------------------------------------------------------- latency and precision choices


def test_latency_prefers_a_measurement_on_the_target_then_the_estimate():
    here = {"latency_ms": {"p50": 1.5, "p90": 2.0, "p99": 2.5, "mean": 1.6, "std": 0.1, "min": 1.4, "max": 3.0},
            "runtime": "litert", "threads": 1, "runs": 50, "host": {"hostname": "laptop"}}
    on_pi = {**here, "latency_ms": {**here["latency_ms"], "p50": 9.5}, "device": "mypi", "device_profile": "rpi4"}
    estimate = {"latency_ms": 4.2, "peak_memory_mb": 3.0, "target": "rpi4"}
    got = latency({"bench": on_pi, "estimate": estimate}, "rpi4")
    assert (got["source"], got["ms"], got["measured_on"]) == ("measured", 9.5, "mypi") and "note" not in got
    # measured on this machine, not on an rpi4: the estimate for the target wins, the measurement is kept beside it
    got = latency({"bench": here, "estimate": estimate}, "rpi4")
    assert (got["source"], got["ms"], got["measured_elsewhere"]) == ("estimate", 4.2, {"ms": 1.5, "statistic": "p50", "on": "laptop"})
    got = latency({"bench": here}, "rpi4")  # no estimate: the measurement, saying where it was taken
    assert (got["source"], got["ms"], got["measured_on"]) == ("measured", 1.5, "laptop") and "not on a rpi4" in got["note"]
    assert latency({"estimate": estimate}, "rpi4") == {"source": "estimate", "ms": 4.2, "details": estimate}
    assert latency({})["source"] == "unknown" and latency({})["ms"] is None


def test_manifest_latency_from_report_bench(export_dir, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    report = json.loads((copy / "report.json").read_text())
    for art in report["artifacts"]:
        if art["path"] == "digits_cnn.fp32.tflite":
            art["estimate"] = {"latency_ms": 0.8, "target": "rpi4"}
        if art["path"] == "digits_cnn.int8.tflite":  # benched on a board of the export's target profile
            art["bench"] = {"latency_ms": {"p50": 0.05}, "runtime": "litert", "device": "mypi", "device_profile": "rpi4"}
    (copy / "report.json").write_text(json.dumps(report))
    _, z = _pack(copy, tmp_path, "ios", precision="fp32")
    assert json.loads(z.read("edgepack.json"))["latency"]["source"] == "estimate"
    _, z = _pack(copy, tmp_path, "ios", precision="int8")
    lat = json.loads(z.read("edgepack.json"))["latency"]
    assert (lat["source"], lat["ms"], lat["measured_on"]) == ("measured", 0.05, "mypi")


def test_precision_choice():
    arts = [{"format": "tflite", "precision": p, "ok": True, "path": f"m.{p}.tflite"} for p in ("fp32", "fp16")]
    arts.append({"format": "onnx", "precision": "int8", "ok": True, "path": "m.int8.onnx"})
    report = {"target": {"name": "android-mid"}, "artifacts": arts}  # prefers fp16, int8, fp32
    assert choose_artifact(report, None) == (arts[1], "target android-mid prefers fp16, int8, fp32")
    assert choose_artifact(report, "fp32")[0] is arts[0]
    with pytest.raises(UsageError, match="has TFLite fp32, fp16"):
        choose_artifact(report, "int8")
    with pytest.raises(UsageError, match="--format tflite"):
        choose_artifact({"artifacts": arts[2:]}, None)


def test_normalization_in_raw_units():
    assert normalization(None) == ((0.0,), (1.0,))
    mean, std = normalization({"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    np.testing.assert_allclose(mean, [123.675, 116.28, 103.53])
    np.testing.assert_allclose(std, [58.395, 57.12, 57.375])


# ---------------------------------------------------------------- errors


def test_errors(export_dir, tmp_path, capsys):
    bad_labels = tmp_path / "labels.txt"
    bad_labels.write_text("a\nb\nc\n")
    with pytest.raises(UsageError, match="--labels has 3 lines but no output has 3 classes"):
        pack(PackOptions(export_dir=export_dir, platform="rpi", output=tmp_path / "b.zip", labels=bad_labels))
    assert not (tmp_path / "b.zip").exists()
    with pytest.raises(UsageError, match="ending in .zip"):
        PackOptions(export_dir=export_dir, platform="rpi", output=tmp_path / "b.tar")
    with pytest.raises(UsageError, match="no report.json"):
        PackOptions(export_dir=tmp_path, platform="rpi", output=tmp_path / "b.zip")
    with pytest.raises(UsageError, match="between 2 and 256"):
        PackOptions(export_dir=export_dir, platform="rpi", output=tmp_path / "b.zip", cluster=1)
    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    with open(copy / "digits_cnn.fp32.tflite", "ab") as f:
        f.write(b"\0")
    with pytest.raises(UsageError, match="changed since the export"):
        pack(PackOptions(export_dir=copy, platform="rpi", output=tmp_path / "b.zip", precision="fp32"))
    # the CLI: exit 2, one line
    code = main(["pack", str(export_dir), "--platform", "ios", "--labels", str(bad_labels), "-o", str(tmp_path / "c.zip")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("edgepack: error: --labels has 3 lines")


def test_export_report_shows_deflated_sizes(export_dir):
    from edgepack.fsutil import deflated_size

    report = json.loads((export_dir / "report.json").read_text())
    for art in report["artifacts"]:
        data = (export_dir / art["path"]).read_bytes()
        assert art["deflated_bytes"] == deflated_size(data) == deflated_size(export_dir / art["path"])
        assert 0 < art["deflated_bytes"] < art["size_bytes"]


_CLASSIFY = """
import json, sys
import numpy as np
from tflite_support.task import vision
classifier = vision.ImageClassifier.create_from_file(sys.argv[1])
image = vision.TensorImage.create_from_array(np.load(sys.argv[2]))
cats = classifier.classify(image).classifications[0].categories
print(json.dumps([{"index": c.index, "score": c.score, "label": c.category_name} for c in cats]))
"""


@pytest.mark.skipif(not TFLITE_SUPPORT_PYTHON, reason="needs EDGEPACK_TFLITE_SUPPORT_PYTHON (see the test above)")
def test_task_library_image_classifier_uses_our_metadata(tmp_path):
    """The TFLite Task Library's ImageClassifier (C++, through tflite-support) loads the packed
    RGB model, normalizes a uint8 image with our mean/std, names classes from our labels and
    scores like the model run directly on the same normalized image."""
    import torch
    from models_for_tests import Net, seeded

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = tmp_path / "export"
    model = seeded(Net(classes=5), seed=0).eval()
    edgepack.export(model, output_dir=out, input_shape="1x3x16x16", formats="tflite", scale=1 / 255, mean=mean,
                    std=std)
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\nfish\nfrog\n")
    pack(PackOptions(export_dir=out, platform="android", output=tmp_path / "b.zip", labels=labels, name="net"))
    packed = tmp_path / "m.tflite"
    packed.write_bytes(zipfile.ZipFile(tmp_path / "b.zip").read("assets/net.tflite"))
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    np.save(tmp_path / "img.npy", image)
    proc = subprocess.run([TFLITE_SUPPORT_PYTHON, "-c", _CLASSIFY, str(packed), str(tmp_path / "img.npy")],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    cats = json.loads(proc.stdout.strip().splitlines()[-1])
    x = ((image.astype(np.float32) / 255 - np.float32(mean)) / np.float32(std))[None]  # NHWC
    with torch.no_grad():
        expected = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()[0]
    best = int(expected.argmax())
    assert cats[0]["index"] == best and cats[0]["label"] == ["cat", "dog", "bird", "fish", "frog"][best]
    assert cats[0]["score"] == pytest.approx(float(expected[best]), abs=1e-4)


def test_cli_pack_json_and_help(export_dir, tmp_path, capsys):
    assert main(["pack", "--help"]) == 0
    helped = capsys.readouterr().out
    for flag in ("--platform", "--labels", "--precision", "--cluster", "--eval", "--name"):
        assert flag in helped
    code = main(["pack", str(export_dir), "--platform", "rpi", "--precision", "fp16", "--name", "digits", "--json",
                 "-o", str(tmp_path / "p.zip")])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["precision"] == "fp16" and summary["manifest"]["model"]["file"] == "digits.tflite"
    assert "digits.tflite" in zipfile.ZipFile(tmp_path / "p.zip").namelist()
    assert summary["bundle_size_bytes"] == (tmp_path / "p.zip").stat().st_size
