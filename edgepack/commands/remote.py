"""`edgepack bench --remote user@host[:port]`: run the benchmark on a board over SSH.

Uses the system OpenSSH client (`ssh`) through subprocess, so `~/.ssh/config`, keys and
agents work as they do for the user. Always `BatchMode=yes` (ssh never asks for a password: there
is no way to give one), `StrictHostKeyChecking=yes` unless the user passes --accept-new-host-key
(then `accept-new`: an unknown key is recorded, a changed key is still refused).

One session: make a temporary directory on the board and ask whether an edgepack runner with the
same protocol is installed for the chosen Python; copy each artifact (and, when needed, the runner
zip from `bench_runner.build_runner_zip`) there; run it; read the JSON; remove the directory in a
`finally`. Written by hand on top of the ssh client because a Python SSH library (paramiko,
asyncssh) would not read the user's ssh config, agent and known_hosts the way `ssh` itself does."""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgepack.errors import RemoteError, UsageError

RUNNER_ZIP = "edgepack-runner.zip"


@dataclass(frozen=True)
class SshTarget:
    """Where and how to reach a board. `destination` is what ssh takes (an alias from
    ~/.ssh/config, host or user@host); `device` labels the results (inventory name or address)."""

    destination: str
    port: int | None = None
    python: str = "python3"
    ssh_config: Path | None = None
    accept_new_host_key: bool = False
    send_runner: bool = False  # send the runner zip even if edgepack is installed on the board
    device: str = ""
    profile: str | None = None

    def __post_init__(self) -> None:
        if not self.destination or self.destination.startswith("-") or any(c.isspace() for c in self.destination):
            raise UsageError(f"--remote {self.destination!r}: expected user@host[:port] or an ssh host alias")
        if self.port is not None and not 0 < self.port < 65536:
            raise UsageError(f"--remote port {self.port}: must be 1..65535")
        if not self.python:
            raise UsageError("--remote-python is empty; pass the board's Python, e.g. python3 or ~/venv/bin/python")
        if self.python.startswith("~") and not (self.python == "~" or self.python.startswith("~/")):
            raise UsageError(f"--remote-python {self.python!r}: only ~/ (the login user's home on the board) is expanded; "
                             "give the absolute path of the other user's Python")

    def python_word(self) -> str:
        """The board's Python as one sh word: quoted, with a leading ~/ expanded to the login user's
        $HOME on the board (quoting alone would keep the ~ literal)."""
        if self.python.startswith("~/"):
            return '"$HOME"/' + shlex.quote(self.python[2:])
        return shlex.quote(self.python)

    @classmethod
    def parse(cls, address: str, **kwargs) -> SshTarget:
        """user@host, user@host:port, host, [v6addr]:port."""
        m = re.fullmatch(r"(?:(?P<user>[^@\s]+)@)?(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:@\s]+))(?::(?P<port>\d+))?", address or "")
        if not m:
            raise UsageError(f"--remote {address!r}: expected user@host[:port] (e.g. pi@192.168.1.20:22) or an ssh host alias")
        host = m["v6"] or m["host"]
        destination = f"{m['user']}@{host}" if m["user"] else host
        kwargs.setdefault("device", address)
        return cls(destination=destination, port=int(m["port"]) if m["port"] else None, **kwargs)

    def ssh_options(self) -> list[str]:
        check = "accept-new" if self.accept_new_host_key else "yes"
        opts = ["-o", "BatchMode=yes", "-o", f"StrictHostKeyChecking={check}", "-o", "ConnectTimeout=20"]
        if self.ssh_config is not None:
            opts = ["-F", str(self.ssh_config), *opts]
        return opts


