"""The user's own boards: `devices.toml`, so `edgepack bench ARTIFACT --device mypi` works.

Found at --inventory PATH, else $EDGEPACK_DEVICES, else $XDG_CONFIG_HOME/edgepack/devices.toml
(default ~/.config/edgepack/devices.toml). One table per board; unknown keys are errors:

    [devices.mypi]
    ssh = "pi@192.168.1.20"        # user@host[:port] or an alias from ~/.ssh/config
    profile = "rpi4"               # a device profile (`edgepack devices`)
    python = "/home/pi/venv/bin/python"   # optional, default python3
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import tomllib

from edgepack.errors import UsageError

INVENTORY_ENV = "EDGEPACK_DEVICES"


@dataclass(frozen=True)
class Board:
    name: str
    ssh: str
    profile: str
    python: str = "python3"

    def __post_init__(self) -> None:
        from edgepack.devices import list_profiles

        if self.profile not in list_profiles():
            raise UsageError(f"board {self.name!r}: profile {self.profile!r} is not a device profile; "
                             f"known: {', '.join(list_profiles())}")


def inventory_path(explicit: Path | None = None) -> Path:
    if explicit is not None:
        return Path(explicit)
    if os.environ.get(INVENTORY_ENV):
        return Path(os.environ[INVENTORY_ENV])
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "edgepack" / "devices.toml"


def load_inventory(path: Path) -> dict[str, Board]:
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f'no device inventory at {path}; write one there ([devices.mypi] ssh = "pi@192.168.1.20" '
                         f'profile = "rpi4") or pass --inventory PATH / set ${INVENTORY_ENV}') from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the device inventory: {exc}") from None
    extra = sorted(set(data) - {"devices"})
    if extra or not isinstance(data.get("devices"), dict):
        raise UsageError(f"{path}: expected only [devices.NAME] tables; found {extra or 'no [devices] table'}")
    boards = {}
    allowed = {"ssh", "profile", "python"}
    for name, entry in data["devices"].items():
        if not isinstance(entry, dict):
            raise UsageError(f"{path}: devices.{name} must be a table with ssh and profile")
        unknown, missing = sorted(set(entry) - allowed), sorted({"ssh", "profile"} - set(entry))
        if unknown or missing:
            raise UsageError(f"{path}: devices.{name}: " + "; ".join(
                filter(None, [unknown and f"unknown key(s) {unknown}", missing and f"missing {missing}"]))
                + f"; allowed: {', '.join(sorted(allowed))}")
        if not all(isinstance(v, str) for v in entry.values()):
            raise UsageError(f"{path}: devices.{name}: ssh, profile and python are strings")
        boards[name] = Board(name=name, **entry)
    return boards


def find_board(name: str, inventory: Path | None = None) -> Board:
    path = inventory_path(inventory)
    boards = load_inventory(path)
    if name not in boards:
        raise UsageError(f"device {name!r} is not in {path}; boards there: {', '.join(boards) or 'none'}")
    return boards[name]
