"""Threshold profiles: named floors for the traffic scenarios, each with the
conditions under which its numbers mean anything."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.image import REPO_ROOT

DEFAULT_FILE = REPO_ROOT / "profiles" / "thresholds.toml"
_TEXT = ("description", "hardware")
_CONDITIONS = {"accel": str, "vhost": bool, "guest_os": str, "engine": str}
_FLOORS = ("tx_mpps", "rx_mpps")
METRIC_FOR = {"guest_tx": "tx_mpps", "guest_rx": "rx_mpps"}


@dataclass(frozen=True)
class Profile:
    name: str
    floors: dict[str, float]
    conditions: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    hardware: str = ""

    def mismatches(self, run: dict[str, Any]) -> list[str]:
        """The conditions `run` does not meet, said plainly."""
        return [f"{key} is {run.get(key)!r}, the profile is for {want!r}"
                for key, want in self.conditions.items() if run.get(key) != want]


@dataclass(frozen=True)
class Verdict:
    """What the threshold check decided: `applied` False means skipped."""

    profile: str
    metric: str
    min: float | None
    applied: bool
    reason: str

    def as_record(self) -> dict[str, Any]:
        return {"profile": self.profile, "metric": self.metric, "min": self.min,
                "applied": self.applied, "reason": self.reason}


def load(path: Path | None = None) -> dict[str, Profile]:
    path = path or DEFAULT_FILE
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read thresholds file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"thresholds file {path} is not valid TOML: {exc}") from None
    profiles = {}
    for name, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {name!r} must be a table ([{name}])")
        profiles[name] = _profile(path, name, table)
    return profiles


def _profile(path: Path, name: str, table: dict[str, Any]) -> Profile:
    floors: dict[str, float] = {}
    conditions: dict[str, Any] = {}
    text: dict[str, str] = {}
    for key, value in table.items():
        where = f"{path}: [{name}] {key}"
        if key in _FLOORS:
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"{where} must be a positive number of Mpps, not {value!r}")
            floors[key] = float(value)
        elif key in _CONDITIONS:
            if not isinstance(value, _CONDITIONS[key]):
                raise ConfigError(f"{where} must be a {_CONDITIONS[key].__name__}, not {value!r}")
            conditions[key] = value
        elif key in _TEXT:
            if not isinstance(value, str):
                raise ConfigError(f"{where} must be text, not {value!r}")
            text[key] = value
        else:
            known = ", ".join((*_FLOORS, *_CONDITIONS, *_TEXT))
            raise ConfigError(f"{path}: [{name}] has unknown key {key!r}", hint=f"known keys: {known}")
    if not floors:
        raise ConfigError(f"{path}: [{name}] sets neither tx_mpps nor rx_mpps")
    return Profile(name, floors, conditions, **text)


def select(profiles: dict[str, Profile], name: str, run: dict[str, Any]) -> Profile | None:
    """The named profile, or with "auto" the first whose conditions the run meets."""
    if name == "auto":
        return next((p for p in profiles.values() if not p.mismatches(run)), None)
    if name not in profiles:
        raise ConfigError(f"unknown threshold profile {name!r}", hint=f"profiles are: {', '.join(profiles)}, auto")
    return profiles[name]


def decide(scenario: str, run: dict[str, Any], *, profile_name: str = "auto", path: Path | None = None,
           mpps_min: float | None = None) -> Verdict:
    """Which floor applies to `scenario` on `run` (keys: accel, vhost,
    guest_os, engine), and why; --mpps-min wins over any profile."""
    metric = METRIC_FOR[scenario]
    if mpps_min is not None:
        return Verdict("--mpps-min", metric, mpps_min, True, f"--mpps-min {mpps_min} given")
    profiles = load(path)
    profile = select(profiles, profile_name, run)
    if profile is None:
        return Verdict("auto", metric, None, False,
                       "no threshold profile matches this run (" +
                       ", ".join(f"{k}={v!r}" for k, v in run.items()) + "); pass --profile or --mpps-min")
    if metric not in profile.floors:
        return Verdict(profile.name, metric, None, False, f"profile {profile.name!r} sets no {metric}")
    mismatches = profile.mismatches(run)
    if mismatches:
        return Verdict(profile.name, metric, profile.floors[metric], False,
                       f"profile {profile.name!r} does not apply to this run: " + "; ".join(mismatches))
    return Verdict(profile.name, metric, profile.floors[metric], True,
                   f"profile {profile.name!r}: {profile.description} ({profile.hardware})")
