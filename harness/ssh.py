"""SSH to the guest over the management channel (never the NIC under test:
netmap takes that NIC away from the guest's stack while pkt-gen or bridge
runs). Per-run key pair; the guest's host key is pinned from what the guest
printed on its console, never accepted blindly."""

from __future__ import annotations

import base64
import logging
import os
import time
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness.command import CommandResult
from harness.deadline import Deadline
from harness.errors import HarnessError

log = logging.getLogger(__name__)


class KeyPair:
    """An ed25519 key pair written 0600 into the run directory; removed on close."""

    def __init__(self, directory: Path, name: str = "id_ed25519") -> None:
        self.path = directory / name
        self.public_path = directory / f"{name}.pub"
        key = Ed25519PrivateKey.generate()
        directory.mkdir(parents=True, exist_ok=True)
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption())
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private)
        self.public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode() + " harness"
        self.public_path.write_text(self.public + "\n")

    def close(self) -> None:
        self.path.unlink(missing_ok=True)
        self.public_path.unlink(missing_ok=True)

    def __enter__(self) -> KeyPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_host_key(line: str) -> paramiko.PKey:
    """A host key from an OpenSSH public key line (`ssh-ed25519 AAAA... comment`)."""
    fields = line.strip().split()
    if len(fields) < 2:
        raise HarnessError(f"not an SSH public key line: {line!r}")
    try:
        return paramiko.PKey.from_type_string(fields[0], base64.b64decode(fields[1]))
    except Exception as exc:
        raise HarnessError(f"cannot read the guest's host key {line!r}: {exc}") from None


class BackgroundCommand:
    """A command running on an SSH channel (with a pty when asked)."""

    def __init__(self, channel: paramiko.Channel, command: str) -> None:
        self.channel = channel
        self.command = command
        self._output = bytearray()

    def _drain(self) -> None:
        while self.channel.recv_ready():
            self._output += self.channel.recv(65536)
        while self.channel.recv_stderr_ready():
            self._output += self.channel.recv_stderr(65536)

    @property
    def output(self) -> str:
        self._drain()
        return self._output.decode(errors="replace").replace("\r\n", "\n")

    @property
    def done(self) -> bool:
        self._drain()
        return self.channel.exit_status_ready()

    def interrupt(self) -> None:
        """Send ^C through the pty (pkt-gen prints its summary on SIGINT)."""
        self.channel.send(b"\x03")

    def wait(self, deadline: Deadline) -> CommandResult:
        start = time.monotonic()
        deadline.wait_for(lambda: self.done, f"background command {self.command[:60]!r}")
        status = self.channel.recv_exit_status()
        self._drain()
        self.channel.close()
        return CommandResult(self.command, status, self.output, "ssh", time.monotonic() - start)

    def close(self) -> None:
        self.channel.close()


class SSHSession:
    def __init__(self, host: str, port: int, key: KeyPair, host_key: paramiko.PKey,
                 user: str = "root") -> None:
        self.host = host
        self.port = port
        self.key = key
        self.host_key = host_key
        self.user = user
        self.client: paramiko.SSHClient | None = None

    def connect(self, deadline: Deadline) -> None:
        client = paramiko.SSHClient()
        name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        client.get_host_keys().add(name, self.host_key.get_name(), self.host_key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        pkey = paramiko.Ed25519Key.from_private_key_file(str(self.key.path))
        last_error: Exception | None = None

        def attempt() -> bool:
            nonlocal last_error
            try:
                client.connect(self.host, self.port, username=self.user, pkey=pkey,
                               timeout=max(1.0, min(5.0, deadline.remaining())),
                               banner_timeout=max(1.0, min(10.0, deadline.remaining())),
                               auth_timeout=10, allow_agent=False, look_for_keys=False)
                return True
            except paramiko.BadHostKeyException:
                raise HarnessError(f"the guest's SSH host key does not match the one it printed on its "
                                   f"console ({self.host}:{self.port})") from None
            except (OSError, paramiko.SSHException, EOFError) as exc:
                last_error = exc
                return False

        try:
            deadline.wait_for(attempt, f"SSH on {self.host}:{self.port}", interval=0.2)
        except HarnessError as exc:
            exc.message += f" (last error: {last_error})"
            raise
        self.client = client

    @property
    def transport(self) -> paramiko.Transport:
        if self.client is None or self.client.get_transport() is None:
            raise HarnessError("SSH is not connected")
        transport = self.client.get_transport()
        assert transport is not None
        return transport

    def run(self, command: str, timeout: float = 30.0, *, check: bool = False) -> CommandResult:
        bg = self.run_background(command, pty=False)
        try:
            result = bg.wait(Deadline(timeout, f"ssh command: {command[:60]}"))
        finally:
            bg.close()
        return result.check() if check else result

    def run_background(self, command: str, *, pty: bool = True) -> BackgroundCommand:
        try:
            channel = self.transport.open_session(timeout=10)
            if pty:
                # A pty makes pkt-gen's stdout line-buffered, so its summary arrives.
                channel.get_pty(term="dumb", width=250, height=50)
            channel.exec_command(command)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise HarnessError(f"SSH to the guest failed ({self.host}:{self.port}) running {command[:60]!r}: "
                               f"{exc or type(exc).__name__}") from None
        return BackgroundCommand(channel, command)

    def put(self, local: Path, remote: str, mode: int | None = None) -> None:
        with self.client.open_sftp() as sftp:  # type: ignore[union-attr]
            sftp.put(str(local), remote)
            if mode is not None:
                sftp.chmod(remote, mode)

    def get(self, remote: str, local: Path) -> None:
        with self.client.open_sftp() as sftp:  # type: ignore[union-attr]
            sftp.get(remote, str(local))

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def __enter__(self) -> SSHSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
