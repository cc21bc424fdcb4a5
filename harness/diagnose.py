"""What the harness collects when a phase times out, before it kills
anything: QMP status, the console's last lines, host TAP and bridge
counters, QEMU's CPU use (spinning or idle?), and for guests with a kernel
debugger (FreeBSD) a break into it for a backtrace."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import pexpect

if TYPE_CHECKING:
    from harness.console import Console
    from harness.guests.base import GuestProfile
    from harness.host_tap import HostNetwork
    from harness.vm import QemuVM

log = logging.getLogger(__name__)


def _guarded(name: str, fn: Any, out: dict[str, Any]) -> None:
    try:
        out[name] = fn()
    except Exception as exc:  # a diagnosis never hides the failure it explains
        out[name] = f"could not collect: {type(exc).__name__}: {exc}"


def qemu_cpu(vm: QemuVM, window: float = 0.5) -> str:
    first = vm.cpu_seconds()
    time.sleep(window)
    second = vm.cpu_seconds()
    if first is None or second is None:
        return "QEMU process gone"
    share = (second - first) / window
    state = "spinning" if share > 0.5 else "idle" if share < 0.02 else "busy"
    return f"{second:.1f} s CPU so far, {share:.0%} of a core over the last {window:g} s ({state})"


def break_into_debugger(vm: QemuVM, console: Console, profile: GuestProfile) -> str:
    """NMI the guest (FreeBSD enters ddb on NMI) and ask the debugger."""
    if not profile.debugger_prompt or console._spawn is None:
        return "no kernel debugger for this guest"
    vm.inject_nmi()
    try:
        console.spawn.expect(profile.debugger_prompt, timeout=5)
    except (pexpect.TIMEOUT, pexpect.EOF):
        return "the guest did not enter its debugger after an NMI"
    return console.debugger_dump()


def collect(vm: QemuVM, net: HostNetwork | None, console: Console | None,
            profile: GuestProfile | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _guarded("qmp_status", lambda: vm.status(), out)
    _guarded("qemu_cpu", lambda: qemu_cpu(vm), out)
    if net is not None:
        _guarded("host_counters", lambda: {name: net.counters(name).as_dict()
                                           for name in (*net.taps, net.bridge)}, out)
    if console is not None and profile is not None and profile.debugger_prompt and vm.running:
        _guarded("debugger", lambda: break_into_debugger(vm, console, profile), out)
    _guarded("console_tail", lambda: vm.console_tail(40), out)
    return out
