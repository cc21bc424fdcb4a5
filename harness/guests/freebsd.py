"""The FreeBSD profile: vtnet(4) with native netmap, on the official images.

The management NIC is an e1000 (em0), so the only virtio NIC, and the NIC
under test, is vtnet0. Root's login shell may be csh: the shell setup execs
/bin/sh first, so marker-wrapped commands always run in a POSIX shell.

Where each format comes from:
  * ifconfig, dmesg (netmap queues/slots), console login: real samples
    (tests/fixtures/freebsd-formats, tests/fixtures/freebsd-console);
  * `netstat --libxo json -I`, `vmstat --libxo json -i` and
    `dev.virtio_pci.N.negotiated_features`: only from the FreeBSD sources
    (usr.bin/netstat/if.c intpr(), usr.bin/vmstat/vmstat.c print_intrcnts(),
    sys/dev/virtio/virtio.c virtio_describe_sbuf()); no real capture exists.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
from dataclasses import dataclass
from typing import Any

from harness.command import Runner
from harness.errors import HarnessError
from harness.guests.base import VIRTIO_NET_FEATURES, ConsolePatterns, GuestProfile, NetmapRings, VirtioFeatures
from harness.host_tap import Counters

log = logging.getLogger(__name__)

# ifconfig's names for the offload capabilities `disable_offloads` switches,
# as printed in `options=` (sys/net/if.h IFCAP names) -> the ifconfig flag.
OFFLOAD_CAPS = {
    "RXCSUM": "rxcsum", "TXCSUM": "txcsum", "TSO4": "tso4", "TSO6": "tso6", "LRO": "lro",
    "RXCSUM_IPV6": "rxcsum6", "TXCSUM_IPV6": "txcsum6",
}
_SYSLOG = r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ \S+?(?:\[\d+\])?: "
_IFCONFIG_HEAD = re.compile(r"^(?P<name>[a-z][a-z0-9_.]*\d+): flags=(?P<hex>[0-9a-f]+)<(?P<flags>[^>]*)>")
_IFCONFIG_OPTIONS = re.compile(r"^\s+options=(?P<hex>[0-9a-f]+)<(?P<caps>[A-Z0-9_,]*)>")
_IFCONFIG_ETHER = re.compile(r"^\s+ether (?P<mac>[0-9a-f]{2}(?::[0-9a-f]{2}){5})\b")
_IFCONFIG_STATUS = re.compile(r"^\s+status: (?P<status>.+?)\s*$")
_NETMAP_RINGS = re.compile(
    r"(?P<if>\S+): netmap queues/slots: TX (?P<tr>\d+)/(?P<ts>\d+), RX (?P<rr>\d+)/(?P<rs>\d+)")
_FEATURES = re.compile(r"^(?P<hex>0x[0-9a-fA-F]+|0)(?: <(?P<names>[^>]*)>)?$")
_DEVICE = re.compile(r"^(?P<driver>[a-z_]+?)(?P<unit>\d+)$")


@dataclass(frozen=True)
class IfconfigEntry:
    """One interface block of `ifconfig -a`."""

    name: str
    flags: tuple[str, ...]
    options_hex: int | None
    options: tuple[str, ...]
    ether: str | None
    status: str | None = None  # "active", "no carrier"; absent on lo0

    @property
    def link_up(self) -> bool:
        """Administratively up, running, and (where reported) carrier active."""
        return "UP" in self.flags and "RUNNING" in self.flags and self.status in (None, "active")


class FreeBSDProfile(GuestProfile):
    name = "freebsd"
    # login: getty's plain `login: ` (FreeBSD/amd64 (freebsd) (ttyu0) banner
    # first); shell: `root@freebsd:~ # ` from sh or csh, anchored at the line
    # end or followed directly by a syslog line (console sample-01 shows one
    # landing right after the prompt).
    patterns = ConsolePatterns(
        login=r"^(?:[\w.-]+ )?login: ?$",
        shell=rf"\S+@[\w.-]+:[^\r\n]*?[#%$] (?:$|(?={_SYSLOG}))")
    # The loader's menu countdown (lua: "Autoboot in %d seconds. [Space] to
    # pause"; forth: "Hit [Enter] to boot"), and the kernel's banner.
    loader_pattern = r"Autoboot in \d+ seconds|Hit \[Enter\] to boot"
    kernel_banner_pattern = r"Copyright \(c\) 1992-\d{4} The FreeBSD Project"
    getty_banner_pattern = r"FreeBSD/\w+ \([\w.-]+\) \(tty\w+\)"
    mgmt_nic_model = "e1000"
    mgmt_ifname = "em0"
    shell_setup = ("exec /bin/sh", "stty -echo", "set +m",
                   "export TERM=dumb HISTFILE=/dev/null PAGER=cat PS1='# '")
    # What FreeBSD writes on the console unasked: syslog lines (console.info
    # and up go to the console), netmap's D()/nm_prinf lines, link state
    # changes, and the kernel's process-exit and rate-limit messages.
    kernel_line = re.compile(
        rf"^(?:{_SYSLOG}"
        r"|\d{3}\.\d{6} \[\s*\d+\] "
        r"|[a-z_]+\d+: link state changed to (?:UP|DOWN)"
        r"|[a-z_]+\d+: promiscuous mode (?:enabled|disabled)"
        r"|pid \d+ \(.*\), jid \d+, uid \d+(?:: exited on signal| \(\w+\):)"
        r"|Limiting (?:icmp|closed port|open port) )")
    # Anchored at a line start (the console matches these without MULTILINE).
    panic_patterns = (r"(?m)^panic: ", r"(?m)^Fatal trap \d+: ", r"(?m)^KDB: enter: ", r"(?m)^db> ?$")
    debugger_prompt = "db> "
    debugger_commands = ("bt", "show pcpu", "show registers")
    netmap_tool_dirs = ("/usr/local/bin", "/usr/bin", "/root/netmap")

    def sha256_command(self, path: str) -> str:
        return f"sha256 -q {shlex.quote(path)}"

    def tcp_listening(self, runner: Runner, port: int) -> bool:
        out = runner.run(f"sockstat -4 -l -P tcp -p {int(port)}").output
        return any(f":{int(port)} " in line for line in out.splitlines()[1:])

    def dut_ifname(self, runner: Runner, mac: str) -> str:
        return find_ifname_by_mac(runner.run("ifconfig -a", check=True).output, mac)

    def interface_counters(self, runner: Runner, ifname: str) -> Counters:
        # -d adds the output drops, as a second "dropped-packets" key.
        out = runner.run(f"netstat --libxo json -I {shlex.quote(ifname)} -b -n -d", check=True).output
        return parse_netstat_interface_json(out, ifname)

    def set_address(self, runner: Runner, ifname: str, cidr: str) -> None:
        runner.run(f"ifconfig {shlex.quote(ifname)} inet {shlex.quote(cidr)} up", check=True)

    def link_up(self, runner: Runner, ifname: str) -> bool:
        result = runner.run(f"ifconfig {shlex.quote(ifname)}")
        entry = parse_ifconfig(result.output).get(ifname) if result.ok else None
        return entry is not None and entry.link_up

    def offload_states(self, runner: Runner, ifname: str) -> dict[str, bool]:
        out = runner.run(f"ifconfig {shlex.quote(ifname)}", check=True).output
        return offload_states_from_ifconfig(out, ifname)

    def disable_offloads(self, runner: Runner, ifname: str) -> dict[str, bool]:
        switches = " ".join(f"-{flag}" for flag in OFFLOAD_CAPS.values())
        result = runner.run(f"ifconfig {shlex.quote(ifname)} {switches}")
        if not result.ok:
            log.warning("ifconfig %s %s exited %d: %s", ifname, switches, result.status, result.output.strip())
        return self.offload_states(runner, ifname)

    def parent_device(self, runner: Runner, ifname: str) -> str | None:
        """The newbus parent of the NIC (virtio_pciN), or None."""
        driver, unit = split_device(ifname)
        result = runner.run(f"sysctl -n dev.{driver}.{unit}.%parent")
        parent = result.output.strip()
        return parent if result.ok and _DEVICE.match(parent) else None

    def negotiated_features(self, runner: Runner, ifname: str) -> VirtioFeatures | None:
        parent = self.parent_device(runner, ifname)
        if parent is None:
            return None
        driver, unit = split_device(parent)
        result = runner.run(f"sysctl -n dev.{driver}.{unit}.negotiated_features")
        if not result.ok:
            return None
        return parse_negotiated_features(result.output)

    def queue_pairs(self, runner: Runner, ifname: str) -> int | None:
        driver, unit = split_device(ifname)
        out = runner.run(f"sysctl -n dev.{driver}.{unit}.act_vq_pairs").output.strip()
        return int(out) if out.isdigit() and int(out) > 0 else None

    def interrupt_counts(self, runner: Runner, ifname: str) -> dict[str, int]:
        parent = self.parent_device(runner, ifname)
        if parent is None:
            raise HarnessError(f"cannot find the virtio device under {ifname} (sysctl dev.*.%parent)")
        out = runner.run("vmstat --libxo json -i", check=True).output
        return parse_vmstat_interrupts_json(out, parent)

    def netmap_rings(self, runner: Runner, ifname: str) -> NetmapRings | None:
        # dmesg.boot first, the live buffer last: the last line wins.
        out = runner.run("cat /var/run/dmesg.boot 2>/dev/null; dmesg").output
        rings = parse_netmap_rings(out, ifname)
        admode = runner.run("sysctl -n dev.netmap.admode").output.strip()
        if rings is not None and admode == "2":  # generic (emulated) adapters forced
            return NetmapRings(rings.tx_rings, rings.tx_slots, rings.rx_rings, rings.rx_slots, mode="emulated")
        return rings

    def kernel_identity(self, runner: Runner) -> dict[str, str]:
        out = runner.run(KERNEL_IDENTITY_COMMAND, check=True).output
        return parse_kernel_identity(out)


KERNEL_IDENTITY_COMMAND = ("uname -r; uname -v; sysctl -n kern.ident; sysctl -n kern.bootfile; "
                           "sha256 -q \"$(sysctl -n kern.bootfile)\"")


# -- parsers ------------------------------------------------------------------
def split_device(name: str) -> tuple[str, int]:
    """`vtnet0` -> ("vtnet", 0); `virtio_pci2` -> ("virtio_pci", 2)."""
    match = _DEVICE.match(name.strip())
    if not match:
        raise HarnessError(f"not a FreeBSD device name: {name!r}")
    return match["driver"], int(match["unit"])


def parse_ifconfig(text: str) -> dict[str, IfconfigEntry]:
    """Interface blocks of `ifconfig [-a]`, by name (a `root@...# ifconfig`
    prompt line before them is ignored)."""
    entries: dict[str, IfconfigEntry] = {}
    current: dict[str, Any] | None = None

    def close() -> None:
        if current is not None:
            entries[current["name"]] = IfconfigEntry(**current)

    for line in text.splitlines():
        if head := _IFCONFIG_HEAD.match(line):
            close()
            current = {"name": head["name"], "flags": tuple(filter(None, head["flags"].split(","))),
                       "options_hex": None, "options": (), "ether": None}
        elif current is not None and (opts := _IFCONFIG_OPTIONS.match(line)):
            current["options_hex"] = int(opts["hex"], 16)
            current["options"] = tuple(filter(None, opts["caps"].split(",")))
        elif current is not None and (ether := _IFCONFIG_ETHER.match(line)):
            current["ether"] = ether["mac"]
        elif current is not None and (status := _IFCONFIG_STATUS.match(line)):
            current["status"] = status["status"]
        elif current is not None and line and not line[0].isspace():
            close()
            current = None
    close()
    return entries


def find_ifname_by_mac(ifconfig_text: str, mac: str) -> str:
    wanted = mac.strip().lower()
    names = [e.name for e in parse_ifconfig(ifconfig_text).values() if e.ether == wanted]
    if len(names) != 1:
        raise HarnessError(f"expected one guest interface with MAC {wanted}, found {names or 'none'}")
    return names[0]


def offload_states_from_ifconfig(text: str, ifname: str) -> dict[str, bool]:
    """{ifconfig flag: on} for the offloads `disable_offloads` switches, from
    the `options=` line (the enabled capabilities)."""
    entry = parse_ifconfig(text).get(ifname)
    if entry is None:
        raise HarnessError(f"ifconfig output has no {ifname}: {text[:200]!r}")
    if entry.options_hex is None:
        raise HarnessError(f"ifconfig output for {ifname} has no options= line")
    return {flag: cap in entry.options for cap, flag in OFFLOAD_CAPS.items()}


def _pairs_keep_all(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook keeping repeated keys as lists (netstat -d emits
    "dropped-packets" twice: input drops, then output drops)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        out.setdefault(key, []).append(value)
    return {k: v[0] if len(v) == 1 else v for k, v in out.items()}


def parse_netstat_interface_json(text: str, ifname: str) -> Counters:
    """Counters from `netstat --libxo json -I IF -b -n [-d]`.

    Format known only from usr.bin/netstat/if.c intpr(): {"statistics":
    {"interface": [row, ...]}}, one row per address; the `<Link#N>` row
    carries the interface totals (address rows have no error counters)."""
    try:
        data = json.loads(text, object_pairs_hook=_pairs_keep_all)
        rows = data["statistics"]["interface"]
    except (ValueError, KeyError, TypeError) as exc:
        raise HarnessError(f"netstat --libxo json output not understood ({exc}): {text[:300]!r}") from None
    if isinstance(rows, dict):
        rows = [rows]
    for row in rows:
        if row.get("name") == ifname and str(row.get("network", "")).startswith("<Link#"):
            drops = row.get("dropped-packets", 0)
            rx_dropped, tx_dropped = (drops[0], drops[1]) if isinstance(drops, list) else (drops, 0)
            try:
                return Counters(rx_packets=int(row["received-packets"]), rx_bytes=int(row["received-bytes"]),
                                rx_dropped=int(rx_dropped), rx_errors=int(row["received-errors"]),
                                tx_packets=int(row["sent-packets"]), tx_bytes=int(row["sent-bytes"]),
                                tx_dropped=int(tx_dropped), tx_errors=int(row["send-errors"]))
            except KeyError as exc:
                raise HarnessError(f"netstat row for {ifname} lacks {exc} (was -b given?)") from None
    raise HarnessError(f"netstat output has no link-level row for {ifname}")


def parse_negotiated_features(text: str) -> VirtioFeatures:
    """`sysctl -n dev.virtio_pci.N.negotiated_features`: `0x<hex> <Name,...>`.

    Format known only from sys/dev/virtio/virtio.c virtio_describe_sbuf().
    The bits are authoritative; names are the virtio spec's (as on Linux), so
    results from both guests compare."""
    match = _FEATURES.match(text.strip())
    if not match:
        raise HarnessError(f"not a virtio feature description: {text.strip()!r}")
    bits = int(match["hex"], 16)
    names = tuple(VIRTIO_NET_FEATURES[i] for i in sorted(VIRTIO_NET_FEATURES) if bits >> i & 1)
    return VirtioFeatures(bits, names)


def parse_vmstat_interrupts_json(text: str, device: str) -> dict[str, int]:
    """{interrupt name: total} for `device`'s rows of `vmstat --libxo json -i`.

    Format known only from usr.bin/vmstat/vmstat.c print_intrcnts():
    {"interrupt-statistics": {"interrupt": [{"name", "total", "rate"}], ...}}.
    A name is `irqN: dev0 dev1+` (handlers of a shared line follow the first;
    `+` marks more); a row counts if `device` is one of its handlers."""
    try:
        stats = json.loads(text)["interrupt-statistics"]
        rows = stats.get("interrupt", [])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise HarnessError(f"vmstat --libxo json output not understood ({exc}): {text[:300]!r}") from None
    counts: dict[str, int] = {}
    for row in rows if isinstance(rows, list) else [rows]:
        name = str(row.get("name", ""))
        if device in _interrupt_handlers(name):
            counts[name] = int(row["total"])
    return counts


def _interrupt_handlers(name: str) -> list[str]:
    _, _, handlers = name.partition(": ")
    return [h.rstrip("+*") for h in handlers.split()]


def parse_netmap_rings(dmesg: str, ifname: str) -> NetmapRings | None:
    """The last `IF: netmap queues/slots: TX r/s, RX r/s` line for `ifname`."""
    rings = None
    for match in _NETMAP_RINGS.finditer(dmesg):
        if match["if"] == ifname:
            rings = NetmapRings(int(match["tr"]), int(match["ts"]), int(match["rr"]), int(match["rs"]))
    return rings


def parse_kernel_identity(text: str) -> dict[str, str]:
    """Output of KERNEL_IDENTITY_COMMAND: release, version, ident, bootfile, sha256."""
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) != 5 or not re.fullmatch(r"[0-9a-f]{64}", lines[4]):
        raise HarnessError(f"kernel identity output not understood: {text!r}")
    keys = ("release", "version", "ident", "bootfile", "kernel_sha256")
    return dict(zip(keys, lines, strict=True))
