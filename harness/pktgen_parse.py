"""Parsers and command builders for the traffic generators the harness drives.

- netmap `pkt-gen`: periodic rate lines and the final summary (`parse_pktgen`,
  `to_json`), plus its argv (`pktgen_argv`, `host_port`);
- netmap `bridge`: its argv and the `Ready to go` ring layout line;
- Linux kernel pktgen: the `Result:` block of /proc/net/pktgen/<dev>;
- netsniff-ng `trafgen`: its final counters.

Everything here is pure text in, values out: the callers own the I/O (serial
console, SSH, files). The formats, their history and the samples the tests use
are described in /work/shared/data/pktgen/FORMAT-NOTES.md,
/work/shared/data/bridge/NOTES.md and /work/shared/data/linux-tools/NOTES.md.

`python -m harness.pktgen_parse FILE` (or `-` for stdin) prints a pkt-gen log
as JSON, for looking at saved logs by hand.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import re
import sys
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from harness.errors import ConfigError

Direction = Literal["tx", "rx"]

# --------------------------------------------------------------------------
# netmap pkt-gen output
# --------------------------------------------------------------------------

#: Decimal multipliers of pkt-gen's norm(): K=1e3 ... T=1e12 (never 1024).
_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}

_N = r"\d+(?:\.\d+)?"
#: The -A avg/std figures can be NaN: the average divides by the number of
#: non-zero samples in the window, which is 0 while no traffic has been seen.
_AN = r"(?:\d+(?:\.\d+)?|-?nan|-?inf)"

#: D()/RD() prefix: "%03d.%06d %s [%d] ". Users trim the leading digits when
#: pasting (sample 15 starts with "46.055820"), so accept any digit count; it
#: is searched, not anchored, because on a pty stderr can land mid-line.
_D_PREFIX = re.compile(r"(?<![\d.])(?P<ts>\d+\.\d{6}) (?P<func>\w+) \[\s*(?P<line>\d+)\] (?P<msg>.*)$")

#: Rate line since 2015-06 ("%spps %s(%spkts %sbps in %llu usec) %.2f avg_batch"),
#: with " %d min_space" since 2015-11 and the -A "[avg/std ...]" slot since
#: 2016-09. norm() always puts one space between the number and the (possibly
#: empty) unit prefix, so "25.000 pps" and "6.728 Mpps" both have a space.
_RATE = re.compile(
    rf"(?P<pps>{_N}) (?P<ppsu>[KMGT]?)pps "
    rf"(?:\[avg/std (?P<avg>{_AN}) (?P<avgu>[KMGT]?)/(?P<std>{_AN}) (?P<stdu>[KMGT]?) pps\])?"
    rf"\((?P<pkts>{_N}) (?P<pktsu>[KMGT]?)pkts (?P<bps>{_N}) (?P<bpsu>[KMGT]?)bps in (?P<usec>\d+) usec\) "
    rf"(?P<batch>{_N}) avg_batch(?: (?P<minsp>-?\d+) min_space)?"
)
#: 2013 to mid-2015: integers, no units, no bytes ("%llu pps (%llu pkts in %llu usec)").
_RATE_OLD = re.compile(rf"(?P<pps>\d+) pps \((?P<pkts>\d+) pkts in (?P<usec>\d+) usec\)(?: (?P<batch>{_N}) avg_batch)?")
#: Used only to warn about lines that look like rate lines but match neither.
_RATE_LIKE = re.compile(r"\bpps \(|\busec\)")

_DIRECTION = re.compile(
    r"(?P<verb>Sending on|Receiving from|Working on) (?P<port>\S.*?): (?P<queues>\d+) queues, "
    r"(?P<threads>\d+) threads and (?P<cpus>\d+) cpus\."
)
_SUMMARY = re.compile(
    r"(?P<word>Sent|Received) (?P<pkts>\d+) packets (?P<bytes>\d+) bytes (?P<events>\d+) events "
    r"(?P<size>\d+) bytes each in (?P<secs>\d+(?:\.\d+)?) seconds\."
)
_SUMMARY_OLD_TX = re.compile(
    r"Sent (?P<pkts>\d+) packets, (?P<size>\d+) bytes each, in (?P<secs>\d+(?:\.\d+)?) seconds\."
)
_SUMMARY_OLD_RX = re.compile(r"Received (?P<pkts>\d+) packets, in (?P<secs>\d+(?:\.\d+)?) seconds\.")
_NOTHING = re.compile(r"\b(?P<word>Sent|Received) nothing\.")
#: All Speed line variants: current ("Speed: %spps Bandwidth: %sbps (raw %sbps).
#: Average batch: %.2f pkts"), 2013-2015 ("... (raw %sbps)" or rx "Speed: %spps")
#: and 2012 ("Speed: %.2f%cpps. Bandwidth: %.2f%cbps.", whose %c is a NUL byte
#: when there is no unit).
_SPEED = re.compile(
    rf"Speed: (?P<pps>{_N}) ?\x00?(?P<ppsu>[KMGT]?)pps\.?"
    rf"(?: Bandwidth: (?P<bw>{_N}) ?\x00?(?P<bwu>[KMGT]?)bps\.?"
    rf"(?: \(raw (?P<raw>{_N}) (?P<rawu>[KMGT]?)bps\)\.?)?)?"
    rf"(?: Average batch: (?P<batch>{_N}) pkts)?"
)
#: D() messages that only pkt-gen prints at startup: proof that a log with no
#: rate line and no summary still is pkt-gen output.
_STARTUP = re.compile(
    r"interface is |running on \d+ cpus|range is |Wait \d+ secs for phy reset|Ready\.\.\.$|reading from |"
    r"start, fd |using default burst size|mapped \d+KB at|Sending \d+ packets every"
)
#: D() messages worth surfacing to the user (the run is degraded or stuck).
_WARN = re.compile(
    r"bad nthreads|ouch, thread|poll error|pending tx|must be <= mtu|Unable to|aborting|"
    r"bad (?:pktsize|pktminsize|option|virtio)|cpus is too high|unrecognised function|Invalid name|"
    r"cannot open|failed to|invalid frags|ifname too long|missing ifname|received control-C"
)

FORMAT_CURRENT = "current"
FORMAT_2015 = "2015-avg_batch"
FORMAT_PRE_2015 = "pre-2015"
FORMAT_UNKNOWN = "unknown"


@dataclass(frozen=True)
class Interval:
    """One periodic rate line.

    The normalised figures keep 3 decimals of their unit, so `pkts` is exact
    only below 1000 or with -N ("6.735 Mpkts" gives 6735000). `bps` is what
    the line says: a rate since 2019-07, but the bits counted in the interval
    in older builds. It is NaN for the pre-2015 format, which has no bytes.
    `min_space` is None before 2015-11; for tx it is meaningless (0, then 99999).
    """

    pps: float
    pkts: int
    bps: float
    usec: int
    avg_batch: float | None = None
    min_space: int | None = None
    avg_pps: float | None = None
    std_pps: float | None = None


@dataclass(frozen=True)
class Summary:
    """The final "Sent/Received ..." summary pkt-gen prints after all threads stop.

    `packets`, `bytes` and `events` are exact; `seconds` is printed with 2
    decimals. `pps` is whichever of packets/seconds and the printed Speed figure
    has the smaller rounding error: a short run's "0.37 seconds" is coarser than
    its "6.728 Mpps", a long run's the other way round. `speed_pps` keeps the
    printed Speed value. "Sent nothing." gives packets=0 with seconds=0.0,
    because pkt-gen prints no time then.
    """

    packets: int
    bytes: int
    seconds: float
    pps: float
    frame_bytes: int
    events: int | None = None
    bandwidth_bps: float | None = None
    raw_bps: float | None = None
    avg_batch: float | None = None
    speed_pps: float | None = None


@dataclass
class PktgenRun:
    """Everything `parse_pktgen` found in one pkt-gen log.

    `direction` comes from "Sending on"/"Receiving from" or the summary word;
    it is None for ping/pong and for logs that show neither (e.g. a log that
    starts after the startup lines). `pktgen_lines` counts lines recognised as
    pkt-gen output, so callers can tell "pkt-gen printed nothing useful" from
    "this is not pkt-gen output at all".
    """

    direction: Direction | None
    intervals: list[Interval]
    summary: Summary | None
    format: str
    warnings: list[str] = field(default_factory=list)
    port: str | None = None
    queues: int | None = None
    threads: int | None = None
    pktgen_lines: int = 0


def _scaled(number: str, unit: str) -> float:
    """norm() text back to a float; Decimal keeps "907.878 K" at exactly 907878."""
    return float(Decimal(number) * _UNITS[unit])


def _rounding(number: str, unit: str) -> float:
    """Half a unit in the last printed digit: the rounding error of a norm() figure."""
    decimals = len(number.partition(".")[2])
    return 0.5 * 10.0**-decimals * _UNITS[unit]


def _add_warning(warnings: list[str], message: str) -> None:
    if message not in warnings:
        warnings.append(message)


def _interval(m: re.Match[str]) -> Interval:
    avg = _scaled(m["avg"], m["avgu"]) if m["avg"] is not None else None
    std = _scaled(m["std"], m["stdu"]) if m["std"] is not None else None
    return Interval(
        pps=_scaled(m["pps"], m["ppsu"]),
        pkts=round(_scaled(m["pkts"], m["pktsu"])),
        bps=_scaled(m["bps"], m["bpsu"]),
        usec=int(m["usec"]),
        avg_batch=float(m["batch"]),
        min_space=int(m["minsp"]) if m["minsp"] is not None else None,
        avg_pps=avg,
        std_pps=std,
    )


def _old_interval(m: re.Match[str]) -> Interval:
    return Interval(
        pps=float(m["pps"]),
        pkts=int(m["pkts"]),
        bps=math.nan,
        usec=int(m["usec"]),
        avg_batch=float(m["batch"]) if m["batch"] is not None else None,
    )


def _best_pps(packets: int, seconds: float, speed: re.Match[str] | None) -> float:
    """Pick the less rounded of packets/seconds (seconds has 2 decimals) and the printed Speed."""
    printed = _scaled(speed["pps"], speed["ppsu"]) if speed else None
    if seconds <= 0:
        return printed if printed is not None else 0.0
    computed = packets / seconds
    if printed is None or speed is None:
        return computed
    computed_error = computed * 0.005 / seconds
    return computed if computed_error <= _rounding(speed["pps"], speed["ppsu"]) else printed


def _speed_fields(speed: re.Match[str] | None) -> dict[str, float | None]:
    """The Summary fields taken from the Speed line (all None when it is missing)."""
    if speed is None:
        return {"bandwidth_bps": None, "raw_bps": None, "avg_batch": None, "speed_pps": None}
    return {
        "bandwidth_bps": _scaled(speed["bw"], speed["bwu"]) if speed["bw"] else None,
        "raw_bps": _scaled(speed["raw"], speed["rawu"]) if speed["raw"] else None,
        "avg_batch": float(speed["batch"]) if speed["batch"] else None,
        "speed_pps": _scaled(speed["pps"], speed["ppsu"]),
    }


def _summary(m: re.Match[str], speed: re.Match[str] | None) -> Summary:
    """Current summary, or the pre-2015 tx one ("Sent N packets, S bytes each, in X seconds."):
    every frame then had the -l size, so bytes = packets * size is exact."""
    packets, size, seconds = int(m["pkts"]), int(m["size"]), float(m["secs"])
    current = m.re is _SUMMARY
    return Summary(
        packets=packets,
        bytes=int(m["bytes"]) if current else packets * size,
        seconds=seconds,
        pps=_best_pps(packets, seconds, speed),
        frame_bytes=size,
        events=int(m["events"]) if current else None,
        **_speed_fields(speed),
    )


def _next_speed(lines: list[str], start: int) -> re.Match[str] | None:
    """The Speed line follows its summary line, possibly after blank or stderr lines."""
    for line in lines[start : start + 4]:
        if m := _SPEED.search(line):
            return m
    return None


def parse_pktgen(text: str) -> PktgenRun:
    """Parse a pkt-gen log: stdout and stderr interleaved, as on a pty or in a saved file.

    Lines that are not pkt-gen's (kernel messages, prompts, a patched build's
    own prints, provenance headers) are skipped. Notable pkt-gen diagnostics
    (bad nthreads, poll errors, pending tx...) are copied, de-duplicated, into
    `warnings`, together with anything odd the parser noticed.
    """
    lines = text.splitlines()
    run = PktgenRun(direction=None, intervals=[], summary=None, format=FORMAT_UNKNOWN)
    formats: list[str] = []
    summary_direction: Direction | None = None
    for index, raw in enumerate(lines):
        line = raw.strip()
        if not line:
            continue
        d_line = _D_PREFIX.search(line)
        if m := _RATE.search(line):
            run.intervals.append(_interval(m))
            formats.append(FORMAT_CURRENT if m["minsp"] is not None else FORMAT_2015)
        elif m := _RATE_OLD.search(line):
            run.intervals.append(_old_interval(m))
            formats.append(FORMAT_PRE_2015)
        elif m := _DIRECTION.search(line):
            verb = m["verb"]
            if verb == "Working on":
                _add_warning(run.warnings, "ping/pong run ('Working on'): no tx/rx direction")
            else:
                run.direction = "tx" if verb == "Sending on" else "rx"
            run.port, run.queues, run.threads = m["port"], int(m["queues"]), int(m["threads"])
        elif (m := _SUMMARY.search(line)) or (m := _SUMMARY_OLD_TX.search(line)):
            if run.summary is not None:
                _add_warning(run.warnings, "more than one final summary; the last one is reported")
            speed = _next_speed(lines, index + 1)
            if speed is None:
                _add_warning(run.warnings, f"no 'Speed:' line after '{line}' (output cut off?)")
            run.summary = _summary(m, speed)
            summary_direction = "rx" if m.re is _SUMMARY and m["word"] == "Received" else "tx"
            if m.re is _SUMMARY_OLD_TX:
                formats.append(FORMAT_PRE_2015)
        elif m := _SUMMARY_OLD_RX.search(line):
            summary_direction = "rx"
            formats.append(FORMAT_PRE_2015)
            _add_warning(
                run.warnings,
                f"pre-2015 rx summary has no byte count, so none is reported: "
                f"{m['pkts']} packets in {m['secs']} seconds",
            )
        elif m := _NOTHING.search(line):
            run.summary = Summary(packets=0, bytes=0, seconds=0.0, pps=0.0, frame_bytes=0)
            summary_direction = "tx" if m["word"] == "Sent" else "rx"
        elif d_line and _WARN.search(d_line["msg"]):
            _add_warning(run.warnings, d_line["msg"].strip())
        elif not (d_line and _STARTUP.search(d_line["msg"])) and not _SPEED.search(line):
            # not pkt-gen's (a Speed line was consumed with its summary line)
            if _RATE_LIKE.search(line) and not line.startswith("#"):
                _add_warning(run.warnings, f"unrecognised rate-like line: {line}")
            continue
        run.pktgen_lines += 1

    if summary_direction is not None:
        if run.direction is not None and run.direction != summary_direction:
            _add_warning(
                run.warnings,
                f"startup line says {run.direction} but the summary says {summary_direction}; keeping {run.direction}",
            )
        elif run.direction is None:
            run.direction = summary_direction
    if formats:
        run.format = formats[0]
        if len(set(formats)) > 1:
            _add_warning(run.warnings, f"mixed output formats: {', '.join(sorted(set(formats)))}")
    if run.format == FORMAT_PRE_2015 and run.intervals:
        _add_warning(run.warnings, "pre-2015 rate lines carry no byte count: interval bps is NaN")
    return run


def _finite(value: float | None) -> float | None:
    """JSON has no NaN: map it (and infinities) to null."""
    return value if value is not None and math.isfinite(value) else None


def to_json(run: PktgenRun) -> dict[str, Any]:
    """The stable JSON shape other tools read; everything else lives under "extra".

    `direction` is null when the log does not say (see `PktgenRun`), and an
    interval's `bps` is null for the pre-2015 format.
    """
    summary = run.summary
    return {
        "direction": run.direction,
        "intervals": [
            {"pps": i.pps, "pkts": i.pkts, "bps": _finite(i.bps), "usec": i.usec} for i in run.intervals
        ],
        "summary": None
        if summary is None
        else {
            "packets": summary.packets,
            "bytes": summary.bytes,
            "seconds": summary.seconds,
            "pps": summary.pps,
            "frame_bytes": summary.frame_bytes,
        },
        "extra": {
            "format": run.format,
            "warnings": list(run.warnings),
            "port": run.port,
            "queues": run.queues,
            "threads": run.threads,
            "intervals": [
                {
                    "avg_batch": i.avg_batch,
                    "min_space": i.min_space,
                    "avg_pps": _finite(i.avg_pps),
                    "std_pps": _finite(i.std_pps),
                }
                for i in run.intervals
            ],
            "summary": None
            if summary is None
            else {
                "events": summary.events,
                "bandwidth_bps": summary.bandwidth_bps,
                "raw_bps": summary.raw_bps,
                "avg_batch": summary.avg_batch,
                "speed_pps": summary.speed_pps,
            },
        },
    }


# --------------------------------------------------------------------------
# pkt-gen command line
# --------------------------------------------------------------------------

PKTGEN_FUNCTIONS = ("tx", "rx", "txseq", "rxseq", "ping", "pong")
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_MAC = r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}"
_MAC_ARG = re.compile(rf"^{_MAC}(?:-{_MAC})?$")
_ADDR_PART = re.compile(r"^(?P<ip>[0-9.]+)(?::(?P<port>\d+))?$")


def host_port(tap: str) -> str:
    """The pkt-gen/bridge port name for host TAP `tap`: always `netmap:<tap>`.

    pkt-gen takes any `-i` value starting with "tap" as a plain TAP device it
    opens through /dev/net/tun, so a bare `tap1` silently bypasses netmap.
    """
    name = tap.removeprefix("netmap:")
    if not _IFNAME.match(name):
        raise ConfigError(f"bad TAP interface name {tap!r}", hint="use a Linux ifname of 1..15 characters")
    return f"netmap:{name}"


def _check_int(name: str, value: int, low: int, high: int | None = None) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, not {value!r}")
    if value < low or (high is not None and value > high):
        upper = f"..{high}" if high is not None else " or more"
        raise ConfigError(f"{name} {value} is out of range ({low}{upper})")
    return str(value)


def _check_port_name(name: str, what: str) -> str:
    if not name or any(c.isspace() for c in name):
        raise ConfigError(f"bad {what} port name {name!r}")
    if name.startswith("tap"):
        raise ConfigError(
            f"{what} port {name!r} would be opened as a plain TAP device, not through netmap",
            hint=f"use host_port({name.removeprefix('tap:')!r}), i.e. 'netmap:<tap>'",
        )
    return name


def _check_ip_range(name: str, value: str) -> str:
    """`ip[:port][-ip[:port]]`, IPv4, as pkt-gen's extract_ip_range() takes it."""
    for part in value.split("-", 1):
        m = _ADDR_PART.match(part)
        try:
            if not m:
                raise ValueError(part)
            ipaddress.IPv4Address(m["ip"])
        except ValueError:
            raise ConfigError(f"{name} {value!r} is not ip[:port][-ip[:port]]") from None
        if m["port"] is not None:
            _check_int(f"{name} port", int(m["port"]), 0, 65535)
    return value