class RemoteHost:
    """A benchmarking session on one board (a context manager: the temporary directory goes away
    on exit, also after an error)."""

    def __init__(self, target: SshTarget) -> None:
        self.target = target
        self.device = target.device
        self.workdir: str | None = None
        self._installed = False
        self._runner_sent = False

    # -- ssh plumbing

    def _ssh(self, command: str, *, timeout: float = 120.0) -> subprocess.CompletedProcess:
        return self._call(self._ssh_command(command), timeout)

    def _ssh_command(self, command: str) -> list[str]:
        """Run `command` with sh on the board, whatever the user's login shell is (fish, csh ...)."""
        t = self.target
        return ["ssh", *t.ssh_options(), *(["-p", str(t.port)] if t.port else []), "--", t.destination,
                f"sh -c {shlex.quote(command)}"]

    def _put(self, files: list[Path]) -> None:
        """Copy files into the work directory through ssh's stdin (`cat > file`): no scp or sftp
        subsystem needed on the board (minimal images and dropbear often lack sftp-server)."""
        t = self.target
        for f in files:
            cmd = self._ssh_command(f"cat > {shlex.quote(f'{self.workdir}/{f.name}')}")
            with open(f, "rb") as stdin:
                try:
                    proc = subprocess.run(cmd, stdin=stdin, capture_output=True, timeout=600.0, check=False)
                except subprocess.TimeoutExpired:
                    raise RemoteError(f"copying {f.name} to {t.destination} did not finish within 600 s") from None
            if proc.returncode != 0:
                proc.stderr = proc.stderr.decode(errors="replace")
                raise self._ssh_error(proc, f"copying {f.name}")

    def _call(self, cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RemoteError(f"{cmd[0]} to {self.target.destination} did not finish within {timeout:.0f} s") from None

    def _ssh_error(self, proc: subprocess.CompletedProcess, doing: str) -> RemoteError:
        where = self.target.destination + (f" port {self.target.port}" if self.target.port else "")
        text = proc.stderr.strip()
        if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text or re.search(r"Host key for \S+ has changed", text):
            host = self.target.destination.rsplit("@", 1)[-1]
            entry = f"[{host}]:{self.target.port}" if self.target.port and self.target.port != 22 else host
            return RemoteError(f"the host key of {where} has changed since it was recorded in known_hosts, so ssh refused "
                               "it (a reinstalled board, or someone in between); if the board was reinstalled, remove the "
                               f"old key with `ssh-keygen -R {shlex.quote(entry)}` and connect again (--accept-new-host-key "
                               "then records the new one)")
        if "Host key verification failed" in text or "No ED25519 host key is known" in text or "host key is known" in text:
            return RemoteError(f"the host key of {where} is not in known_hosts, so ssh refused it; check the key (e.g. "
                               "connect once with `ssh` and compare its fingerprint), or pass --accept-new-host-key to "
                               "record an unknown key (a changed key is always refused)")
        if "Permission denied" in text:
            return RemoteError(f"{where} refused the login: edgepack uses ssh keys or an agent only (never a password); "
                               "set up key login, e.g. `ssh-copy-id`, or name the key in ~/.ssh/config")
        last = (text.splitlines() or [f"exit code {proc.returncode}"])[-1][:300]
        return RemoteError(f"ssh to {where} failed while {doing}: {last}")

    # -- session

    def __enter__(self) -> RemoteHost:
        if shutil.which("ssh") is None:
            raise RemoteError("`ssh` is not on PATH; install the OpenSSH client (e.g. apt-get install openssh-client)")
        py = self.target.python_word()
        probe = "" if self.target.send_runner else f"{py} -m edgepack.runtimes.bench_runner --protocol 2>/dev/null; "
        proc = self._ssh(f'd=$(mktemp -d "${{TMPDIR:-/tmp}}/edgepack-bench.XXXXXX") && echo "$d" && '
                         f"{{ {probe}echo end; }}")
        if proc.returncode != 0:
            raise self._ssh_error(proc, "creating a temporary directory")
        lines = proc.stdout.split()
        self.workdir = lines[0] if lines else None
        if not self.workdir or "edgepack-bench." not in self.workdir:
            raise RemoteError(f"{self.target.destination}: unexpected reply to mktemp: {proc.stdout.strip()[:200]!r}")
        from edgepack.runtimes.bench_runner import PROTOCOL

        self._installed = str(PROTOCOL) in lines[1:-1]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.workdir:
            self._ssh(f"rm -rf -- {shlex.quote(self.workdir)}", timeout=60.0)
            self.workdir = None

    def bench(self, path: Path, runtime: str, options, verify: tuple[Path, Path] | None = None) -> dict:
        """Copy the artifact, run the runner on the board, bring its JSON back."""
        from edgepack.commands.bench import raise_runner_error
        from edgepack.runtimes.bench_runner import (
            MARKER,
            artifact_files,
            build_runner_zip,
        )

        files = artifact_files(path)
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise UsageError(f"artifact file(s) not found: {', '.join(missing)}")
        to_send = list(files) + (list(verify) if verify is not None else [])
        with tempfile.TemporaryDirectory(prefix="edgepack-runner-") as tmp:
            if not self._installed and not self._runner_sent:
                to_send.append(build_runner_zip(Path(tmp) / RUNNER_ZIP))
            self._put(to_send)
        self._runner_sent = self._runner_sent or not self._installed
        q = shlex.quote
        wd, py = self.workdir, self.target.python_word()
        runner = f"{py} -m edgepack.runtimes.bench_runner" if self._installed else f"{py} {q(wd + '/' + RUNNER_ZIP)}"
        extra = ["--verify", f"{wd}/{verify[0].name}", "--entry", f"{wd}/{verify[1].name}"] if verify is not None else []
        args = " ".join(q(a) for a in [f"{wd}/{path.name}", "--runtime", runtime, *options.runner_args(), *extra])
        cleanup = " ".join(q(f"{wd}/{f.name}") for f in to_send if f.name != RUNNER_ZIP)
        proc = self._ssh(f"{runner} {args}; rc=$?; rm -f -- {cleanup}; exit $rc", timeout=options.timeout_s * 2 + 120)
        for line in reversed(proc.stdout.splitlines()):
            if line.startswith(MARKER):
                result = json.loads(line[len(MARKER):])
                if "error" in result:
                    raise_runner_error(result.get("error_type", "EdgepackError"), f"on {self.device}: {result['error']}")
                result["device"] = self.device
                if self.target.profile:
                    from edgepack.devices import load_profile

                    result["device_profile"] = self.target.profile
                    mismatch = load_profile(self.target.profile).arch_mismatch((result.get("host") or {}).get("platform", ""))
                    if mismatch:  # kept, but never taken for the profile's latency (pack, the report)
                        result["device_profile_mismatch"] = f"{self.device}: {mismatch}"
                return result
        if proc.returncode == 255:
            raise self._ssh_error(proc, "running the benchmark")
        last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1][:300]
        raise RemoteError(f"the benchmark on {self.device} gave no result ({last}); does {self.target.python} there "
                          "have numpy and the runtime? pass --remote-python PATH to choose another Python")
