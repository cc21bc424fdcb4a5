"""A QEMU virtual machine with virtio-net on the host network's TAP.

Shaped after QEMU's own QEMUMachine: a context manager; the argv is a list
built in one place and written to the run directory; a launch failure raises
one error with exit code, argv and the log tail; shutdown is a bounded ladder
(QMP quit, wait, SIGTERM, wait, SIGKILL).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import re
import shlex
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from qemu.qmp.legacy import QEMUMonitorProtocol

from harness import leases
from harness.deadline import Deadline
from harness.errors import ConfigError, PreconditionError, QEMUError
from harness.host_tap import HostNetwork
from harness.hostload import process_seconds
from harness.image import GuestImage

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
DUT_PCI_SLOT = 3   # the NIC under test probes first: eth0 / vtnet0
MGMT_PCI_SLOT = 4
DISK_PCI_SLOT = 5
MGMT_GUEST_IP = "10.0.2.15"  # QEMU user-mode networking's default guest address
_NAME = re.compile(r"-name harness-(\w+),")
FIRMWARE = {"bios": None, "uefi": "/usr/share/OVMF/OVMF_CODE.fd"}


@dataclass
class VMSpec:
    """Everything that decides the QEMU command line."""

    image: GuestImage
    name: str
    accel: str = "tcg"                  # resolved: kvm | tcg
    vhost: bool = False                 # resolved
    memory_mb: int = 1024
    vcpus: int = 2
    queues: int = 1
    mac: str = "52:54:00:12:34:01"
    nic_props: dict[str, str] = field(default_factory=dict)
    mgmt_model: str = "virtio-net-pci"
    mgmt_mac: str = "52:54:00:ff:00:01"
    machine: str = "q35"
    qemu: str = "qemu-system-x86_64"
    # Image provisioning needs the package mirror; test runs never do.
    mgmt_restrict: bool = True
    firmware: str = "bios"              # bios (SeaBIOS) | uefi (OVMF)
    extra_args: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.vcpus < 1:
            raise ConfigError(f"vcpus must be at least 1, not {self.vcpus}")
        if self.memory_mb < 128:
            raise ConfigError(f"memory must be at least 128 MiB, not {self.memory_mb}")
        if self.queues < 1:
            raise ConfigError(f"queues must be at least 1, not {self.queues}",
                              hint="use --queues 1 for a single queue pair")
        if self.accel not in ("kvm", "tcg"):
            raise ConfigError(f"accel must be resolved to kvm or tcg, not {self.accel!r}")
        if self.firmware not in FIRMWARE:
            raise ConfigError(f"firmware must be one of {', '.join(FIRMWARE)}, not {self.firmware!r}")


def build_argv(spec: VMSpec, *, tap_fds: list[int] | None, overlay: Path, run_dir: Path,
               socket_dir: Path, ssh_port: int) -> list[str]:
    """The full QEMU argv (a list, never a shell string). Without `tap_fds`
    the VM has no NIC under test (image provisioning)."""
    image = spec.image
    accel = f"{spec.machine},accel={spec.accel}"
    cpu = "host" if spec.accel == "kvm" else "max"
    argv = [spec.qemu, "-name", f"harness-{spec.name},debug-threads=on",  # _NAME reads it back
            "-machine", accel, "-cpu", cpu, "-smp", str(spec.vcpus), "-m", str(spec.memory_mb),
            "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none",
            "-S",  # start paused: the harness resumes once it listens on the console
            "-qmp", f"unix:{socket_dir / 'qmp.sock'},server=on,wait=off",
            "-chardev", f"socket,id=con0,path={socket_dir / 'console.sock'},server=on,wait=off,"
                        f"logfile={run_dir / 'console.log'}",
            "-serial", "chardev:con0",
            "-drive", f"file={overlay},if=none,id=disk0,format=qcow2,cache=unsafe,discard=unmap",
            "-device", f"virtio-blk-pci,drive=disk0,addr={DISK_PCI_SLOT:#x}"]
    firmware = FIRMWARE[spec.firmware]
    if firmware:
        argv += ["-drive", f"if=pflash,format=raw,readonly=on,file={firmware}"]
    if image.kernel is not None:
        argv += ["-kernel", str(image.kernel)]
        if image.initrd is not None:
            argv += ["-initrd", str(image.initrd)]
        argv += ["-append", f"{image.cmdline} harness.mgmt_mac={spec.mgmt_mac}".strip()]
    if tap_fds:
        netdev = f"tap,id=dut0,fds={':'.join(map(str, tap_fds))},vhost={'on' if spec.vhost else 'off'}"
        device = f"virtio-net-pci,netdev=dut0,id=dutnic0,mac={spec.mac},addr={DUT_PCI_SLOT:#x}"
        if spec.queues > 1:
            device += f",mq=on,vectors={2 * spec.queues + 2}"
        for key, value in spec.nic_props.items():
            device += f",{key}={value}"
        argv += ["-netdev", netdev, "-device", device]
    # Management channel: user-mode networking that can reach nothing but the
    # forwarded SSH port on 127.0.0.1 (restrict=on).
    restrict = "on" if spec.mgmt_restrict else "off"
    argv += ["-netdev", f"user,id=mgmt0,restrict={restrict},"
                        f"hostfwd=tcp:127.0.0.1:{ssh_port}-{MGMT_GUEST_IP}:22",
             "-device", f"{spec.mgmt_model},netdev=mgmt0,mac={spec.mgmt_mac},addr={MGMT_PCI_SLOT:#x}"]
    return argv + list(spec.extra_args)


def run_ids_in(directory: Path) -> set[str]:
    """Run ids of the VMs started under `directory`, from their qemu.argv."""
    ids = set()
    for argv in directory.rglob("qemu.argv"):
        match = _NAME.search(argv.read_text())
        if match:
            ids.add(match.group(1))
    return ids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def require_qemu(qemu: str) -> None:
    for program in (qemu, "qemu-img"):
        if shutil.which(program) is None:
            raise PreconditionError(f"QEMU is not installed ({program} not found)",
                                    hint="apt-get install qemu-system-x86 qemu-utils")


def qemu_version(qemu: str) -> str:
    try:
        out = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=10).stdout
    except FileNotFoundError:
        return "missing"
    return out.splitlines()[0].removeprefix("QEMU emulator version ").strip() if out else "unknown"


class QemuVM:
    """One QEMU process. Start with `with QemuVM(...) as vm:`; it comes up
    paused, `resume()` lets the guest run."""

    def __init__(self, spec: VMSpec, network: HostNetwork | None, run_dir: Path, *,
                 start_timeout: float = 20.0, shutdown_timeout: float = 10.0) -> None:
        spec.validate()
        self.spec = spec
        self.network = network
        self.run_dir = run_dir
        self.start_timeout = start_timeout
        self.shutdown_timeout = shutdown_timeout
        self.overlay = run_dir / "overlay.qcow2"
        # UNIX socket paths must stay under 108 bytes, run dirs may not.
        self.socket_dir = leases.state_dir().parent / "sock" / spec.name
        self.console_socket = self.socket_dir / "console.sock"
        self.qmp_socket = self.socket_dir / "qmp.sock"
        self.console_log = run_dir / "console.log"
        self.qemu_log = run_dir / "qemu.log"
        self.argv: list[str] = []
        self.ssh_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.qmp: QEMUMonitorProtocol | None = None
        self._leases: list[leases.Lease] = []
        self.facts: dict[str, Any] = {}

    # -- lifetime -----------------------------------------------------------
    def __enter__(self) -> QemuVM:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def start(self) -> None:
        require_qemu(self.spec.qemu)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._make_overlay()
            for attempt in range(3):
                self.ssh_port = free_port()
                try:
                    self._launch()
                    break
                except QEMUError as exc:
                    # Another process may have taken the port we picked.
                    if "host forwarding rule" not in exc.log_tail or attempt == 2:
                        raise
                    log.info("SSH forward port %d was taken; retrying", self.ssh_port)
            self._confirm_accel()
        except BaseException:
            self.shutdown()
            raise

    def _make_overlay(self) -> None:
        self._leases.append(leases.take("file", f"sockets-{self.spec.name}", path=str(self.socket_dir)))
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self._leases.append(leases.take("file", f"overlay-{self.spec.name}", path=str(self.overlay)))
        self.overlay.unlink(missing_ok=True)
        proc = subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", self.spec.image.disk_format,
             "-b", str(self.spec.image.disk.resolve()), str(self.overlay)],
            capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise QEMUError("could not create the overlay disk", exit_code=proc.returncode,
                            argv=proc.args, log_tail=proc.stderr)

    def _launch(self) -> None:
        for stale in (self.console_socket, self.qmp_socket):
            stale.unlink(missing_ok=True)
        fds = self.network.tap_fds(0) if self.network is not None else []
        self.argv = build_argv(self.spec, tap_fds=fds, overlay=self.overlay, run_dir=self.run_dir,
                               socket_dir=self.socket_dir, ssh_port=self.ssh_port)
        (self.run_dir / "qemu.argv").write_text(shlex.join(self.argv) + "\n")
        log.info("starting QEMU: %s", shlex.join(self.argv))
        lease = leases.take("process", f"qemu-{self.spec.name}", argv0=self.spec.qemu)
        self._leases.append(lease)
        with open(self.qemu_log, "wb") as qlog:
            self.proc = subprocess.Popen(self.argv, pass_fds=fds, stdin=subprocess.DEVNULL,
                                         stdout=qlog, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        lease.update(pid=self.proc.pid, start_time=leases.process_start_time(self.proc.pid))
        deadline = Deadline(self.start_timeout, "QEMU start")
        deadline.wait_for(lambda: self.check_alive() or self.qmp_socket.exists(), "the QMP socket")
        self.qmp = QEMUMonitorProtocol(str(self.qmp_socket))
        self.qmp.connect(negotiate=True)
        self.qmp.settimeout(max(1.0, deadline.remaining()))

    def _confirm_accel(self) -> None:
        assert self.qmp is not None
        kvm = cast(dict[str, Any], self.qmp.cmd("query-kvm"))
        in_use = "kvm" if kvm.get("enabled") else "tcg"
        if in_use != self.spec.accel:
            raise QEMUError(f"QEMU runs with {in_use}, not the {self.spec.accel} asked for",
                            exit_code=None, argv=self.argv, log_tail=self.log_tail())
        self.facts.update(accel=in_use, vhost=self.spec.vhost, qemu_version=qemu_version(self.spec.qemu),
                          argv=list(self.argv), ssh_port=self.ssh_port)

    def check_alive(self) -> bool:
        """Raise QEMUError if QEMU has exited; False otherwise (for polling)."""
        if self.proc is not None and self.proc.poll() is not None:
            raise QEMUError("QEMU exited early", exit_code=self.proc.returncode,
                            argv=self.argv, log_tail=self.log_tail())
        return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.qemu_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def console_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.console_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def resume(self) -> None:
        self.check_alive()
        assert self.qmp is not None
        self.qmp.cmd("cont")

    def status(self, timeout: float = 2.0) -> dict[str, Any]:
        """QMP query-status, or why it could not be had (a stopped or hung
        QEMU does not answer: that is said, not waited for)."""
        if not self.running or self.qmp is None:
            return {"status": "not running"}
        try:
            self.qmp.settimeout(timeout)
            return dict(cast(dict[str, Any], self.qmp.cmd("query-status")))
        except Exception as exc:
            return {"status": f"no answer to query-status within {timeout:.0f} s ({type(exc).__name__})"}

    def cpu_seconds(self) -> float | None:
        """User + system CPU time QEMU has used so far."""
        if self.proc is None:
            return None
        try:
            return process_seconds(Path(f"/proc/{self.proc.pid}/stat").read_text())
        except OSError:
            return None

    def inject_nmi(self) -> None:
        assert self.qmp is not None
        self.qmp.cmd("inject-nmi")

    def shutdown(self) -> None:
        """The ladder: QMP quit, wait; SIGTERM, wait; SIGKILL, wait. Idempotent."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            third = self.shutdown_timeout / 3
            if self.qmp is not None:
                try:
                    self.qmp.settimeout(third)
                    self.qmp.cmd("quit")
                except Exception as exc:  # QEMU may be hung or already closing
                    log.debug("QMP quit failed: %s", exc)
            for sig in (None, signal.SIGTERM, signal.SIGKILL):
                if sig is not None:
                    try:
                        proc.send_signal(sig)
                    except ProcessLookupError:
                        break
                try:
                    proc.wait(third)
                    break
                except subprocess.TimeoutExpired:
                    log.warning("QEMU did not exit within %.1f s%s", third,
                                f" after {sig.name}" if sig else " after QMP quit")
            else:
                proc.wait()
        if self.qmp is not None:
            with contextlib.suppress(Exception):
                self.qmp.close()
            self.qmp = None
        self.overlay.unlink(missing_ok=True)
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        for lease in reversed(self._leases):
            lease.release()
        self._leases.clear()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to QEMU (fault injection in tests)."""
        if self.proc is not None:
            self.proc.send_signal(sig)
