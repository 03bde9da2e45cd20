"""`edgepack pack` stays in its folder: names from report.json or --name are plain names, every path
resolves to a regular file inside the export folder, the sha256 is always checked (a missing one is
an error), reads are bounded, and nothing is written outside -o's folder. The checks run before the
TFLite is parsed, so a small fake export folder is enough here (tests/test_pack.py packs real ones)."""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest

from edgepack.cli import main
from edgepack.commands.pack import PackOptions, _write_zip, pack
from edgepack.fsutil import read_bounded
from edgepack.errors import OutputError, UsageError

TFLITE = b"\x1c\x00\x00\x00TFL3" + bytes(56)  # only hashed here: every case fails before it is parsed


def _export(folder: Path, *, name="net", path="net.fp32.tflite", sha=True, data=TFLITE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if path == "net.fp32.tflite":
        (folder / path).write_bytes(data)
    files = [{"path": path, "size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}] if sha else []
    art = {"format": "tflite", "precision": "fp32", "ok": True, "path": path, "files": files,
           "inputs": [{"name": "x", "shape": [1, 4], "dtype": "float32"}], "outputs": [{"name": "y", "shape": [1, 2], "dtype": "float32"}]}
    (folder / "report.json").write_text(json.dumps({"model": {"name": name}, "artifacts": [art]}))
    return folder


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _refused(tmp_path: Path, export: Path, match: str, **kw) -> None:
    out = tmp_path / "bundle" / "b.zip"
    before = _files(tmp_path)
    with pytest.raises(UsageError, match=match):
        pack(PackOptions(export_dir=export, platform="rpi", output=out, **kw))
    made = _files(tmp_path) - before
    assert made <= {"bundle"}, made  # at most -o's (empty) folder: no bundle, no temp folder, nothing elsewhere
    assert not out.exists()


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/abs", "a/b", "a\\b", "x\ny", "a" * 300, "..", ".hidden", "", 7, None])
def test_model_name_from_report_must_be_plain(tmp_path, name):
    _refused(tmp_path, _export(tmp_path / "exp", name=name), "the model name in report.json .* is not a plain bundle name")
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/abs.tflite").exists()


@pytest.mark.parametrize("name", ["../x", "/abs", "a b", "ü", "x" * 65])
def test_name_option_must_be_plain(tmp_path, name):
    with pytest.raises(UsageError, match="--name .* is not a plain bundle name"):
        PackOptions(export_dir=_export(tmp_path / "exp"), platform="rpi", output=tmp_path / "b.zip", name=name)


def test_artifact_path_outside_the_folder_is_refused(tmp_path):
    outside = tmp_path / "outside.tflite"
    outside.write_bytes(TFLITE)
    sha = hashlib.sha256(TFLITE).hexdigest()
    for path, match in [("../outside.tflite", "points outside"), (str(outside), "points outside"),
                        ("/dev/zero", "points outside")]:
        exp = _export(tmp_path / "exp", path=path)
        report = json.loads((exp / "report.json").read_text())
        report["artifacts"][0]["files"] = [{"path": path, "size_bytes": len(TFLITE), "sha256": sha}]
        (exp / "report.json").write_text(json.dumps(report))
        _refused(tmp_path, exp, match)
    link = tmp_path / "exp" / "link.tflite"
    link.symlink_to(outside)
    _refused(tmp_path, _export(tmp_path / "exp", path="link.tflite"), "leads outside the export folder")


def test_special_files_are_refused_without_reading(tmp_path):
    exp = _export(tmp_path / "exp", path="zero.tflite")
    (exp / "zero.tflite").symlink_to("/dev/zero")  # would read until MemoryError
    _refused(tmp_path, exp, "leads outside")
    exp2 = _export(tmp_path / "exp2", path="fifo.tflite")
    os.mkfifo(exp2 / "fifo.tflite")  # would block forever
    _refused(tmp_path, exp2, "not a regular file")
    fifo = tmp_path / "labels.fifo"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="not a regular file"):
        read_bounded(fifo, 100)
    big = tmp_path / "big"
    big.write_bytes(bytes(101))
    with pytest.raises(UsageError, match="larger than"):
        read_bounded(big, 100)


def test_sha256_is_always_checked(tmp_path):
    _refused(tmp_path, _export(tmp_path / "nosha", sha=False), "records no sha256 for net.fp32.tflite")
    exp = _export(tmp_path / "tampered")
    (exp / "net.fp32.tflite").write_bytes(TFLITE + b"\0")
    _refused(tmp_path, exp, "changed since the export")


def test_report_json_that_is_not_a_report(tmp_path):
    exp = _export(tmp_path / "exp")
    (exp / "report.json").write_text("[1, 2]")
    _refused(tmp_path, exp, "not an edgepack report")
    (exp / "report.json").unlink()
    (exp / "report.json").symlink_to("/dev/zero")
    with pytest.raises(UsageError, match="no report.json"):
        PackOptions(export_dir=exp, platform="rpi", output=tmp_path / "b.zip")


def test_zip_member_names_never_leave_the_bundle(tmp_path):
    for member in ["../x", "/abs", "a/../../x", "c:\\x"]:
        with pytest.raises(OutputError, match="would unpack outside"):
            _write_zip(tmp_path / "z.zip", {member: b"1"})
    assert not (tmp_path / "z.zip").exists()
    _write_zip(tmp_path / "z.zip", {"assets/net.tflite": b"1", "README.md": b"2"})
    names = zipfile.ZipFile(tmp_path / "z.zip").namelist()
    assert names == ["assets/net.tflite", "README.md"]


def test_cli_one_line(tmp_path, capsys):
    exp = _export(tmp_path / "exp", name="../../evil")
    assert main(["pack", str(exp), "--platform", "android", "-o", str(tmp_path / "b.zip")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a plain bundle name" in err[0], err
