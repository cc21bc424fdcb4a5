"""Provision a FreeBSD guest once, over its serial console, into a base image.

The sequence is a list of named steps (`guest_steps`), each a few shell
commands run with the console's marker-wrapped `run()`, plus the actions
that are not commands (log in, reboot, power off). The same list drives the
dry run and the real run, so what `--dry-run` prints is what runs.

Files from the host (src.txz, a kernel, a patch) come from a file server on
the host's loopback, which the guest reaches as 10.0.2.2 on QEMU user-mode
networking; the guest checks each file's SHA-256 before using it.

After the reboot into the kernel under test, `check_kernel` compares what
runs with what was asked for and fails loudly on any difference.
"""

from __future__ import annotations

import logging
import mmap
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pexpect

from harness.command import CommandResult
from harness.deadline import Deadline
from harness.errors import HarnessError, PhaseTimeout
from harness.guests.freebsd import FreeBSDProfile
from harness.vm import MGMT_GUEST_IP

log = logging.getLogger(__name__)

HOSTNAME = "freebsd"
NETMAP_SRC = "usr/src/tools/tools/netmap"
BRIDGE_PATH = "/usr/local/bin/bridge"
SLIRP_GATEWAY = "10.0.2.2"
SLIRP_DNS = "10.0.2.3"


class ProvisionError(HarnessError):
    """A provisioning step failed; names the step and carries the console tail."""

    def __init__(self, step: str, detail: str, *, console_tail: str = "", hint: str | None = None) -> None:
        super().__init__(f"provisioning step '{step}' failed: {detail}", hint=hint)
        self.step = step
        self.detail = detail
        self.console_tail = console_tail

    def __str__(self) -> str:
        text = self.message
        if self.hint:
            text += f"\n  what to do: {self.hint}"
        tail = "\n".join("    " + line for line in self.console_tail.rstrip().splitlines()) or "    (empty)"
        return f"{text}\n  console log tail:\n{tail}"


class KernelMismatch(HarnessError):
    """The kernel running after the reboot is not the kernel asked for."""


class ConsoleLike(Protocol):
    """What provisioning needs of harness.console.Console."""

    def wait_for_prompt(self, deadline: Deadline, *, nudge_every: float = 3.0) -> int: ...
    def login(self, prompt: int, deadline: Deadline) -> None: ...
    def run(self, command: str, timeout: float = 30.0, *, check: bool = False,
            panic_check: bool = True) -> CommandResult: ...
    def sendline(self, text: str = "") -> None: ...
    def tail(self, lines: int = 60) -> str: ...

    @property
    def spawn(self) -> pexpect.spawnbase.SpawnBase: ...


# -- what to provision --------------------------------------------------------
@dataclass(frozen=True)
class ServedFile:
    """A host file the guest fetches: its URL name and SHA-256."""

    name: str
    sha256: str


@dataclass(frozen=True)
class KernelChoice:
    kind: str                            # stock | prebuilt | src
    description: str = "the release's stock GENERIC kernel"
    archive: ServedFile | None = None    # prebuilt: tarball with boot/kernel/
    kernel_sha256: str | None = None     # prebuilt: SHA-256 of boot/kernel/kernel in it
    kernel_file: Path | None = None      # prebuilt: a host copy of that kernel binary
    patch: ServedFile | None = None      # src: applied to /usr/src before the build
    patch_strip: int = 1
    kernconf: str = "GENERIC"


@dataclass(frozen=True)
class SourceChoice:
    """Where /usr/src comes from: the whole tree (kernel builds) or only
    tools/tools/netmap (bridge)."""

    archive: ServedFile
    full: bool
    description: str


@dataclass(frozen=True)
class GuestPlan:
    version: str
    arch: str
    flavour: str                          # basic-ci | vm-image
    source: SourceChoice
    kernel: KernelChoice = field(default_factory=lambda: KernelChoice("stock"))
    tunables: tuple[tuple[str, str], ...] = ()
    base_url: str = f"http://{SLIRP_GATEWAY}:PORT/"

    def url(self, served: ServedFile) -> str:
        return self.base_url + served.name


@dataclass(frozen=True)
class StepTimeouts:
    """Seconds per kind of wait, for KVM; TCG runs scale them up."""

    boot: float = 600
    login: float = 60
    command: float = 120
    pkg: float = 1200
    fetch: float = 1200
    extract: float = 1800
    build_bridge: float = 900
    buildkernel: float = 4 * 3600
    installkernel: float = 1800
    reboot: float = 600
    poweroff: float = 300

    def scaled(self, factor: float) -> StepTimeouts:
        return StepTimeouts(**{k: v * factor for k, v in self.__dict__.items()})


