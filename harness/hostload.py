"""How busy the host's CPUs were with work other than the run's own (QEMU,
the harness and the engines it started) during the measured trials. A rate
measured while something else held the CPUs says more about that than about
the datapath, and a failure should say so."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
# Above this share of the host's CPU capacity taken by others, a low rate is
# reported as possibly due to the load.
BUSY_SHARE = 0.25


def busy_seconds(stat: str) -> float:
    """CPU seconds all CPUs spent busy, from /proc/stat's `cpu` line (user,
    nice, system, irq, softirq, steal; guest time is already in user)."""
    fields = stat.split("\n", 1)[0].split()
    if not fields or fields[0] != "cpu":
        raise ValueError(f"not a /proc/stat cpu line: {stat[:60]!r}")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def process_seconds(stat: str) -> float:
    """utime + stime of all the process's threads, from /proc/PID/stat."""
    after_name = stat.rsplit(")", 1)[1].split()
    return (int(after_name[11]) + int(after_name[12])) / CLK_TCK  # fields 14 and 15


@dataclass
class _Sample:
    wall: float
    busy: float
    own: float


class OtherLoad:
    """Accumulates, over windows, the CPU time used by everything but the VM
    (`vm_seconds`: its CPU time so far, None once gone), this process and its
    reaped children."""

    def __init__(self, vm_seconds: Callable[[], float | None]) -> None:
        self.vm_seconds = vm_seconds
        self.wall = self.other = 0.0
        self._start: _Sample | None = None

    def _sample(self) -> _Sample:
        usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        own = sum(u.ru_utime + u.ru_stime for u in usage) + (self.vm_seconds() or 0.0)
        return _Sample(time.monotonic(), busy_seconds(Path("/proc/stat").read_text()), own)

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> None:
        assert self._start is not None, "stop() without start()"
        end = self._sample()
        self.wall += end.wall - self._start.wall
        self.other += max(0.0, (end.busy - self._start.busy) - (end.own - self._start.own))
        self._start = None

    @property
    def share(self) -> float:
        """Others' CPU time as a share of the host's capacity over the windows."""
        cpus = os.cpu_count() or 1
        return min(1.0, self.other / (self.wall * cpus)) if self.wall > 0 else 0.0



def busy_note(share: float) -> str:
    """A sentence for a failure message when others held `share` of the CPUs
    during the trials; empty below BUSY_SHARE."""
    if share < BUSY_SHARE:
        return ""
    return (f"the host was busy with other work during the trials ({share:.0%} of "
            f"{os.cpu_count()} CPUs), so this rate may reflect that rather than the datapath")
