"""Leases: a record of every host resource a run creates, so that a run that
crashed (SIGKILL, power cut of the harness process) is cleaned up by the next.

A lease is written *before* the resource is created and removed after it is
gone. It names its owner by pid and process start time (so a reused pid is not
mistaken for the owner). `sweep()` undoes every lease whose owner is dead.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

NETNS_PREFIX = "hns-"


def state_dir() -> Path:
    return Path(os.environ.get("HARNESS_STATE_DIR", "/run/harness/leases"))


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` in clock ticks, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Field 22, counted after the ')' that ends the command name.
    return int(stat.rsplit(")", 1)[1].split()[19])


def alive(pid: int, start_time: int | None) -> bool:
    current = process_start_time(pid)
    return current is not None and (start_time is None or current == start_time)


@dataclass
class Lease:
    kind: str
    name: str
    data: dict[str, object] = field(default_factory=dict)
    owner_pid: int = field(default_factory=os.getpid)
    owner_start: int | None = None

    @property
    def path(self) -> Path:
        return state_dir() / f"{self.kind}--{self.name}.json"

    def write(self) -> None:
        if self.owner_start is None:
            self.owner_start = process_start_time(self.owner_pid)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__))
        tmp.replace(self.path)

    def update(self, **data: object) -> None:
        self.data.update(data)
        self.write()

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def take(kind: str, name: str, **data: object) -> Lease:
    lease = Lease(kind, name, dict(data))
    lease.write()
    return lease


def _undo_netns(lease: Lease) -> None:
    from pyroute2 import netns

    if lease.name in netns.listnetns():
        netns.remove(lease.name)


def _undo_process(lease: Lease) -> None:
    pid = int(lease.data.get("pid", 0))  # type: ignore[call-overload]
    start = lease.data.get("start_time")
    if not pid or not alive(pid, start):  # type: ignore[arg-type]
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while alive(pid, start) and time.monotonic() < deadline:  # type: ignore[arg-type]
        time.sleep(0.02)


def _undo_file(lease: Lease) -> None:
    path = Path(str(lease.data["path"]))
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


UNDO = {"netns": _undo_netns, "process": _undo_process, "file": _undo_file}


def _load(path: Path) -> Lease | None:
    try:
        raw = json.loads(path.read_text())
        return Lease(raw["kind"], raw["name"], raw.get("data", {}),
                     raw["owner_pid"], raw.get("owner_start"))
    except (OSError, ValueError, KeyError):
        return None


def sweep() -> list[str]:
    """Undo the resources of every lease whose owner is gone, and remove
    namespaces with our prefix that no lease explains. Returns what was removed."""
    directory = state_dir()
    directory.mkdir(parents=True, exist_ok=True)
    removed: list[str] = []
    with open(directory / ".sweep.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        leased_netns = set()
        # Processes first: a QEMU holds TAP fds and overlay files open.
        paths = sorted(directory.glob("*.json"), key=lambda p: (not p.name.startswith("process--"), p.name))
        for path in paths:
            lease = _load(path)
            if lease is None:
                path.unlink(missing_ok=True)
                continue
            if lease.kind == "netns":
                leased_netns.add(lease.name)
            if alive(lease.owner_pid, lease.owner_start):
                continue
            try:
                UNDO[lease.kind](lease)
            except Exception as exc:  # keep sweeping the rest
                log.warning("could not undo leftover %s %s: %s", lease.kind, lease.name, exc)
                continue
            path.unlink(missing_ok=True)
            removed.append(f"{lease.kind} {lease.name}")
            leased_netns.discard(lease.name)
        from pyroute2 import netns

        for name in netns.listnetns():
            # A lease is written before its namespace is made, so one that
            # appeared since the listing above is not an orphan.
            if (name.startswith(NETNS_PREFIX) and name not in leased_netns
                    and not Lease("netns", name).path.exists()):
                netns.remove(name)
                removed.append(f"netns {name} (no lease)")
    for item in removed:
        log.info("removed leftover of an earlier run: %s", item)
    return removed


def held_by(pid: int) -> list[str]:
    """Leases `pid` still holds: resources it made and has not yet released."""
    held = []
    for path in sorted(state_dir().glob("*.json")):
        lease = _load(path)
        if lease is not None and lease.owner_pid == pid:
            held.append(f"{lease.kind} {lease.name}")
    return held
