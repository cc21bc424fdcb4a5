"""Deadlines: one per operation, passed down, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from harness.errors import PhaseTimeout

T = TypeVar("T")


class Deadline:
    """A point in time by which phase `phase` must be done."""

    def __init__(self, seconds: float, phase: str) -> None:
        self.seconds = seconds
        self.phase = phase
        self.start = time.monotonic()
        self.end = self.start + seconds

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.end

    def timeout(self, detail: str = "", **diagnosis: object) -> PhaseTimeout:
        return PhaseTimeout(self.phase, self.seconds, detail, diagnosis=diagnosis)

    def child(self, seconds: float, phase: str) -> Deadline:
        """A sub-deadline that never outlives this one."""
        return Deadline(min(seconds, self.remaining()), phase)

    def wait_for(self, condition: Callable[[], T | None], what: str,
                 interval: float = 0.05) -> T:
        """Poll `condition` until it returns something truthy; raise PhaseTimeout
        naming `what` when the deadline passes first."""
        while True:
            value = condition()
            if value:
                return value
            if self.expired:
                raise self.timeout(f"waiting for {what}")
            time.sleep(min(interval, self.remaining()))