def _check_mac(name: str, value: str) -> str:
    if not _MAC_ARG.match(value):
        raise ConfigError(f"{name} {value!r} is not a MAC address (xx:xx:xx:xx:xx:xx)")
    return value


def pktgen_argv(
    interface: str,
    function: str,
    *,
    program: str = "pkt-gen",
    length: int | None = None,
    count: int | None = None,
    rate: int | None = None,
    wait_link: int | None = None,
    report_ms: int | None = None,
    src: str | None = None,
    dst: str | None = None,
    src_mac: str | None = None,
    dst_mac: str | None = None,
    threads: int | None = None,
    random_src: bool = False,
    random_dst: bool = False,
    no_normalize: bool = False,
    pps_stats: bool = False,
    count_framing: bool = False,
    exit_when_idle: bool = False,
    burst: int | None = None,
    cpus: int | None = None,
    affinity: int | None = None,
) -> list[str]:
    """argv for netmap pkt-gen; None/False leaves pkt-gen's default.

    Options: -i interface, -f function, -l length (16..65536, without CRC),
    -n count (0 = forever; split evenly across -p threads, so it must be a
    multiple of them), -R rate (pps), -w wait_link (s), -T report_ms, -s/-d
    src/dst `ip[:port][-ip[:port]]`, -S/-D MACs, -p threads, -z/-Z random
    src/dst, -N no_normalize, -A pps_stats, -B count_framing, -W exit_when_idle
    (rx only), -b burst, -c cpus (0 = all), -a affinity (CPU to pin to).
    Raises ConfigError for a value pkt-gen would reject or misread.
    """
    argv = [program, "-i", _check_port_name(interface, "pkt-gen"), "-f"]
    if function not in PKTGEN_FUNCTIONS:
        raise ConfigError(f"unknown pkt-gen function {function!r}", hint=f"one of {', '.join(PKTGEN_FUNCTIONS)}")
    argv.append(function)
    if length is not None:
        argv += ["-l", _check_int("frame length", length, 16, 65536)]
    if threads is not None:
        argv += ["-p", _check_int("threads", threads, 1)]
    if count is not None:
        argv += ["-n", _check_int("count", count, 0)]
        if count % (threads or 1):
            raise ConfigError(
                f"count {count} is not a multiple of {threads} threads",
                hint="pkt-gen gives each thread count/threads packets and drops the remainder",
            )
    if rate is not None:
        argv += ["-R", _check_int("rate", rate, 1)]
    if wait_link is not None:
        argv += ["-w", _check_int("wait_link", wait_link, 0)]
    if report_ms is not None:
        argv += ["-T", _check_int("report interval (ms)", report_ms, 1)]
    if src is not None:
        argv += ["-s", _check_ip_range("source address", src)]
    if dst is not None:
        argv += ["-d", _check_ip_range("destination address", dst)]
    if src_mac is not None:
        argv += ["-S", _check_mac("source MAC", src_mac)]
    if dst_mac is not None:
        argv += ["-D", _check_mac("destination MAC", dst_mac)]
    if burst is not None:
        argv += ["-b", _check_int("burst", burst, 1)]
    if cpus is not None:
        argv += ["-c", _check_int("cpus", cpus, 0)]
    if affinity is not None:
        argv += ["-a", _check_int("affinity", affinity, 0)]
    if exit_when_idle and function not in ("rx", "rxseq"):
        raise ConfigError(f"-W (exit when idle) applies to rx only, not {function!r}")
    for flag, wanted in (
        ("-z", random_src),
        ("-Z", random_dst),
        ("-N", no_normalize),
        ("-A", pps_stats),
        ("-B", count_framing),
        ("-W", exit_when_idle),
    ):
        if wanted:
            argv.append(flag)
    return argv


