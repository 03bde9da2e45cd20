"""Where a sweep's tasks run: a local pool of worker processes (the default), or Ray tasks on a Ray
cluster (`--ray auto|ADDRESS`). Both behind the same three calls: `submit(fn, *args) -> handle`,
`wait(timeout) -> [(handle, outcome)]` with outcome ("done", value) or ("crashed", why), and `close()`.

The pool is a few lines of multiprocessing rather than concurrent.futures: a ProcessPoolExecutor
whose worker dies breaks every pending future at once, so it cannot say which task killed it; here
each worker runs one task at a time, a dead worker charges exactly its own task and is replaced.

Ray: each task is a `ray.remote` call with `max_retries=0` (the sweep retries a crashed task itself,
the same way for both executors). A task's arguments may be the `payload` of an earlier Ray task's
result: it stays in Ray's object store (`num_returns=2`: the driver fetches only the small status)."""
from __future__ import annotations

import itertools
import multiprocessing
import os
from collections.abc import Callable
from multiprocessing.connection import wait as mp_wait
from typing import Any

from edgepack.errors import UsageError


def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _worker(conn: Any) -> None:
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        task_id, fn, args = msg
        conn.send((task_id, fn(*args)))


class LocalPool:
    """`jobs` worker processes (spawned: no state forked from the driver's threads)."""

    def __init__(self, jobs: int | None = None) -> None:
        self.jobs = jobs or default_jobs()
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: list[dict] = []
        self._queue: list[tuple[int, Callable, tuple]] = []
        self._ids = itertools.count()
        self.description = f"local pool of {self.jobs} process(es)"

    def submit(self, fn: Callable, *args: Any) -> int:
        task_id = next(self._ids)
        self._queue.append((task_id, fn, args))
        self._dispatch()
        return task_id

    def payload(self, handle: Any, value: Any) -> Any:
        """What a later task receives for an earlier task's payload (here: the value itself)."""
        return value[1]

    def fetch(self, value: Any) -> Any:
        return value

    def _spawn(self) -> dict:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker, args=(child,), daemon=True)
        proc.start()
        child.close()
        return {"proc": proc, "conn": parent, "task": None}

    def _dispatch(self) -> None:
        while self._queue:
            idle = next((w for w in self._workers if w["task"] is None), None)
            if idle is None:
                if len(self._workers) >= self.jobs:
                    return
                idle = self._spawn()
                self._workers.append(idle)
            task = self._queue.pop(0)
            idle["task"] = task[0]
            idle["conn"].send(task)

    def pending(self) -> int:
        return len(self._queue) + sum(w["task"] is not None for w in self._workers)

    def wait(self, timeout: float) -> list[tuple[int, tuple[str, Any]]]:
        busy = [w for w in self._workers if w["task"] is not None]
        if not busy:
            return []
        ready = mp_wait([w["conn"] for w in busy] + [w["proc"].sentinel for w in busy], timeout)
        out = []
        for w in busy:
            if w["conn"] in ready:
                try:
                    task_id, value = w["conn"].recv()
                    out.append((task_id, ("done", value)))
                    w["task"] = None
                    continue
                except (EOFError, OSError):
                    pass
            if w["conn"] in ready or w["proc"].sentinel in ready:
                w["proc"].join(1)
                out.append((w["task"], ("crashed", f"worker process died (exit code {w['proc'].exitcode})")))
                self._workers.remove(w)
        self._dispatch()
        return out

    def close(self) -> None:
        for w in self._workers:
            try:
                w["conn"].send(None)
            except (OSError, BrokenPipeError):
                pass
        for w in self._workers:
            w["proc"].join(5)
            if w["proc"].is_alive():
                w["proc"].kill()
        self._workers.clear()


class RayExecutor:
    """Each task a Ray task on the cluster at `address` ("auto": the running local cluster)."""

    def __init__(self, address: str, init_kwargs: dict | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise UsageError("--ray needs Ray: pip install 'edgepack[sweep]' (or run without --ray: a local process pool)") from None
        self.ray = ray
        self._own = not ray.is_initialized()
        if self._own:
            _check_reachable(address)
            try:
                ray.init(address=address, log_to_driver=False, **(init_kwargs or {}))
            except Exception as exc:  # noqa: BLE001 - no cluster there
                raise UsageError(f"--ray {address}: cannot connect to a Ray cluster ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}); start one with `ray start --head` "
                                 "or pass its address") from None
        self._remote = ray.remote(num_cpus=1, max_retries=0, num_returns=2)(_call)
        self._tasks: dict[Any, tuple[Any, Any]] = {}  # status ref -> (payload ref, handle)
        self._ids = itertools.count()
        cpus = int(ray.cluster_resources().get("CPU", 0))
        self.description = f"Ray cluster ({len(ray.nodes())} node(s), {cpus} CPU(s))"

    def submit(self, fn: Callable, *args: Any) -> int:
        status_ref, payload_ref = self._remote.remote(fn, *args)
        handle = next(self._ids)
        self._tasks[status_ref] = (payload_ref, handle)
        return handle

    def payload(self, handle: Any, value: Any) -> Any:
        return value[1]  # an ObjectRef: it stays in the object store

    def pending(self) -> int:
        return len(self._tasks)

    def wait(self, timeout: float) -> list[tuple[int, tuple[str, Any]]]:
        if not self._tasks:
            return []
        ready, _ = self.ray.wait(list(self._tasks), num_returns=len(self._tasks), timeout=timeout)
        out = []
        for ref in ready:
            payload_ref, handle = self._tasks.pop(ref)
            try:
                status = self.ray.get(ref)
            except self.ray.exceptions.RayError as exc:
                why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                out.append((handle, ("crashed", f"Ray worker died ({type(exc).__name__}: {why[:200]})")))
                continue
            out.append((handle, ("done", (status, payload_ref))))
        return out

    def fetch(self, value: Any) -> Any:
        return self.ray.get(value)

    def close(self) -> None:
        if self._own:
            self.ray.shutdown()
            self._own = False


def _check_reachable(address: str) -> None:
    """A cluster address that nothing answers is a one-line error in seconds (ray.init would retry
    for minutes): "auto" is the address of the last cluster started here, if any."""
    import socket

    if address in ("local",) or address.startswith("ray://"):
        return
    target = address
    if address == "auto":
        try:
            from ray._private.services import get_ray_address_from_environment

            target = get_ray_address_from_environment("auto", None)
        except Exception:  # noqa: BLE001 - Ray's own lookup reports it
            return
    host, _, port = str(target).rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise UsageError(f"--ray {address}: no Ray cluster answers at {target} ({exc.strerror or exc}); start one with "
                         "`ray start --head` or pass its address") from None


def _call(fn: Callable, *args: Any) -> tuple[Any, Any]:
    return fn(*args)
