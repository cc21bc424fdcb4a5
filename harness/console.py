"""The guest's serial console, driven with pexpect.

QEMU logs the console to console.log from its first byte (chardev logfile);
this class talks to the console socket. Commands are wrapped in random
start/end markers and their output is sent with its byte count, so output and
exit status are parsed exactly even when kernel messages land in between.
"""

from __future__ import annotations

import logging
import re
import secrets
import socket
import time
from pathlib import Path

import pexpect
from pexpect.fdpexpect import fdspawn

from harness.command import CommandResult
from harness.deadline import Deadline
from harness.errors import GuestPanic, HarnessError, PhaseTimeout
from harness.guests.base import GuestProfile

log = logging.getLogger(__name__)


class Console:
    def __init__(self, socket_path: Path, profile: GuestProfile, *, log_path: Path | None = None) -> None:
        self.socket_path = socket_path
        self.profile = profile
        self.log_path = log_path  # QEMU's console.log, for tails in errors
        self._spawn: fdspawn | None = None
        self._socket: socket.socket | None = None
        self._panic = [re.compile(p, re.MULTILINE) for p in profile.panic_patterns]
        # Once the guest has panicked, every later command fails at once with
        # that panic instead of waiting for a shell that is gone.
        self.panicked: GuestPanic | None = None

    # -- lifetime -----------------------------------------------------------
    def connect(self, deadline: Deadline) -> None:
        def attempt() -> socket.socket | None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.socket_path))
                return sock
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                return None

        sock = deadline.wait_for(attempt, f"the console socket {self.socket_path}")
        self._socket = sock
        self._spawn = fdspawn(sock.fileno(), encoding="utf-8", codec_errors="replace", maxread=65536,
                              use_poll=True)

    def close(self) -> None:
        self._spawn = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> Console:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def spawn(self) -> fdspawn:
        if self._spawn is None:
            raise HarnessError("the console is not connected")
        return self._spawn

    def tail(self, lines: int = 60) -> str:
        if self.log_path is None:
            return ""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- expect -------------------------------------------------------------
    def expect(self, patterns: list[str], deadline: Deadline, *, what: str,
               panic_check: bool = True) -> int:
        """Wait for one of `patterns`; a panic pattern raises GuestPanic, the
        deadline raises PhaseTimeout with the console tail."""
        compiled = [re.compile(p, re.MULTILINE) for p in patterns]
        watch = compiled + (self._panic if panic_check else [])
        try:
            index = self.spawn.expect_list(watch, timeout=max(0.01, deadline.remaining()))
        except pexpect.TIMEOUT:
            raise deadline.timeout(f"waiting for {what}", console_tail=self.tail()) from None
        except pexpect.EOF:
            raise HarnessError(f"the console closed while waiting for {what} (QEMU exited?)\n"
                               f"console tail:\n{self.tail()}") from None
        if index >= len(compiled):
            self._raise_panic()
        return index

    def _raise_panic(self) -> None:
        spawn = self.spawn
        text = str(spawn.before)[-2000:] + str(spawn.after)
        # Let the rest of the trace arrive: read until the console is quiet.
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            try:
                text += spawn.read_nonblocking(65536, timeout=0.5)
            except pexpect.TIMEOUT:
                break
            except pexpect.EOF:
                break
        debugger = ""
        if self.profile.debugger_prompt and re.search(self.profile.debugger_prompt, text):
            debugger = self.debugger_dump()
        self.panicked = GuestPanic(_panic_excerpt(text, self._panic), debugger_output=debugger)
        raise self.panicked

    def debugger_dump(self) -> str:
        """Ask the kernel debugger the profile's questions (bt, show pcpu...)."""
        out = ""
        for command in self.profile.debugger_commands:
            self.spawn.sendline(command)
            try:
                self.spawn.expect(self.profile.debugger_prompt or "db> ", timeout=10)
                out += f"{self.profile.debugger_prompt} {command}\n{self.spawn.before}\n"
            except (pexpect.TIMEOUT, pexpect.EOF):
                out += f"{command}: no answer\n"
                break
        return out

    def run_quietly(self, command: str, timeout: float = 15.0) -> None:
        """For cleanup: run `command` if the guest can still answer, and only
        log a failure, so it never hides the error that led here."""
        try:
            self.run(command, timeout=timeout)
        except HarnessError as exc:
            log.warning("cleanup command %r failed: %s", command, exc.message)

    def recover(self, timeout: float = 15.0) -> None:
        """After a command timed out: interrupt it and wait until the shell
        answers a fresh marker command again."""
        self.send_interrupt()
        self.run("true", timeout=timeout, check=True)

    def sendline(self, text: str = "") -> None:
        self.spawn.sendline(text)

    def send_interrupt(self) -> None:
        self.spawn.send("\x03")

    # -- login ----------------------------------------------------------------
    def wait_for_prompt(self, deadline: Deadline, *, nudge_every: float = 3.0) -> int:
        """Wait for a login, password or shell prompt (0, 1, 2); when the
        console stays quiet, press Enter to ask for one."""
        p = self.profile.patterns
        while True:
            try:
                return self.expect([p.login, p.password, p.shell],
                                   deadline.child(nudge_every, deadline.phase), what="a login prompt")
            except PhaseTimeout:
                if deadline.expired:
                    raise deadline.timeout("waiting for a login prompt", console_tail=self.tail()) from None
                self.sendline("")

    def login(self, prompt: int, deadline: Deadline) -> None:
        """From the prompt `wait_for_prompt` saw, log in by prompt patterns,
        then set the shell up for marker-wrapped commands."""
        p = self.profile.patterns
        index = prompt
        while index != 2:
            self.sendline(self.profile.user if index == 0 else (self.profile.password or ""))
            index = self.expect([p.login, p.password, p.shell], deadline, what="a shell prompt after login")
        for command in self.profile.shell_setup:
            self.sendline(command)
        self.run("true", timeout=max(1.0, deadline.remaining()), check=True)

    # -- commands -------------------------------------------------------------
    def run(self, command: str, timeout: float = 30.0, *, check: bool = False,
            panic_check: bool = True) -> CommandResult:
        """Run `command` in the guest shell (stdin from /dev/null) and return its
        exact output and status."""
        if self.panicked is not None:
            raise self.panicked
        tag = "HX" + secrets.token_hex(4)
        tmp = f"/tmp/.{tag}"
        # The markers are printed from two parts so the typed line (if echoed)
        # never contains them.
        wrapped = (f"( {command}\n) >{tmp} 2>&1 </dev/null; s=$?; "
                   f"printf '%s%s %s\\n' {tag} B $(wc -c <{tmp}); cat {tmp}; "
                   f"printf '%s%s %s\\n' {tag} E $s; rm -f {tmp}")
        deadline = Deadline(timeout, f"console command: {command[:60]}")
        start = time.monotonic()
        self.spawn.sendline(wrapped)
        self.expect([rf"{tag}B\s*(\d+)\r?\n"], deadline, what="the command to finish",
                    panic_check=panic_check)
        size = int(self.spawn.match.group(1))
        self.expect([rf"{tag}E (\d+)\r?\n"], deadline, what="the end of the command output",
                    panic_check=panic_check)
        status = int(self.spawn.match.group(1))
        raw = str(self.spawn.before)
        output = self._exact_output(raw, size)
        result = CommandResult(command, status, output, "console", time.monotonic() - start)
        return result.check() if check else result

    def _exact_output(self, raw: str, size: int) -> str:
        text = raw.replace("\r\n", "\n")
        # The terminal turned each \n into \r\n; anything beyond the byte
        # count the guest measured was written by the kernel meanwhile.
        if len(text.encode()) == size:
            return text
        kernel = self.profile.kernel_line
        cleaned = "".join(line for line in text.splitlines(keepends=True) if not kernel.match(line))
        if len(cleaned.encode()) != size:
            log.warning("console output is %d bytes, the guest wrote %d; kernel messages may be mixed in",
                        len(cleaned.encode()), size)
        return cleaned


