"""Packaging: every Python package folder is installed under the edgepack namespace (an editable
install hides a package missing from pyproject's explicit list; a wheel would not have it)."""
from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed_and_mapped():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, mapping = set(config["packages"]), config["package-dir"]
    found = {}
    for top, namespace in (("edgepack", "edgepack"), ("converters", "edgepack.converters"),
                           ("runtimes", "edgepack.runtimes"), ("devices", "edgepack.devices")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top)
            found[".".join([namespace, *rel.parts])] = init.parent.relative_to(ROOT).as_posix()
    missing = sorted(set(found) - listed)
    assert not missing, f"packages not listed in pyproject.toml: {missing}"
    for name, folder in found.items():
        assert mapping.get(name, folder) == folder, f"{name} maps to {mapping.get(name)}, expected {folder}"
    assert "edgepack.devices.profiles" in listed  # the TOML profiles ship as package data
    assert not any(n.split(".")[0] != "edgepack" for n in listed)  # nothing generic in site-packages
