"""The harness's one small exception tree.

Every error carries a message for the user and, where one is known, a hint
that says what to do. Context (argv, log tails, phase, diagnosis) travels as
attributes so reports can attach it.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import Callable


class HarnessError(Exception):
    """Base of all harness errors."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  what to do: {self.hint}"
        return self.message


class ConfigError(HarnessError):
    """A bad option, config value, profile or input file."""


class PreconditionError(HarnessError):
    """The host lacks something the run needs (root, /dev/net/tun, QEMU, KVM...)."""


class ImageError(ConfigError):
    """A guest image is missing, corrupt, or of the wrong kind."""


class QEMUError(HarnessError):
    """QEMU failed to start or exited early."""

    def __init__(self, message: str, *, exit_code: int | None, argv: list[str],
                 log_tail: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.exit_code = exit_code
        self.argv = argv
        self.log_tail = log_tail

    def __str__(self) -> str:
        import shlex

        text = (f"{self.message} (exit code {self.exit_code})\n"
                f"  argv: {shlex.join(self.argv)}\n"
                f"  QEMU log tail:\n{_indent(self.log_tail)}")
        if self.hint:
            text += f"\n  what to do: {self.hint}"
        return text


class PhaseTimeout(HarnessError):
    """A phase did not finish before its deadline.

    `diagnosis` holds what was collected before anything was killed
    (console tail, QMP status, counters...), keyed by what it is.
    """

    def __init__(self, phase: str, seconds: float, detail: str = "", *,
                 diagnosis: dict[str, object] | None = None) -> None:
        message = f"phase '{phase}' timed out after {seconds:.1f} s"
        if detail:
            message += f": {detail}"
        super().__init__(message)
        self.phase = phase
        self.seconds = seconds
        self.detail = detail
        self.diagnosis: dict[str, object] = dict(diagnosis or {})

    def __str__(self) -> str:
        text = self.message
        for key, value in self.diagnosis.items():
            text += f"\n  {key}:\n{_indent(str(value))}"
        return text


class GuestPanic(HarnessError):
    """The guest kernel panicked (or oopsed, or fell into its debugger)."""

    def __init__(self, text: str, *, debugger_output: str = "") -> None:
        super().__init__("guest kernel panic detected on the console")
        self.text = text
        self.debugger_output = debugger_output

    def __str__(self) -> str:
        text = f"{self.message}:\n{_indent(self.text)}"
        if self.debugger_output:
            text += f"\n  debugger:\n{_indent(self.debugger_output)}"
        return text


class DiskFull(HarnessError):
    """The file system holding the run directory filled up during the run."""


class CommandError(HarnessError):
    """A command in the guest or on the host returned a non-zero status."""

    def __init__(self, command: str, status: int, output: str, where: str) -> None:
        super().__init__(f"{where}: command failed with status {status}: {command}")
        self.command = command
        self.status = status
        self.output = output

    def __str__(self) -> str:
        return f"{self.message}\n  output:\n{_indent(self.output[-4000:])}"


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.rstrip("\n").splitlines()) or prefix + "(empty)"


def treat_sigterm_as_interrupt() -> None:
    """From now on SIGTERM (CI cancelling a job, `kill`) gets the same orderly
    teardown as Ctrl-C in this process, so nothing is left behind.

    A child that a library forks from this process (pyroute2 does, to open
    sockets in a namespace) inherits the handler; there SIGTERM must end the
    child at once, never run this process's teardown a second time."""
    owner = os.getpid()

    def handler(signum: int, frame: object) -> None:
        if os.getpid() != owner:
            os._exit(128 + signum)
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def run_command(prog: str, body: Callable[[], int]) -> int:
    """Run a command line's body the harness's way: a HarnessError is one
    `<prog>: error: ...` line and exit 2, a full disk is said plainly, Ctrl-C
    (or SIGTERM, which the CLIs turn into one) is 130, a closed pipe is quiet."""
    try:
        return body()
    except HarnessError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `harness ... | head`
        return 0
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        print(f"{prog}: error: no space left on the device holding {exc.filename or 'the run directory'}\n"
              "  what to do: free space, or pass --run-dir on a larger file system", file=sys.stderr)
        return 2
