"""TEST DOUBLE for a FreeBSD guest's serial console. It is not FreeBSD.

FreeBSD cannot boot on this machine (no image download, no usable KVM), so
the provisioning sequence is tested against this stand-in: a Unix-socket
server in the place of QEMU's console chardev. It

  * replays the real console transcript tests/fixtures/freebsd-console/
    sample-01 (FreeBSD 13.2 under bhyve): the rc date line and getty banner,
    `login:`, the root login with no password, the syslog ROOT LOGIN line,
    the motd, the `root@freebsd:~ # ` prompt, and the sample's asynchronous
    dhclient syslog lines;
  * echoes typed lines like a tty until `stty -echo`;
  * answers the harness's marker-wrapped commands (harness.console.Console.run
    sends `( CMD\\n) >/tmp/.HXtag 2>&1 </dev/null; s=$?; printf ...`) with
    canned outputs from a table, and records every command it was asked;
  * `shutdown -r now` replays the boot text and waits for a login again;
    `shutdown -p now` closes the socket, as QEMU does when the guest powers off;
  * writes everything it sends to a log file, as QEMU's chardev logfile does.

The canned outputs are test inputs, not FreeBSD output samples.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

SAMPLE = (Path(__file__).resolve().parent / "fixtures" / "freebsd-console"
          / "sample-01-freebsd-13.2-vmimage-serial-login-bhyve.txt")
PROMPT = "root@freebsd:~ # "
_WRAP_END = re.compile(r"^\) >/tmp/\.(HX[0-9a-f]{8}) 2>&1 </dev/null; s=\$\?; ")

Reply = tuple[str, int]


def sample_parts() -> tuple[str, str, list[str]]:
    """From console sample-01: (boot text ending in `login: `, the text between
    typing root and the first prompt, the sample's asynchronous syslog lines)."""
    lines = SAMPLE.read_text().splitlines()[1:]          # line 1 is the provenance header
    lines = lines[lines.index("Connected") + 1:]          # cu's own lines are not console output
    login_at = lines.index("login: root")
    boot = "\n".join(lines[:login_at]) + "\nlogin: "
    prompt_at = next(i for i, line in enumerate(lines) if line.startswith(PROMPT))
    after_login = "\n".join(lines[login_at + 1:prompt_at]) + "\n"
    syslog = [line.removeprefix(PROMPT) for line in lines
              if re.match(r"^(?:root@freebsd:~ # )?May  8 17:28:49 freebsd dhclient", line)]
    return boot, after_login, syslog


class ScriptedFreeBSDConsole:
    """The test double. `replies` maps an exact command to a Reply (output,
    status) or a list of Replies used in turn (the last one repeats);
    commands not in the table get ("", 0)."""

    def __init__(self, socket_path: Path, log_path: Path, replies: dict[str, Reply | list[Reply]] | None = None,
                 *, interleave: dict[str, str] | None = None, stall: str | None = None,
                 syslog_after_prompt: bool = True) -> None:
        self.socket_path = socket_path
        self.log_path = log_path
        self.replies = {k: (list(v) if isinstance(v, list) else [v]) for k, v in (replies or {}).items()}
        self.interleave = dict(interleave or {})   # command -> syslog line written inside its output
        self.stall = stall                          # None | "login" | "reboot"
        self.syslog_after_prompt = syslog_after_prompt
        self.boot_text, self.after_login, self.syslog = sample_parts()
        self.commands: list[str] = []               # every command answered, in order
        self.typed: list[str] = []                  # every line received, in order
        self.boots = 0
        self.state = "off"                          # off | login | shell | stalled
        self.error: BaseException | None = None
        self._server: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- lifetime -----------------------------------------------------------
    def start(self) -> ScriptedFreeBSDConsole:
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(self.socket_path))
        self._server.listen(1)
        self._server.settimeout(0.2)
        self._thread = threading.Thread(target=self._serve, name="freebsd-console-double", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for sock in (self._conn, self._server):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ScriptedFreeBSDConsole:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the script -----------------------------------------------------------
    def _serve(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                self._conn, _ = self._server.accept()
                break
            except TimeoutError:
                continue
            except OSError:
                return
        else:
            return
        try:
            self._conn.settimeout(0.2)
            self._session()
        except BaseException as exc:  # surfaced by the test through .error
            if not self._stop.is_set():
                self.error = exc
        finally:
            with contextlib.suppress(OSError):
                self._conn.close()

    def _session(self) -> None:
        self._boot(stall=self.stall == "login")
        echo = True
        pending: list[str] = []
        for line in self._lines():
            self.typed.append(line)
            if echo:
                self._send(line + "\n")
            if self.state == "login":
                if line == "root":
                    self._send(self.after_login + PROMPT)
                    if self.syslog_after_prompt:  # as in the sample: a syslog line right after the prompt
                        self._send(self.syslog[0] + "\n")
                    self.state = "shell"
                elif line:
                    self._send("Login incorrect\nlogin: ")
                else:
                    self._send("login: ")
                continue
            if line == "stty -echo":
                echo = False
            if line.startswith("( ") or pending:
                pending.append(line)
                if match := _WRAP_END.match(line):
                    command = "\n".join(pending)[2:].rsplit("\n", 1)[0]
                    pending.clear()
                    self._answer(command, match.group(1))
                continue
            if line == "shutdown -r now":
                echo = True
                self._boot(stall=self.stall == "reboot")
            elif line == "shutdown -p now":
                return
            else:
                self._send(PROMPT if echo else "# ")

    def _boot(self, *, stall: bool) -> None:
        self.boots += 1
        self.state = "stalled" if stall else "login"
        self._send(self.boot_text if not stall else self.boot_text.removesuffix("login: "))

    def _answer(self, command: str, tag: str) -> None:
        self.commands.append(command)
        queue = self.replies.get(command, [("", 0)])
        output, status = queue.pop(0) if len(queue) > 1 else queue[0]
        self._send(f"{tag}B {len(output.encode())}\n")
        if command in self.interleave:
            half = output.find("\n") + 1 if "\n" in output else len(output)
            self._send(output[:half] + self.interleave[command] + "\n" + output[half:])
        else:
            self._send(output)
        self._send(f"{tag}E {status}\n# ")

    # -- I/O --------------------------------------------------------------------
    def _send(self, text: str) -> None:
        assert self._conn is not None
        data = text.replace("\n", "\r\n").encode()
        with open(self.log_path, "ab") as log:
            log.write(data)
        self._conn.sendall(data)

    def _lines(self) -> Iterator[str]:
        assert self._conn is not None
        buffer = b""
        while not self._stop.is_set():
            try:
                chunk = self._conn.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                line = raw.decode(errors="replace").rstrip("\r")
                if self.state == "stalled":
                    continue
                yield line
