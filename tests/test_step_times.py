"""The console line that says where an export's time went: its steps, and that they add up to no
more than the wall time the caller measured around the process."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgepack.step_times import group_timings, process_age_s, time_line

_LINE_RE = re.compile(r"^time: (?P<steps>.+); total (?P<total>[0-9.]+) s$", re.M)


def _tiny_onnx(path: Path) -> None:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["z"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)


def test_time_line_groups_passes_and_artifacts():
    timings = {"load": 1.0, "reference": 0.5, "to_onnx": 3.0, "pass:cleanup_graph": 0.25, "pass:fold_batchnorm": 0.5,
               "artifact:tflite.fp32": 1.25, "artifact:tflite.int8": 2.0, "estimate": 0.125, "total": 9.0}
    assert group_timings(timings) == {"load": 1.0, "reference": 0.5, "to_onnx": 3.0, "passes": 0.75,
                                      "tflite fp32": 1.25, "tflite int8": 2.0, "estimate": 0.125}
    line = time_line(timings, wall_s=12.0)
    assert line == ("time: start/imports 3.0 s, load 1.0 s, reference 0.5 s, to_onnx 3.0 s, passes 0.8 s, "
                    "tflite fp32 1.2 s, tflite int8 2.0 s, estimate 0.1 s; total 12.0 s")
    assert time_line(timings).endswith("; total 9.0 s") and "start" not in time_line(timings)


def test_process_age_counts_this_process():
    age = process_age_s()
    if age is None:  # only where /proc is missing (not Linux)
        assert not Path("/proc/self/stat").exists()
        return
    before = time.perf_counter()
    time.sleep(0.05)
    assert process_age_s() >= age + (time.perf_counter() - before) - 0.02  # 10 ms clock ticks


def test_cli_export_prints_step_times_within_wall_time(tmp_path):
    model = tmp_path / "tiny.onnx"
    _tiny_onnx(model)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgepack", "export", str(model), "--format", "onnx", "-o",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = _LINE_RE.findall(proc.stderr)
    assert len(found) == 1, proc.stderr[-2000:]
    steps_text, total = found[0]
    steps = {name: float(value) for name, value in re.findall(r"([a-z_/0-9 ]+?) ([0-9.]+) s(?:, |$)", steps_text)}
    assert ["start/imports", "load", "reference", "passes", "onnx fp32", "estimate", "speed"] == [
        k for k in steps if k != "to_onnx"]  # an ONNX input: to_onnx only re-reads the graph
    assert all(v >= 0 for v in steps.values())
    # the steps add up to the total (each rounded to 0.1 s), and the total is within the wall time
    # the test measured around the process (which also holds the process's own start)
    assert abs(sum(steps.values()) - float(total)) <= 0.05 * len(steps) + 0.05
    assert float(total) <= wall + 0.05
    assert float(total) >= 0.5 * wall  # the process's age, not only the timed steps
