"""edgepack.fsutil.staged_output: an export folder holds either the previous complete export or the
new complete one, whatever happens meanwhile (an error, SIGTERM, SIGKILL); only edgepack's own
folders are replaced; a killed run's staging folder is removed by the next run only when the
process named in its lock is gone."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgepack.errors import OutputError
from edgepack.fsutil import LOCK_NAME, MARKER_NAME, STAGE_PREFIX, remove_stale_stages, staged_output


def _export(path: Path, files: dict[str, str]) -> None:
    with staged_output(path) as stage:
        for name, text in files.items():
            (stage / name).write_text(text)


def _listing(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in folder.iterdir()}


def test_new_then_replaced_whole(tmp_path):
    out = tmp_path / "out"
    _export(out, {"report.json": "1", "a.onnx": "A"})
    assert _listing(out) == {"report.json": "1", "a.onnx": "A", MARKER_NAME: '{"edgepack_export": 1}\n'}
    _export(out, {"report.json": "2", "b.tflite": "B"})
    assert set(_listing(out)) == {"report.json", "b.tflite", MARKER_NAME}  # a.onnx of the earlier export is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or swapped-out folder left


def test_a_failure_leaves_the_previous_export(tmp_path):
    out = tmp_path / "out"
    _export(out, {"report.json": "1"})
    with pytest.raises(RuntimeError):
        with staged_output(out) as stage:
            (stage / "verify.npz").write_text("half")
            raise RuntimeError("conversion failed")
    assert _listing(out)["report.json"] == "1" and "verify.npz" not in _listing(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_only_edgepack_folders_are_replaced(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputError, match="is not empty and is not an edgepack export"):
        _export(mine, {"report.json": "1"})
    assert _listing(mine) == {"thesis.tex": "years of work"}
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        _export(tmp_path / "afile", {})
    empty = tmp_path / "empty"
    empty.mkdir()
    _export(empty, {"report.json": "1"})
    assert (empty / MARKER_NAME).is_file()


def _stage_with_lock(parent: Path, name: str, owner: dict, age_s: float = 0) -> Path:
    stage = parent / f"{STAGE_PREFIX}out.{name}"
    stage.mkdir()
    (stage / LOCK_NAME).write_text(json.dumps(owner))
    (stage / "model.onnx").write_text("partial")
    if age_s:
        os.utime(stage, (time.time() - age_s, time.time() - age_s))
    return stage


def test_stale_stages_are_removed_only_when_their_owner_is_gone(tmp_path):
    import socket

    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout
    gone = _stage_with_lock(tmp_path, "gone", {"pid": int(dead), "host": host})
    live = _stage_with_lock(tmp_path, "live", {"pid": os.getppid(), "host": host})  # e.g. a parallel export in a sweep
    other = _stage_with_lock(tmp_path, "other", {"pid": 1, "host": "another-machine"})
    unlocked_new = tmp_path / f"{STAGE_PREFIX}out.new"
    unlocked_new.mkdir()  # a run that has just made its folder and not yet its lock
    assert remove_stale_stages(tmp_path) == [gone]
    assert live.is_dir() and other.is_dir() and unlocked_new.is_dir()


_CHILD = """
import os, sys, time
from pathlib import Path
from edgepack.fsutil import staged_output
from edgepack.fsutil import Terminated
try:
    with staged_output(Path(sys.argv[1])) as stage:
        (stage / "report.json").write_text("new")
        print("staged", flush=True)
        time.sleep(60)
except Terminated as exc:
    print(f"edgepack: error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_export_leaves_the_previous_one(tmp_path, sig):
    out = tmp_path / "out"
    _export(out, {"report.json": "old"})
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "staged"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert _listing(out)["report.json"] == "old"
    stages = [p for p in tmp_path.iterdir() if p.name.startswith(STAGE_PREFIX)]
    if sig == signal.SIGTERM:
        assert proc.returncode == 143 and err.strip().splitlines() == [
            "edgepack: error: terminated (SIGTERM); the output folder was left as it was"]
        assert stages == []
    else:
        assert proc.returncode == -signal.SIGKILL and len(stages) == 1  # nothing could run: the next export cleans up
        _export(out, {"report.json": "next"})
        assert _listing(out)["report.json"] == "next"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_swap_without_renameat2_and_a_lock_left_by_a_kill(tmp_path, monkeypatch):
    import edgepack.fsutil as fsutil

    out = tmp_path / "out"
    _export(out, {"report.json": "1", "a.onnx": "A"})
    monkeypatch.setattr(fsutil, "_exchange", lambda a, b: False)  # macOS, or a filesystem without RENAME_EXCHANGE
    _export(out, {"report.json": "2"})
    assert _listing(out) == {"report.json": "2", MARKER_NAME: '{"edgepack_export": 1}\n'}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # a kill during a swap leaves this export's lock inside it: the next export drops it once its owner is gone
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout
    import socket

    (out / LOCK_NAME).write_text(json.dumps({"pid": int(dead), "host": socket.gethostname()}))
    fsutil._remove_stale_lock(out)
    assert LOCK_NAME not in _listing(out)
    (out / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    fsutil._remove_stale_lock(out)  # a live owner's lock stays
    assert LOCK_NAME in _listing(out)
