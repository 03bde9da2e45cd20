"""devices.toml: where it is looked for, what it may contain, and the --remote address forms."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgepack.commands.device_inventory import find_board, inventory_path, load_inventory
from edgepack.errors import UsageError
from edgepack.commands.remote import SshTarget

GOOD = """
[devices.mypi]
ssh = "pi@192.168.1.20:2222"
profile = "rpi4"

[devices.phone-lab]
ssh = "lab-phone"
profile = "android-mid"
python = "/data/venv/bin/python"
"""


def test_lookup_order(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEPACK_DEVICES", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert inventory_path() == tmp_path / "cfg" / "edgepack" / "devices.toml"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert inventory_path() == tmp_path / "home" / ".config" / "edgepack" / "devices.toml"
    monkeypatch.setenv("EDGEPACK_DEVICES", str(tmp_path / "env.toml"))
    assert inventory_path() == tmp_path / "env.toml"
    assert inventory_path(tmp_path / "flag.toml") == tmp_path / "flag.toml"  # --inventory wins


def test_boards_and_defaults(tmp_path):
    path = tmp_path / "devices.toml"
    path.write_text(GOOD)
    boards = load_inventory(path)
    assert sorted(boards) == ["mypi", "phone-lab"]
    assert (boards["mypi"].ssh, boards["mypi"].profile, boards["mypi"].python) == ("pi@192.168.1.20:2222", "rpi4", "python3")
    assert boards["phone-lab"].python == "/data/venv/bin/python"
    with pytest.raises(UsageError, match=r"device 'nope' is not in .*boards there: mypi, phone-lab"):
        find_board("nope", path)


@pytest.mark.parametrize("text, why", [
    ('[devices.a]\nssh = "h"\nprofile = "rpi4"\nthreads = 4\n', r"unknown key\(s\) \['threads'\]"),
    ('[devices.a]\nprofile = "rpi4"\n', r"missing \['ssh'\]"),
    ('[devices.a]\nssh = "h"\nprofile = "rpi9"\n', "profile 'rpi9' is not a device profile"),
    ('[boards.a]\nssh = "h"\n', "expected only \\[devices.NAME\\] tables"),
    ('[devices.a\n', "cannot read the device inventory"),
])
def test_bad_inventory_is_an_error(tmp_path, text, why):
    path = tmp_path / "devices.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=why):
        load_inventory(path)


def test_missing_inventory_says_where(tmp_path):
    with pytest.raises(UsageError, match=f"no device inventory at {tmp_path / 'x.toml'}"):
        load_inventory(Path(tmp_path / "x.toml"))


@pytest.mark.parametrize("address, destination, port", [
    ("pi@192.168.1.20", "pi@192.168.1.20", None), ("pi@192.168.1.20:2222", "pi@192.168.1.20", 2222),
    ("mypi", "mypi", None), ("root@[::1]:22", "root@::1", 22), ("[fe80::1]", "fe80::1", None),
])
def test_remote_address_forms(address, destination, port):
    t = SshTarget.parse(address)
    assert (t.destination, t.port, t.device) == (destination, port, address)
    assert ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"] == t.ssh_options()[:4]
    assert "StrictHostKeyChecking=accept-new" in SshTarget.parse(address, accept_new_host_key=True).ssh_options()


@pytest.mark.parametrize("address", ["", "-oProxyCommand=x", "pi@host:port", "a b"])
def test_bad_remote_address(address):
    with pytest.raises(UsageError):
        SshTarget.parse(address)
