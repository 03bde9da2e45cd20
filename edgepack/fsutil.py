"""Atomic file writes: every artifact is written to a temporary file beside its final path and
renamed into place, so a failure never leaves a half-written file behind."""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from edgepack.errors import OutputError


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path in the same folder; on success rename it to `path`, else delete it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts get normal permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def prepare_output_dir(path: Path) -> Path:
    """Create the output folder and prove it is writable before any work is done."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"output path {path} is a file; pass a directory with -o")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".edgepack-write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"cannot write to output directory {path} ({exc.strerror or exc}); choose another with -o") from None
    return path


def file_entry(path: Path, root: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"path": str(Path(path).relative_to(root)), "size_bytes": path.stat().st_size, "sha256": digest.hexdigest()}


DEFLATE_LEVEL = 6  # zlib's default, what zip tools and APK packaging use


def deflated_size(data: bytes | Path) -> int:
    """Bytes after raw deflate: what a file costs in a zip, an APK or an app download."""
    c = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15)
    if isinstance(data, (bytes, bytearray, memoryview)):
        return len(c.compress(data)) + len(c.flush())
    n = 0
    with open(data, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            n += len(c.compress(chunk))
    return n + len(c.flush())
