"""The resolved configuration of a run, from CLI options, pytest options or a
TOML file. Bad values get one clear error naming the key."""

from __future__ import annotations

import os
import socket
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from harness.accel import ACCELS, VHOST_MODES
from harness.errors import ConfigError


@dataclass(frozen=True)
class Timeouts:
    """Per-phase deadlines in seconds (TCG-friendly defaults)."""

    network_up: float = 30.0
    qemu_start: float = 20.0
    boot_to_console: float = 120.0
    login: float = 30.0
    ssh_ready: float = 60.0
    trial: float = 120.0
    transfer: float = 180.0
    teardown: float = 30.0


@dataclass(frozen=True)
class RunConfig:
    guest: str = "linux"
    image: Path | None = None
    accel: str = "auto"
    vhost: str = "auto"
    queues: int = 1
    vcpus: int = 2
    memory_mb: int = 1024
    run_dir: Path = Path("runs")
    keep_vm: bool = False
    show_qemu: bool = False
    testbed: str = field(default_factory=lambda: os.environ.get("HARNESS_TESTBED") or socket.gethostname())
    qemu: str = "qemu-system-x86_64"
    timeouts: Timeouts = field(default_factory=Timeouts)

    def __post_init__(self) -> None:
        if self.accel not in ACCELS:
            raise ConfigError(f"accel must be one of {', '.join(ACCELS)}, not {self.accel!r}")
        if self.vhost not in VHOST_MODES:
            raise ConfigError(f"vhost must be one of {', '.join(VHOST_MODES)}, not {self.vhost!r}")
        for name in ("queues", "vcpus"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a whole number of at least 1, not {value!r}",
                                  hint=f"use --{name} 1 or more")
        if not isinstance(self.memory_mb, int) or self.memory_mb < 128:
            raise ConfigError(f"memory_mb must be at least 128, not {self.memory_mb!r}")
        if not self.testbed or not isinstance(self.testbed, str):
            raise ConfigError(f"testbed must be a non-empty name, not {self.testbed!r}")

    def with_changes(self, **changes: Any) -> RunConfig:
        return replace(self, **changes)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], *, source: str = "config") -> RunConfig:
        """Build from plain values (a TOML table or CLI options), checking
        names and types; `timeouts` may be a table of per-phase seconds."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if value is None:
                continue
            if key not in known:
                raise ConfigError(f"{source}: unknown key {key!r}",
                                  hint=f"known keys: {', '.join(sorted(known))}")
            if key == "timeouts":
                values[key] = _timeouts(value, source)
            elif key in ("image", "run_dir"):
                values[key] = Path(value)
            else:
                default = getattr(cls(), key) if key != "testbed" else ""
                values[key] = _typed(key, value, type(default), source)
        return cls(**values)

    @classmethod
    def from_toml(cls, path: Path, overrides: dict[str, Any] | None = None) -> RunConfig:
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        table = data.get("run", {})
        return cls.from_mapping({**table, **(overrides or {})}, source=str(path))


def _typed(key: str, value: Any, kind: type, source: str) -> Any:
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{source}: {key} must be true or false, not {value!r}")
    if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
        try:
            return int(str(value), 10)
        except ValueError:
            raise ConfigError(f"{source}: {key} must be a whole number, not {value!r}") from None
    if kind is str and not isinstance(value, str):
        raise ConfigError(f"{source}: {key} must be a string, not {value!r}")
    return value


def _timeouts(value: Any, source: str) -> Timeouts:
    if isinstance(value, Timeouts):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: timeouts must be a table of phase = seconds")
    known = {f.name for f in fields(Timeouts)}
    for phase, seconds in value.items():
        if phase not in known:
            raise ConfigError(f"{source}: unknown timeout phase {phase!r}",
                              hint=f"known phases: {', '.join(sorted(known))}")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
            raise ConfigError(f"{source}: timeouts.{phase} must be a positive number of seconds, "
                              f"not {seconds!r}")
    return Timeouts(**{k: float(v) for k, v in value.items()})
