"""Device profiles: TOML data under `profiles/`, validated into frozen dataclasses.

A profile is data, not a code path: the pipeline and (later) the estimators read its fields. The
schema rejects unknown keys and names missing ones, so a typo in a profile is an error, never a
silently ignored setting."""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from edgepack.errors import UsageError

PRECISIONS = ("fp32", "fp16", "int8", "int8-weights")
RUNTIMES = ("onnxruntime", "litert", "ncnn")


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    cpu: str
    cores: int
    default_runtime: str
    threads: int
    default_input_shape: tuple[int, ...]
    preferred_precisions: tuple[str, ...]
    round_channels: int

    def __post_init__(self) -> None:
        if self.default_runtime not in RUNTIMES:
            raise UsageError(
                f"device profile {self.name!r}: default_runtime {self.default_runtime!r} is not one of {', '.join(RUNTIMES)}"
            )
        bad = [p for p in self.preferred_precisions if p not in PRECISIONS]
        if bad:
            raise UsageError(f"device profile {self.name!r}: unknown precision(s) {bad}; allowed: {', '.join(PRECISIONS)}")
        if self.threads < 1 or self.cores < 1 or self.round_channels < 1:
            raise UsageError(f"device profile {self.name!r}: threads, cores and round_channels must be >= 1")
        if not self.default_input_shape or any(d < 1 for d in self.default_input_shape):
            raise UsageError(f"device profile {self.name!r}: default_input_shape must be positive dims")

    @classmethod
    def from_mapping(cls, data: dict[str, Any], source: str) -> "DeviceProfile":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        missing = sorted(fields - set(data))
        if unknown:
            raise UsageError(f"device profile {source}: unknown key(s) {unknown}; allowed keys: {sorted(fields)}")
        if missing:
            raise UsageError(f"device profile {source}: missing key(s) {missing}")
        values = dict(data)
        for key in ("default_input_shape", "preferred_precisions"):
            values[key] = tuple(values[key])
        return cls(**values)


def _profile_files() -> dict[str, Any]:
    folder = resources.files("edgepack.devices") / "profiles"
    return {p.name[: -len(".toml")]: p for p in folder.iterdir() if p.name.endswith(".toml")}


def list_profiles() -> list[str]:
    return sorted(_profile_files())


def load_profile(name: str) -> DeviceProfile:
    files = _profile_files()
    if name not in files:
        raise UsageError(f"unknown target {name!r}; known targets: {', '.join(sorted(files))} (see `edgepack devices`)")
    data = tomllib.loads(files[name].read_text())
    profile = DeviceProfile.from_mapping(data, f"{name}.toml")
    if profile.name != name:
        raise UsageError(f"device profile {name}.toml declares name {profile.name!r}; the file name and `name` must agree")
    return profile
