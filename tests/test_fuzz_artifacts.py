"""Seeded fuzzing of inspect / estimate / bench with damaged .onnx, .tflite and ncnn files
(benchmarks/fuzz_artifacts.py makes the mutants; `python -m benchmarks.fuzz_artifacts` runs the
long version with the runtimes as oracle). Here: no internal error, no traceback, no second line,
nothing written beside the file, and every mutant that is invalid by construction (empty, cut in
half, random bytes, damaged header) rejected by every command. A crash would kill the test process."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks.fuzz_artifacts import INVALID_BY_CONSTRUCTION, SEEDS, classify, mutant, run_mutant
from edgepack.cli import main


def _write(tmp_path: Path, kind: str, index: int, seed: int) -> tuple[str, Path, str]:
    op, files = mutant(kind, index, seed)
    folder = tmp_path / f"{kind}-{index}"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return op, folder, "m.param" if kind == "ncnn" else next(iter(files))


@pytest.mark.parametrize("kind, count, commands", [
    ("onnx", 27, ("inspect", "estimate")),
    ("tflite", 18, ("inspect",)),  # inspect and estimate ask LiteRT in a child: ~1 s per well-formed mutant
    ("ncnn", 13, ("inspect",)),
])
def test_mutants_are_clean_errors(tmp_path, kind, count, commands):
    outcomes = {}
    for index in range(count):
        op, folder, name = _write(tmp_path, kind, index, seed=1)
        result = run_mutant(str(folder), name, commands, with_oracle=False)
        for command in commands:
            outcomes[(index, op, command)] = result[command]
            assert result[command] in ("rejected", "accepted"), (index, op, command, result[command + "_message"])
            if op in INVALID_BY_CONSTRUCTION:
                assert result[command] == "rejected", (index, op, command)
    rejected = sum(o == "rejected" for o in outcomes.values())
    assert rejected >= len(outcomes) // 2, outcomes  # most mutants are damaged files, not merely other weights


def test_bench_rejects_damaged_files_before_any_runtime(tmp_path, capsys):
    for kind in ("onnx", "tflite", "ncnn"):
        for index in (0, 1, 5):  # empty, half, random bytes
            op, folder, name = _write(tmp_path, kind, index, seed=2)
            assert op in INVALID_BY_CONSTRUCTION
            code = main(["bench", str(folder / name), "--runs", "2", "--warmup", "0"])
            err = capsys.readouterr().err
            assert classify(code, err) == "rejected" and ("is not a valid" in err or "is empty" in err), (kind, op, err)


def test_the_seeds_themselves_are_accepted(tmp_path, capsys):
    for name in ("digits_cnn.fp32.onnx", "digits_cnn.fp32.tflite"):
        shutil.copy(SEEDS / name, tmp_path / name)
        assert main(["inspect", str(tmp_path / name)]) == 0
        assert main(["estimate", str(tmp_path / name), "--target", "rpi4", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"latency_ms"' in out and "digits_cnn.fp32.tflite: tflite" in out


@pytest.mark.heavy  # a child process per well-formed mutant (the runtime as oracle, ncnn/LiteRT reads): ~1 s each
@pytest.mark.parametrize("kind", ["onnx", "tflite", "ncnn"])
def test_mutants_with_the_runtime_as_oracle(tmp_path, kind):
    for index in range(26):
        op, folder, name = _write(tmp_path, kind, index, seed=3)
        result = run_mutant(str(folder), name, ("inspect", "estimate", "bench"), with_oracle=True)
        for command in ("inspect", "estimate", "bench"):
            assert result[command] in ("rejected", "accepted"), (index, op, command, result[command + "_message"])
            if result["valid"] is False or op in INVALID_BY_CONSTRUCTION:
                assert result[command] == "rejected", (index, op, command)


def test_export_and_compare_reject_damaged_onnx_models(tmp_path):
    """The mutant as export's model and as compare's B: a clean error, no output folder, no staging
    folder (the leftover check of run_mutant), whatever the damage (bad_dims: a weight whose dims do
    not match its data)."""
    for index in (0, 1, 5, 7, 8):  # empty, half, random bytes, damaged header, bad dims
        op, folder, name = _write(tmp_path, "onnx", index, seed=1)
        result = run_mutant(str(folder), name, ("export", "compare"), with_oracle=False)
        for command in ("export", "compare"):
            assert result[command] == "rejected", (index, op, command, result[command + "_message"])
    # found by the long fuzz (seed 0): ONNX Runtime runs both, export refuses them at load
    for index, phrase in ((44, "declares the impossible shape [1, 1099511627776]"),  # was a MemoryError in a pass
                          (48, "UnicodeDecodeError")):  # non-UTF-8 node metadata: was onnx_ir's traceback on stderr
        op, folder, name = _write(tmp_path, "onnx", index, seed=0)
        result = run_mutant(str(folder), name, ("export",), with_oracle=False)
        assert result["export"] == "rejected" and phrase in result["export_message"], (index, result["export_message"])


@pytest.mark.heavy  # an export per well-formed mutant: ~5 s each
def test_export_of_onnx_mutants_with_the_runtime_as_oracle(tmp_path):
    outcomes = []
    for index in range(18):
        op, folder, name = _write(tmp_path, "onnx", index, seed=4)
        result = run_mutant(str(folder), name, ("export", "compare"), with_oracle=True)
        for command in ("export", "compare"):
            outcomes.append(result[command])
            assert result[command] in ("rejected", "accepted"), (index, op, command, result[command + "_message"])
            if result["valid"] is False or op in INVALID_BY_CONSTRUCTION:
                assert result[command] == "rejected", (index, op, command)
    assert "accepted" in outcomes  # some mutants only changed weights: those export
