"""What the user is told (issue 18): warnings on the console, exit codes, help texts, file modes and
the report keys a new user reads."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "digits_cnn.pt2"


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgepack", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


# ---------------------------------------------------------------- item 11: exit codes and help


_PROBE = """
import sys, time
from edgepack.cli import main
t = time.process_time()
code = main(sys.argv[1:])
print(code, round(time.process_time() - t, 3), sorted(m for m in ("torch", "onnx_ir", "onnxscript") if m in sys.modules))
"""


@pytest.mark.parametrize("flags, message", [
    (["--format", "onxx"], "unknown format(s) onxx"),
    (["--target", "rpi9"], "unknown target 'rpi9'"),
    (["--input-shape", "1x3xq"], "--input-shape '1x3xq' is not a shape"),
])
def test_bad_flag_values_are_rejected_before_heavy_imports(flags, message, tmp_path):
    proc = subprocess.run([sys.executable, "-c", _PROBE, "export", str(EXAMPLE), "-o", str(tmp_path / "out"), *flags],
                          capture_output=True, text=True, timeout=60, check=False)
    code, cpu_s, heavy = proc.stdout.split(" ", 2)
    assert code == "2" and message in proc.stderr
    assert heavy.strip() == "[]", f"imported {heavy.strip()} before rejecting {flags}"
    assert float(cpu_s) < 0.5, f"{cpu_s} s of CPU before rejecting {flags}"


def test_help_texts():
    top = run_cli("--help").stdout
    line = next(ln for ln in top.splitlines() if ln.strip().startswith("compare"))
    assert line.rstrip().endswith("breaks int8."), line
    calib = run_cli("export", "--help").stdout
    assert "20%%" not in calib and "folder of images" in " ".join(calib.split())
    proc = run_cli("estimate", str(EXAMPLE))  # the file type first, not a request for --target
    assert proc.returncode == 2 and proc.stderr.startswith("edgepack: error: cannot estimate digits_cnn.pt2: edgepack "
                                                           "estimate reads .onnx, .tflite and ncnn .param artifacts")


# ---------------------------------------------------------------- one export of the digits example, its console


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits example to ONNX and TFLite fp32/int8 for rpi4, with the console (stderr) and table text."""
    import io

    from rich.console import Console

    import edgepack
    from edgepack.report import render_table

    out = tmp_path_factory.mktemp("digits")
    err = io.StringIO()
    report = edgepack.export(EXAMPLE, output_dir=out, formats="onnx,tflite", target="rpi4", int8=True,
                             calib=ROOT / "examples" / "digits_calib.npy", calib_samples=16,
                             console=Console(file=err, width=200, highlight=False))
    table = io.StringIO()
    render_table(report, Console(file=table, width=250, highlight=False))
    return out, report, err.getvalue(), table.getvalue()


def test_every_warning_reaches_the_console(digits):
    _, report, err, _ = digits
    printed = [ln[len("warning: "):] for ln in err.splitlines() if ln.startswith("warning: ")]
    assert any("only 16 calibration samples" in w for w in report["warnings"])
    assert sorted(printed) == sorted(report["warnings"])


def test_files_modes_names_and_metadata(digits):
    import onnx

    out, report, _, _ = digits
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".onnx") == [
        "digits_cnn.fp32.onnx", "digits_cnn.int8.onnx"]
    for path in out.iterdir():
        assert path.stat().st_mode & 0o777 == 0o644, (path.name, oct(path.stat().st_mode))
    model = onnx.load(out / "digits_cnn.fp32.onnx")
    keys = {p.key for n in model.graph.node for p in n.metadata_props}
    assert "pkg.torch.onnx.stack_trace" not in keys and "pkg.torch.onnx.fx_node" not in keys
    assert str(ROOT) not in (out / "digits_cnn.fp32.onnx").read_bytes().decode("latin-1")


def test_params_macs_and_estimate_in_the_table(digits):
    out, report, _, table = digits
    model = report["model"]
    # the source's count (PyTorch: 3 convs + 3 BatchNorms + fc, before pruning), the exported one beside it
    assert model["params"] == (9 * 16 + 16 + 2 * 16) + (9 * 16 * 32 + 32 + 2 * 32) + (9 * 32 * 32 + 32 + 2 * 32) + (32 * 10 + 10)
    assert model["params_after_passes"] == 9098 < model["params"]
    assert model["macs"] == 313584
    title = table.splitlines()[0]
    assert f"{model['params'] / 1e3:.3g} k params (9.1 k after the graph passes), 0.314 M MACs" in title
    header = next(ln for ln in table.splitlines() if "artifact" in ln)
    assert "est. rpi4" in header
    for art in report["artifacts"]:
        row = next(ln for ln in table.splitlines() if art["path"] in ln)
        assert f"{art['estimate']['latency_ms']:.3g} ms/4T" in row