# -- the steps ------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    text: str
    timeout: str = "command"     # a StepTimeouts field
    record: str | None = None    # store the stripped output in facts under this key


Check = Callable[[GuestPlan, dict[str, str]], None]


@dataclass(frozen=True)
class GuestStep:
    name: str
    summary: str
    action: str = "run"          # login | run | reboot | poweroff
    commands: tuple[Command, ...] = ()
    check: Check | None = None


def _q(text: str) -> str:
    return shlex.quote(text)


def _fetch_verified(plan: GuestPlan, served: ServedFile) -> tuple[Command, ...]:
    path = f"/tmp/{served.name}"
    return (Command(f"fetch -q -o {path} {plan.url(served)}", timeout="fetch"),
            Command(f'test "$(sha256 -q {path})" = {served.sha256}'))


def loader_conf_lines(plan: GuestPlan) -> list[str]:
    lines = ["# harness: serial console, no loader delay, netmap/vtnet tunables"]
    if plan.flavour == "basic-ci":
        # SeaBIOS: the loader needs to be told; UEFI finds the serial port in ConOut.
        lines.append('console="comconsole"')
    lines += ['autoboot_delay="-1"', 'beastie_disable="YES"', 'loader_logo="none"']
    lines += [f'{key}="{value}"' for key, value in plan.tunables]
    return lines


SSHD_LINES = ("# harness: key-only root login (each run authorizes its own key)",
              "PermitRootLogin prohibit-password", "PasswordAuthentication no",
              "KbdInteractiveAuthentication no", "PermitEmptyPasswords no", "UseDNS no")
SSHD_DROP = "PermitRootLogin|PasswordAuthentication|KbdInteractiveAuthentication|PermitEmptyPasswords|UsePAM|UseDNS"


def _printf_lines(lines: list[str] | tuple[str, ...], target: str) -> str:
    return "printf '%s\\n' " + " ".join(_q(line) for line in lines) + f" >> {target}"


