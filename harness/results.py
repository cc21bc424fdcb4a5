"""Result records: one JSON file per scenario run in the run directory, and
the same record appended to a SQLite results store (WAL, raw trials kept).

The record keys are a contract (README, "Result records"): the nightly report
and other tools rely on them. Bump SCHEMA when a key changes meaning.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.errors import ConfigError

SCHEMA = 1
VERDICTS = ("pass", "fail", "skip")
REQUIRED_KEYS = ("schema", "run_id", "started_at", "testbed", "scenario", "verdict", "engines",
                 "frame_bytes", "queues", "trials", "mpps", "loss", "bottleneck", "threshold", "provenance")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Metric:
    """One number a scenario reports, with its unit and which way is better."""

    name: str
    unit: str
    direction: str          # "higher" or "lower" is better
    value: float | None
    trials: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.direction not in ("higher", "lower"):
            raise ValueError(f"metric direction must be higher or lower, not {self.direction!r}")


@dataclass
class Record:
    """A scenario run. Fill it as the scenario goes; `finish()` stamps it."""

    run_id: str
    scenario: str
    testbed: str
    session_id: str = ""
    started_at: str = field(default_factory=utc_now)
    finished_at: str | None = None
    verdict: str = "fail"     # until the scenario says otherwise
    reason: str | None = None
    guest_os: str | None = None
    accel: str | None = None
    vhost: bool | None = None
    engines: dict[str, str] = field(default_factory=dict)
    frame_bytes: int | None = None
    queues: int = 1
    trials: list[dict[str, Any]] = field(default_factory=list)
    mpps: dict[str, float] | None = None
    loss: float | None = None
    bottleneck: dict[str, Any] | None = None
    threshold: dict[str, Any] | None = None
    metrics: list[Metric] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA

    def finish(self, verdict: str, reason: str | None = None) -> None:
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, not {verdict!r}")
        self.verdict = verdict
        self.reason = reason
        self.finished_at = utc_now()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def config_key(self) -> str:
        """The configuration a series is kept per (never mixed across these)."""
        return config_key(self.to_dict())


def config_key(record: dict[str, Any]) -> str:
    engines = record.get("engines") or {}
    parts = [record.get("scenario"), record.get("guest_os"),
             f"{engines.get('sender', '?')}->{engines.get('receiver', '?')}",
             f"{record.get('frame_bytes')}B", f"q{record.get('queues')}", record.get("accel"),
             "vhost" if record.get("vhost") else "novhost"]
    return "/".join(str(p) for p in parts)


def validate(record: dict[str, Any], source: str = "record") -> dict[str, Any]:
    """Check a record read from elsewhere has the contract's keys."""
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise ConfigError(f"{source}: not a harness result record, missing {', '.join(missing)}")
    if record["verdict"] not in VERDICTS:
        raise ConfigError(f"{source}: verdict {record['verdict']!r} is not one of {', '.join(VERDICTS)}")
    if not isinstance(record["schema"], int) or record["schema"] > SCHEMA:
        raise ConfigError(f"{source}: schema {record['schema']!r} is newer than this harness ({SCHEMA})")
    return record


def write_json(record: Record, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{record.run_id}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record.to_dict(), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def read_json_dir(directory: Path) -> Iterator[dict[str, Any]]:
    for path in sorted(directory.rglob("*.json")):
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from None
        if isinstance(data, dict) and "run_id" in data and "scenario" in data:
            yield validate(data, str(path))


_DDL = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    testbed TEXT NOT NULL,
    scenario TEXT NOT NULL,
    config_key TEXT NOT NULL,
    verdict TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_series ON runs (testbed, config_key, started_at);
CREATE TABLE IF NOT EXISTS trials (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    idx INTEGER NOT NULL,
    trial TEXT NOT NULL,
    PRIMARY KEY (run_id, idx)
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    name TEXT NOT NULL,
    unit TEXT NOT NULL,
    direction TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, name)
);
"""


class ResultStore:
    """SQLite results store. Several processes may append at once (WAL, busy
    timeout); a run id is stored once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=30)
        # Several runs may open a new store at the same moment; the schema
        # set-up then meets a lock now and again: retry it for a while.
        for attempt in range(50):
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.executescript(_DDL)
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 49:
                    raise
                time.sleep(0.1)

    def add(self, record: Record | dict[str, Any]) -> bool:
        """Store `record`; False if its run id was already there."""
        data = record.to_dict() if isinstance(record, Record) else validate(record)
        with self._db:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?)",
                (data["run_id"], data["started_at"], data["testbed"], data["scenario"],
                 config_key(data), data["verdict"], json.dumps(data, sort_keys=True)))
            if cur.rowcount == 0:
                return False
            self._db.executemany("INSERT INTO trials VALUES (?, ?, ?)",
                                 [(data["run_id"], i, json.dumps(t)) for i, t in enumerate(data["trials"])])
            self._db.executemany(
                "INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?)",
                [(data["run_id"], m["name"], m["unit"], m["direction"], m["value"])
                 for m in data.get("metrics", [])])
        return True

    def records(self) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT record FROM runs ORDER BY started_at, run_id").fetchall()
        return [json.loads(r[0]) for r in rows]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def add_all(store: ResultStore, records: Iterable[dict[str, Any]]) -> int:
    return sum(store.add(r) for r in records)


def git_sha(repo: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = out.stdout.strip() or "unknown"
    return f"{sha}-dirty" if dirty and sha != "unknown" else sha


def cpu_governor() -> str:
    try:
        return Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    except OSError:
        return "none (no cpufreq)"


