"""The provisioning sequence, driven through the real harness.console.Console
against tests/freebsd_console_double.py: a TEST DOUBLE for the FreeBSD guest
(FreeBSD cannot run here). It replays the real 13.2 console sample (getty,
`login:`, root without a password, motd, prompt, interleaved syslog lines)
and answers the marker-wrapped commands with canned outputs. So the requested
release is 13.2, the release of the replayed console.

The canned outputs (checksums, versions) are test inputs. The kernel version
line is the one the sample's `uname -a` shows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.console import Console
from harness.deadline import Deadline
from harness.freebsd_provision import (
    GuestPlan,
    KernelChoice,
    KernelMismatch,
    Provisioner,
    ProvisionError,
    ServedFile,
    SourceChoice,
    StepTimeouts,
    guest_steps,
)
from harness.guests.freebsd import FreeBSDProfile
from tests.freebsd_console_double import ScriptedFreeBSDConsole

STOCK_LINE = "FreeBSD 13.2-RELEASE releng/13.2-n254617-525ecfdad597 GENERIC"
STOCK_SHA = "1" * 64
SRC = ServedFile("src.txz", "5" * 64)
FAST = StepTimeouts(boot=5, login=5, command=5, pkg=5, fetch=5, extract=5, build_bridge=5, buildkernel=5,
                    installkernel=5, reboot=5, poweroff=5)
SYSLOG = "May  8 17:28:49 freebsd dhclient[386]: connection closed"  # from the console sample


def stock_plan(**changes: object) -> GuestPlan:
    plan = GuestPlan("13.2", "amd64", "basic-ci", SourceChoice(SRC, full=False, description="src.txz"),
                     tunables=(("hw.vtnet.mq_disable", "1"), ("hw.vtnet.lro_disable", "1")),
                     base_url="http://10.0.2.2:8080/")
    return GuestPlan(**{**plan.__dict__, **changes})  # type: ignore[arg-type]


def replies(**extra: object) -> dict[str, object]:
    base: dict[str, object] = {
        "freebsd-version -k": ("13.2-RELEASE\n", 0),
        "uname -m": ("amd64\n", 0),
        "sysctl -n kern.version | head -n 1": (STOCK_LINE + "\n", 0),
        "sha256 -q /boot/kernel/kernel": (STOCK_SHA + "\n", 0),
        "pkg query %v pkt-gen": ("canned-1.0\n", 0),
        "command -v pkt-gen": ("/usr/local/bin/pkt-gen\n", 0),
        "sha256 -q /usr/local/bin/bridge": ("2" * 64 + "\n", 0),
        "sysctl -n kern.bootfile": ("/boot/kernel/kernel\n", 0),
        "uname -v": (STOCK_LINE + "\n", 0),
        "uname -r": ("13.2-RELEASE\n", 0),
        "sysctl -n kern.ident": ("GENERIC\n", 0),
        'sha256 -q "$(command -v pkt-gen)"': ("3" * 64 + "\n", 0),
    }
    base.update(extra)
    return base


@pytest.fixture
def guest(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    yield tmp_path / "console.sock", tmp_path / "console.log"


def provision(paths: tuple[Path, Path], plan: GuestPlan, double_replies: dict[str, object],
              timeouts: StepTimeouts = FAST, **double_options: object) -> tuple[ScriptedFreeBSDConsole, object]:
    sock, log = paths
    double = ScriptedFreeBSDConsole(sock, log, double_replies, **double_options)  # type: ignore[arg-type]
    with double, Console(sock, FreeBSDProfile(), log_path=log) as console:
        console.connect(Deadline(5, "console connect"))
        try:
            result: object = Provisioner(console, plan, timeouts, console_log=log).run()
        except ProvisionError as exc:
            result = exc
    assert double.error is None, double.error
    return double, result


STOCK_COMMANDS = [
    "true",
    "freebsd-version -k", "uname -m", "sysctl -n kern.version | head -n 1", "sha256 -q /boot/kernel/kernel",
    "service growfs onestart", "sysrc hostname=freebsd",
    "if sysrc -n ifconfig_DEFAULT >/dev/null 2>&1; then sysrc -x ifconfig_DEFAULT; fi",
    "sysrc 'ifconfig_em0=inet 10.0.2.15/24' defaultrouter=10.0.2.2",
    "printf 'nameserver 10.0.2.3\\n' > /etc/resolv.conf", "df -h /",
    "printf '%s\\n' '# harness: serial console, no loader delay, netmap/vtnet tunables' 'console=\"comconsole\"' "
    "'autoboot_delay=\"-1\"' 'beastie_disable=\"YES\"' 'loader_logo=\"none\"' 'hw.vtnet.mq_disable=\"1\"' "
    "'hw.vtnet.lro_disable=\"1\"' >> /boot/loader.conf",
    "cat /boot/loader.conf",
    "sed -i '' -E '/^(PermitRootLogin|PasswordAuthentication|KbdInteractiveAuthentication|PermitEmptyPasswords"
    "|UsePAM|UseDNS)[[:space:]]/d' /etc/ssh/sshd_config",
    "printf '%s\\n' '# harness: key-only root login (each run authorizes its own key)' "
    "'PermitRootLogin prohibit-password' 'PasswordAuthentication no' 'KbdInteractiveAuthentication no' "
    "'PermitEmptyPasswords no' 'UseDNS no' >> /etc/ssh/sshd_config",
    "ssh-keygen -A", "sshd -t", "sysrc sshd_enable=YES", "install -d -m 700 /root/.ssh",
    "env ASSUME_ALWAYS_YES=yes pkg install -y pkt-gen", "pkg query %v pkt-gen", "command -v pkt-gen",
    "fetch -q -o /tmp/src.txz http://10.0.2.2:8080/src.txz",
    f'test "$(sha256 -q /tmp/src.txz)" = {"5" * 64}',
    "tar -C / -xf /tmp/src.txz usr/src/tools/tools/netmap", "rm -f /tmp/src.txz",
    "make -C /usr/src/tools/tools/netmap PROGS=bridge",
    'install -m 0755 "$(make -C /usr/src/tools/tools/netmap PROGS=bridge -V .OBJDIR)/bridge" /usr/local/bin/bridge',
    "sha256 -q /usr/local/bin/bridge",
]
AFTER_REBOOT = [
    "true",
    "sysctl -n kern.bootfile", "sha256 -q /boot/kernel/kernel", "sysctl -n kern.version | head -n 1",
    "uname -v", "uname -r", "sysctl -n kern.ident",
    "if [ ! -c /dev/netmap ]; then kldload netmap && printf '%s\\n' 'netmap_load=\"YES\"' >> /boot/loader.conf; "
    "fi; test -c /dev/netmap",
    'sha256 -q "$(command -v pkt-gen)"',
]
STEPS = ["first-boot", "identify", "base-config", "loader-conf", "sshd", "install-pkt-gen", "fetch-src",
         "build-bridge", "reboot", "verify-kernel", "check-netmap", "record", "poweroff"]


def test_freebsd_provision_stock_kernel_exact_steps_and_commands(guest: tuple[Path, Path]) -> None:
    double, result = provision(guest, stock_plan(), replies(), interleave={"uname -m": SYSLOG})
    assert not isinstance(result, ProvisionError), result
    assert [s.name for s in result.steps] == STEPS  # type: ignore[attr-defined]
    assert double.commands == STOCK_COMMANDS + AFTER_REBOOT
    assert double.boots == 2
    # what the harness typed besides the wrapped commands: log in, set the shell up, reboot, power off
    setup = ["exec /bin/sh", "stty -echo", "set +m", "export TERM=dumb HISTFILE=/dev/null PAGER=cat PS1='# '"]
    outside = [line for line in double.typed if not line.startswith(("( ", ") >/tmp/.HX"))]
    assert outside == ["root", *setup, "shutdown -r now", "root", *setup, "shutdown -p now"]
    facts = result.facts  # type: ignore[attr-defined]
    assert facts["machine"] == "amd64"  # the syslog line written inside the output was removed
    assert facts["version_line"] == STOCK_LINE and facts["kern_ident"] == "GENERIC"
    assert facts["pkt_gen_version"] == "canned-1.0" and facts["bridge_sha256"] == "2" * 64


def test_freebsd_provision_prebuilt_kernel_is_installed_and_verified(guest: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    new_line = "FreeBSD 13.2-RELEASE #0 harness-test: Tue May  9 2023"
    kernel_file = tmp_path / "kernel"
    kernel_file.write_bytes(b"\x7fELF...\0" + new_line.encode() + b"\n    root@builder:/usr/obj/GENERIC\n\0")
    new_sha = hashlib.sha256(kernel_file.read_bytes()).hexdigest()
    kernel = KernelChoice("prebuilt", "the prebuilt kernel /k", archive=ServedFile("kernel.txz", "6" * 64),
                          kernel_sha256=new_sha, kernel_file=kernel_file)
    answers = replies(**{
        "sha256 -q /boot/kernel/kernel": [(STOCK_SHA + "\n", 0), (new_sha + "\n", 0)],
        "sysctl -n kern.version | head -n 1": [(STOCK_LINE + "\n", 0), (new_line + "\n", 0)],
        "sha256 -q /boot/kernel.stock/kernel": (STOCK_SHA + "\n", 0),
    })
    double, result = provision(guest, stock_plan(kernel=kernel), answers)
    assert not isinstance(result, ProvisionError), result
    install = double.commands[double.commands.index("sha256 -q /usr/local/bin/bridge") + 1:][:6]
    assert install == ["fetch -q -o /tmp/kernel.txz http://10.0.2.2:8080/kernel.txz",
                       f'test "$(sha256 -q /tmp/kernel.txz)" = {"6" * 64}',
                       "rm -rf /boot/kernel.stock && mv /boot/kernel /boot/kernel.stock",
                       "tar -C / -xf /tmp/kernel.txz && kldxref /boot/kernel",
                       "rm -f /tmp/kernel.txz", "sha256 -q /boot/kernel/kernel"]
    assert double.commands[-1] == "sha256 -q /boot/kernel.stock/kernel"
    assert result.facts["version_line"] == new_line  # type: ignore[attr-defined]


def test_freebsd_provision_fails_loudly_when_the_old_kernel_boots(guest: tuple[Path, Path],
                                                                  tmp_path: Path) -> None:
    kernel_file = tmp_path / "kernel"
    kernel_file.write_bytes(b"FreeBSD 13.2-RELEASE #0 harness-test\n")
    new_sha = hashlib.sha256(kernel_file.read_bytes()).hexdigest()
    kernel = KernelChoice("prebuilt", "the prebuilt kernel /k", archive=ServedFile("kernel.txz", "6" * 64),
                          kernel_sha256=new_sha, kernel_file=kernel_file)
    answers = replies(**{  # installed fine, but after the reboot the stock kernel runs from kernel.stock
        "sha256 -q /boot/kernel/kernel": [(STOCK_SHA + "\n", 0), (new_sha + "\n", 0)],
        "sysctl -n kern.bootfile": ("/boot/kernel.stock/kernel\n", 0),
    })
    double, result = provision(guest, stock_plan(kernel=kernel), answers)
    assert isinstance(result, ProvisionError)
    assert result.step == "verify-kernel" and isinstance(result.__cause__, KernelMismatch)
    text = str(result)
    assert "the loader booted '/boot/kernel.stock/kernel', not /boot/kernel/kernel" in text
    assert f"the running kernel says '{STOCK_LINE}', which {kernel_file} does not contain" in text
    assert double.commands[-1] == "sysctl -n kern.ident"  # nothing ran after the failed check


def test_freebsd_provision_src_build_with_patch_commands() -> None:
    kernel = KernelChoice("src", "GENERIC built from src.txz with D1.diff", patch=ServedFile("kernel.patch", "7" * 64),
                          kernconf="GENERIC")
    plan = stock_plan(kernel=kernel, source=SourceChoice(SRC, full=True, description="src.txz"))
    steps = {s.name: [c.text for c in s.commands] for s in guest_steps(plan)}
    assert list(steps)[7:10] == ["build-bridge", "apply-patch", "build-kernel"]
    assert steps["fetch-src"][2] == "tar -C / -xf /tmp/src.txz"  # the whole tree for a kernel build
    assert steps["apply-patch"][-1] == "patch -p1 -N -d /usr/src -i /tmp/kernel.patch"
    assert steps["build-kernel"][0].startswith('make -C /usr/src -j"$(sysctl -n hw.ncpu)" buildkernel KERNCONF=GENERIC')
    assert steps["build-kernel"][1:4] == ["rm -rf /boot/kernel.stock && mv /boot/kernel /boot/kernel.stock",
                                          "make -C /usr/src installkernel KERNCONF=GENERIC > "
                                          "/var/log/harness-installkernel.log 2>&1 || { tail -n 60 "
                                          "/var/log/harness-installkernel.log; exit 1; }",
                                          "sha256 -q /boot/kernel/kernel"]


def test_freebsd_provision_login_prompt_never_comes(guest: tuple[Path, Path]) -> None:
    timeouts = StepTimeouts(**{**FAST.__dict__, "boot": 1.0})
    double, result = provision(guest, stock_plan(), replies(), timeouts, stall="login")
    assert isinstance(result, ProvisionError)
    assert result.step == "first-boot"
    text = str(result)
    assert text.startswith("provisioning step 'first-boot' failed: phase 'boot to the login prompt' "
                           "timed out after 1.0 s: waiting for a login prompt")
    assert "getty's banner came but no usable prompt followed" in text  # what the console log showed
    assert "console log tail:\n" in text and "    FreeBSD/amd64 (freebsd) (ttyu0)" in text
    assert double.commands == []


def test_freebsd_provision_prompt_never_comes_after_the_reboot(guest: tuple[Path, Path]) -> None:
    timeouts = StepTimeouts(**{**FAST.__dict__, "reboot": 1.0})
    double, result = provision(guest, stock_plan(), replies(), timeouts, stall="reboot")
    assert isinstance(result, ProvisionError) and result.step == "reboot"
    assert "timed out after 1.0 s: waiting for a login prompt" in str(result)
    assert double.commands == STOCK_COMMANDS


def test_freebsd_provision_failing_command_names_its_step_and_output(guest: tuple[Path, Path]) -> None:
    failure = ("pkg: No packages available to install matching 'pkt-gen' have been found in the repositories\n", 1)
    double, result = provision(guest, stock_plan(),
                               replies(**{"env ASSUME_ALWAYS_YES=yes pkg install -y pkt-gen": failure}))
    assert isinstance(result, ProvisionError) and result.step == "install-pkt-gen"
    text = str(result)
    assert "command failed with status 1: env ASSUME_ALWAYS_YES=yes pkg install -y pkt-gen" in text
    assert "No packages available to install matching 'pkt-gen'" in text
    assert double.commands[-1] == "env ASSUME_ALWAYS_YES=yes pkg install -y pkt-gen"


def test_freebsd_provision_wrong_release_is_refused(guest: tuple[Path, Path]) -> None:
    double, result = provision(guest, stock_plan(version="14.3"), replies())
    assert isinstance(result, ProvisionError) and result.step == "identify"
    assert "the image runs FreeBSD 13.2-RELEASE, not the 14.3-RELEASE asked for" in str(result)


@pytest.mark.parametrize(("kind", "changes", "expected"), [
    ("stock", {}, []),
    ("stock", {"running_kernel_sha256": "9" * 64},
     [f"/boot/kernel/kernel has SHA-256 {'9' * 64}, not the stock kernel's {STOCK_SHA}"]),
    ("src", {"version_line": "FreeBSD 13.2-RELEASE #0 n254617-dirty: Tue May  9", "running_kernel_sha256": "8" * 64},
     []),
    ("src", {"running_kernel_sha256": "8" * 64},
     [f"the running kernel is still the stock one ('{STOCK_LINE}')"]),
    ("src", {"version_line": "FreeBSD 13.2-RELEASE #0 n254617-dirty: Tue May  9"},
     [f"/boot/kernel/kernel has SHA-256 {STOCK_SHA}, not the {'8' * 64} just installed"]),
])
def test_freebsd_kernel_check_by_kind(kind: str, changes: dict[str, str], expected: list[str]) -> None:
    from harness.freebsd_provision import kernel_problems

    facts = {"bootfile": "/boot/kernel/kernel", "stock_version_line": STOCK_LINE, "stock_kernel_sha256": STOCK_SHA,
             "version_line": STOCK_LINE, "running_kernel_sha256": STOCK_SHA, "installed_kernel_sha256": "8" * 64,
             **changes}
    assert kernel_problems(stock_plan(kernel=KernelChoice(kind)), facts) == expected