def guest_steps(plan: GuestPlan) -> list[GuestStep]:
    """Every guest step, in order, with its commands."""
    kernel = plan.kernel
    steps = [
        GuestStep("first-boot", "boot the image; log in as root on the serial console (empty password)",
                  action="login"),
        GuestStep("identify", "check the release and architecture; record the stock kernel", commands=(
            Command("freebsd-version -k", record="freebsd_version"),
            Command("uname -m", record="machine"),
            Command("sysctl -n kern.version | head -n 1", record="stock_version_line"),
            Command("sha256 -q /boot/kernel/kernel", record="stock_kernel_sha256"),
        ), check=_check_release),
        GuestStep("base-config", "hostname, root file system grown to the disk, management "
                  f"interface {FreeBSDProfile.mgmt_ifname} as {MGMT_GUEST_IP}/24", commands=(
            Command("service growfs onestart", timeout="extract"),
            Command(f"sysrc hostname={HOSTNAME}"),
            Command("if sysrc -n ifconfig_DEFAULT >/dev/null 2>&1; then sysrc -x ifconfig_DEFAULT; fi"),
            Command(f"sysrc {_q(f'ifconfig_{FreeBSDProfile.mgmt_ifname}=inet {MGMT_GUEST_IP}/24')} "
                    f"defaultrouter={SLIRP_GATEWAY}"),
            Command(f"printf 'nameserver {SLIRP_DNS}\\n' > /etc/resolv.conf"),
            Command("df -h /", record="root_fs"),
        )),
        GuestStep("loader-conf", "serial console, no loader delay, the tunables asked for", commands=(
            Command(_printf_lines(loader_conf_lines(plan), "/boot/loader.conf")),
            Command("cat /boot/loader.conf", record="loader_conf"),
        )),
        GuestStep("sshd", "sshd on, root by key only", commands=(
            Command(f"sed -i '' -E '/^({SSHD_DROP})[[:space:]]/d' /etc/ssh/sshd_config"),
            Command(_printf_lines(SSHD_LINES, "/etc/ssh/sshd_config")),
            Command("ssh-keygen -A"),
            Command("sshd -t"),
            Command("sysrc sshd_enable=YES"),
            Command("install -d -m 700 /root/.ssh"),
        )),
        GuestStep("install-pkt-gen", "pkt-gen from the net/pkt-gen package", commands=(
            Command("env ASSUME_ALWAYS_YES=yes pkg install -y pkt-gen", timeout="pkg"),
            Command("pkg query %v pkt-gen", record="pkt_gen_version"),
            Command("command -v pkt-gen", record="pkt_gen_path"),
        )),
    ]
    src = plan.source
    extract = f"tar -C / -xf /tmp/{src.archive.name}" + ("" if src.full else f" {NETMAP_SRC}")
    steps.append(GuestStep("fetch-src", f"/usr/src from {src.description}"
                           + ("" if src.full else " (tools/tools/netmap only)"), commands=(
        *_fetch_verified(plan, src.archive),
        Command(extract, timeout="extract"),
        Command(f"rm -f /tmp/{src.archive.name}"),
    )))
    make = "make -C /usr/src/tools/tools/netmap PROGS=bridge"
    steps.append(GuestStep("build-bridge", "netmap bridge from tools/tools/netmap (the package lacks it)",
                           commands=(
        Command(make, timeout="build_bridge"),
        Command(f'install -m 0755 "$({make} -V .OBJDIR)/bridge" {BRIDGE_PATH}'),
        Command(f"sha256 -q {BRIDGE_PATH}", record="bridge_sha256"),
    )))
    if kernel.kind == "prebuilt":
        assert kernel.archive is not None
        name = kernel.archive.name
        steps.append(GuestStep("install-kernel", f"install {kernel.description}; keep the stock one as "
                               "/boot/kernel.stock", commands=(
            *_fetch_verified(plan, kernel.archive),
            Command("rm -rf /boot/kernel.stock && mv /boot/kernel /boot/kernel.stock"),
            Command(f"tar -C / -xf /tmp/{name} && kldxref /boot/kernel"),
            Command(f"rm -f /tmp/{name}"),
            Command("sha256 -q /boot/kernel/kernel", record="installed_kernel_sha256"),
        ), check=_check_installed_kernel))
    elif kernel.kind == "src":
        if kernel.patch is not None:
            steps.append(GuestStep("apply-patch", f"apply {kernel.patch.name} to /usr/src", commands=(
                *_fetch_verified(plan, kernel.patch),
                Command(f"patch -p{kernel.patch_strip} -N -d /usr/src -i /tmp/{kernel.patch.name}"),
            )))
        conf = _q(kernel.kernconf)
        steps.append(GuestStep("build-kernel", f"make buildkernel installkernel KERNCONF={kernel.kernconf}; "
                               "keep the stock kernel as /boot/kernel.stock", commands=(
            Command(_logged(f'make -C /usr/src -j"$(sysctl -n hw.ncpu)" buildkernel KERNCONF={conf}',
                            "/var/log/harness-buildkernel.log"), timeout="buildkernel"),
            Command("rm -rf /boot/kernel.stock && mv /boot/kernel /boot/kernel.stock"),
            Command(_logged(f"make -C /usr/src installkernel KERNCONF={conf}",
                            "/var/log/harness-installkernel.log"), timeout="installkernel"),
            Command("sha256 -q /boot/kernel/kernel", record="installed_kernel_sha256"),
            Command("rm -rf /usr/obj", timeout="extract"),
        )))
    elif kernel.kind != "stock":
        raise HarnessError(f"unknown kernel kind {kernel.kind!r}")
    steps += [
        GuestStep("reboot", "reboot into the kernel under test; log in again", action="reboot"),
        GuestStep("verify-kernel", "the running kernel is the one asked for", commands=(
            Command("sysctl -n kern.bootfile", record="bootfile"),
            Command("sha256 -q /boot/kernel/kernel", record="running_kernel_sha256"),
            Command("sysctl -n kern.version | head -n 1", record="version_line"),
            Command("uname -v", record="uname_v"),
            Command("uname -r", record="uname_r"),
            Command("sysctl -n kern.ident", record="kern_ident"),
        ), check=check_kernel),
        GuestStep("check-netmap", "/dev/netmap exists (netmap.ko loaded at boot if not built in)", commands=(
            Command("if [ ! -c /dev/netmap ]; then kldload netmap && "
                    + _printf_lines(['netmap_load="YES"'], "/boot/loader.conf") + "; fi; test -c /dev/netmap"),
        )),
        GuestStep("record", "versions and checksums of the netmap programs", commands=(
            Command('sha256 -q "$(command -v pkt-gen)"', record="pkt_gen_sha256"),
            *((Command("sha256 -q /boot/kernel.stock/kernel", record="kept_stock_kernel_sha256"),)
              if kernel.kind != "stock" else ()),
        ), check=_check_kept_stock),
        GuestStep("poweroff", "shut down cleanly (QEMU exits)", action="poweroff"),
    ]
    return steps


