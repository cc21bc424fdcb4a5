"""Guest TX and guest RX, put together: which engines can run on which end,
the flow between them, the meters at both ends, and the trials."""

from __future__ import annotations

import logging
import resource
import shlex
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness import cpus, thresholds
from harness.deadline import Deadline
from harness.errors import HarnessError
from harness.hostload import OtherLoad, busy_note
from harness.measure import Measurement, Meter, run_trial
from harness.pktgen import SINK_IP, SINK_MAC, Engine, Flow, KernelPktgen, NetmapPktgen, Spawn, Trafgen
from harness.results import Metric, Record
from harness.thresholds import Verdict

if TYPE_CHECKING:
    from harness.config import RunConfig
    from harness.guest import Guest

log = logging.getLogger(__name__)

HOST_MAC = "02:00:00:00:00:02"
DIRECTIONS = ("tx", "rx")  # as seen from the guest


@dataclass(frozen=True)
class Capabilities:
    """What each end can run."""

    guest_netmap: bool = False
    guest_pktgen_path: str | None = None     # netmap pkt-gen in the guest
    guest_kernel_pktgen: bool = False
    host_netmap: bool = False
    trafgen: bool = False

    @property
    def guest_netmap_pktgen(self) -> bool:
        return self.guest_netmap and self.guest_pktgen_path is not None


def probe(guest: Guest) -> Capabilities:
    profile, ssh = guest.profile, guest.ssh
    netmap = profile.netmap_present(ssh)
    return Capabilities(
        guest_netmap=netmap,
        guest_pktgen_path=profile.tool_path(ssh, "pkt-gen") if netmap else None,
        guest_kernel_pktgen=profile.name == "linux" and KernelPktgen.available(ssh),
        host_netmap=NetmapPktgen.host_available(),
        trafgen=Trafgen.available())


def choose(direction: str, caps: Capabilities) -> tuple[str, str]:
    """(sender, receiver) engine names: netmap pkt-gen wherever netmap runs,
    else the kernel path (kernel pktgen / trafgen, counters as receiver)."""
    if direction == "tx":
        if caps.guest_netmap_pktgen:
            sender = "netmap-pktgen"
        elif caps.guest_kernel_pktgen:
            sender = "linux-pktgen"
        else:
            raise HarnessError("no engine can send from this guest: no netmap pkt-gen and no kernel pktgen",
                               hint="provision pkt-gen (FreeBSD image build) or use a Linux guest with pktgen")
        return sender, "netmap-pktgen" if caps.host_netmap else "host-counters"
    if direction == "rx":
        if caps.host_netmap:
            sender = "netmap-pktgen"
        elif caps.trafgen:
            sender = "trafgen"
        else:
            raise HarnessError("no engine can send from the host: no netmap and no trafgen",
                               hint="apt-get install netsniff-ng")
        return sender, "netmap-pktgen" if caps.guest_netmap_pktgen else "guest-counters"
    raise HarnessError(f"direction must be tx or rx, not {direction!r}")


