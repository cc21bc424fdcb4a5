"""A booted guest: host network + QEMU VM + console + SSH + OS profile.

`boot_guest()` is the one place that puts the parts together, in order, with
every part's undo registered next to its do (an ExitStack), so every path
(success, failure, timeout, Ctrl-C) releases everything.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shlex
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import __version__, diagnose
from harness.accel import resolve_accel, resolve_vhost
from harness.config import RunConfig
from harness.console import Console, PanicWatch
from harness.deadline import Deadline
from harness.errors import ConfigError, DiskFull, GuestPanic, HarnessError, PhaseTimeout, QEMUError
from harness.guests import GuestProfile, get_profile
from harness.host_tap import Counters, HostNetwork, check_host
from harness.image import REPO_ROOT, GuestImage, default_image
from harness.results import cpu_governor, git_sha
from harness.ssh import KeyPair, SSHSession, parse_host_key
from harness.vm import QemuVM, VMSpec, require_qemu

log = logging.getLogger(__name__)

DUT_MAC = "52:54:00:12:34:01"
GUEST_CIDR = "10.0.0.1/24"
HOST_CIDR = "10.0.0.2/24"


def new_run_id() -> str:
    return secrets.token_hex(4)


@dataclass
class Guest:
    config: RunConfig
    profile: GuestProfile
    image: GuestImage
    net: HostNetwork
    vm: QemuVM
    console: Console
    ssh: SSHSession
    run_dir: Path
    run_id: str
    dut_ifname: str
    # Seconds each phase took (image ... ssh_ready, then teardown) ...
    timings: dict[str, float] = field(default_factory=dict)
    # ... and seconds from QEMU's start to the login prompt, console ready, SSH ready.
    since_start: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    panic_watch: PanicWatch | None = None
    _status_checked: float = 0.0

    def check_alive(self) -> None:
        """Raise if QEMU exited or paused on a full disk, or the guest kernel
        panicked (scenarios call this while they wait; the console checks on
        its own when in use)."""
        self.vm.check_alive()
        now = time.monotonic()
        if now - self._status_checked >= 1.0:  # QMP at most once a second
            self._status_checked = now
            if self.vm.status().get("status") == "io-error":
                raise disk_full(self.vm)
        if self.panic_watch is None:
            self.panic_watch = PanicWatch(self.vm.console_log, self.profile)
        text = self.panic_watch.scan()
        if text is not None:
            debugger = ""
            if self.profile.debugger_prompt and re.search(self.profile.debugger_prompt, text, re.MULTILINE):
                debugger = self.console.debugger_dump()
            self.console.panicked = GuestPanic(text, debugger_output=debugger)
            raise self.console.panicked

    @property
    def ip(self) -> str:
        return GUEST_CIDR.split("/")[0]

    @property
    def host_tap(self) -> str:
        return self.net.taps[0]

    def dut_counters(self) -> Counters:
        return self.profile.interface_counters(self.ssh, self.dut_ifname)

    def host_counters(self) -> Counters:
        return self.net.counters(self.host_tap)

    def configure_dut(self, cidr: str = GUEST_CIDR, timeout: float = 30.0) -> None:
        """Address the NIC under test and return once its link is up in the
        guest, so that the first frame a scenario sends is not dropped."""
        self.profile.set_address(self.ssh, self.dut_ifname, cidr)
        Deadline(timeout, "DUT link up").wait_for(
            lambda: self.profile.link_up(self.ssh, self.dut_ifname), f"{self.dut_ifname} link up in the guest",
            interval=0.2)

    def kernel_identity(self) -> dict[str, Any]:
        """The running guest kernel; `ident` is one line that changes whenever
        the kernel does (release, version string, and its hash when known)."""
        if "guest_kernel" not in self.facts:
            details = self.profile.kernel_identity(self.ssh)
            ident = " ".join(details[k] for k in ("release", "version") if details.get(k))
            if details.get("kernel_sha256"):
                ident += f" sha256:{details['kernel_sha256'][:12]}"
            self.facts["guest_kernel"] = {"ident": ident, "details": details}
        return dict(self.facts["guest_kernel"])

    def provenance(self) -> dict[str, Any]:
        """Everything a result needs to say what ran where (DESIGN: provenance)."""
        features = self.profile.negotiated_features(self.ssh, self.dut_ifname)
        return {"harness_version": __version__, "git_sha": git_sha(REPO_ROOT), **self.facts,
                "guest_kernel": self.kernel_identity(), "image": self.image.identity, "guest_os": self.profile.name,
                "virtio_features": {"bits": hex(features.bits), "names": list(features.names)} if features else None,
                "queue_pairs": self.profile.queue_pairs(self.ssh, self.dut_ifname),
                "run_id": self.run_id, "queues": self.config.queues, "vcpus": self.config.vcpus,
                "memory_mb": self.config.memory_mb, "cpu_governor": cpu_governor(), "host_cpu_count": os.cpu_count()}


MIN_FREE_MB = 128  # overlay growth, console and QEMU logs, records


def _writable_run_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".writable"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"the run directory {path} is not writable: {exc.strerror}",
                          hint="pass --run-dir with a directory you can write to") from None
    free_mb = shutil.disk_usage(path).free // 2**20
    if free_mb < MIN_FREE_MB:
        raise ConfigError(f"only {free_mb} MiB free for the run directory {path}; a run needs {MIN_FREE_MB} MiB",
                          hint="free some space, or pass --run-dir on a larger file system")
    return path


def disk_full(vm: QemuVM) -> DiskFull:
    free = shutil.disk_usage(vm.overlay.parent).free // 2**20
    return DiskFull(f"QEMU paused the guest on a disk write error: the file system holding {vm.overlay.parent} "
                    f"is full ({free} MiB free)", hint="free space there, or pass --run-dir on a larger file system")


class Phases:
    """Start times and durations of the named phases of one guest's life."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self._mark = self.start
        self.seconds: dict[str, float] = {}

    def done(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[name] = now - self._mark
        self._mark = now

    def mark(self) -> None:
        """The next phase starts now."""
        self._mark = time.monotonic()

    def since_start(self) -> float:
        return time.monotonic() - self.start


@contextmanager
def _diagnosed(vm: QemuVM, net: HostNetwork, console: Callable[[], Console | None],
               profile: GuestProfile) -> Iterator[None]:
    """A phase that times out carries what was seen before anything is killed."""
    try:
        yield
    except PhaseTimeout as exc:
        exc.diagnosis.update(diagnose.collect(vm, net, console(), profile))
        if "io-error" in str(exc.diagnosis.get("qmp_status", "")):
            raise disk_full(vm) from exc
        raise
    except QEMUError as exc:
        exc.log_tail += f"\n--- console tail ---\n{vm.console_tail(30)}"
        raise
    except HarnessError as exc:
        # A channel failing because QEMU died: say that QEMU died.
        if vm.proc is not None and vm.proc.poll() is not None:
            raise QEMUError(f"QEMU exited early ({exc.message})", exit_code=vm.proc.returncode, argv=vm.argv,
                            log_tail=f"{vm.log_tail()}\n--- console tail ---\n{vm.console_tail(30)}") from exc
        raise


@contextmanager
def boot_guest(config: RunConfig, run_dir: Path, *, nic_props: dict[str, str] | None = None,
               run_id: str | None = None,
               announce: Callable[[str], None] | None = None) -> Iterator[Guest]:
    """Boot a guest and yield it logged in on its console and over SSH.

    Phases and their deadlines (config.timeouts): image, network_up,
    qemu_start, boot_to_console, login, ssh_ready; teardown on the way out.
    guest.timings holds each phase's seconds; guest.since_start the seconds
    from QEMU's start to the login prompt, console ready and SSH ready."""
    run_id = run_id or new_run_id()
    timeouts = config.timeouts
    phases = Phases()
    profile = get_profile(config.guest)
    image = GuestImage.load(config.image or default_image(profile.name), expect_os=profile.name,
                            check_timeout=timeouts.image)
    run_dir = _writable_run_dir(run_dir)
    if config.guest_netmap is not None:  # a bad netmap directory fails before anything starts
        from harness.guest_netmap import NetmapBuild

        NetmapBuild.from_directory(config.guest_netmap)
    check_host()
    require_qemu(config.qemu)
    accel, accel_reason = resolve_accel(config.accel, config.qemu)
    vhost, vhost_reason = resolve_vhost(config.vhost)
    phases.done("image")
    console: Console | None = None
    with ExitStack() as stack:
        stack.callback(lambda: phases.done("teardown"))
        net = stack.enter_context(HostNetwork(run_id, queues=config.queues, bridge_cidr=HOST_CIDR))
        if phases.since_start() > timeouts.network_up:
            raise PhaseTimeout("network up", timeouts.network_up, "the host network took too long")
        phases.done("network_up")
        key = stack.enter_context(KeyPair(run_dir))
        spec = VMSpec(image=image, name=run_id, accel=accel, vhost=vhost, memory_mb=config.memory_mb,
                      vcpus=config.vcpus, queues=config.queues, mac=DUT_MAC,
                      nic_props=dict(nic_props or {}), mgmt_model=profile.mgmt_nic_model, qemu=config.qemu,
                      firmware=str(image.manifest.get("firmware", "bios")))
        vm = QemuVM(spec, net, run_dir, start_timeout=timeouts.qemu_start, shutdown_timeout=timeouts.teardown)
        started = time.monotonic()
        stack.enter_context(vm)
        with _diagnosed(vm, net, lambda: console, profile):
            if announce:
                announce(shlex.join(vm.argv))
            console = stack.enter_context(Console(vm.console_socket, profile, log_path=vm.console_log))
            console.connect(Deadline(timeouts.qemu_start, "qemu_start"))
            vm.resume()
            phases.done("qemu_start")
            prompt = console.wait_for_prompt(Deadline(timeouts.boot_to_console, "boot_to_console"))
            phases.done("boot_to_console")
            console.login(prompt, Deadline(timeouts.login, "login"))
            phases.done("login")
            timings = phases.seconds
            since_start = {"login_prompt": timings["qemu_start"] + timings["boot_to_console"],
                           "console_ready": time.monotonic() - started}
            host_key = console.run(profile.host_key_command(), check=True).output
            console.run(profile.authorize_key_command(key.public), check=True)
            ssh = stack.enter_context(SSHSession("127.0.0.1", vm.ssh_port, key, parse_host_key(host_key)))
            ssh.connect(Deadline(timeouts.ssh_ready, "ssh_ready"))
            phases.done("ssh_ready")
            since_start["ssh_ready"] = time.monotonic() - started
            facts = {**vm.facts, "accel_reason": accel_reason, "vhost_reason": vhost_reason,
                     "host_cpu": host_cpu_model(), "host_kernel": os.uname().release}
            guest = Guest(config, profile, image, net, vm, console, ssh, run_dir, run_id,
                          profile.dut_ifname(ssh, DUT_MAC), timings, since_start, facts)
            if config.guest_netmap is not None:
                from harness.guest_netmap import install

                guest.facts["netmap"] = install(guest, config.guest_netmap)
            log.info("guest %s up: console in %.1f s, SSH in %.1f s (%s)", run_id,
                     since_start["console_ready"], since_start["ssh_ready"], accel)
            stack.callback(phases.mark)  # unwinding runs this first: teardown starts here
            yield guest


def host_cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"
