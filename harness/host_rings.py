"""The vtnet netmap review's third test plan, step by step: the netmap
`bridge` between the NIC's hardware rings and its host rings, so every packet
of the guest's own stack passes through netmap, then ping and TCP both ways.

Guest-side steps go over the serial console: the bridge takes the NIC away
from the guest's stack, and a control channel through it would die with it.
Without netmap in the guest the same ping/TCP/interrupt steps run over the
plain kernel path, as a baseline recorded as such.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.deadline import Deadline
from harness.errors import HarnessError
from harness.host_tap import HostProcess
from harness.ping import PingStats, parse_ping
from harness.pktgen_parse import BridgeReady, bridge_argv, parse_bridge_ready

if TYPE_CHECKING:
    from harness.guest import Guest

log = logging.getLogger(__name__)

HOST_OFFLOADS_OFF = {"tx": False, "sg": False, "tso": False, "gso": False, "gro": False}
TO_GUEST_PORT = 5001
FROM_GUEST_PORT = 5002


class TransferFailed(HarnessError):
    """A TCP transfer stalled, or did not finish by its deadline."""

    def __init__(self, message: str, *, moved: int, expected: int) -> None:
        super().__init__(message)
        self.moved = moved
        self.expected = expected


@dataclass(frozen=True)
class Transfer:
    direction: str
    bytes: int
    seconds: float
    sha256_sent: str
    sha256_received: str

    @property
    def intact(self) -> bool:
        return self.sha256_sent == self.sha256_received

    @property
    def mbps(self) -> float:
        return self.bytes * 8 / self.seconds / 1e6 if self.seconds > 0 else 0.0

    def as_record(self) -> dict[str, Any]:
        return {**asdict(self), "intact": self.intact, "mbps": self.mbps}


def netmap_bridge_missing(guest: Guest) -> str | None:
    """Why the netmap steps cannot run in this guest, or None if they can."""
    console, profile = guest.console, guest.profile
    if not profile.netmap_present(console):
        return (f"no /dev/netmap in the {profile.name} guest (netmap is not loaded"
                + (": supply a netmap build with --guest-netmap DIR)" if profile.name == "linux" else ")"))
    if profile.tool_path(console, "bridge") is None:
        return f"no netmap `bridge` program in the guest (looked in {', '.join(profile.netmap_tool_dirs)})"
    return None


def disable_offloads(guest: Guest) -> dict[str, Any]:
    """All offloads off: in the guest as far as it can, on the QEMU device
    for what it cannot (the guest was booted with the profile's
    offload_nic_props), and on the host TAP. Returns what is really off."""
    guest_states = guest.profile.disable_offloads(guest.console, guest.dut_ifname)
    host_states = guest.net.set_offloads(guest.host_tap, **HOST_OFFLOADS_OFF)
    features = guest.profile.negotiated_features(guest.console, guest.dut_ifname)
    return {"guest": guest_states, "host_tap": host_states, "nic_props": dict(guest.vm.spec.nic_props),
            "virtio_features": list(features.names) if features else None,
            "still_on": sorted([f"guest {k}" for k, on in guest_states.items() if on]
                               + [f"host_tap {k}" for k, on in host_states.items() if on])}


class NetmapBridge:
    """netmap `bridge -w0 -i netmap:<nic>` in the background on the console."""

    LOG = "/tmp/harness-bridge.log"

    def __init__(self, guest: Guest) -> None:
        self.guest = guest
        program = guest.profile.tool_path(guest.console, "bridge")
        if program is None:
            raise HarnessError("no netmap bridge program in the guest")
        self.argv = bridge_argv(f"netmap:{guest.dut_ifname}", 0, program=program)
        self.pid: int | None = None

    def start(self, deadline: Deadline) -> BridgeReady:
        out = self.guest.console.run(f"{shlex.join(self.argv)} > {self.LOG} 2>&1 < /dev/null & echo $!",
                                     check=True).output
        self.pid = int(out.strip())

        def ready() -> BridgeReady | None:
            self.guest.check_alive()
            text = self.guest.console.run(f"cat {self.LOG}").output
            if not self.running():
                raise HarnessError(f"netmap bridge exited before it was ready:\n{text[-1500:]}")
            return parse_bridge_ready(text)

        return deadline.wait_for(ready, "the netmap bridge's 'Ready to go'", interval=0.2)

    def running(self) -> bool:
        return self.pid is not None and self.guest.console.run(f"kill -0 {self.pid}").ok

    def stop(self, deadline: Deadline) -> None:
        """SIGINT: bridge leaves its loop within one poll timeout (2.5 s)."""
        if self.pid is None:
            return
        self.guest.console.run(f"kill -INT {self.pid}")
        deadline.wait_for(lambda: not self.running(), "the netmap bridge to exit", interval=0.2)
        self.pid = None

    def kill(self) -> None:
        if self.pid is not None:
            self.guest.console.run_quietly(f"kill -KILL {self.pid} 2>/dev/null; true")
            self.pid = None


def ping(guest: Guest, count: int = 100, interval: float = 0.05, timeout: float = 60.0) -> PingStats:
    proc = guest.net.run(["ping", "-c", str(count), "-i", str(interval), "-W", "2", guest.ip],
                         timeout=timeout, check=False)
    return parse_ping(proc.stdout + proc.stderr)


def wait_reachable(guest: Guest, deadline: Deadline) -> None:
    """Poll until the guest answers one ping. After the NIC changes hands
    (netmap opens or closes it, a link comes back) the first frames can be lost
    while links settle and ARP is relearned; loss is measured after this."""
    def answers() -> bool:
        probe = guest.net.run(["ping", "-c", "1", "-W", "1", guest.ip], timeout=5, check=False)
        return probe.returncode == 0
    deadline.wait_for(answers, f"the guest at {guest.ip} to answer ping", interval=0.2)


def interrupts(guest: Guest) -> dict[str, int]:
    return guest.profile.interrupt_counts(guest.console, guest.dut_ifname)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _follow(direction: str, moved: Callable[[], int], expected: int, deadline: Deadline, stall: float,
            check: Callable[[], None]) -> float:
    """Poll `moved()` until it reaches `expected`; fail when no byte moves for
    `stall` seconds or the deadline passes, saying how far it got."""
    start = last_change = time.monotonic()
    last = -1
    while True:
        check()
        now_moved = moved()
        now = time.monotonic()
        if now_moved >= expected:
            return now - start
        if now_moved != last:
            last, last_change = now_moved, now
        elif now - last_change >= stall:
            raise TransferFailed(f"TCP {direction} stalled: {now_moved} of {expected} bytes moved in "
                                 f"{now - start:.1f} s, none in the last {stall:.0f} s",
                                 moved=now_moved, expected=expected)
        if deadline.expired:
            raise TransferFailed(f"TCP {direction} did not finish in {deadline.seconds:.0f} s "
                                 f"(phase '{deadline.phase}'): {now_moved} of {expected} bytes moved",
                                 moved=now_moved, expected=expected)
        time.sleep(0.3)


def tcp_to_guest(guest: Guest, size: int, work_dir: Path, *, timeout: float, stall: float = 15.0) -> Transfer:
    """Random bytes from the host namespace to a netcat listener in the guest."""
    console, profile = guest.console, guest.profile
    work_dir.mkdir(parents=True, exist_ok=True)
    source = work_dir / "to-guest.bin"
    source.write_bytes(os.urandom(size))
    target = "/tmp/harness-from-host.bin"
    deadline = Deadline(timeout, "transfer host -> guest")
    listener = int(console.run(f"rm -f {target}; nc -l {TO_GUEST_PORT} > {target} 2>/tmp/harness-nc.err "
                               f"< /dev/null & echo $!", check=True).output.strip())
    sender: HostProcess | None = None
    try:
        deadline.wait_for(lambda: profile.tcp_listening(console, TO_GUEST_PORT), "the guest's listener",
                          interval=0.2)
        sender = guest.net.spawn(["sh", "-c", f"exec nc -N {guest.ip} {TO_GUEST_PORT} < {shlex.quote(str(source))}"],
                                 work_dir / "nc-to-guest.log")
        seconds = _follow("host -> guest", lambda: profile.file_size(console, target), size, deadline, stall,
                          guest.check_alive)
        received = console.run(profile.sha256_command(target), check=True).output.split()[0]
        return Transfer("host->guest", size, seconds, _sha256(source), received)
    finally:
        if sender is not None:
            sender.close()
        console.run_quietly(f"kill -KILL {listener} 2>/dev/null; rm -f {target}; true")


def tcp_from_guest(guest: Guest, size: int, work_dir: Path, *, timeout: float, stall: float = 15.0) -> Transfer:
    """Random bytes from the guest to a netcat listener in the host namespace."""
    console, profile, net = guest.console, guest.profile, guest.net
    work_dir.mkdir(parents=True, exist_ok=True)
    target = work_dir / "from-guest.bin"
    target.unlink(missing_ok=True)
    source = "/tmp/harness-to-host.bin"
    deadline = Deadline(timeout, "transfer guest -> host")
    sent = console.run(f"head -c {size} /dev/urandom > {source} && {profile.sha256_command(source)}",
                       check=True, timeout=timeout).output.split()[0]
    listener = net.spawn(["sh", "-c", f"exec nc -l {net.bridge_ip} {FROM_GUEST_PORT} "
                                      f"> {shlex.quote(str(target))} < /dev/null"], work_dir / "nc-listener.log")
    sender_pid = None
    try:
        deadline.wait_for(lambda: bool(net.run(["ss", "-Hltn", f"sport = :{FROM_GUEST_PORT}"], timeout=10,
                                               check=False).stdout.strip()), "the host's listener", interval=0.1)
        sender_pid = int(console.run(f"nc -N {net.bridge_ip} {FROM_GUEST_PORT} < {source} > /dev/null "
                                     f"2>/tmp/harness-nc.err & echo $!", check=True).output.strip())
        seconds = _follow("guest -> host", lambda: target.stat().st_size if target.exists() else 0, size,
                          deadline, stall, guest.check_alive)
        return Transfer("guest->host", size, seconds, sent, _sha256(target))
    finally:
        listener.close()
        kill = f"kill -KILL {sender_pid} 2>/dev/null; " if sender_pid else ""
        console.run_quietly(f"{kill}rm -f {source}; true")


def stress_bridge(guest: Guest, cycles: int, *, step_timeout: float) -> dict[str, Any]:
    """Open and close the bridge `cycles` times while the host pings the guest
    fast (netmap issue #706 was a vtnet panic in exactly this sequence)."""
    traffic = guest.net.spawn(["ping", "-i", "0.01", "-W", "1", guest.ip], guest.run_dir / "stress-ping.log")
    opened = 0
    try:
        for _ in range(cycles):
            bridge = NetmapBridge(guest)
            try:
                bridge.start(Deadline(step_timeout, "bridge open (stress)"))
                opened += 1
                bridge.stop(Deadline(step_timeout, "bridge close (stress)"))
            finally:
                bridge.kill()
            guest.check_alive()
    finally:
        traffic.interrupt()
        traffic.close()
    alive = guest.console.run("echo alive", timeout=step_timeout).output == "alive\n"
    guest.check_alive()
    return {"cycles": cycles, "opened": opened, "guest_alive": alive}
