"""`edgepack bench --remote/--device` against a real OpenSSH server that the test starts on a
loopback port with temporary host and user keys (Debian's openssh-server; `.ci/run` installs it).
The "board" is this machine, reached as an ssh host alias from a temporary ssh config; its Python
is the test's own. Checks: results come back with the board's tag, the installed runner and the
sent runner zip both work, temporary files are removed, an unknown host key is refused unless
--accept-new-host-key, and a refused key is one clear error line."""
from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import edgepack

ROOT = Path(__file__).resolve().parent.parent
SSHD = Path("/usr/sbin/sshd")

if not SSHD.is_file() or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
    pytest.skip("needs OpenSSH's sshd, ssh and ssh-keygen (apt-get install openssh-server openssh-client; .ci/run does)",
                allow_module_level=True)
if os.geteuid() != 0:
    pytest.skip("sshd with privilege separation needs root here (CI runs as root)", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, capture_output=True)


class Board:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        _keygen(root / "host_key")
        _keygen(root / "user_key")
        shutil.copy(root / "user_key.pub", root / "authorized_keys")
        (root / "sshd_config").write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {root}/host_key
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
LogLevel ERROR
""")
        self.known_hosts = root / "known_hosts"
        self.ssh_config = root / "ssh_config"
        self.ssh_config.write_text(f"""Host edgepack-test-board
  HostName 127.0.0.1
  Port {self.port}
  User {getpass.getuser()}
  IdentityFile {root}/user_key
  IdentitiesOnly yes
  UserKnownHostsFile {self.known_hosts}
  GlobalKnownHostsFile /dev/null
""")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(root / "sshd_config")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.proc.stderr.read().decode()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("sshd did not start listening within 10 s")

    def trust_host_key(self) -> None:
        key = (self.root / "host_key.pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {key[0]} {key[1]}\n")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    b = Board(tmp_path_factory.mktemp("board"))
    yield b
    b.stop()


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export")
    assert edgepack.export(ROOT / "examples" / "digits_cnn.pt2", output_dir=out, formats="onnx,tflite")["ok"]
    return out


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgepack", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})}, check=False)


def _remote_dirs() -> set[Path]:
    return set(Path(os.environ.get("TMPDIR", "/tmp")).glob("edgepack-bench.*")) | set(Path("/tmp").glob("edgepack-bench.*"))


def test_device_from_inventory_with_installed_runner(board, export_dir, tmp_path):
    board.trust_host_key()
    inventory = tmp_path / "devices.toml"
    inventory.write_text(f'[devices.mypi]\nssh = "edgepack-test-board"\nprofile = "rpi4"\npython = "{sys.executable}"\n')
    before = _remote_dirs()
    artifact = export_dir / "digits_cnn.fp32.onnx"
    proc = run_cli("bench", str(artifact), "--device", "mypi", "--ssh-config", str(board.ssh_config), "--runs", "20",
                   "--threads", "1", "--json", env={"EDGEPACK_DEVICES": str(inventory)})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert (result["device"], result["device_profile"], result["runner"]) == ("mypi", "rpi4", "installed")
    assert result["runs"] == 20 and result["threads"] == 1 and result["size_bytes"] == artifact.stat().st_size
    assert result["runtime"] == "onnxruntime" and 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]
    assert _remote_dirs() == before  # the board's temporary directory is gone


def test_export_dir_on_remote_with_sent_runner(board, export_dir):
    board.trust_host_key()
    before = _remote_dirs()
    proc = run_cli("bench", str(export_dir), "--remote", "edgepack-test-board", "--ssh-config", str(board.ssh_config),
                   "--remote-python", sys.executable, "--send-runner", "--runs", "5", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((export_dir / "report.json").read_text())
    assert len(report["artifacts"]) == 2
    for art in report["artifacts"]:
        b = art["bench"]
        assert (b["device"], b["runner"], b["runs"]) == ("edgepack-test-board", "sent", 5)
        assert b["runtime"] == {"onnx": "onnxruntime", "tflite": "litert"}[art["format"]]
    assert "bench on edgepack-test-board" in proc.stdout
    assert _remote_dirs() == before


def test_unknown_host_key_is_refused_unless_accepted(board, export_dir):
    board.known_hosts.write_text("")
    args = ["bench", str(export_dir / "digits_cnn.fp32.tflite"), "--remote", "edgepack-test-board",
            "--ssh-config", str(board.ssh_config), "--remote-python", sys.executable, "--runs", "3", "--json"]
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "not in known_hosts" in proc.stderr and "--accept-new-host-key" in proc.stderr
    assert board.known_hosts.read_text() == ""
    proc = run_cli(*args, "--accept-new-host-key")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["runs"] == 3
    key = (board.root / "host_key.pub").read_text().split()[1]
    assert key in board.known_hosts.read_text()  # recorded, so the next run checks it strictly


def test_refused_key_is_one_line_and_no_password_prompt(board, export_dir, tmp_path):
    board.trust_host_key()
    other = tmp_path / "other_key"
    _keygen(other)
    config = tmp_path / "ssh_config"
    config.write_text(board.ssh_config.read_text().replace(f"{board.root}/user_key", str(other)))
    proc = run_cli("bench", str(export_dir / "digits_cnn.fp32.onnx"), "--remote", "edgepack-test-board",
                   "--ssh-config", str(config), "--runs", "3")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "refused the login" in proc.stderr and "never a password" in proc.stderr