def test_fold_batchnorm_says_why_it_folded_nothing(digits):
    _, report, err, _ = digits
    fold = next(p for p in report["passes"] if p["name"] == "fold_batchnorm")
    assert sum(fold["counts"].values()) == 0
    assert fold["skipped"] == [{"node": "*", "why": "nothing left to fold: the PyTorch dynamo exporter already folded "
                                                  "3 BatchNorm(s) into their convs"}]


# ---------------------------------------------------------------- items 4-6: pruning messages name PyTorch modules


def _residual_net(stem_bias: float, residual: bool = True):
    """stem conv1 (16) -> BN -> ReLU -> [block.conv_a (pad 1) -> ReLU -> block.conv_b] + residual -> ReLU
    -> head (1x1, 8) -> GAP -> fc. Zeroed: 5 stem filters (tied to block.conv_b's live channels by the
    residual Add: kept), 6 of block.conv_a's filters (removed)."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv_a = nn.Conv2d(16, 12, 3, padding=1)
            self.conv_b = nn.Conv2d(12, 16, 3, padding=1)

        def forward(self, x):
            return torch.relu((x if residual else 0) + self.conv_b(torch.relu(self.conv_a(x))))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(16)
            self.block = Block()
            self.head = nn.Conv2d(16, 8, 1)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            y = self.head(self.block(torch.relu(self.bn1(self.conv1(x)))))
            return self.fc(y.mean((2, 3)))

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        net.conv1.weight[:5] = 0
        net.conv1.bias[:5] = 0
        net.bn1.running_mean.zero_()
        net.bn1.bias[:5] = stem_bias
        net.block.conv_a.weight[:6] = 0
        net.block.conv_a.bias[:6] = 0
    return net


def _export(model, out, **kw):
    import io

    import torch
    from rich.console import Console

    import edgepack
    from edgepack.report import render_table

    program = torch.export.export(model, (torch.randn(1, 3, 12, 12),))
    err = io.StringIO()
    console = Console(file=err, width=400, highlight=False)
    report = edgepack.export(program, output_dir=out, formats="onnx", console=console, **kw)
    render_table(report, console)
    return report, err.getvalue()


def test_pruning_names_modules_and_says_why_channels_stay(tmp_path):
    report, text = _export(_residual_net(stem_bias=0.0), tmp_path / "out", round_channels=1)
    p = next(p for p in report["passes"] if p["name"] == "remove_pruned_channels")
    assert [(d["module"], d["channels_before"], d["channels_after"]) for d in p["details"]] == [("block.conv_a", 12, 6)]
    (kept,) = p["skipped"]
    assert kept["module"] == "conv1" and kept["channels"] == [0, 1, 2, 3, 4] and kept["reason"] == "tied to live channels"
    assert "block.conv_b" in kept["why"]
    assert p["extra"]["summary"] == ("11 constant (zeroed-filter) channel(s) -> 6 removed in 1 layer(s); "
                                     "5 kept: 5 tied to live channels")
    assert f"remove_pruned_channels: {p['extra']['summary']}" in text
    assert f"remove_pruned_channels: conv1 ({kept['node']}): 5 constant channel(s) kept: tied through" in text


@pytest.mark.heavy  # one more export (~4 s CPU); tests/test_pipeline.py checks the same warning in report.json
def test_prune_approx_beyond_its_tolerance_warns(tmp_path):
    # without the residual, the stem's constant 3.0 (after ReLU) enters block.conv_a's zero padding:
    # removable only approximately
    report, text = _export(_residual_net(stem_bias=3.0, residual=False), tmp_path / "out", prune_approx=True,
                           round_channels=1)
    p = next(p for p in report["passes"] if p["name"] == "remove_pruned_channels")
    assert p["counts"]["channels_removed"] == 5 + 6
    (art,) = report["artifacts"]
    assert art["ok"] and art["fidelity"]["rel_error"] > 1e-2
    assert f"warning: {art['path']}: relative error {art['fidelity']['rel_error']:.3g} exceeds 1e-02" in text


# ---------------------------------------------------------------- item 9: bench on a busy machine


def _tiny_onnx(path: Path) -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_load_warning_thresholds():
    from edgepack.runtimes.bench_runner import load_warning

    assert load_warning(0.4, 2, 2) is None and load_warning(1.4, 2, 1) is None and load_warning(None, 2, 2) is None
    text = load_warning(11.3, 2, 2)
    assert text.startswith("the 1-minute load average was 11.3 on 2 CPU(s) before measuring with 2 thread(s)")
    assert load_warning(1.0, 2, 2) is not None  # one core already busy, two threads asked for


@pytest.mark.heavy  # three processes importing onnxruntime (~3 s CPU)
def test_bench_on_a_busy_machine_warns(tmp_path):
    import os

    model = _tiny_onnx(tmp_path / "tiny.onnx")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import os\nos.getloadavg = lambda: (9.0, 9.0, 9.0)\n")
    proc = subprocess.run([sys.executable, "-m", "edgepack", "bench", str(model), "--runs", "3", "--threads", "1"],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(site)})
    assert proc.returncode == 0, proc.stderr
    cpus = len(os.sched_getaffinity(0))
    assert f"warning: the 1-minute load average was 9.0 on {cpus} CPU(s) before measuring with 1 thread(s)" in proc.stderr


def test_bench_table_says_how_many_threads_ran():
    import io

    from rich.console import Console

    from edgepack.commands.bench_report import render_bench_table

    report = {"model": {"name": "m"}, "artifacts": [{"path": "m.fp32.onnx", "format": "onnx", "precision": "fp32",
              "bench": {"runtime": "onnxruntime", "runtime_version": "1", "threads": 3, "latency_ms": {"p50": 1.0, "p90": 1.1, "p99": 1.2}}}]}
    buf = io.StringIO()
    render_bench_table(report, Console(file=buf, width=200))
    lines = buf.getvalue().splitlines()
    header = next(ln for ln in lines if "threads" in ln)
    row = next(ln for ln in lines if "m.fp32.onnx" in ln)
    assert row[header.index("threads"):header.index("threads") + 7].strip() == "3"


# ---------------------------------------------------------------- item 10: which device a figure is for


def test_android_bundle_of_an_rpi4_export_says_whose_latency_it_is(digits, tmp_path):
    import zipfile

    from edgepack.commands.pack import PackOptions, pack

    out, report, _, _ = digits
    summary = pack(PackOptions(export_dir=out, platform="android", output=tmp_path / "a.zip", precision="int8"))
    lat = summary["manifest"]["latency"]
    est = next(a for a in report["artifacts"] if a["path"] == "digits_cnn.int8.tflite")["estimate"]
    assert lat["source"] == "estimate" and lat["ms"] == est["latency_ms"]
    assert lat["device"].startswith("rpi4 (Raspberry Pi 4") and lat["device"].endswith(", estimated")
    assert lat["platform_note"].startswith(f"this figure is for {lat['device']}, not for a android device")
    readme = zipfile.ZipFile(tmp_path / "a.zip").read("README.md").decode()
    assert f"Latency: {est['latency_ms']:.3g} ms (estimate), on {lat['device']}. Note: this figure is for" in readme
    assert "Latency on rpi4" not in readme
    rpi = pack(PackOptions(export_dir=out, platform="rpi", output=tmp_path / "r.zip", precision="int8"))
    assert "platform_note" not in rpi["manifest"]["latency"]


def test_a_board_whose_architecture_is_not_its_profiles_is_flagged():
    from edgepack.commands.pack import latency
    from edgepack.devices import load_profile

    rpi4 = load_profile("rpi4")
    assert rpi4.arch == "arm" and load_profile("host").arch == "x86"
    assert rpi4.arch_mismatch("Linux-aarch64") is None and rpi4.arch_mismatch("Linux-armv7l") is None
    why = rpi4.arch_mismatch("Linux-x86_64")
    assert why.startswith("the board reports Linux-x86_64, but profile 'rpi4' is an ARM board (4x Cortex-A72")
    bench = {"latency_ms": {"p50": 3.0}, "device": "mypi", "device_profile": "rpi4"}
    estimate = {"latency_ms": 7.0}
    assert latency({"bench": bench, "estimate": estimate}, "rpi4")["source"] == "measured"
    flagged = latency({"bench": {**bench, "device_profile_mismatch": why}, "estimate": estimate}, "rpi4")
    assert flagged["source"] == "estimate" and flagged["ms"] == 7.0 and flagged["measured_elsewhere"]["ms"] == 3.0


# ---------------------------------------------------------------- item 2: image calibration normalisation


def _image_folder(folder: Path) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        pixels[0, 0] = (255, 255, 255)  # every image reaches 255 in every channel
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return folder


def _image_net(module_name: str | None = None, cfg: dict | None = None):
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean((2, 3)))

    if module_name:
        Net.__module__ = module_name
    torch.manual_seed(0)
    net = Net().eval()
    if cfg is not None:
        net.pretrained_cfg = cfg
    return net


def test_image_normalisation_each_source(tmp_path):
    """Without an export: what image_preprocessing applies for a plain model, a timm-like one and an
    ultralytics one, and the values load_samples then gives (pixels 0..255, every image reaches 255)."""
    from edgepack.calib import load_samples
    from edgepack.normalization import image_preprocessing
    from edgepack.options import Preprocessing
    from edgepack.pipeline import _preprocessing_record

    folder = _image_folder(tmp_path / "images")
    plain = type("Plain", (), {})()
    timm_like = type("Vit", (), {"pretrained_cfg": {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}})()
    yolo = type("DetectionModel", (), {"__module__": "ultralytics.nn.tasks"})()
    flags = Preprocessing(scale=2.0)
    cases = [(plain, "none given: raw 0-255 pixels", (0, 255), "raw 0-255 pixels"),
             (timm_like, "timm pretrained_cfg of Vit", (-2, 2), "x * 0.00392157, then (x - [0.5, 0.5, 0.5]) / [0.25, 0.25, 0.25]"),
             (yolo, "ultralytics DetectionModel (RGB scaled to 0-1)", (0, 1), "x * 0.00392157")]
    for model, source, (lo, hi), note in cases:
        applied, got_source, warning = image_preprocessing(Preprocessing(), model)
        assert got_source == source and note in warning
        x = load_samples(folder, {"x": (1, 3, 16, 16)}, applied)["x"]
        assert (float(x.min()), float(x.max())) == pytest.approx((lo, hi), abs=0.01)
        assert _preprocessing_record(applied, got_source, True)["source"] == source
    assert image_preprocessing(flags, timm_like) == (flags, "flags", None)  # the user's flags win, silently
    assert _preprocessing_record(Preprocessing(), "flags", False) is None  # .npy data: nothing applied


@pytest.mark.heavy  # three exports (~4 s CPU each): test_image_normalisation_each_source covers the logic fast
@pytest.mark.parametrize("module_name, cfg, source, lo_hi, warning", [
    (None, None, "none given: raw 0-255 pixels", (0.0, 255.0), "image calibration feeds raw 0-255 pixels"),
    (None, {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "input_size": (3, 16, 16)},
     "timm pretrained_cfg of Net", (-2.0, 2.0), "applied the normalisation the model ships (timm pretrained_cfg of Net)"),
    ("ultralytics.nn.tasks", None, "ultralytics Net (RGB scaled to 0-1)", (0.0, 1.0),
     "applied the normalisation the model ships (ultralytics Net"),
])
def test_image_calibration_records_and_says_its_normalisation(module_name, cfg, source, lo_hi, warning, tmp_path):
    import io

    import numpy as np
    from rich.console import Console

    import edgepack

    err = io.StringIO()
    report = edgepack.export(_image_net(module_name, cfg), output_dir=tmp_path / "out", formats="onnx",
                             input_shape="1x3x16x16", calib=_image_folder(tmp_path / "images"),
                             console=Console(file=err, width=400))
    pre = report["preprocessing"]
    assert pre["source"] == source
    assert any(ln.startswith("warning: ") and warning in ln for ln in err.getvalue().splitlines())
    x = np.load(tmp_path / "out" / "verify.npz")
    key = next(k for k in x.files if k.startswith("input/"))
    held_out = x[key][: report["verification"]["samples"]]
    assert (float(held_out.min()), float(held_out.max())) == pytest.approx(lo_hi, abs=0.01)
    if cfg is not None:
        assert pre["mean"] == [0.5] * 3 and pre["std"] == [0.25] * 3 and pre["scale"] == pytest.approx(1 / 255)


# ---------------------------------------------------------------- item 8: report.html


def _bench_report(p50s, p90s, p99s, cosines, sizes):
    arts = []
    for i, (a, b, c, cos, size) in enumerate(zip(p50s, p90s, p99s, cosines, sizes)):
        fmt, prec = [("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "int8")][i]
        arts.append({"path": f"m.{prec}.{fmt}", "format": fmt, "precision": prec, "size_bytes": size,
                     "fidelity": {"cosine": cos},
                     "bench": {"runtime": "x", "runtime_version": "1", "threads": 1,
                               "latency_ms": {"p50": a, "p90": b, "p99": c}}})
    return {"model": {"name": "m"}, "artifacts": arts}


def test_report_html_axis_ticks_and_floor():
    import re

    from edgepack.commands.bench_report import nice_ticks, render_html

    assert nice_ticks(351.2) == [0, 100, 200, 300, 400] and nice_ticks(0.0123) == [0, 0.005, 0.01, 0.015]
    # one noisy p90 (285 ms against medians of 0.3-10 ms) must not squash the other bars
    html = render_html(_bench_report([10.0, 4.0, 0.3, 2.0], [12.0, 285.0, 0.4, 2.2], [13.0, 290.0, 0.5, 2.5],
                                     [1.0, 0.9991, 0.99999999, 0.9996], [43258, 20830, 38316, 13840]))
    latency = html[html.index('aria-label="latency per artifact"'):html.index("</svg>")]
    ticks = [float(t) for t in re.findall(r'text-anchor="middle">([0-9.]+)</text>', latency)]
    assert ticks == [0, 5, 10, 15]  # round values; the axis ends at the round value past 12 ms (onnx fp32's p90)
    widths = [float(w) for w in re.findall(r'<rect x="220" y="[0-9.]+" width="([0-9.]+)"', latency)]
    assert widths == pytest.approx([10 / 15 * 520, 4 / 15 * 520, 0.3 / 15 * 520, 2 / 15 * 520], abs=0.1)
    assert latency.count("<polygon") == 1 and "p50 4.000" in latency  # the noisy whisker ends in an arrow
    scatter = html[html.index('aria-label="size against fidelity"'):]
    assert "1e-8" not in scatter and "1e-9" not in scatter and "&#8804;1e-6" in scatter  # fp32 at the floor
    assert re.findall(r'text-anchor="middle">([0-9.]+ KB)</text>', scatter) == ["0 KB", "20 KB", "40 KB", "60 KB"]
    assert "whisker: from p90 to p99" in html.lower()


def test_module_path_from_each_exporter_record():
    import numpy as np
    import onnx_ir as ir
    from onnx import TensorProto, helper, numpy_helper

    from edgepack.converters.node_names import label, module_path
    from edgepack.pipeline import _name_modules

    conv = helper.make_node("Conv", ["x", "layer1.0.conv1.weight_slim"], ["a"], name="node_Conv_505")
    relu = helper.make_node("Relu", ["a"], ["b"], name="node_relu_3")
    relu.metadata_props.add(key="pkg.torch.onnx.name_scopes", value="['', 'layer1', 'layer1.0', 'layer1.0.relu', 'relu_3']")
    add = helper.make_node("Add", ["b", "b"], ["c"], name="/layer2/layer2.1/Add")  # the TorchScript exporter's naming
    plain = helper.make_node("Relu", ["c"], ["y"], name="n7")
    w = numpy_helper.from_array(np.zeros((2, 2, 1, 1), np.float32), "layer1.0.conv1.weight_slim")
    graph = helper.make_graph([conv, relu, add, plain], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], [w])
    model = ir.from_proto(helper.make_model(graph))
    nodes = list(model.graph)
    assert [module_path(n) for n in nodes] == ["layer1.0.conv1", "layer1.0.relu", "layer2.1", None]
    assert label(nodes[0]) == "layer1.0.conv1 (node_Conv_505)" and label(nodes[3]) == "n7"
    arts = [{"float_nodes": ["node_Conv_505", "n7", "ncnn_layer_9"]}, {"float_nodes": []}]
    _name_modules(model, arts)
    assert arts[0]["float_modules"] == ["layer1.0.conv1 (node_Conv_505)", "n7", "ncnn_layer_9"] and "float_modules" not in arts[1]


def test_ncnn_extra_is_the_runtime_only():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert [d.split(">")[0] for d in extras["ncnn"]] == ["ncnn"]  # no pnnx: it requires torch (GBs on a board)
    assert any(d.startswith("pnnx") for d in extras["ncnn-export"])
