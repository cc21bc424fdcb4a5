"""Measurement: warm-up, N trials of D seconds, two meters for every number.

Per trial the counters at both ends are read before the sender starts and
after the receiver's counters have stopped moving, never during the hot loop;
the generator reports its own count and its own time. Rates are computed over
the generator's interval, so "generator vs counters" compares counts measured
by independent meters over the same time. Nothing in Python touches packets.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.deadline import Deadline
from harness.errors import PhaseTimeout
from harness.host_tap import Counters
from harness.pktgen import Engine, EngineReport, Flow

log = logging.getLogger(__name__)

Meter = Callable[[], Counters]


@dataclass(frozen=True)
class Trial:
    """One trial's numbers. `sent`/`received` are the counters' packets at
    the sender's and receiver's interface; `offered` adds what the sender's
    interface dropped (the TAP, when the guest does not keep up)."""

    seconds: float
    generator_packets: int
    sent: int
    received: int
    sender_dropped: int
    receiver_dropped: int
    receiver_engine_packets: int | None
    wall_seconds: float

    @property
    def offered(self) -> int:
        return self.sent + self.sender_dropped

    def _mpps(self, packets: int) -> float:
        return packets / self.seconds / 1e6 if self.seconds > 0 else 0.0

    @property
    def generator_mpps(self) -> float:
        return self._mpps(self.generator_packets)

    @property
    def sender_counters_mpps(self) -> float:
        return self._mpps(self.sent)

    @property
    def receiver_counters_mpps(self) -> float:
        return self._mpps(self.received)

    def as_record(self) -> dict[str, Any]:
        return {**asdict(self), "offered": self.offered, "generator_mpps": self.generator_mpps,
                "sender_counters_mpps": self.sender_counters_mpps,
                "receiver_counters_mpps": self.receiver_counters_mpps}


@dataclass
class Measurement:
    trials: list[Trial]
    sender_side: str                # "guest" | "host"
    engines: dict[str, str]
    cpu_seconds_per_trial_second: float = 0.0
    other_cpu_share: float = 0.0    # the host's CPU capacity others used during the trials
    notes: list[str] = field(default_factory=list)

    def _series(self, name: str) -> list[float]:
        return [getattr(t, name) for t in self.trials]

    def median(self, name: str) -> float:
        return statistics.median(self._series(name))

    @property
    def mpps(self) -> dict[str, float]:
        return {"generator": self.median("generator_mpps"),
                "sender_counters": self.median("sender_counters_mpps"),
                "receiver_counters": self.median("receiver_counters_mpps")}

    def spread(self, name: str = "receiver_counters_mpps") -> dict[str, float]:
        values = self._series(name)
        mean = statistics.fmean(values)
        cv = statistics.pstdev(values) / mean if mean > 0 and len(values) > 1 else 0.0
        return {"min": min(values), "median": statistics.median(values), "max": max(values), "cv": cv}

    @property
    def loss(self) -> float:
        """Packets the sender's interface passed on that the receiver's did not count."""
        sent = sum(t.sent for t in self.trials)
        return (sent - sum(t.received for t in self.trials)) / sent if sent else 0.0

    def meter_disagreements(self, tolerance: float = 0.01) -> list[str]:
        """Trials where the generator and the counters at the same end do not
        agree within `tolerance`, in count or in rate over the same interval."""
        problems = []
        for index, t in enumerate(self.trials, 1):
            if abs(t.generator_packets - t.sent) > tolerance * max(t.sent, 1):
                problems.append(f"trial {index}: generator counted {t.generator_packets}, "
                                f"the sender's interface {t.sent}")
            if abs(t.generator_mpps - t.sender_counters_mpps) > tolerance * max(t.sender_counters_mpps, 1e-12):
                problems.append(f"trial {index}: generator {t.generator_mpps:.5f} Mpps, "
                                f"sender counters {t.sender_counters_mpps:.5f} Mpps")
        return problems

    def generator_vs_counters(self) -> float:
        """Largest relative gap, over the trials, between the generator's count
        and the counters at the same end."""
        return max(abs(t.generator_packets - t.sent) / max(t.sent, 1) for t in self.trials)

    @property
    def bottleneck(self) -> dict[str, Any]:
        offered = sum(t.offered for t in self.trials)
        dropped = sum(t.sender_dropped for t in self.trials)
        receiver_dropped = sum(t.receiver_dropped for t in self.trials)
        receiver = "host" if self.sender_side == "guest" else "guest"
        if offered and dropped / offered > 0.01:
            share = dropped / offered
            return {"side": f"receiver ({receiver})", "lower_bound": False,
                    "detail": f"the sender offered {offered} packets and its interface dropped {dropped} "
                              f"({share:.1%}) because the {receiver} did not take them"}
        if receiver_dropped and receiver_dropped / max(offered, 1) > 0.01:
            return {"side": f"receiver ({receiver})", "lower_bound": False,
                    "detail": f"the receiving interface dropped {receiver_dropped} packets"}
        return {"side": f"sender ({self.sender_side})", "lower_bound": self.sender_side == "host",
                "detail": f"the {receiver} took everything the {self.sender_side} sent: the rate is what the "
                          f"sender reached" + (", a lower bound of what the guest can receive"
                                               if self.sender_side == "host" else "")}


def settle(meter: Meter, deadline: Deadline, field_name: str, quiet: float = 0.3) -> Counters:
    """Read `meter` until `field_name` stops changing for `quiet` seconds
    (packets still in flight at the end of a trial are counted)."""
    last = meter()
    still_since = time.monotonic()
    while time.monotonic() - still_since < quiet:
        if deadline.expired:
            raise deadline.timeout(f"counters still moving ({field_name})")
        time.sleep(0.1)
        current = meter()
        if getattr(current, field_name) != getattr(last, field_name):
            still_since = time.monotonic()
        last = current
    return last


def run_trial(sender: Engine, receiver: Engine | None, flow: Flow, *, seconds: float,
              sender_meter: Meter, receiver_meter: Meter, sender_field: str, receiver_field: str,
              deadline: Deadline, alive: Callable[[], None]) -> Trial:
    """One trial: counters, start receiver then sender, D seconds, stop,
    counters. Whatever step inside times out, the trial is the phase named."""
    try:
        return _trial(sender, receiver, flow, seconds=seconds, sender_meter=sender_meter,
                      receiver_meter=receiver_meter, sender_field=sender_field, receiver_field=receiver_field,
                      deadline=deadline, alive=alive)
    except PhaseTimeout as exc:
        if exc.phase == deadline.phase:
            raise
        raise PhaseTimeout(deadline.phase, deadline.seconds, f"{exc.phase}: {exc.detail}",
                           diagnosis=exc.diagnosis) from exc


def _trial(sender: Engine, receiver: Engine | None, flow: Flow, *, seconds: float,
           sender_meter: Meter, receiver_meter: Meter, sender_field: str, receiver_field: str,
           deadline: Deadline, alive: Callable[[], None]) -> Trial:
    s0, r0 = sender_meter(), receiver_meter()
    wall_start = time.monotonic()
    if receiver is not None:
        receiver.start(flow, deadline)
    sender.start(flow, deadline)
    window = Deadline(seconds, "trial window")
    while not window.expired:  # the measurement window itself; the guest is watched meanwhile
        alive()
        time.sleep(min(0.2, window.remaining()))
    report: EngineReport = sender.stop(deadline)
    r1 = settle(receiver_meter, deadline, receiver_field)
    received_report = receiver.stop(deadline) if receiver is not None else None
    s1 = sender_meter()
    wall = time.monotonic() - wall_start
    ds, dr = s1 - s0, r1 - r0
    sender_dir = sender_field.split("_")[0]
    receiver_dir = receiver_field.split("_")[0]
    return Trial(seconds=report.seconds, generator_packets=report.packets,
                 sent=getattr(ds, sender_field), received=getattr(dr, receiver_field),
                 sender_dropped=getattr(ds, f"{sender_dir}_dropped"),
                 receiver_dropped=getattr(dr, f"{receiver_dir}_dropped"),
                 receiver_engine_packets=received_report.packets if received_report else None,
                 wall_seconds=wall)
