"""SSH messages of `bench --remote`: a changed host key says "changed" and how to remove the old
key; an unknown one says so; `~/` in --remote-python is expanded by the board's sh, `~user` is
refused in one line. The ssh texts are OpenSSH's own (9.x) as it prints them."""
from __future__ import annotations

import subprocess

import pytest

from edgepack.commands.remote import RemoteHost, SshTarget
from edgepack.errors import UsageError

CHANGED = """@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
Offending ECDSA key in /home/u/.ssh/known_hosts:3
Host key for 192.168.1.20 has changed and you have requested strict checking.
Host key verification failed."""
UNKNOWN = """No ED25519 host key is known for 192.168.1.20 and you have requested strict checking.
Host key verification failed."""


def _error(target: SshTarget, stderr: str) -> str:
    proc = subprocess.CompletedProcess(["ssh"], 255, stdout="", stderr=stderr)
    return str(RemoteHost(target)._ssh_error(proc, "creating a temporary directory"))


def test_changed_host_key_says_changed_and_how_to_remove_it():
    msg = _error(SshTarget.parse("pi@192.168.1.20"), CHANGED)
    assert "has changed" in msg and "ssh-keygen -R 192.168.1.20" in msg and "\n" not in msg
    msg = _error(SshTarget.parse("pi@192.168.1.20:2222"), CHANGED)
    assert "ssh-keygen -R '[192.168.1.20]:2222'" in msg  # known_hosts keys a non-standard port as [host]:port


def test_unknown_host_key_is_not_called_changed():
    msg = _error(SshTarget.parse("pi@192.168.1.20"), UNKNOWN)
    assert "is not in known_hosts" in msg and "changed since" not in msg and "--accept-new-host-key" in msg


@pytest.mark.parametrize("python, home, expected", [
    ("~/venv/bin/python", "/home/pi", "/home/pi/venv/bin/python"),
    ("~/my env/python3", "/home/pi", "/home/pi/my env/python3"),
    ("/usr/bin/python3", "/home/pi", "/usr/bin/python3"),
    ("python3", "/x", "python3"),
])
def test_remote_python_tilde_is_expanded_by_the_boards_shell(python, home, expected):
    word = SshTarget.parse("pi@board", python=python).python_word()
    out = subprocess.run(["sh", "-c", f"printf %s {word}"], capture_output=True, text=True, env={"HOME": home}, check=True)
    assert out.stdout == expected


def test_remote_python_of_another_user_is_refused():
    with pytest.raises(UsageError, match=r"--remote-python '~bob/venv/bin/python': only ~/ .* is expanded"):
        SshTarget.parse("pi@board", python="~bob/venv/bin/python")