# --------------------------------------------------------------------------
# netmap bridge
# --------------------------------------------------------------------------

_BRIDGE_READY = re.compile(
    r"Ready to go, (?P<a>\S+) 0x(?P<a_first>[0-9a-fA-F]+)/(?P<a_rings>\d+) <-> "
    r"(?P<b>\S+) 0x(?P<b_first>[0-9a-fA-F]+)/(?P<b_rings>\d+)\."
)
_BRIDGE_ZEROCOPY = re.compile(r"------- zerocopy (?P<not>NOT )?supported")
_BRIDGE_SAME = "same interface, endpoint 0 goes to host"


@dataclass(frozen=True)
class BridgeReady:
    """bridge's "Ready to go, <a> 0x<first>/<n> <-> <b> 0x<first>/<n>." line.

    The names are bare ifnames (libnetmap strips "netmap:" and "^"). `*_rings`
    is the port's nr_rx_rings, i.e. the number of hardware RX rings even for
    the host-rings side. `zerocopy` is None when its line was not seen.
    """

    a_port: str
    a_first_ring: int
    a_rings: int
    b_port: str
    b_first_ring: int
    b_rings: int
    same_interface: bool = False
    zerocopy: bool | None = None

    @property
    def is_host_rings_layout(self) -> bool:
        """True for the single-port bridge: host rings of a NIC <-> its hardware rings.

        The host ring index is the number of hardware rings, so endpoint 0
        reads `0x<n>/<n>` and endpoint 1 `0x0/<n>` (`vtnet0 0x1/1 <-> vtnet0
        0x0/1` for one queue pair).
        """
        return (
            self.a_port == self.b_port
            and self.b_first_ring == 0
            and self.a_first_ring == self.b_rings
            and self.b_rings > 0
        )


