"""Traffic engines behind one small interface, and the choice between them.

An engine runs on one end (guest or host) as sender or counting receiver:
`start(flow)`, then `stop(deadline)` gives what it says it moved and over what
time by its own clock. Which engines can run depends on the ends:

  netmap pkt-gen   guest or host, where /dev/netmap and pkt-gen exist
  kernel pktgen    a Linux end with the pktgen module (/proc/net/pktgen)
  trafgen          the host (netsniff-ng), sending into the TAP

A result names the engines that ran, so numbers from different engines are
never compared as if they were alike. Parsing lives in pktgen_parse.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.command import Background, Runner
from harness.deadline import Deadline
from harness.errors import HarnessError
from harness.pktgen_parse import (
    host_port,
    parse_kernel_pktgen,
    parse_pktgen,
    parse_pktgen_params,
    parse_trafgen,
    pktgen_argv,
)

log = logging.getLogger(__name__)

#: Starts a background program: (argv, name for its log) -> handle.
Spawn = Callable[[list[str], str], Background]

# Traffic goes to an address and a MAC nobody has: the far end counts it and
# drops it without answering, so nothing flows back to perturb the sender.
SINK_MAC = "02:00:00:00:00:09"
SINK_IP = "10.1.0.1"


@dataclass(frozen=True)
class Flow:
    """One stream of UDP frames of `frame_bytes` (Ethernet header included,
    FCS excluded, as pkt-gen -l and kernel pktgen's pkt_size count)."""

    frame_bytes: int
    src_mac: str
    dst_mac: str
    src_ip: str
    dst_ip: str = SINK_IP
    rate_pps: int = 0  # 0: as fast as the engine can

    def __post_init__(self) -> None:
        if not 60 <= self.frame_bytes <= 9000:
            raise HarnessError(f"frame size {self.frame_bytes} is outside 60..9000 bytes")


@dataclass(frozen=True)
class EngineReport:
    """What an engine says it did."""

    engine: str
    packets: int
    seconds: float
    raw: str = ""

    @property
    def mpps(self) -> float:
        return self.packets / self.seconds / 1e6 if self.seconds > 0 else 0.0


class Engine(ABC):
    name: str

    @abstractmethod
    def start(self, flow: Flow, deadline: Deadline) -> None:
        """Start sending (or counting) and return once it really runs."""

    @abstractmethod
    def stop(self, deadline: Deadline) -> EngineReport:
        """Stop and report."""

    @abstractmethod
    def close(self) -> None:
        """Make sure nothing of the engine is left running (idempotent)."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class KernelPktgen(Engine):
    """Linux kernel pktgen on `ifname`, driven through /proc/net/pktgen by
    shell commands (over SSH in the guest, or in the host namespace)."""

    name = "linux-pktgen"
    PROC = "/proc/net/pktgen"

    def __init__(self, runner: Runner, ifname: str) -> None:
        self.runner = runner
        self.ifname = ifname
        self.device = f"{self.PROC}/{ifname}"

    @classmethod
    def available(cls, runner: Runner) -> bool:
        """Loaded, or loadable (asking does not load it; start() does)."""
        return runner.run(f"test -w {cls.PROC}/pgctrl || modinfo pktgen >/dev/null 2>&1").ok

    def _write(self, path: str, *lines: str) -> None:
        script = "; ".join(f"echo {shlex.quote(line)} > {path}" for line in lines)
        self.runner.run(script, check=True)
        result = parse_kernel_pktgen(self.runner.run(f"cat {path}", check=True).output)
        if result is not None and result.state == "error":
            raise HarnessError(f"kernel pktgen refused a setting on {self.ifname}: {result.message}")

    def start(self, flow: Flow, deadline: Deadline) -> None:
        self.runner.run(f"modprobe pktgen && echo stop > {self.PROC}/pgctrl", check=True)
        self._write(f"{self.PROC}/kpktgend_0", "rem_device_all", f"add_device {self.ifname}")
        pace = f"ratep {flow.rate_pps}" if flow.rate_pps else "delay 0"
        self._write(self.device, "count 0", f"pkt_size {flow.frame_bytes}", "clone_skb 0", pace,
                    f"src_min {flow.src_ip}", f"src_max {flow.src_ip}", f"src_mac {flow.src_mac}",
                    f"dst {flow.dst_ip}", f"dst_mac {flow.dst_mac}", "udp_src_min 9", "udp_dst_min 9")
        # `start` blocks until pktgen stops, so it runs detached.
        self.runner.run(f"(echo start > {self.PROC}/pgctrl) </dev/null >/dev/null 2>&1 &", check=True)
        deadline.wait_for(lambda: self._sent_so_far(deadline) > 0, "kernel pktgen to start sending", interval=0.1)

    def _sent_so_far(self, deadline: Deadline) -> int:
        params = parse_pktgen_params(self.runner.run(f"cat {self.device}", timeout=_left(deadline)).output)
        return int(params.get("pkts-sofar", "0") or 0)

    def stop(self, deadline: Deadline) -> EngineReport:
        self.runner.run(f"echo stop > {self.PROC}/pgctrl", timeout=_left(deadline), check=True)

        def finished() -> str | None:
            text = self.runner.run(f"cat {self.device}", timeout=_left(deadline)).output
            result = parse_kernel_pktgen(text)
            return text if result is not None and result.state == "ok" else None

        text = deadline.wait_for(finished, "kernel pktgen's Result", interval=0.1)
        result = parse_kernel_pktgen(text)
        assert result is not None and result.packets is not None and result.elapsed_usec is not None
        return EngineReport(self.name, result.packets, result.elapsed_usec / 1e6, text)

    def close(self) -> None:
        try:
            self.runner.run(f"echo stop > {self.PROC}/pgctrl 2>/dev/null; "
                            f"echo rem_device_all > {self.PROC}/kpktgend_0 2>/dev/null; true", timeout=10)
        except HarnessError as exc:  # the guest may be gone; never hide the first error
            log.warning("could not reset kernel pktgen: %s", exc.message)


class Trafgen(Engine):
    """netsniff-ng trafgen sending into the host TAP (it bypasses the qdisc,
    and counts only what the TAP accepted; the TAP counts what it dropped)."""

    name = "trafgen"

    def __init__(self, spawn: Spawn, tap: str, work_dir: Path, cpus: int = 1) -> None:
        self.spawn = spawn
        self.tap = tap
        self.work_dir = work_dir
        self.cpus = cpus
        self.proc: Background | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("trafgen") is not None

    @staticmethod
    def config(flow: Flow) -> str:
        """trafgen's packet description: Ethernet + IPv4 + UDP + zero fill."""
        fill = flow.frame_bytes - 14 - 20 - 8
        return (f"{{ eth(da={flow.dst_mac}, sa={flow.src_mac}, type=0x0800),\n"
                f"  ipv4(saddr={flow.src_ip}, daddr={flow.dst_ip}, ttl=64, proto=17),\n"
                f"  udp(sport=9, dport=9),\n"
                f"  fill(0x00, {fill}) }}\n")

    def start(self, flow: Flow, deadline: Deadline) -> None:
        if flow.rate_pps:
            raise HarnessError("the trafgen engine here sends at full speed only")
        conf = self.work_dir / "trafgen.cfg"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(self.config(flow))
        self.proc = self.spawn(["trafgen", "--dev", self.tap, "--conf", str(conf), "--cpus", str(self.cpus)],
                               "trafgen")
        proc = self.proc
        deadline.wait_for(lambda: _started(proc, "Running!", "trafgen"), "trafgen to start sending")

    def stop(self, deadline: Deadline) -> EngineReport:
        if self.proc is None:
            raise HarnessError("trafgen was not started")
        self.proc.interrupt()
        result = self.proc.wait(deadline)
        parsed = parse_trafgen(result.output)
        if parsed is None or not parsed.cpus:
            raise HarnessError(f"trafgen printed no final counters (exit {result.status}):\n{result.output[-1500:]}")
        seconds = max(cpu.seconds for cpu in parsed.cpus)
        return EngineReport(self.name, parsed.packets, seconds, result.output)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.close()


class NetmapPktgen(Engine):
    """netmap pkt-gen, `function` tx or rx, on `port` (vtnet0, eth0, or the
    host TAP as netmap:<tap>), run in the background with a pty or a process
    group and stopped with SIGINT, after which it prints its summary."""

    name = "netmap-pktgen"

    def __init__(self, spawn: Spawn, program: str, port: str, function: str) -> None:
        self.spawn = spawn
        self.program = program
        self.port = port
        self.function = function
        self.proc: Background | None = None

    @classmethod
    def for_host_tap(cls, spawn: Spawn, tap: str, function: str) -> NetmapPktgen:
        return cls(spawn, shutil.which("pkt-gen") or "pkt-gen", host_port(tap), function)

    @staticmethod
    def host_available() -> bool:
        return os.path.exists("/dev/netmap") and shutil.which("pkt-gen") is not None

    def argv(self, flow: Flow) -> list[str]:
        if self.function == "tx":
            return pktgen_argv(self.port, "tx", program=self.program, length=flow.frame_bytes,
                               rate=flow.rate_pps or None, wait_link=2, src=flow.src_ip, dst=flow.dst_ip,
                               src_mac=flow.src_mac, dst_mac=flow.dst_mac)
        return pktgen_argv(self.port, "rx", program=self.program, wait_link=2)

    def start(self, flow: Flow, deadline: Deadline) -> None:
        self.proc = self.spawn(self.argv(flow), f"pkt-gen-{self.function}")
        proc = self.proc
        # pkt-gen prints "Ready..." once the rings are mapped and the link wait is over.
        deadline.wait_for(lambda: _started(proc, "Ready", "pkt-gen"), f"pkt-gen {self.function} to start")

    def stop(self, deadline: Deadline) -> EngineReport:
        if self.proc is None:
            raise HarnessError("pkt-gen was not started")
        self.proc.interrupt()
        result = self.proc.wait(deadline)
        run = parse_pktgen(result.output)
        if run.summary is None:
            raise HarnessError(f"pkt-gen printed no summary (exit {result.status}):\n{result.output[-1500:]}")
        return EngineReport(self.name, run.summary.packets, run.summary.seconds, result.output)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.close()


def _left(deadline: Deadline) -> float:
    return max(1.0, deadline.remaining())


def _started(proc: Background, marker: str, what: str) -> bool:
    """True once `marker` is in the output; an error if the program exited first."""
    if marker in proc.output:
        return True
    if proc.done:
        raise HarnessError(f"{what} exited before it started:\n{proc.output[-1500:]}")
    return False
