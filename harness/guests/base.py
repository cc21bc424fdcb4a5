"""The interface every guest OS profile fills in.

A profile knows its OS's prompts, names and commands, and parses what those
commands print. It never holds a connection: every method that asks the guest
something takes a Runner (the console or SSH) and returns plain data.
"""

from __future__ import annotations

import re
import shlex
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from harness.command import Runner
from harness.host_tap import Counters

# virtio-net feature bits (virtio spec 5.1.3) and common transport bits.
VIRTIO_NET_FEATURES = {
    0: "CSUM", 1: "GUEST_CSUM", 2: "CTRL_GUEST_OFFLOADS", 3: "MTU", 5: "MAC",
    7: "GUEST_TSO4", 8: "GUEST_TSO6", 9: "GUEST_ECN", 10: "GUEST_UFO",
    11: "HOST_TSO4", 12: "HOST_TSO6", 13: "HOST_ECN", 14: "HOST_UFO",
    15: "MRG_RXBUF", 16: "STATUS", 17: "CTRL_VQ", 18: "CTRL_RX", 19: "CTRL_VLAN",
    21: "GUEST_ANNOUNCE", 22: "MQ", 23: "CTRL_MAC_ADDR",
    28: "RING_INDIRECT_DESC", 29: "RING_EVENT_IDX", 32: "VERSION_1",
    33: "ACCESS_PLATFORM", 34: "RING_PACKED", 35: "IN_ORDER",
}


@dataclass(frozen=True)
class ConsolePatterns:
    """Regexes (matched with re.MULTILINE) for what the console shows."""

    login: str
    shell: str
    password: str = r"[Pp]assword: ?$"


@dataclass(frozen=True)
class NetmapRings:
    """netmap's view of the NIC under test, as the guest kernel logged it."""

    tx_rings: int
    tx_slots: int
    rx_rings: int
    rx_slots: int
    mode: str = "native"  # native | emulated


@dataclass(frozen=True)
class VirtioFeatures:
    """Negotiated virtio feature bits of the NIC under test."""

    bits: int
    names: tuple[str, ...] = field(default_factory=tuple)


class GuestProfile(ABC):
    """Prompts, names and commands of one guest OS."""

    name: str
    patterns: ConsolePatterns
    user = "root"
    password: str | None = None
    mgmt_nic_model = "virtio-net-pci"
    # Commands sent once after login: a POSIX shell, no echo, no job control
    # messages, so marker-wrapped commands parse exactly.
    shell_setup: tuple[str, ...] = ()
    # Lines the kernel writes on the console by itself; removed from command
    # output when they land inside it.
    kernel_line: re.Pattern[str]
    # Console text that means the kernel died or is dying.
    panic_patterns: tuple[str, ...] = ()
    # The kernel debugger's prompt and what to ask it after a panic.
    debugger_prompt: str | None = None
    debugger_commands: tuple[str, ...] = ()
    # Where netmap's programs are looked for, in order.
    netmap_tool_dirs: tuple[str, ...] = ("/usr/local/bin", "/usr/bin", "/root/netmap")

    # virtio-net device properties (QEMU side) that switch off what the guest
    # cannot switch off itself, for the host-ring test plan.
    offload_nic_props: dict[str, str] = {}

    host_key_path = "/etc/ssh/ssh_host_ed25519_key.pub"

    def host_key_command(self, wait_seconds: int = 30) -> str:
        """Print the SSH host key, waiting for the guest to have made it."""
        path = shlex.quote(self.host_key_path)
        return (f"i=0; while [ ! -s {path} ] && [ $i -lt {wait_seconds * 10} ]; do sleep 0.1; i=$((i + 1)); done; "
                f"cat {path}")

    def authorize_key_command(self, public_key: str) -> str:
        key = shlex.quote(public_key.strip())
        return (f"mkdir -p /root/.ssh && chmod 700 /root/.ssh && "
                f"printf '%s\\n' {key} > /root/.ssh/authorized_keys && "
                f"chmod 600 /root/.ssh/authorized_keys")

    def tool_path(self, runner: Runner, tool: str) -> str | None:
        """Where `tool` (pkt-gen, bridge) is in the guest, or None."""
        candidates = " ".join(shlex.quote(f"{d}/{tool}") for d in self.netmap_tool_dirs)
        out = runner.run(f"for p in {candidates}; do [ -x \"$p\" ] && echo \"$p\" && break; done; "
                         f"command -v {shlex.quote(tool)} || true").output.split()
        return out[0] if out else None

    def netmap_present(self, runner: Runner) -> bool:
        return runner.run("test -c /dev/netmap").status == 0

    def sha256_command(self, path: str) -> str:
        """A command printing the SHA-256 of `path` (first word of its output)."""
        return f"sha256sum {shlex.quote(path)}"

    def file_size(self, runner: Runner, path: str) -> int:
        out = runner.run(f"wc -c < {shlex.quote(path)} 2>/dev/null || echo 0").output.strip()
        return int(out) if out.isdigit() else 0

    @abstractmethod
    def tcp_listening(self, runner: Runner, port: int) -> bool:
        """Whether something listens on TCP `port` in the guest."""

    # -- what each OS must say for itself ---------------------------------
    @abstractmethod
    def dut_ifname(self, runner: Runner, mac: str) -> str:
        """The guest's name for the NIC under test (found by its MAC)."""

    @abstractmethod
    def interface_counters(self, runner: Runner, ifname: str) -> Counters:
        """The interface's counters, in the host's Counters terms."""

    @abstractmethod
    def set_address(self, runner: Runner, ifname: str, cidr: str) -> None:
        """Give the NIC an address and bring it up."""

    @abstractmethod
    def link_up(self, runner: Runner, ifname: str) -> bool:
        """Whether the NIC is up with its link active, ready to send."""

    @abstractmethod
    def disable_offloads(self, runner: Runner, ifname: str) -> dict[str, bool]:
        """Switch every offload of the NIC off as far as the guest can, and
        return the offload states read back afterwards ({name: on})."""

    @abstractmethod
    def offload_states(self, runner: Runner, ifname: str) -> dict[str, bool]:
        """The NIC's offloads as the guest reports them ({name: on})."""

    @abstractmethod
    def negotiated_features(self, runner: Runner, ifname: str) -> VirtioFeatures | None:
        """The virtio features the driver negotiated, or None if unreadable."""

    @abstractmethod
    def queue_pairs(self, runner: Runner, ifname: str) -> int | None:
        """Active queue pairs of the NIC."""

    @abstractmethod
    def interrupt_counts(self, runner: Runner, ifname: str) -> dict[str, int]:
        """Interrupts delivered so far per vector of the NIC's virtio device."""

    @abstractmethod
    def netmap_rings(self, runner: Runner, ifname: str) -> NetmapRings | None:
        """netmap rings/slots of the NIC from the kernel log, or None."""

    @abstractmethod
    def kernel_identity(self, runner: Runner) -> dict[str, str]:
        """What identifies the running kernel (release, version string, ...)."""
