"""A .pt2 never runs code from the file without --allow-pickle (edgepack.safe_pt2): crafted
archives whose pickled member, shape expression or node target would write a marker file are
refused with one line naming the member, and nothing is written; real archives still load."""
from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from edgepack.cli import main
from edgepack.errors import PickleNotAllowed
from edgepack.load import load_source
from edgepack.runtimes.torch_eager import TorchEager
from edgepack.safe_pt2 import check_pt2

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits_cnn.pt2"


class _Twice(torch.nn.Module):
    def forward(self, x):
        return x.relu() * 2


class _Payload:
    """Unpickling this runs `touch marker` and returns valid sample inputs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        code = f"open({str(self.marker)!r}, 'w').close() or ((__import__('torch').ones(2, 3),), {{}})"
        return (eval, (code,))


def _exported(tmp_path: Path, dynamic: bool = False) -> Path:
    dims = {"x": {0: torch.export.Dim("b", min=1, max=64)}} if dynamic else None
    ep = torch.export.export(_Twice(), (torch.ones(2, 3),), dynamic_shapes=dims)
    path = tmp_path / ("dyn.pt2" if dynamic else "plain.pt2")
    torch.export.save(ep, path)
    return path


def _rewrite(src: Path, dst: Path, suffix: str, change) -> Path:
    """Copy the zip `src` to `dst`, passing the bytes of the member ending in `suffix` through `change`."""
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as b:
        hits = 0
        for info in a.infolist():
            data = a.read(info)
            if info.filename.endswith(suffix):
                data, hits = change(data), hits + 1
            b.writestr(info, data)
    assert hits == 1, f"{suffix} not in {src}"
    return dst


def _evil_sample_inputs(tmp_path: Path, marker: Path) -> Path:
    buf = io.BytesIO()
    torch.save(_Payload(marker), buf)  # a torch.save archive, like the real member
    return _rewrite(_exported(tmp_path), tmp_path / "evil.pt2", "data/sample_inputs/model.pt", lambda _: buf.getvalue())


def test_real_archives_load_and_run(tmp_path):
    src = load_source(EXAMPLE)
    assert src.kind == "exported-program" and src.stored_shapes == {"x": (1, 1, 8, 8)}
    dyn = load_source(_exported(tmp_path, dynamic=True))  # carries sympy expressions in model.json
    out = dyn.model.module()(torch.tensor([[-1.0, 2.0, 3.0]] * 5))
    assert out.tolist() == [[0.0, 4.0, 6.0]] * 5
    session = TorchEager().load(EXAMPLE)
    assert session.input_names == ["x"]


def test_pickled_sample_inputs_payload_is_refused_without_the_flag(tmp_path):
    marker = tmp_path / "marker"
    evil = _evil_sample_inputs(tmp_path, marker)
    with pytest.raises(PickleNotAllowed) as err:
        load_source(evil)
    msg = str(err.value)
    assert "\n" not in msg and "data/sample_inputs/model.pt" in msg and "pickle needs eval," in msg and "--allow-pickle" in msg
    with pytest.raises(PickleNotAllowed):
        TorchEager().load(evil)  # bench's torch adapter
    assert not marker.exists()
    # torch itself would run it: the check is what stands in the way (and the flag lets it through)
    with pytest.raises(Exception):
        load_source(evil, allow_pickle=True)
    assert marker.exists()


def test_cli_export_refuses_it_in_one_line(tmp_path, capsys):
    marker = tmp_path / "marker"
    evil = _evil_sample_inputs(tmp_path, marker)
    assert main(["export", str(evil), "-o", str(tmp_path / "out"), "--format", "onnx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "would run code from the file" in err[0] and "model.pt" in err[0], err
    assert not marker.exists()


@pytest.mark.heavy  # starts bench's child process, which imports torch again (~20 s on a loaded machine)
def test_cli_bench_refuses_it_in_one_line(tmp_path, capsys):
    marker = tmp_path / "marker"
    evil = _evil_sample_inputs(tmp_path, marker)
    assert main(["bench", str(evil), "--runs", "1", "--warmup", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "would run code from the file" in err[0], err
    assert not marker.exists()
    main(["bench", str(evil), "--runs", "1", "--warmup", "0", "--allow-pickle"])  # the flag reaches bench's runner
    assert marker.exists()  # (the payload ran: what --allow-pickle means, as in export)


def test_shape_expression_evaluated_by_sympify_is_refused(tmp_path):
    marker = tmp_path / "marker"
    real = b"Symbol('s77', positive=True, integer=True)"
    payload = f"__import__('os').system('touch {marker}') or ".encode() + real
    dyn = _exported(tmp_path, dynamic=True)
    assert real in zipfile.ZipFile(dyn).read(zipfile.ZipFile(dyn).namelist()[2])  # models/model.json
    evil = _rewrite(dyn, tmp_path / "expr.pt2", "models/model.json", lambda b: b.replace(real, payload, 1))
    with pytest.raises(PickleNotAllowed, match=r"models/model.json \(shape expression"):
        load_source(evil)
    assert not marker.exists()


def test_graph_node_target_outside_the_operators_is_refused(tmp_path):
    evil = _rewrite(_exported(tmp_path), tmp_path / "target.pt2", "models/model.json",
                    lambda b: b.replace(b'"torch.ops.aten.relu.default"', b'"torch.os.system"', 1))
    with pytest.raises(PickleNotAllowed, match=r"'torch.os.system' is a Python function"):
        load_source(evil)


def test_opaque_constant_and_aotinductor_members_are_named(tmp_path):
    marker = tmp_path / "marker"
    good = _exported(tmp_path).read_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(good)) as a, zipfile.ZipFile(buf, "w") as b:
        root = a.namelist()[0].split("/")[0]
        for info in a.infolist():
            b.writestr(info, a.read(info))
        b.writestr(f"{root}/data/constants/opaque_0", pickle.dumps(_Payload(marker), protocol=0))
        b.writestr(f"{root}/data/aotinductor/model/model.so", b"\x7fELF")
    with pytest.raises(PickleNotAllowed) as err:
        check_pt2(buf.getvalue(), "x.pt2", allow_pickle=False)
    assert "data/constants/opaque_0 (pickle needs eval," in str(err.value)
    assert "data/aotinductor/model/model.so (compiled native code" in str(err.value)
    check_pt2(buf.getvalue(), "x.pt2", allow_pickle=True)  # the flag lets the user take the risk
    check_pt2(good, "x.pt2", allow_pickle=False)
    assert not marker.exists() and not os.path.exists("marker")


def test_duplicate_members_are_refused(tmp_path):
    """zipfile reads the last copy of a name, torch's reader may read another: a config copy that
    says 'raw bytes' must not hide one that says 'pickle'."""
    good = _exported(tmp_path).read_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(good)) as a, zipfile.ZipFile(buf, "w") as b:
        for info in a.infolist():
            b.writestr(info, a.read(info))
        first = a.infolist()[0]
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
            b.writestr(first.filename, a.read(first))
    with pytest.raises(PickleNotAllowed, match="appears twice in the archive"):
        check_pt2(buf.getvalue(), "x.pt2", allow_pickle=False)
