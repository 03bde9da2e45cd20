"""An export's output folder (-o) holds either the previous complete export or the new complete one,
whatever happens: an error, SIGTERM, SIGINT or SIGKILL at any point (the export is built in a staging
folder beside -o and swapped in at the end); a folder that is not an edgepack export is never
touched; a native runtime crash during verification fails that artifact only (its runtime runs in a
child process) and report.json is still written."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgepack.cli import main
from edgepack.fsutil import MARKER_NAME, STAGE_PREFIX, _remove_stale_lock, remove_stale_stages

HERE = Path(__file__).resolve().parent
MODEL = HERE / "data" / "artifacts" / "digits_cnn.fp32.onnx"  # 1x1x8x8 ONNX: an export of it takes seconds
CLI = "import sys; from edgepack.cli import main; sys.exit(main(sys.argv[1:]))"


def _complete(folder: Path) -> bool:
    """A whole export: its marker, report.json, and every file report.json lists with its sha256."""
    if not (folder / MARKER_NAME).is_file() or not (folder / "report.json").is_file():
        return False
    report = json.loads((folder / "report.json").read_text())
    for art in report["artifacts"]:
        for f in art["files"]:
            if hashlib.sha256((folder / f["path"]).read_bytes()).hexdigest() != f["sha256"]:
                return False
    listed = {f["path"] for art in report["artifacts"] for f in art["files"]}
    extra = {p.name for p in folder.iterdir()} - listed - {MARKER_NAME, "report.json", "report.html", "verify.npz",
                                                           "calibration.json"}
    return not extra


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_folder_that_is_not_an_export_is_refused_untouched(tmp_path, capsys):
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "train.py").write_text("print('years of work')\n")
    assert main(["export", str(MODEL), "--format", "onnx", "-o", str(mine)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edgepack: error: output folder") and "is not an edgepack export" in err[0]
    assert _snapshot(mine) == {"train.py": b"print('years of work')\n"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]  # no staging folder was made


def test_an_error_leaves_the_previous_export(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", str(MODEL), "--format", "onnx", "-o", str(out)]) == 0
    assert _complete(out) and oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())
    before = _snapshot(out)
    bad_eval = tmp_path / "eval.npz"
    np.savez(bad_eval, x=np.zeros((4, 1, 9, 9), np.float32), y=np.zeros(4, np.int64))  # wrong sample shape
    capsys.readouterr()
    assert main(["export", str(MODEL), "--format", "onnx", "--eval", str(bad_eval), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--eval" in err[0], err
    assert _snapshot(out) == before  # not one file of the failed export (verify.npz was written before the error)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.npz", "out"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------- a native crash during verification


def segfault_on_tflite(path, entry, feeds, threads=None):
    """Stands in for runtimes.artifact.run_feeds: LiteRT 'crashes' on the .tflite (in its child)."""
    from edgepack.runtimes import artifact

    if str(path).endswith(".tflite"):
        os.kill(os.getpid(), signal.SIGSEGV)
    return artifact.__dict__["_real_run_feeds"](path, entry, feeds, threads)


def test_a_runtime_crash_fails_that_artifact_and_the_report_is_written(tmp_path, monkeypatch, capsys):
    from edgepack.runtimes import artifact

    monkeypatch.setattr(artifact, "_real_run_feeds", artifact.run_feeds, raising=False)
    monkeypatch.setattr(artifact, "run_feeds", segfault_on_tflite)
    # the child imports this module to find segfault_on_tflite
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "out"
    code = main(["export", str(MODEL), "--format", "onnx,tflite", "--name", "digits", "-o", str(out)])
    assert code == 3  # a failed verification
    report = json.loads((out / "report.json").read_text())
    by_format = {a["format"]: a for a in report["artifacts"]}
    assert by_format["onnx"]["ok"] is True
    assert by_format["tflite"]["ok"] is False
    assert by_format["tflite"]["error"].startswith("litert cannot run digits.fp32.tflite: crashed (SIGSEGV)")
    assert report["ok"] is False and report["exit_code"] == 3
    assert _complete(out)
    capsys.readouterr()


# ---------------------------------------------------------------- signals


def _start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.002)
    return False


def _temp_leftovers(tmp: Path) -> list[str]:
    """What an export left in the temp dir: folders and edgepack's files (a runtime keeps a 51-byte
    `.ses` session file there, not a leftover of the export)."""
    return sorted(p.name for p in tmp.iterdir() if p.is_dir() or p.name != ".ses")


def _stages(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith(STAGE_PREFIX)]


@pytest.mark.parametrize("sig, code, line", [
    (signal.SIGTERM, 143, "edgepack: error: terminated (SIGTERM); the output folder was left as it was"),
    pytest.param(signal.SIGINT, 130, "edgepack: interrupted (SIGINT)",
                 marks=pytest.mark.heavy),  # a second export process: the default suite keeps SIGTERM's
])
def test_sigterm_and_sigint_are_one_line_and_leave_nothing(tmp_path, sig, code, line):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    out = tmp_path / "out"
    proc = _start(["export", str(MODEL), "--format", "onnx,tflite", "-o", str(out)], env)
    assert _wait_for(lambda: any((s / "verify.npz").exists() for s in _stages(tmp_path)), proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert [x for x in err.splitlines() if x.strip()] == [line]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"] and _temp_leftovers(tmp) == []


SIGKILL_POINTS = {  # file in the staging folder whose appearance triggers the kill
    "staged": ".edgepack-lock",
    "verify.npz": "verify.npz",
    "onnx artifact": "digits.fp32.onnx",
    "tflite artifact": "digits.fp32.tflite",
    "report.json": "report.json",
    "marker": MARKER_NAME,
}


@pytest.mark.heavy  # one export per kill point: ~1 min on a shared 2-core machine
def test_sigkill_at_any_point_leaves_the_old_or_the_new_export(tmp_path):
    template = tmp_path / "template" / "out"
    args = ["export", str(MODEL), "--format", "onnx,tflite", "--name", "digits"]
    assert main([*args, "-o", str(template)]) == 0
    old = _snapshot(template)
    outcomes = {}
    for i, (point, name) in enumerate(SIGKILL_POINTS.items()):
        parent = tmp_path / f"case{i}"
        tmp = parent / "tmp"
        tmp.mkdir(parents=True)
        out = parent / "out"
        shutil.copytree(template, out)
        proc = _start([*args, "--seed", "7", "-o", str(out)], {**os.environ, "TMPDIR": str(tmp)})
        hit = _wait_for(lambda: any(name is None or (s / name).exists() for s in _stages(parent)), proc)
        proc.kill()
        proc.communicate(timeout=60)
        # a kill during the swap leaves the export's hidden lock in it (what is around it is whole);
        # the next export removes it first, with staging folders whose owner is gone
        remove_stale_stages(parent)
        _remove_stale_lock(out)
        assert sorted(p.name for p in parent.iterdir()) == ["out", "tmp"], point
        if _snapshot(out) == old:
            outcomes[point] = "old"
        else:
            assert _complete(out), point
            assert json.loads((out / "report.json").read_text())["verification"]["seed"] == 7
            outcomes[point] = "new"
        assert hit or outcomes[point] == "new", point  # the point was passed, or the export finished first
        assert _temp_leftovers(tmp) == [], point  # scratch files live in the staging folder, not the temp dir
    assert outcomes["staged"] == "old" and outcomes["verify.npz"] == "old", outcomes
