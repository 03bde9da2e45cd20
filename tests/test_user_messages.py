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


# ---------------------------------------------------------------- one export of the digits example, its console


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits example to ONNX fp32/fp16/int8 for rpi4, with the console (stderr) and table text."""
    import io

    from rich.console import Console

    import edgepack
    from edgepack.report import render_table

    out = tmp_path_factory.mktemp("digits")
    err = io.StringIO()
    report = edgepack.export(EXAMPLE, output_dir=out, formats="onnx", target="rpi4", int8=True, fp16=True,
                             calib=ROOT / "examples" / "digits_calib.npy", calib_samples=16,
                             console=Console(file=err, width=200, highlight=False))
    table = io.StringIO()
    render_table(report, Console(file=table, width=250, highlight=False))
    return out, report, err.getvalue(), table.getvalue()


def test_every_warning_reaches_the_console(digits):
    _, report, err, _ = digits
    printed = [ln[len("warning: "):] for ln in err.splitlines() if ln.startswith("warning: ")]
    assert any("only 16 calibration samples" in w for w in report["warnings"])
    assert any("fp16" in w and "rpi4" in w for w in report["warnings"])
    assert sorted(printed) == sorted(report["warnings"])


def test_files_modes_names_and_metadata(digits):
    import onnx

    out, report, _, _ = digits
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".onnx") == [
        "digits_cnn.fp16.onnx", "digits_cnn.fp32.onnx", "digits_cnn.int8.onnx"]
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
