"""Atomic file writes: every artifact is written to a temporary file beside its final path and
renamed into place, so a failure never leaves a half-written file behind. `staged_output` does the
same for a whole export folder (built beside -o, swapped in at the end)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgepack.errors import OutputError, UsageError


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


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (never reads more than limit + 1)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise UsageError(f"{path} is not a regular file")
            data = f.read(limit + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {path} ({exc.strerror or exc}); export again") from None
    if len(data) > limit:
        raise UsageError(f"{path} is larger than {limit >> 20} MiB; that is not an export's file")
    return data


def prepare_output_dir(path: Path) -> Path:
    """Create a folder and prove it is writable before any work is done (a sweep's output folder,
    which it fills cell by cell and resumes; an export is staged instead: `export_output`)."""
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


# ---------------------------------------------------------------- the export folder, swapped in whole

MARKER_NAME = ".edgepack-export"  # in every folder edgepack exported: only such folders are ever replaced
LOCK_NAME = ".edgepack-lock"  # in a staging folder: the pid (and its start time) of the export building it
STAGE_PREFIX = ".edgepack-stage-"
OLD_PREFIX = ".edgepack-old-"
UNLOCKED_GRACE_S = 60.0  # a staging folder without a lock is someone's mkdtemp of a moment ago, or stale after this


class Terminated(BaseException):
    """SIGTERM: exit 143, like a shell reports it. A BaseException like KeyboardInterrupt, so no
    `except Exception` on the way (an artifact's failure record, a converter's fallback) takes it
    for an error of the work it interrupts."""

    exit_code = 143


@contextlib.contextmanager
def staged_output(path: Path) -> Iterator[Path]:
    """Yield a staging folder beside `path` to build an export in; on success the staging folder
    becomes `path` (an earlier export there is replaced whole), on any error, SIGINT or SIGTERM it
    is removed and `path` is left as it was. `path` must be new, empty, or an earlier export (it
    carries MARKER_NAME); anything else is refused before work starts. Staging folders left by a
    killed export are removed when the process named in their lock is gone. SIGTERM raises
    Terminated (exit 143) while the folder is staged."""
    final = Path(path).resolve()  # a symlink to an earlier export: replace what it points to
    check_output_target(final)
    if final.is_dir():
        _remove_stale_lock(final)
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale_stages(parent)
        stage = Path(tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{final.name}.", dir=parent))
        os.chmod(stage, 0o777 & ~_umask())  # mkdtemp makes 0700; the export folder gets normal permissions
        (stage / LOCK_NAME).write_text(json.dumps(_owner()))
    except OSError as exc:
        raise OutputError(f"cannot write to output directory {final} ({exc.strerror or exc}); choose another folder with -o") from None
    previous = _on_sigterm()
    try:
        yield stage
        (stage / MARKER_NAME).write_text(json.dumps({"edgepack_export": 1}) + "\n")
        _swap_in(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


SCRATCH_NAME = ".scratch"  # in a staging folder: the export's temporary files, removed before the swap


@contextlib.contextmanager
def export_output(path: Path) -> Iterator[Path]:
    """`staged_output` for `run_export`, with this process's temporary files (tempfile's default
    folder: work folders of the converters, the quantizer, pnnx) inside the staging folder, so a
    killed export leaves its scratch only there, where the next export removes it with the stage.
    (tempfile.tempdir is process-wide: exports in one process run one at a time.)"""
    with staged_output(path) as stage:
        scratch = stage / SCRATCH_NAME
        scratch.mkdir()
        previous = tempfile.tempdir
        tempfile.tempdir = str(scratch)
        try:
            yield stage
        finally:
            tempfile.tempdir = previous
            shutil.rmtree(scratch, ignore_errors=True)


def check_output_target(final: Path) -> None:
    """An OutputError unless `final` is new, an empty folder, or an earlier edgepack export."""
    if not final.exists():
        return
    if not final.is_dir():
        raise OutputError(f"output path {final} is a file; pass a folder with -o")
    if (final / MARKER_NAME).is_file() or not any(final.iterdir()):
        return
    raise OutputError(f"output folder {final} is not empty and is not an edgepack export (no {MARKER_NAME}); edgepack "
                      "replaces only its own exports: pass a new or empty folder with -o")


def remove_stale_stages(parent: Path) -> list[Path]:
    """Remove staging and swapped-out folders in `parent` whose owner is gone (killed exports);
    those of a running export (a parallel sweep) are left alone. Returns what was removed."""
    removed = []
    for entry in Path(parent).iterdir():
        if not entry.name.startswith((STAGE_PREFIX, OLD_PREFIX)) or not entry.is_dir() or entry.is_symlink():
            continue
        try:
            owner = json.loads((entry / LOCK_NAME).read_text())
        except (OSError, ValueError):
            owner = None
        if owner is None and time.time() - entry.stat().st_mtime < UNLOCKED_GRACE_S:
            continue
        if owner is not None and _alive(owner):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _owner() -> dict:
    return {"pid": os.getpid(), "start": _start_time(os.getpid()), "host": socket.gethostname()}


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), so a reused pid is not taken for it."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat_line.rsplit(")", 1)[-1].split()[19]


def _alive(owner: dict) -> bool:
    if owner.get("host") != socket.gethostname():
        return True  # another machine's export (a shared folder): never ours to judge
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return owner.get("start") is None or owner.get("start") == _start_time(pid)


def _on_sigterm() -> Any:
    """Turn SIGTERM into Terminated while staged (main thread only; elsewhere signals cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
        raise Terminated("terminated (SIGTERM); the output folder was left as it was")

    return signal.signal(signal.SIGTERM, handler)


def _swap_in(stage: Path, final: Path) -> None:
    """Put `stage` at `final`: atomically exchanged with an earlier export where the OS can
    (renameat2 RENAME_EXCHANGE on Linux), else moved aside first, then removed. Both folders carry
    this process's lock while they trade places, so a kill at any instant leaves a folder the next
    export removes (its owner is gone); the lock left in `final` is removed right after."""
    if final.is_dir() and not any(final.iterdir()):
        final.rmdir()
    if not final.exists():
        os.rename(stage, final)
    else:
        (final / LOCK_NAME).write_text(json.dumps(_owner()))  # the earlier export, about to be swapped out
        old = stage  # after the exchange: the earlier export
        if not _exchange(stage, final):
            old = Path(tempfile.mkdtemp(prefix=f"{OLD_PREFIX}{final.name}.", dir=final.parent))
            os.rmdir(old)
            try:
                os.rename(final, old)
            except BaseException:
                (final / LOCK_NAME).unlink(missing_ok=True)  # still the earlier export, in place
                raise
            try:
                os.rename(stage, final)
            except BaseException:
                os.rename(old, final)  # the earlier export back in place
                (final / LOCK_NAME).unlink(missing_ok=True)
                raise
        shutil.rmtree(old, ignore_errors=True)
    (final / LOCK_NAME).unlink(missing_ok=True)


def _remove_stale_lock(final: Path) -> None:
    """A lock left inside an export by a kill during its swap (see _swap_in), once its owner is gone."""
    lock = final / LOCK_NAME
    try:
        owner = json.loads(lock.read_text())
    except (OSError, ValueError):
        return
    if not _alive(owner):
        lock.unlink(missing_ok=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unavailable."""
    if sys.platform != "linux":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
