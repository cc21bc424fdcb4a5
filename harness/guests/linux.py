"""The Linux profile, for the Debian guest (virtio_net as eth0)."""

from __future__ import annotations

import re
import shlex

from harness import ethtool
from harness.command import Runner
from harness.errors import HarnessError
from harness.guests.base import VIRTIO_NET_FEATURES, ConsolePatterns, GuestProfile, NetmapRings, VirtioFeatures
from harness.host_tap import Counters

_COUNTER_FILES = ("rx_packets", "rx_bytes", "rx_dropped", "rx_errors",
                  "tx_packets", "tx_bytes", "tx_dropped", "tx_errors")

_NETMAP_RINGS = re.compile(r"(?P<if>\S+): netmap queues/slots: TX (?P<tr>\d+)/(?P<ts>\d+), RX (?P<rr>\d+)/(?P<rs>\d+)")


class LinuxProfile(GuestProfile):
    name = "linux"
    patterns = ConsolePatterns(login=r"\S+ login: ?$", shell=r"\S+@[\w.-]+:[^\r\n]*[#$] ?$")
    shell_setup = ("stty -echo", "bind 'set enable-bracketed-paste off'", "set +m",
                   "export TERM=dumb HISTFILE=/dev/null PS1='# '")
    kernel_line = re.compile(r"^\[\s*\d+\.\d+\] ")
    panic_patterns = (r"Kernel panic - not syncing", r"\] BUG: ", r"\] Oops: ")
    # virtio_net keeps receive checksumming fixed on; only the device can drop it.
    offload_nic_props = {"csum": "off", "guest_csum": "off", "guest_tso4": "off", "guest_tso6": "off",
                         "guest_ecn": "off", "guest_ufo": "off", "host_tso4": "off", "host_tso6": "off",
                         "host_ecn": "off", "host_ufo": "off"}

    def tcp_listening(self, runner: Runner, port: int) -> bool:
        return bool(runner.run(f"ss -Hltn 'sport = :{int(port)}'").output.strip())

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

    def link_up(self, runner: Runner, ifname: str) -> bool:
        # operstate turns "up" only once the guest's linkwatch has seen the
        # carrier; until then the qdisc drops what the guest would send.
        return runner.run(f"cat /sys/class/net/{shlex.quote(ifname)}/operstate").output.strip() == "up"

    def offload_states(self, runner: Runner, ifname: str) -> dict[str, bool]:
        return ethtool.offload_states(runner.run(f"ethtool -k {shlex.quote(ifname)}", check=True).output)

    def disable_offloads(self, runner: Runner, ifname: str) -> dict[str, bool]:
        dev = shlex.quote(ifname)
        # One feature at a time: ethtool refuses the whole list if one is fixed.
        runner.run("; ".join(f"ethtool -K {dev} {name} off 2>/dev/null" for name in ethtool.OFFLOADS) + "; true")
        return effective_offloads(self.offload_states(runner, ifname), self.negotiated_features(runner, ifname))

    def negotiated_features(self, runner: Runner, ifname: str) -> VirtioFeatures | None:
        result = runner.run(f"cat /sys/class/net/{shlex.quote(ifname)}/device/features")
        if not result.ok:
            return None
        return parse_virtio_feature_string(result.output)

    def queue_pairs(self, runner: Runner, ifname: str) -> int | None:
        out = runner.run(f"ls -d /sys/class/net/{shlex.quote(ifname)}/queues/rx-* | wc -l").output.strip()
        return int(out) if out.isdigit() and int(out) > 0 else None

    def interrupt_counts(self, runner: Runner, ifname: str) -> dict[str, int]:
        out = runner.run(f"v=$(basename $(readlink /sys/class/net/{shlex.quote(ifname)}/device)); "
                         "grep \" $v-\" /proc/interrupts", check=True).output
        return parse_proc_interrupts(out)

    def netmap_rings(self, runner: Runner, ifname: str) -> NetmapRings | None:
        out = runner.run("dmesg | grep -i netmap").output
        rings = None
        for match in _NETMAP_RINGS.finditer(out):
            if match["if"] == ifname:
                rings = NetmapRings(int(match["tr"]), int(match["ts"]), int(match["rr"]), int(match["rs"]))
        if rings is None and re.search(rf"(Emulated adapter|generic).*{re.escape(ifname)}", out):
            return NetmapRings(1, 0, 1, 0, mode="emulated")
        return rings

    def kernel_identity(self, runner: Runner) -> dict[str, str]:
        out = runner.run("uname -r; uname -v", check=True).output.splitlines()
        return {"release": out[0].strip(), "version": out[1].strip() if len(out) > 1 else ""}


def effective_offloads(states: dict[str, bool], features: VirtioFeatures | None) -> dict[str, bool]:
    """What is really on: virtio_net keeps `rx-checksumming` fixed on even
    when the device did not offer GUEST_CSUM, and then no frame arrives
    marked as checksummed, so the guest checks every checksum itself. The
    same holds for tx without CSUM and the TSO/LRO features."""
    if features is None:
        return dict(states)
    needs = {"rx": ("GUEST_CSUM",), "tx": ("CSUM",), "tso": ("HOST_TSO4", "HOST_TSO6"),
             "lro": ("GUEST_TSO4", "GUEST_TSO6")}
    return {name: on and (name not in needs or any(f in features.names for f in needs[name]))
            for name, on in states.items()}


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


def parse_virtio_feature_string(text: str) -> VirtioFeatures:
    """/sys/.../device/features is one character per bit, bit 0 first."""
    bits = text.strip()
    value = sum(1 << i for i, c in enumerate(bits) if c == "1")
    names = tuple(VIRTIO_NET_FEATURES[i] for i in sorted(VIRTIO_NET_FEATURES) if value >> i & 1)
    return VirtioFeatures(value, names)


def parse_proc_interrupts(text: str) -> dict[str, int]:
    """Per-vector totals (summed over CPUs) from /proc/interrupts lines."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3 or not fields[0].endswith(":"):
            continue
        numbers = [int(f) for f in fields[1:] if f.isdigit()]
        name = fields[-1]
        counts[name] = counts.get(name, 0) + sum(numbers)
    return counts
