"""The resolved configuration of a run, from CLI options, pytest options or a
TOML file. Bad values get one clear error naming the key."""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from harness.accel import ACCELS, VHOST_MODES
from harness.errors import ConfigError


@dataclass(frozen=True)
class Timeouts:
    """Per-phase deadlines in seconds (TCG-friendly defaults)."""

    image: float = 300.0
    network_up: float = 30.0
    qemu_start: float = 20.0
    boot_to_console: float = 120.0
    login: float = 30.0
    ssh_ready: float = 60.0
    trial: float = 120.0
    transfer: float = 180.0
    teardown: float = 30.0


# -- value parsers: (key, value) -> value, raising ConfigError naming the key --
def _int_at_least(low: int) -> Callable[[str, Any], int]:
    def parse(key: str, value: Any) -> int:
        if isinstance(value, str):
            try:
                value = int(value, 10)
            except ValueError:
                raise ConfigError(f"{key} must be a whole number, not {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{key} must be a whole number of at least {low}, not {value!r}",
                              hint=f"use --{key.replace('_', '-')} {low} or more")
        return value
    return parse


def _positive_float(key: str, value: Any) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else -1.0
    except (TypeError, ValueError):
        number = -1.0
    if number <= 0:
        raise ConfigError(f"{key} must be a positive number, not {value!r}")
    return number


def _optional_positive_float(key: str, value: Any) -> float | None:
    return None if value is None else _positive_float(key, value)


def _choice(*choices: str) -> Callable[[str, Any], str]:
    def parse(key: str, value: Any) -> str:
        if value not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(choices)}, not {value!r}")
        return str(value)
    return parse


def _name(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key} must be a non-empty name, not {value!r}")
    return value


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, not {value!r}")
    return value


def _path(key: str, value: Any) -> Path:
    if not isinstance(value, str | Path):
        raise ConfigError(f"{key} must be a path, not {value!r}")
    return Path(value)


def _optional_path(key: str, value: Any) -> Path | None:
    return None if value is None else _path(key, value)


def _frame_sizes(key: str, value: Any) -> tuple[int, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise ConfigError(f"{key} must be a list of frame sizes in bytes, not {value!r}")
    sizes = tuple(_int_at_least(60)(key, item.strip() if isinstance(item, str) else item) for item in items)
    if any(size > 9000 for size in sizes):
        raise ConfigError(f"{key} must be frame sizes of 60..9000 bytes, not {value!r}")
    return sizes


def _timeouts(key: str, value: Any) -> Timeouts:
    if isinstance(value, Timeouts):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be a table of phase = seconds")
    known = {f.name for f in fields(Timeouts)}
    for phase in value:
        if phase not in known:
            raise ConfigError(f"unknown timeout phase {phase!r}", hint=f"known phases: {', '.join(sorted(known))}")
    return Timeouts(**{phase: _positive_float(f"timeouts.{phase}", s) for phase, s in value.items()})


def _opt(default: Any, parse: Callable[[str, Any], Any], **kw: Any) -> Any:
    if callable(default):
        return field(default_factory=default, metadata={"parse": parse}, **kw)
    return field(default=default, metadata={"parse": parse}, **kw)


def _default_testbed() -> str:
    return os.environ.get("HARNESS_TESTBED") or socket.gethostname()


@dataclass(frozen=True)
class RunConfig:
    guest: str = _opt("linux", _name)
    image: Path | None = _opt(None, _optional_path)
    accel: str = _opt("auto", _choice(*ACCELS))
    vhost: str = _opt("auto", _choice(*VHOST_MODES))
    queues: int = _opt(1, _int_at_least(1))
    vcpus: int = _opt(2, _int_at_least(1))
    memory_mb: int = _opt(1024, _int_at_least(128))
    run_dir: Path = _opt(Path("runs"), _path)
    keep_vm: bool = _opt(False, _bool)
    show_qemu: bool = _opt(False, _bool)
    testbed: str = _opt(_default_testbed, _name)
    qemu: str = _opt("qemu-system-x86_64", _name)
    # A netmap build for a Linux guest: netmap.ko, optionally virtio_net.ko, pkt-gen, bridge.
    guest_netmap: Path | None = _opt(None, _optional_path)
    # traffic scenarios
    frame_sizes: tuple[int, ...] = _opt((60,), _frame_sizes)
    trials: int = _opt(3, _int_at_least(1))
    trial_seconds: float = _opt(4.0, _positive_float)
    warmup_seconds: float = _opt(1.0, _positive_float)
    profile: str = _opt("auto", _name)
    thresholds: Path | None = _opt(None, _optional_path)
    mpps_min: float | None = _opt(None, _optional_positive_float)
    share_cpus: bool = _opt(False, _bool)
    timeouts: Timeouts = _opt(Timeouts, _timeouts)

    def __post_init__(self) -> None:
        # Values given directly (not through from_mapping) are checked too.
        for f in fields(self):
            f.metadata["parse"](f.name, getattr(self, f.name))

    def with_changes(self, **changes: Any) -> RunConfig:
        return replace(self, **changes)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], *, source: str = "config") -> RunConfig:
        """Build from plain values (a TOML table or CLI options), checking
        names and types; None means "not given"."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if value is None:
                continue
            if key not in known:
                raise ConfigError(f"{source}: unknown key {key!r}", hint=f"known keys: {', '.join(sorted(known))}")
            try:
                values[key] = known[key].metadata["parse"](key, value)
            except ConfigError as exc:
                exc.message = f"{source}: {exc.message}"
                raise
        return cls(**values)

    @classmethod
    def from_toml(cls, path: Path, overrides: dict[str, Any] | None = None) -> RunConfig:
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        unknown = set(data) - {"run"}
        if unknown:
            raise ConfigError(f"{path}: unknown table(s) {', '.join(sorted(unknown))}", hint="use a [run] table")
        return cls.from_mapping({**data.get("run", {}), **(overrides or {})}, source=str(path))
