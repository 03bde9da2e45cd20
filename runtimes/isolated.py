"""Run a native reader on a user's file in a child process, so a crash there is an error here.

`call(fn, *args, artifact=path, timeout=..., **kwargs)` runs `fn(*args, **kwargs)` in a fresh
interpreter (`python -m edgepack.runtimes.isolated`) and returns its result. A signal (SIGSEGV,
SIGABRT from ncnn or LiteRT on a damaged file) or a hang becomes one LoadError naming the artifact
and the signal; an EdgepackError raised in the child is raised here unchanged; any other exception
becomes a LoadError with its first line. `fn` must be a module-level function (it is found by
module and name), its arguments and result picklable.

Same idea as bench_runner's child processes (which also measure memory); this one is the general
helper for estimate, inspect and export verification. The child reads its call from stdin and
writes the result after a marker line on stdout, so runtimes printing their own lines do no harm;
pickle is only exchanged between this module's two ends."""
from __future__ import annotations

import base64
import importlib
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgepack.errors import EdgepackError, LoadError

MODULE = "edgepack.runtimes.isolated"
MARKER = "EDGEPACK-ISOLATED-RESULT "
DEFAULT_TIMEOUT = 300.0


class ChildFailed(LoadError):
    """The child crashed (`signal` names it), hung, or raised an exception that is not an
    EdgepackError. `detail` is the bare reason ("crashed (SIGSEGV)", "ValueError: ..."), for
    callers that phrase their own message (export verification)."""

    def __init__(self, message: str, detail: str, signal_name: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail
        self.signal = signal_name

    def __reduce__(self):  # pickled back from a nested child unchanged
        return (type(self), (str(self), self.detail, self.signal))


def call(fn: Callable[..., Any], *args: Any, artifact: str | Path, timeout: float | None = DEFAULT_TIMEOUT,
         what: str | None = None, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` in a child process. `artifact` names the file in errors; `what` names
    the reader (e.g. "ncnn"), default the function's module; `timeout` None waits as long as it
    takes. The call is streamed to the child (numpy arrays without a second copy in memory)."""
    name = Path(artifact).name
    reader = what or fn.__module__.rsplit(".", 1)[-1]
    proc = subprocess.Popen([sys.executable, "-m", MODULE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ))
    try:
        try:
            pickle.dump((fn.__module__, fn.__qualname__, args, kwargs), proc.stdin, protocol=5)
        except BrokenPipeError:  # the child died before reading its call: its exit status says why
            pass
        stdout, stderr = proc.communicate(timeout=timeout)  # (closes stdin: the child's end of its call)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise ChildFailed(f"{name}: {reader} did not finish reading it within {timeout:.0f} s; the file is damaged or "
                          "far larger than it should be", f"did not finish within {timeout:.0f} s") from None
    except BaseException:  # SIGINT, SIGTERM: the child goes with us
        proc.kill()
        proc.wait()
        raise
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARKER.encode()):
            status, payload = pickle.loads(base64.b64decode(line[len(MARKER):]))
            if status == "ok":
                return payload
            if isinstance(payload, EdgepackError):
                raise payload
            raise ChildFailed(f"{name}: {reader} cannot read it: {payload}", payload)
    last = (stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1][:200]
    if proc.returncode < 0:
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:
            sig = f"signal {-proc.returncode}"
        raise ChildFailed(f"{name}: {reader} crashed ({sig}) reading it ({last}); the file is damaged or uses what "
                          f"{reader} does not support: export it again", f"crashed ({sig})", sig)
    raise ChildFailed(f"{name}: {reader} exited with code {proc.returncode} reading it ({last}); the file is damaged or "
                      f"uses what {reader} does not support: export it again", f"exited with code {proc.returncode} ({last})")


def run_artifact(runtime: str, artifact: str, feeds: dict, **load_kwargs: Any) -> dict:
    """Load `artifact` with the named runtime adapter and run `feeds` once: the outputs by name.
    For `call(run_artifact, "ncnn", path, feeds, artifact=path, what="ncnn", fp16=False)`."""
    from edgepack.runtimes import get_runtime

    return get_runtime(runtime).load(artifact, **load_kwargs).run(feeds)


def _child() -> int:
    module, qualname, args, kwargs = pickle.load(sys.stdin.buffer)
    try:
        fn: Any = importlib.import_module(module)
        for part in qualname.split("."):
            fn = getattr(fn, part)
        result: tuple[str, Any] = ("ok", fn(*args, **kwargs))
    except EdgepackError as exc:
        result = ("error", exc)
    except Exception as exc:  # noqa: BLE001  (the reader's own error types: reported by name and first line)
        text = (str(exc).strip().splitlines() or [""])[0][:200]
        result = ("error", f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
    sys.stdout.flush()
    sys.stdout.buffer.write(b"\n" + MARKER.encode() + base64.b64encode(pickle.dumps(result)) + b"\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(_child())
