"""Options and data are checked before any work: each case is one `edgepack: error:` line with its exit
code and nothing written (non-finite --calib/--eval samples named by index, estimate's --threads and
--top, bench's --min-seconds); an artifact path that starts with '-' reaches bench's runner as a path."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgepack.cli import main

SEEDS = Path(__file__).resolve().parent / "data" / "artifacts"
ONNX = SEEDS / "digits_cnn.fp32.onnx"  # input x 1x1x8x8
TFLITE = SEEDS / "digits_cnn.fp32.tflite"


def _one_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("edgepack: error: "), err
    return err[0]


@pytest.mark.parametrize("bad, sample", [(np.nan, 5), (np.inf, 0), (1e300, 7)])
def test_non_finite_calibration_samples_are_named(tmp_path, capsys, bad, sample):
    data = np.random.default_rng(0).standard_normal((20, 1, 8, 8))  # float64: 1e300 is Inf as float32
    data[sample, 0, 2, 3] = bad
    calib = tmp_path / "calib.npy"
    np.save(calib, data)
    out = tmp_path / "out"
    assert main(["export", str(ONNX), "--int8", "--calib", str(calib), "--format", "onnx", "-o", str(out)]) == 2
    line = _one_error(capsys)
    assert f"sample {sample} (of 20) holds NaN or Inf" in line and "--calib" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npy"]  # no output folder, no staging folder


def test_non_finite_eval_samples_are_named(tmp_path, capsys):
    x = np.zeros((6, 1, 8, 8), np.float32)
    x[3, 0, 0, 0] = np.nan
    data = tmp_path / "eval.npz"
    np.savez(data, x=x, y=np.zeros(6, np.int64))
    assert main(["export", str(ONNX), "--eval", str(data), "--format", "onnx", "-o", str(tmp_path / "out")]) == 2
    line = _one_error(capsys)
    assert "--eval" in line and "sample 3 (of 6) holds NaN or Inf" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.npz"]


@pytest.mark.parametrize("argv, phrase", [
    (["estimate", str(TFLITE), "--target", "rpi4", "--threads", "0"], "'--threads': 0 is not in the range x>=1"),
    (["estimate", str(TFLITE), "--target", "rpi4", "--top", "-5"], "'--top': -5 is not in the range x>=0"),
    (["bench", str(TFLITE), "--min-seconds", "inf"], "--min-seconds inf: must be a finite number of seconds"),
    (["bench", str(TFLITE), "--min-seconds", "nan"], "--min-seconds nan: must be a finite number of seconds"),
])
def test_out_of_range_options_are_one_line(capsys, argv, phrase):
    assert main(argv) == 2
    assert phrase in _one_error(capsys)


def test_a_dash_file_name_reaches_the_runner_as_a_path(tmp_path, monkeypatch):
    from edgepack.runtimes import bench_runner

    seen = []

    class Seen(Exception):
        pass

    def fake_child(kind, argv, timeout):
        seen.append(argv)
        raise Seen

    monkeypatch.setattr(bench_runner, "_run_child", fake_child)
    monkeypatch.chdir(tmp_path)
    Path("-x.onnx").write_bytes(ONNX.read_bytes())
    with pytest.raises(Seen):
        bench_runner.benchmark("-x.onnx", runtime="onnxruntime", runs=1)
    assert seen and seen[0][0] == str(tmp_path / "-x.onnx")  # absolute: argparse cannot take it for an option


def test_a_pipe_as_calib_or_eval_data_is_refused_before_reading(tmp_path, capsys):
    import os

    fifo = tmp_path / "data.npy"
    os.mkfifo(fifo)  # reading it would wait forever
    out = tmp_path / "out"
    assert main(["export", str(ONNX), "--int8", "--calib", str(fifo), "--format", "onnx", "-o", str(out)]) == 2
    line = _one_error(capsys)
    assert line.startswith(f"edgepack: error: --calib {fifo} is not a regular file"), line
    assert main(["export", str(ONNX), "--eval", str(fifo), "--format", "onnx", "-o", str(out)]) == 2
    line = _one_error(capsys)
    assert line.startswith(f"edgepack: error: --eval {fifo} is not a regular file"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npy"]


def test_an_onnx_node_reading_a_value_nothing_provides_is_one_line(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["ghost"], ["r"], name="relu"), helper.make_node("Add", ["x", "r"], ["y"], name="add")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "ghost.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert main(["export", str(path), "--format", "onnx", "-o", str(tmp_path / "out")]) == 2
    line = _one_error(capsys)  # onnx_ir's own warning about it is not printed as a second line
    assert line.startswith("edgepack: error: ghost.onnx is not a valid ONNX model") and "ghost" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ghost.onnx"]
