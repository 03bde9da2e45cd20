"""edgepack.runtimes.isolated.call: a crash, a hang or an exception in the child is one LoadError
naming the artifact (and the signal); results and EdgepackErrors come back unchanged. Also: compare
refuses a damaged or special file in one line before ONNX Runtime sees it."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from edgepack.cli import main
from edgepack.errors import LoadError
from edgepack.runtimes import isolated

SEEDS = Path(__file__).resolve().parent / "data" / "artifacts"


def test_crash_hang_and_errors_become_one_line(tmp_path):
    with pytest.raises(LoadError, match=r"^net.param: ncnn crashed \(SIGABRT\)"):
        isolated.call(os.abort, artifact=tmp_path / "net.param", what="ncnn")
    with pytest.raises(LoadError, match=r"^m.tflite: litert did not finish reading it within 1 s"):
        isolated.call(time.sleep, 30, artifact="m.tflite", what="litert", timeout=1)
    with pytest.raises(LoadError, match=r"^x.onnx: json cannot read it: JSONDecodeError: Expecting"):
        isolated.call(json.loads, "{", artifact="x.onnx", what="json")
    from edgepack.check_artifact import check_ncnn_param

    with pytest.raises(LoadError, match=r"cannot be read \(No such file"):  # the child's own EdgepackError, as is
        isolated.call(check_ncnn_param, tmp_path / "missing.param", artifact="missing.param")


def test_runs_an_artifact_and_returns_its_outputs():
    import onnxruntime as ort

    path = SEEDS / "digits_cnn.fp32.onnx"
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    got = isolated.call(isolated.run_artifact, "onnxruntime", str(path), {"x": x}, artifact=path)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got["output"], want, rtol=1e-5, atol=1e-6)


def test_compare_refuses_damaged_and_special_files(tmp_path, capsys):
    good = SEEDS / "digits_cnn.fp32.onnx"
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(good.read_bytes()[:500])
    fifo = tmp_path / "fifo.onnx"
    os.mkfifo(fifo)
    assert main(["compare", str(good), str(cut)]) == 2
    assert main(["compare", str(fifo), str(good)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("edgepack: error: B: cut.onnx is not a valid ONNX model"), err
    assert err[1].startswith("edgepack: error: A: model file") and "is not a regular file" in err[1], err
