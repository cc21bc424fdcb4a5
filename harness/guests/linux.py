"""The Linux profile, for the Debian guest (virtio_net as eth0)."""

from __future__ import annotations

import re
import shlex

from harness.command import Runner
from harness.errors import HarnessError
from harness.guests.base import ConsolePatterns, GuestProfile
from harness.host_tap import Counters

_COUNTER_FILES = ("rx_packets", "rx_bytes", "rx_dropped", "rx_errors",
                  "tx_packets", "tx_bytes", "tx_dropped", "tx_errors")


class LinuxProfile(GuestProfile):
    name = "linux"
    patterns = ConsolePatterns(login=r"\S+ login: ?$", shell=r"\S+@[\w.-]+:[^\r\n]*[#$] ?$")
    shell_setup = ("stty -echo", "set +m", "export TERM=dumb HISTFILE=/dev/null PS1='# '")
    kernel_line = re.compile(r"^\[\s*\d+\.\d+\] ")
    panic_patterns = (r"Kernel panic - not syncing", r"\] BUG: ", r"\] Oops: ")

    def dut_ifname(self, runner: Runner, mac: str) -> str:
        out = runner.run(
            "for d in /sys/class/net/*; do "
            f"[ \"$(cat $d/address)\" = {shlex.quote(mac.lower())} ] && echo ${{d##*/}}; done; true",
            check=True).output.split()
        if len(out) != 1:
            raise HarnessError(f"expected one guest interface with MAC {mac}, found {out or 'none'}")
        return out[0]

    def interface_counters(self, runner: Runner, ifname: str) -> Counters:
        out = runner.run(f"cd /sys/class/net/{shlex.quote(ifname)}/statistics && "
                         f"grep . {' '.join(_COUNTER_FILES)}", check=True).output
        return parse_sysfs_counters(out)

    def set_address(self, runner: Runner, ifname: str, cidr: str) -> None:
        dev = shlex.quote(ifname)
        runner.run(f"ip addr flush dev {dev} && ip addr add {shlex.quote(cidr)} dev {dev} && "
                   f"ip link set {dev} up", check=True)


def parse_sysfs_counters(text: str) -> Counters:
    """Parse `grep . rx_packets ...` output (name:value per line)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, value = line.strip().partition(":")
        if sep and name in _COUNTER_FILES and value.isdigit():
            values[name] = int(value)
    missing = set(_COUNTER_FILES) - values.keys()
    if missing:
        raise HarnessError(f"guest interface counters incomplete, missing {sorted(missing)}: {text!r}")
    return Counters(**values)