class Datapath:
    """The guest TX or guest RX path of one booted guest."""

    def __init__(self, guest: Guest, direction: str, work_dir: Path, caps: Capabilities | None = None) -> None:
        self.guest = guest
        self.direction = direction
        self.work_dir = work_dir
        self.caps = caps or probe(guest)
        self.sender_name, self.receiver_name = choose(direction, self.caps)

    # -- the two ends ---------------------------------------------------------
    def _host_spawn(self) -> Spawn:
        return lambda argv, name: self.guest.net.spawn(argv, self.work_dir / f"{name}.log")

    def _guest_spawn(self) -> Spawn:
        return lambda argv, name: self.guest.ssh.run_background(shlex.join(argv), pty=True)

    def _engine(self, name: str, side: str, function: str) -> Engine | None:
        guest = self.guest
        if name == "netmap-pktgen" and side == "guest":
            assert self.caps.guest_pktgen_path is not None
            return NetmapPktgen(self._guest_spawn(), self.caps.guest_pktgen_path, guest.dut_ifname, function)
        if name == "netmap-pktgen":
            return NetmapPktgen.for_host_tap(self._host_spawn(), guest.host_tap, function)
        if name == "linux-pktgen":
            return KernelPktgen(guest.ssh, guest.dut_ifname)
        if name == "trafgen":
            return Trafgen(self._host_spawn(), guest.host_tap, self.work_dir)
        return None  # a counters-only receiver

    def engines(self) -> tuple[Engine, Engine | None]:
        sender_side, receiver_side = ("guest", "host") if self.direction == "tx" else ("host", "guest")
        sender = self._engine(self.sender_name, sender_side, "tx")
        assert sender is not None
        return sender, self._engine(self.receiver_name, receiver_side, "rx")

    def flow(self, frame_bytes: int) -> Flow:
        guest = self.guest
        if self.direction == "tx":
            return Flow(frame_bytes, src_mac=guest.vm.spec.mac, dst_mac=SINK_MAC, src_ip=guest.ip, dst_ip=SINK_IP)
        return Flow(frame_bytes, src_mac=HOST_MAC, dst_mac=guest.vm.spec.mac, src_ip=guest.net.bridge_ip,
                    dst_ip=SINK_IP)

    def meters(self) -> tuple[Meter, Meter, str, str]:
        """(sender meter, receiver meter, sender field, receiver field)."""
        if self.direction == "tx":
            return self.guest.dut_counters, self.guest.host_counters, "tx_packets", "rx_packets"
        return self.guest.host_counters, self.guest.dut_counters, "tx_packets", "rx_packets"

    # -- trials ---------------------------------------------------------------
    def measure(self, frame_bytes: int, *, trials: int, seconds: float, warmup: float,
                trial_timeout: float) -> Measurement:
        flow = self.flow(frame_bytes)
        sender_meter, receiver_meter, sender_field, receiver_field = self.meters()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        results = []
        cpu_used = window = 0.0
        others = OtherLoad(self.guest.vm.cpu_seconds)
        for index in range(trials + 1):
            warm = index == 0
            sender, receiver = self.engines()
            with ExitStack() as stack:
                stack.enter_context(sender)
                if receiver is not None:
                    stack.enter_context(receiver)
                cpu0, wall0 = _cpu_seconds(), time.monotonic()
                others.start()
                trial = run_trial(sender, receiver, flow, seconds=warmup if warm else seconds,
                                  sender_meter=sender_meter, receiver_meter=receiver_meter,
                                  sender_field=sender_field, receiver_field=receiver_field,
                                  deadline=Deadline(trial_timeout + seconds, f"trial {index} ({self.direction})"),
                                  alive=self.guest.check_alive)
                others.stop()
            if warm:
                continue
            cpu_used += _cpu_seconds() - cpu0
            window += time.monotonic() - wall0
            log.info("trial %d: generator %.4f Mpps, sender counters %.4f, receiver counters %.4f", index,
                     trial.generator_mpps, trial.sender_counters_mpps, trial.receiver_counters_mpps)
            results.append(trial)
        return Measurement(results, "guest" if self.direction == "tx" else "host",
                           {"sender": self.sender_name, "receiver": self.receiver_name},
                           cpu_seconds_per_trial_second=cpu_used / window if window else 0.0,
                           other_cpu_share=others.share)


def _cpu_seconds() -> float:
    """CPU time of this process (the harness), user + system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_scenario(guest: Guest, record: Record, config: RunConfig, scenario: str, frame_bytes: int,
                 work_dir: Path) -> tuple[Measurement, Verdict]:
    """Measure `scenario` (guest_tx | guest_rx) at `frame_bytes` and fill
    `record` with the trials, both meters, the verdict on the threshold and
    the provenance. Assertions are the scenario's."""
    guest.configure_dut()
    path = Datapath(guest, "tx" if scenario == "guest_tx" else "rx", work_dir)
    record.guest_os, record.accel = guest.profile.name, guest.facts["accel"]
    record.vhost, record.queues, record.frame_bytes = guest.facts["vhost"], config.queues, frame_bytes
    record.engines = {"sender": path.sender_name, "receiver": path.receiver_name}
    record.provenance = guest.provenance()
    wait = (config.trials + 1) * (config.trial_seconds + config.timeouts.trial)
    with cpus.reserved(config.share_cpus, wait) as cpu_use:
        result = path.measure(frame_bytes, trials=config.trials, seconds=config.trial_seconds,
                              warmup=config.warmup_seconds, trial_timeout=config.timeouts.trial)
    record.provenance["cpus"] = {**cpu_use, "pinning": "none"}
    conditions = {"accel": record.accel, "vhost": record.vhost, "guest_os": record.guest_os,
                  "engine": path.sender_name}
    verdict = thresholds.decide(scenario, conditions, profile_name=config.profile, path=config.thresholds,
                                mpps_min=config.mpps_min)
    spread = result.spread()
    record.trials = [t.as_record() for t in result.trials]
    record.mpps = result.mpps
    record.loss = result.loss
    record.bottleneck = result.bottleneck
    record.threshold = verdict.as_record()
    record.metrics = [Metric("mpps", "Mpps", "higher", result.mpps["receiver_counters"],
                             [t.receiver_counters_mpps for t in result.trials])]
    record.details = {"spread": spread, "generator_vs_counters": result.generator_vs_counters(),
                      "harness_cpu_per_trial_second": result.cpu_seconds_per_trial_second,
                      "host_other_cpu_share": result.other_cpu_share,
                      "trial_seconds": config.trial_seconds, "warmup_seconds": config.warmup_seconds}
    return result, verdict


def below_floor(result: Measurement, verdict: Verdict) -> str:
    """The failure message for a rate under its floor, naming host load when
    others held the CPUs during the trials."""
    message = f"{result.mpps['receiver_counters']:.4f} Mpps < {verdict.min} Mpps ({verdict.reason})"
    note = busy_note(result.other_cpu_share)
    return f"{message}; {note}" if note else message
