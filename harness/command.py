"""What running a command in the guest gives back, whatever the channel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from harness.deadline import Deadline
from harness.errors import CommandError


@dataclass(frozen=True)
class CommandResult:
    command: str
    status: int
    output: str
    where: str = "guest"
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == 0

    def check(self) -> CommandResult:
        if self.status != 0:
            raise CommandError(self.command, self.status, self.output, self.where)
        return self


class Runner(Protocol):
    """Anything that runs a shell command in the guest: the console or SSH."""

    def run(self, command: str, timeout: float = 30.0, *, check: bool = False) -> CommandResult: ...


class Background(Protocol):
    """A program running in the background on either end (an SSH channel with
    a pty in the guest, a process group in the host namespace)."""

    @property
    def output(self) -> str: ...

    @property
    def done(self) -> bool: ...

    def interrupt(self) -> None: ...

    def wait(self, deadline: Deadline) -> CommandResult: ...

    def close(self) -> None: ...