def parse_bridge_ready(text: str) -> BridgeReady | None:
    """The ring layout bridge reports once both ports are open; None until it has."""
    readies = list(_BRIDGE_READY.finditer(text))
    if not readies:
        return None
    ready = readies[-1]  # a restarted bridge in the same log: its latest layout counts
    zerocopies = list(_BRIDGE_ZEROCOPY.finditer(text))
    zerocopy = zerocopies[-1]["not"] is None if zerocopies else None
    return BridgeReady(
        a_port=ready["a"],
        a_first_ring=int(ready["a_first"], 16),
        a_rings=int(ready["a_rings"]),
        b_port=ready["b"],
        b_first_ring=int(ready["b_first"], 16),
        b_rings=int(ready["b_rings"]),
        same_interface=_BRIDGE_SAME in text,
        zerocopy=zerocopy,
    )


def bridge_argv(
    port: str = "netmap:vtnet0",
    wait: int = 0,
    *,
    port2: str | None = None,
    program: str = "bridge",
    burst: int | None = None,
    zerocopy: bool = True,
    loopback: bool = False,
    verbose: int = 0,
) -> list[str]:
    """argv for netmap bridge, e.g. `bridge -w0 -i netmap:vtnet0`.

    With one port (or port2 == port) bridge joins the port's host rings to its
    hardware rings. `wait` is bridge's -w (its own default is 4 s; above 100
    it silently resets to 4, so that is refused here); `burst` is -b (1..8192,
    bridge resets other values); zerocopy=False gives -c; loopback gives -L
    (forward NIC rx back to NIC tx, one port only); verbose repeats -v.
    """
    argv = [program, f"-w{_check_int('bridge wait', wait, 0, 100)}"]
    for name in (port,) if port2 is None else (port, port2):
        _check_port_name(name, "bridge")
        if not name.startswith(("netmap:", "vale")):
            raise ConfigError(f"bridge port {name!r} has no netmap: or vale prefix", hint=f"use 'netmap:{name}'")
        argv += ["-i", name]
    if burst is not None:
        argv += ["-b", _check_int("bridge burst", burst, 1, 8192)]
    if not zerocopy:
        argv.append("-c")
    if loopback:
        if port2 not in (None, port):
            raise ConfigError("bridge loopback (-L) takes a single port")
        argv.append("-L")
    _check_int("bridge verbosity", verbose, 0, 2)
    argv += ["-v"] * verbose
    return argv