def _logged(command: str, logfile: str) -> str:
    """Long build output goes to a file in the guest; its tail on failure."""
    return f"{command} > {logfile} 2>&1 || {{ tail -n 60 {logfile}; exit 1; }}"


# -- checks -------------------------------------------------------------------
def _check_release(plan: GuestPlan, facts: dict[str, str]) -> None:
    running = facts.get("freebsd_version", "")
    if not running.startswith(f"{plan.version}-RELEASE"):
        raise HarnessError(f"the image runs FreeBSD {running or '?'}, not the {plan.version}-RELEASE asked for")
    if facts.get("machine") != plan.arch:
        raise HarnessError(f"the image is {facts.get('machine')}, not {plan.arch}")


def _check_installed_kernel(plan: GuestPlan, facts: dict[str, str]) -> None:
    if facts.get("installed_kernel_sha256") != plan.kernel.kernel_sha256:
        raise KernelMismatch(f"/boot/kernel/kernel after the install has SHA-256 "
                             f"{facts.get('installed_kernel_sha256')}, but {plan.kernel.description} has "
                             f"{plan.kernel.kernel_sha256}")


def _check_kept_stock(plan: GuestPlan, facts: dict[str, str]) -> None:
    if plan.kernel.kind != "stock" and facts.get("kept_stock_kernel_sha256") != facts.get("stock_kernel_sha256"):
        raise HarnessError("/boot/kernel.stock/kernel is not the release's stock kernel "
                           f"({facts.get('kept_stock_kernel_sha256')} != {facts.get('stock_kernel_sha256')})")


def kernel_problems(plan: GuestPlan, facts: dict[str, str]) -> list[str]:
    """Every way the running kernel differs from the one asked for."""
    problems = []
    kernel = plan.kernel
    if facts.get("bootfile") != "/boot/kernel/kernel":
        problems.append(f"the loader booted {facts.get('bootfile')!r}, not /boot/kernel/kernel "
                        "(a failed boot falls back to kernel.old or kernel.stock)")
    running_sha = facts.get("running_kernel_sha256")
    version_line = facts.get("version_line", "")
    if kernel.kind == "stock":
        if running_sha != facts.get("stock_kernel_sha256"):
            problems.append(f"/boot/kernel/kernel has SHA-256 {running_sha}, not the stock kernel's "
                            f"{facts.get('stock_kernel_sha256')}")
        if version_line != facts.get("stock_version_line"):
            problems.append(f"the running kernel is {version_line!r}, not the stock "
                            f"{facts.get('stock_version_line')!r}")
    elif kernel.kind == "prebuilt":
        if running_sha != kernel.kernel_sha256:
            problems.append(f"/boot/kernel/kernel has SHA-256 {running_sha}, not {kernel.kernel_sha256} "
                            f"({kernel.description})")
        if kernel.kernel_file is not None and not _file_contains(kernel.kernel_file, version_line):
            problems.append(f"the running kernel says {version_line!r}, which {kernel.kernel_file} does not "
                            "contain: another kernel is running")
    else:  # src
        if running_sha != facts.get("installed_kernel_sha256"):
            problems.append(f"/boot/kernel/kernel has SHA-256 {running_sha}, not the "
                            f"{facts.get('installed_kernel_sha256')} just installed")
        if version_line == facts.get("stock_version_line"):
            problems.append(f"the running kernel is still the stock one ({version_line!r})")
    return problems


def check_kernel(plan: GuestPlan, facts: dict[str, str]) -> None:
    problems = kernel_problems(plan, facts)
    if problems:
        raise KernelMismatch("the running kernel is not the one asked for ("
                             f"{plan.kernel.description}):\n  - " + "\n  - ".join(problems),
                             hint="look at the console log for the loader's messages; check the "
                                  "kernel you gave boots on this release")


def _file_contains(path: Path, text: str) -> bool:
    if not text:
        return False
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return data.find(text.encode()) >= 0


