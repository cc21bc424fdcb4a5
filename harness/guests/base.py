"""The interface every guest OS profile fills in."""

from __future__ import annotations

import re
import shlex
from abc import ABC, abstractmethod
from dataclasses import dataclass

from harness.command import Runner
from harness.host_tap import Counters


@dataclass(frozen=True)
class ConsolePatterns:
    login: str
    shell: str
    password: str = r"[Pp]assword: ?$"


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
    debugger_prompt: str | None = None
    debugger_commands: tuple[str, ...] = ()

    host_key_path = "/etc/ssh/ssh_host_ed25519_key.pub"

    def host_key_command(self) -> str:
        return f"cat {self.host_key_path}"

    def authorize_key_command(self, public_key: str) -> str:
        key = shlex.quote(public_key.strip())
        return (f"mkdir -p /root/.ssh && chmod 700 /root/.ssh && "
                f"printf '%s\\n' {key} > /root/.ssh/authorized_keys && "
                f"chmod 600 /root/.ssh/authorized_keys")

    @abstractmethod
    def dut_ifname(self, runner: Runner, mac: str) -> str:
        """The guest's name for the NIC under test (found by its MAC)."""

    @abstractmethod
    def interface_counters(self, runner: Runner, ifname: str) -> Counters:
        """The interface's counters, in the host's Counters terms."""

    @abstractmethod
    def set_address(self, runner: Runner, ifname: str, cidr: str) -> None:
        """Give the NIC an address and bring it up."""