# --------------------------------------------------------------------------
# Linux kernel pktgen (/proc/net/pktgen/<dev>)
# --------------------------------------------------------------------------

#: "Result: OK: <us>(c<busy>+d<idle>) usec, <pkts> (<size>byte,<frags>frags)\n
#:   <pps>pps <Mb>Mb/sec (<bps>bps) errors: <n>"; frags is -1 when no skb was built.
_KPKTGEN_RUN = re.compile(
    r"Result: OK: (?P<elapsed>\d+)\(c(?P<busy>\d+)\+d(?P<idle>\d+)\) usec, (?P<pkts>\d+) "
    r"\((?P<size>\d+)byte,(?P<frags>-?\d+)frags\)\s*(?P<pps>\d+)pps (?P<mbps>\d+)Mb/sec "
    r"\((?P<bps>\d+)bps\)\s+errors: (?P<errors>\d+)"
)
_KPKTGEN_RESULT = re.compile(r"^\s*Result: (?P<message>.*?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class KernelPktgenResult:
    """The `Result:` of a kernel pktgen device file.

    `state` is "ok" for a finished run (all numbers set), "idle" before any
    run, "command" when the last write was accepted ("OK: count=100") and
    "error" for a rejected write ("No such parameter ..."). `message` is the
    text after "Result: " (both lines, for a run).
    """

    state: Literal["ok", "idle", "command", "error"]
    message: str
    elapsed_usec: int | None = None
    busy_usec: int | None = None
    idle_usec: int | None = None
    packets: int | None = None
    frame_bytes: int | None = None
    frags: int | None = None
    pps: int | None = None
    mbps: int | None = None
    bps: int | None = None
    errors: int | None = None


def parse_kernel_pktgen(text: str) -> KernelPktgenResult | None:
    """The run result in `cat /proc/net/pktgen/<dev>` output, else its last Result line; None if none."""
    runs = list(_KPKTGEN_RUN.finditer(text))
    if runs:
        run = runs[-1]
        return KernelPktgenResult(
            state="ok",
            message=" ".join(run[0].removeprefix("Result: ").split()),
            elapsed_usec=int(run["elapsed"]),
            busy_usec=int(run["busy"]),
            idle_usec=int(run["idle"]),
            packets=int(run["pkts"]),
            frame_bytes=int(run["size"]),
            frags=int(run["frags"]),
            pps=int(run["pps"]),
            mbps=int(run["mbps"]),
            bps=int(run["bps"]),
            errors=int(run["errors"]),
        )
    results = _KPKTGEN_RESULT.findall(text)
    if not results:
        return None
    message = results[-1]
    if message == "Idle":
        return KernelPktgenResult(state="idle", message=message)
    if message.startswith("OK:"):
        return KernelPktgenResult(state="command", message=message)
    return KernelPktgenResult(state="error", message=message)


def parse_pktgen_params(text: str) -> dict[str, str]:
    """The `key: value` pairs of a kernel pktgen device file, from "Params:" up to "Result:".

    Values are raw strings ("" when empty, e.g. `dst_max:`); "count" has no
    colon in the file; "Flags" keeps all its flags, space-separated. Useful
    mid-run for `pkts-sofar` and `errors`.
    """
    out: dict[str, str] = {}
    started = False
    for line in text.splitlines():
        tokens = line.split()
        if not tokens:
            continue
        if tokens[0] == "Params:":
            started = True
        if not started:
            continue
        if tokens[0] == "Result:":
            break
        if tokens[0] in ("Params:", "Current:"):
            tokens = tokens[1:]
        key: str | None = None
        for token in tokens:
            if token.endswith(":"):
                key = token[:-1]
                out[key] = ""
            elif key is None:
                key = token
                out[key] = ""
            elif out[key] == "":
                out[key] = token
            else:
                out[key] += " " + token
    return out


# --------------------------------------------------------------------------
# netsniff-ng trafgen
# --------------------------------------------------------------------------

# Format known from trafgen.c only (no real transcript): "\r%12llu packets
# outgoing", "\r%12llu bytes outgoing", "\r%12lu sec, %lu usec on CPU%d (%llu
# packets)" (older releases have no "(N packets)"), and before sending
# "%6zu packets to schedule" / "%6zu bytes in total".
_TRAFGEN_PACKETS = re.compile(r"^[\r\s]*(?P<n>\d+) packets outgoing\s*$", re.MULTILINE)
_TRAFGEN_BYTES = re.compile(r"^[\r\s]*(?P<n>\d+) bytes outgoing\s*$", re.MULTILINE)
_TRAFGEN_CPU = re.compile(
    r"^[\r\s]*(?P<sec>\d+) sec, (?P<usec>\d+) usec on CPU(?P<cpu>\d+)(?: \((?P<pkts>\d+) packets\))?\s*$",
    re.MULTILINE,
)
_TRAFGEN_SCHEDULE = re.compile(r"^[\r\s]*(?P<n>\d+) packets to schedule\s*$", re.MULTILINE)
_TRAFGEN_TOTAL = re.compile(r"^[\r\s]*(?P<n>\d+) bytes in total\s*$", re.MULTILINE)


@dataclass(frozen=True)
class TrafgenCpu:
    """One worker's "N sec, N usec on CPUn (N packets)" line; packets is None in old releases."""

    cpu: int
    sec: int
    usec: int
    packets: int | None

    @property
    def seconds(self) -> float:
        return self.sec + self.usec / 1e6


@dataclass(frozen=True)
class TrafgenResult:
    """trafgen's final counters (known from source only, see the comment above)."""

    packets: int
    bytes: int
    cpus: list[TrafgenCpu]
    scheduled_packets: int | None = None
    scheduled_bytes: int | None = None


def parse_trafgen(text: str) -> TrafgenResult | None:
    """trafgen's end-of-run counters; None until "N packets outgoing" has been printed."""
    packets = _TRAFGEN_PACKETS.search(text)
    if packets is None:
        return None
    nbytes = _TRAFGEN_BYTES.search(text)
    schedule = _TRAFGEN_SCHEDULE.search(text)
    total = _TRAFGEN_TOTAL.search(text)
    return TrafgenResult(
        packets=int(packets["n"]),
        bytes=int(nbytes["n"]) if nbytes else 0,
        cpus=[
            TrafgenCpu(
                cpu=int(m["cpu"]),
                sec=int(m["sec"]),
                usec=int(m["usec"]),
                packets=int(m["pkts"]) if m["pkts"] is not None else None,
            )
            for m in _TRAFGEN_CPU.finditer(text)
        ],
        scheduled_packets=int(schedule["n"]) if schedule else None,
        scheduled_bytes=int(total["n"]) if total else None,
    )


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.pktgen_parse FILE|-`: print a pkt-gen log as JSON; exit 2 if there is none."""
    parser = argparse.ArgumentParser(prog="python -m harness.pktgen_parse", description=main.__doc__)
    parser.add_argument("file", help="pkt-gen log (stdout and stderr), or - for stdin")
    args = parser.parse_args(argv)
    try:
        if args.file == "-":
            text = sys.stdin.buffer.read().decode("utf-8", errors="replace")
        else:
            with open(args.file, encoding="utf-8", errors="replace") as f:
                text = f.read()
    except OSError as exc:
        print(f"pktgen_parse: error: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    run = parse_pktgen(text)
    if run.pktgen_lines == 0:
        print(f"pktgen_parse: error: no pkt-gen output in {args.file}", file=sys.stderr)
        return 2
    print(json.dumps(to_json(run), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