class PanicWatch:
    """Watches the console log QEMU writes for the profile's panic patterns,
    whether or not anyone is talking to the console at the time."""

    def __init__(self, log_path: Path, profile: GuestProfile) -> None:
        self.log_path = log_path
        self.patterns = [re.compile(p, re.MULTILINE) for p in profile.panic_patterns]
        self.offset = 0

    def _read_new(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return ""
        self.offset += len(data)
        return data.decode(errors="replace")

    def scan(self) -> str | None:
        """New console text from a panic on, or None. Once a pattern hits, it
        reads on until the console has been quiet for a second (up to 5 s) so
        the whole trace is in the text."""
        # Re-read a little before the last offset: a pattern may straddle reads.
        self.offset = max(0, self.offset - 200)
        text = self._read_new()
        if not any(p.search(text) for p in self.patterns):
            return None
        end, quiet_since = time.monotonic() + 5, time.monotonic()
        while time.monotonic() < end and time.monotonic() - quiet_since < 1.0:
            time.sleep(0.1)
            more = self._read_new()
            if more:
                text += more
                quiet_since = time.monotonic()
        return _panic_excerpt(text, self.patterns)


def _panic_excerpt(text: str, patterns: list[re.Pattern[str]]) -> str:
    """The panic text from its first matching line on."""
    starts = [m.start() for p in patterns if (m := p.search(text))]
    begin = text.rfind("\n", 0, min(starts)) + 1 if starts else 0
    return text[begin:].replace("\r\n", "\n").strip()
