"""[K] `edgepack bench --verify`: the verification inputs run through the artifact where it runs and
the outputs are held to the artifact's floor (a wrong result on the device fails, exit 3)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgepack
from edgepack.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bv") / "out"
    report = edgepack.export(ROOT / "examples" / "digits_cnn.pt2", output_dir=out, formats=("tflite",), int8=True,
                             calib=ROOT / "examples" / "digits_calib.npy")
    assert all(a["ok"] for a in report["artifacts"])
    return out


def test_bench_verify_passes_a_right_artifact_and_records_it(export_dir, capsys):
    code = main(["bench", str(export_dir / "digits_cnn.int8.tflite"), "--verify", "--runs", "5", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    import json

    result = json.loads(out)
    assert result["verify"]["ok"] and result["verify"]["cosine"] > 0.999 and result["verify"]["samples"] == 40
    assert result["verify"]["floor"]["min_cosine"] == 0.99


def test_bench_verify_fails_when_the_outputs_are_wrong_where_it_runs(export_dir, tmp_path, capsys):
    # the same artifact against references that no longer match (as a board's broken kernel would give)
    bad = tmp_path / "out"
    bad.mkdir()
    for f in export_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    with np.load(bad / "verify.npz") as z:
        arrays = {k: z[k] for k in z.files}
    ref = arrays["reference/output"]
    arrays["reference/output"] = ref[..., ::-1].copy()  # classes permuted
    np.savez_compressed(bad / "verify.npz", **arrays)
    code = main(["bench", str(bad / "digits_cnn.int8.tflite"), "--verify", "--runs", "5"])
    out = capsys.readouterr().out
    assert code == 3
    assert "verify" in out and "FAILED" in out and "cosine" in out


def test_bench_verify_needs_the_export_folder(tmp_path, export_dir, capsys):
    lone = tmp_path / "lone.tflite"
    lone.write_bytes((export_dir / "digits_cnn.int8.tflite").read_bytes())
    code = main(["bench", str(lone), "--verify", "--runs", "5"])
    assert code == 2
    assert "--verify needs the export folder" in capsys.readouterr().err