# -- running them -------------------------------------------------------------
@dataclass
class StepRecord:
    name: str
    seconds: float
    commands: list[dict[str, object]] = field(default_factory=list)


@dataclass
class ProvisionResult:
    facts: dict[str, str]
    steps: list[StepRecord]


class Provisioner:
    """Runs `guest_steps(plan)` on a console; every failure is a ProvisionError."""

    def __init__(self, console: ConsoleLike, plan: GuestPlan, timeouts: StepTimeouts | None = None,
                 *, console_log: Path | None = None) -> None:
        self.console = console
        self.plan = plan
        self.timeouts = timeouts or StepTimeouts()
        self.console_log = console_log
        self.facts: dict[str, str] = {}
        self.records: list[StepRecord] = []

    def run(self) -> ProvisionResult:
        for step in guest_steps(self.plan):
            self.run_step(step)
        return ProvisionResult(dict(self.facts), list(self.records))

    def run_step(self, step: GuestStep) -> None:
        log.info("step %s: %s", step.name, step.summary)
        record = StepRecord(step.name, 0.0)
        self.records.append(record)
        start = time.monotonic()
        try:
            if step.action == "login":
                self._login(self.timeouts.boot)
            elif step.action == "reboot":
                self.console.sendline("shutdown -r now")
                self._login(self.timeouts.reboot)
            elif step.action == "poweroff":
                self._poweroff()
            for command in step.commands:
                result = self.console.run(command.text, timeout=getattr(self.timeouts, command.timeout))
                record.commands.append({"command": command.text, "status": result.status,
                                        "seconds": round(result.seconds, 3)})
                log.info("step %s: $ %s -> %d\n%s", step.name, command.text, result.status, result.output.rstrip())
                result.check()
                if command.record:
                    self.facts[command.record] = result.output.strip()
            if step.check is not None:
                step.check(self.plan, self.facts)
        except HarnessError as exc:
            raise ProvisionError(step.name, _detail(exc), console_tail=self._tail(),
                                 hint=exc.hint or self._hint(step)) from exc
        finally:
            record.seconds = round(time.monotonic() - start, 3)
        log.info("step %s done in %.1f s", step.name, record.seconds)

    def _login(self, boot_seconds: float) -> None:
        prompt = self.console.wait_for_prompt(Deadline(boot_seconds, "boot to the login prompt"))
        self.console.login(prompt, Deadline(self.timeouts.login, "login"))

    def _poweroff(self) -> None:
        self.console.sendline("shutdown -p now")
        try:
            self.console.spawn.expect(pexpect.EOF, timeout=self.timeouts.poweroff)
        except pexpect.TIMEOUT:
            raise HarnessError(f"the guest did not power off within {self.timeouts.poweroff:.0f} s") from None

    def _tail(self) -> str:
        return self.console.tail()

    def _hint(self, step: GuestStep) -> str | None:
        if step.action in ("login", "reboot"):
            return boot_diagnosis(self._console_text())
        return None

    def _console_text(self) -> str:
        if self.console_log is None:
            return self.console.tail(400)
        try:
            return self.console_log.read_text(errors="replace")
        except OSError:
            return ""


def _detail(exc: HarnessError) -> str:
    """The error's message and details, without its hint or its own console
    tail (the ProvisionError carries one)."""
    if isinstance(exc, PhaseTimeout):
        return exc.message
    text = str(exc)
    if exc.hint:
        text = text.replace(f"\n  what to do: {exc.hint}", "")
    return text


def boot_diagnosis(console_text: str) -> str:
    """How far the boot got, from the console log, and what that suggests."""
    profile = FreeBSDProfile
    if re.search(profile.getty_banner_pattern, console_text):
        return ("getty's banner came but no usable prompt followed: check the login "
                "and shell prompt patterns against the console log")
    if re.search(profile.kernel_banner_pattern, console_text):
        return "the kernel started but never reached a login prompt: look for an rc or mount error"
    if re.search(profile.loader_pattern, console_text):
        return "the loader ran but the kernel never printed its banner on the serial console"
    if not console_text.strip():
        return ("nothing arrived on the serial console: the image may not use one (the plain "
                "VM image needs UEFI firmware: --flavour vm-image picks it), or the guest is "
                "very slow (TCG); raise the timeouts with --timeout-scale")
    return "the console shows output but no FreeBSD loader, kernel or getty: is this a FreeBSD image?"

