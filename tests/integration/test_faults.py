"""Faults injected into real runs (real QEMU, real namespaces), each followed
by a check that nothing of the harness remains: QEMU SIGKILLed or SIGSTOPped
during a trial, a guest panic during a trial, SIGINT/SIGTERM to pytest in the
middle of a scenario, the guest's link cut during a TCP transfer, and a disk
that fills up during a run."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness import host_rings
from harness.config import RunConfig, Timeouts
from harness.deadline import Deadline
from harness.errors import DiskFull, GuestPanic, PhaseTimeout, QEMUError
from harness.guest import boot_guest
from harness.traffic import Datapath
from harness.vm import run_ids_in
from tests.conftest import REPO, assert_nothing_left, harness_netns

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("root_only")]

FAULT_TIMEOUTS = Timeouts(trial=8, teardown=6, transfer=60)


def _when_traffic_flows(guest, action, minimum=2000, timeout=60.0) -> threading.Thread:
    """Run `action` on a thread once the host TAP has seen `minimum` packets."""
    def watch() -> None:
        start = guest.host_counters().rx_packets
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if guest.host_counters().rx_packets - start >= minimum:
                action()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _guest_tx(guest, work: Path) -> None:
    guest.configure_dut()
    Datapath(guest, "tx", work).measure(60, trials=3, seconds=4, warmup=0.5, trial_timeout=8)


def test_qemu_sigkilled_during_a_trial(tmp_path, no_new_leftovers):
    with pytest.raises(QEMUError) as info, boot_guest(RunConfig(timeouts=FAULT_TIMEOUTS), tmp_path / "g") as g:
        _when_traffic_flows(g, lambda: g.vm.kill(signal.SIGKILL))
        _guest_tx(g, tmp_path)
    assert info.value.exit_code == -signal.SIGKILL
    assert "QEMU exited early" in str(info.value)
    assert not (tmp_path / "g" / "overlay.qcow2").exists()


def test_qemu_sigstopped_during_a_trial_times_out_with_its_diagnosis(tmp_path, no_new_leftovers):
    start = time.monotonic()
    with pytest.raises(PhaseTimeout) as info, boot_guest(RunConfig(timeouts=FAULT_TIMEOUTS), tmp_path / "g") as g:
        tap = g.host_tap
        _when_traffic_flows(g, lambda: g.vm.kill(signal.SIGSTOP))
        _guest_tx(g, tmp_path)
    err = info.value
    assert err.phase.startswith("trial ") and err.phase.endswith("(tx)")
    diagnosis = err.diagnosis
    assert "no answer to query-status" in diagnosis["qmp_status"]["status"]
    assert "(idle)" in diagnosis["qemu_cpu"]  # a stopped QEMU uses no CPU
    assert diagnosis["host_counters"][tap]["rx_packets"] > 0
    assert "login:" in diagnosis["console_tail"]
    assert time.monotonic() - start < 120


def test_guest_panic_during_a_trial(tmp_path, no_new_leftovers):
    triggered = []

    def panic(g) -> None:
        triggered.append(time.monotonic())
        g.ssh.run_background("echo c > /proc/sysrq-trigger", pty=False)

    with pytest.raises(GuestPanic) as info, boot_guest(RunConfig(timeouts=FAULT_TIMEOUTS), tmp_path / "g") as g:
        _when_traffic_flows(g, lambda: panic(g))
        _guest_tx(g, tmp_path)
    assert "Kernel panic - not syncing: sysrq triggered crash" in info.value.text
    assert triggered


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_pytest_interrupted_in_the_middle_of_a_scenario_leaves_nothing(tmp_path, sig):
    netns_before = harness_netns()
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "scenarios/test_guest_tx.py", "--run-dir",
                             str(tmp_path), "-p", "no:cacheprovider", "--trials", "5", "--trial-seconds", "5"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not _trial_running(netns_before):
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            time.sleep(0.2)
        assert _trial_running(netns_before), "the scenario never started sending"
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, out[-3000:]  # pytest: interrupted
    assert "KeyboardInterrupt" in out
    run_ids = run_ids_in(tmp_path)
    assert run_ids, "the interrupted run booted no guest"
    for run_id in run_ids:
        assert_nothing_left(run_id)
        assert not (Path("/run/harness/sock") / run_id).exists()
    assert not list(tmp_path.rglob("overlay.qcow2")) and not list(tmp_path.rglob("id_ed25519"))


def _trial_running(netns_before: set[str]) -> bool:
    for ns in harness_netns() - netns_before:
        out = subprocess.run(["ip", "-n", ns, "-s", "-o", "link", "show", "type", "tun"], capture_output=True,
                             text=True).stdout
        for line in out.splitlines():
            fields = line.split("RX:")[-1].split()
            numbers = [f for f in fields if f.isdigit()]
            if len(numbers) >= 2 and int(numbers[1]) > 5000:  # bytes, packets
                return True
    return False


def test_link_cut_during_a_tcp_transfer_fails_it_with_the_bytes_moved(guest, tmp_path):
    guest.configure_dut()
    target = "/tmp/harness-from-host.bin"
    cut = threading.Event()

    def cut_halfway() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if guest.profile.file_size(guest.ssh, target) >= 4 * 1024 * 1024:
                guest.net.link_state(guest.host_tap, up=False)
                cut.set()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=cut_halfway)
    thread.start()
    try:
        with pytest.raises(host_rings.TransferFailed) as info:
            host_rings.tcp_to_guest(guest, 64 * 1024 * 1024, tmp_path, timeout=60, stall=3)
    finally:
        thread.join()
        guest.net.link_state(guest.host_tap, up=True)
    assert cut.is_set()
    assert 4 * 1024 * 1024 <= info.value.moved < 64 * 1024 * 1024
    assert "stalled" in str(info.value)
    # The guest is fine once the link is back: the port forwards again (link_state
    # waited for it), the host relearns the guest's MAC, then no ping is lost.
    assert guest.net.port_forwarding(guest.host_tap)
    host_rings.wait_reachable(guest, Deadline(10, "guest reachable after the link came back"))
    assert host_rings.ping(guest, 5, 0.2).loss_percent == 0.0


def test_disk_filling_up_during_a_run_is_one_clear_error(tmp_path, no_new_leftovers):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", str(small)], check=True)
    try:
        with pytest.raises(DiskFull) as info, \
                boot_guest(RunConfig(timeouts=Timeouts(login=30, teardown=6)), small / "g") as g:
            free = int(subprocess.run(["df", "--output=avail", "-B1", str(small)], capture_output=True,
                                      text=True).stdout.split()[-1])
            subprocess.run(["fallocate", "-l", str(free - 2 * 2**20), str(small / "filler")], check=True)
            g.console.run("dd if=/dev/urandom of=/root/big bs=1M count=48 2>/dev/null; sync", timeout=20)
        assert "QEMU paused the guest on a disk write error" in str(info.value)
        assert str(small / "g") in str(info.value) and "--run-dir" in str(info.value)
        assert not (small / "g" / "overlay.qcow2").exists()
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
