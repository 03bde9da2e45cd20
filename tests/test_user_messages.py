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
