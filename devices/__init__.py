"""Device profiles: TOML data under `profiles/`, validated into frozen dataclasses.

A profile is data, not a code path: the pipeline and the estimator (`estimate.py`) read its fields.
The schema rejects unknown keys, names missing ones and checks every value's type, so a typo in a
profile is an error, never a silently ignored setting. Hardware facts (clocks, ISA features,
FLOP/cycle, caches, DRAM bandwidth) come from ../shared/reference/arm-cores.csv and its sources;
each profile's `sources` says which row and what was assumed."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from importlib import resources
from typing import Any

import tomllib

from edgepack.errors import UsageError

PRECISIONS = ("fp32", "fp16", "int8", "int8-weights")
RUNTIMES = ("onnxruntime", "litert", "ncnn")


@dataclass(frozen=True)
class CoreCluster:
    """One kind of core on the SoC (a big.LITTLE SoC has two clusters)."""

    core: str  # e.g. "Cortex-A72"
    count: int
    clock_ghz: float
    fp16_arith: bool  # ARMv8.2 FP16 vector arithmetic (asimdhp)
    int8_dotprod: bool  # SDOT/UDOT (asimddp)
    simd_bits: int
    fp32_flop_per_cycle: float  # per core, FMA counted as 2
    fp16_flop_per_cycle: float  # 0 when the core has no fp16 arithmetic
    l1d_kb: int
    l2_kb: int
    l2_shared: bool  # one L2 for the cluster (A53/A57/A72) or one per core (A76)
    in_order: bool

    def __post_init__(self) -> None:
        if self.count < 1 or self.clock_ghz <= 0 or self.fp32_flop_per_cycle <= 0:
            raise UsageError(f"core cluster {self.core!r}: count, clock_ghz and fp32_flop_per_cycle must be > 0")
        if self.fp16_arith != (self.fp16_flop_per_cycle > 0):
            raise UsageError(f"core cluster {self.core!r}: fp16_arith = {self.fp16_arith} but fp16_flop_per_cycle = "
                             f"{self.fp16_flop_per_cycle}; set fp16_flop_per_cycle > 0 exactly when the core has fp16 arithmetic")


@dataclass(frozen=True)
class MemorySystem:
    l3_kb: int  # shared last-level cache besides L2 (0 = none)
    dram_gbs: float  # measured single-thread copy bandwidth (STREAM / tinymembench), GB/s
    dram_thread_scaling: float  # aggregate bandwidth with all cores / single-thread bandwidth (>= 1)
    ram_mb: int  # memory budget for one model (board RAM minus OS), MB
    storage_mb: int  # storage budget for the artifact, MB

    def __post_init__(self) -> None:
        if self.dram_gbs <= 0 or self.dram_thread_scaling < 1 or self.ram_mb < 1 or self.storage_mb < 1:
            raise UsageError("memory: dram_gbs > 0, dram_thread_scaling >= 1, ram_mb and storage_mb >= 1 are required")


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
    clusters: tuple[CoreCluster, ...]  # fastest first: the estimator runs threads on the first cluster's cores
    memory: MemorySystem
    sources: str

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
        if not self.clusters:
            raise UsageError(f"device profile {self.name!r}: at least one [[clusters]] table is required")
        if sum(c.count for c in self.clusters) != self.cores:
            raise UsageError(f"device profile {self.name!r}: cores = {self.cores} but the clusters hold "
                             f"{sum(c.count for c in self.clusters)} cores")

    @property
    def big(self) -> CoreCluster:
        """The cluster the runtime's threads run on (the first one: fastest)."""
        return self.clusters[0]

    def has_fast(self, precision: str) -> bool:
        """Whether `precision` runs faster than fp32 on the big cores (fp16 needs fp16 arithmetic)."""
        if precision == "fp16":
            return self.big.fp16_arith
        return True

    @property
    def arch(self) -> str | None:
        """'arm' for Cortex cores, 'x86' for x86-64 ones, None when the profile does not say (it fits any)."""
        core = self.big.core.lower()
        if core.startswith(("cortex-", "neoverse", "kryo", "carmel")):
            return "arm"
        return "x86" if core.startswith(("x86", "amd64")) else None

    def arch_mismatch(self, platform: str) -> str | None:
        """Why a machine reporting `platform` (platform.system()-platform.machine(), e.g. Linux-x86_64)
        cannot be a board of this profile, or None when it can."""
        machine = platform.rsplit("-", 1)[-1].lower()
        found = "arm" if machine.startswith(("aarch64", "arm")) else "x86" if machine in ("x86_64", "amd64", "i686", "i386") else None
        if self.arch is None or found is None or found == self.arch:
            return None
        return (f"the board reports {platform}, but profile {self.name!r} is an {self.arch.upper()} board ({self.cpu}): "
                f"its figures are not {self.name}'s; fix the board's ssh address or its profile in devices.toml")

    @classmethod
    def from_mapping(cls, data: dict[str, Any], source: str) -> DeviceProfile:
        return _build(cls, data, source)


def _build(cls: type, data: Any, source: str, path: str = "") -> Any:
    """Build frozen dataclass `cls` from TOML data: unknown and missing keys and wrong types are
    errors naming the file and the key's place (`rpi4.toml: clusters[0].clock_ghz`)."""
    where = f"{source}: {path}" if path else source
    if not isinstance(data, dict):
        raise UsageError(f"device profile {where} must be a table, found {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(fields))
    missing = sorted(set(fields) - set(data))
    if unknown:
        raise UsageError(f"device profile {where}: unknown key(s) {unknown}; allowed keys: {sorted(fields)}")
    if missing:
        raise UsageError(f"device profile {where}: missing key(s) {missing}")
    prefix = f"{path}." if path else ""
    return cls(**{name: _convert(hints[name], data[name], source, prefix + name) for name in fields})


def _convert(hint: Any, value: Any, source: str, path: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, source, path)
    if typing.get_origin(hint) is tuple:
        (item,) = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if not isinstance(value, list):
            raise UsageError(f"device profile {source}: {path} must be a list, found {type(value).__name__} {value!r}")
        return tuple(_convert(item, v, source, f"{path}[{i}]") for i, v in enumerate(value))
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[hint]
    if not ok:
        raise UsageError(f"device profile {source}: {path} must be {hint.__name__}, found {type(value).__name__} {value!r}")
    return float(value) if hint is float else value


def _profile_files() -> dict[str, Any]:
    folder = resources.files("edgepack.devices") / "profiles"
    return {p.name[: -len(".toml")]: p for p in folder.iterdir() if p.name.endswith(".toml")}


def list_profiles() -> list[str]:
    return sorted(_profile_files())


def load_profile(name: str) -> DeviceProfile:
    files = _profile_files()
    if name not in files:
        raise UsageError(f"unknown target {name!r}; known targets: {', '.join(sorted(files))} (see `edgepack devices`)")
    try:
        data = tomllib.loads(files[name].read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"device profile {name}.toml is not valid TOML: {exc}") from None
    profile = DeviceProfile.from_mapping(data, f"{name}.toml")
    if profile.name != name:
        raise UsageError(f"device profile {name}.toml declares name {profile.name!r}; the file name and `name` must agree")
    return profile
