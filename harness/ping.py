"""Parsing iputils `ping` summaries."""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.errors import HarnessError

_COUNTS = re.compile(r"(?P<tx>\d+) packets transmitted, (?P<rx>\d+) (?:packets )?received"
                     r"(?:, \+(?P<err>\d+) errors)?(?:, \+(?P<dup>\d+) duplicates)?, (?P<loss>[\d.]+)% packet loss")
_RTT = re.compile(r"(?:rtt|round-trip) min/avg/max/(?:mdev|stddev) = "
                  r"(?P<min>[\d.]+)/(?P<avg>[\d.]+)/(?P<max>[\d.]+)/(?P<mdev>[\d.]+) ms")


@dataclass(frozen=True)
class PingStats:
    transmitted: int
    received: int
    loss_percent: float
    rtt_min_ms: float | None
    rtt_avg_ms: float | None
    rtt_max_ms: float | None
    rtt_mdev_ms: float | None


def parse_ping(text: str) -> PingStats:
    counts = _COUNTS.search(text)
    if counts is None:
        raise HarnessError(f"no ping summary in: {text[-300:]!r}")
    rtt = _RTT.search(text)
    values = [float(rtt[k]) for k in ("min", "avg", "max", "mdev")] if rtt else [None] * 4
    return PingStats(int(counts["tx"]), int(counts["rx"]), float(counts["loss"]), *values)
