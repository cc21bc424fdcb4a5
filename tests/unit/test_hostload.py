"""Host load: the /proc parsers, and other processes' CPU told apart from the run's own."""

from __future__ import annotations

import resource
import subprocess
import time
from pathlib import Path

import pytest

from harness import hostload
from harness.deadline import Deadline
from harness.hostload import OtherLoad, busy_note, busy_seconds, process_seconds

# /proc/stat's first lines as read on this 2-CPU Debian 12 host, and a
# /proc/PID/stat line in the kernel's format whose process name holds spaces
# and parentheses (the name is free text, so parsing starts after its last ")").
PROC_STAT = ("cpu  761021 573 167900 1343211 6214 0 1711 1419 1 0\n"
             "cpu0 380508 290 83950 671600 3107 0 855 709 1 0\n")
QEMU_STAT = ("4242 (qemu (vm 1)) S 4200 4242 4200 0 -1 4194560 60123 0 12 0 "
             "31337 4663 0 0 20 0 6 0 1234567 2147483648 120000 18446744073709551615")


def test_busy_seconds_counts_every_busy_field_but_not_idle_or_guest_twice() -> None:
    ticks = 761021 + 573 + 167900 + 0 + 1711 + 1419
    assert busy_seconds(PROC_STAT) == pytest.approx(ticks / hostload.CLK_TCK)
    with pytest.raises(ValueError, match="not a /proc/stat cpu line"):
        busy_seconds("intr 1 2 3\n")


def test_process_seconds_survives_a_name_with_spaces_and_parentheses() -> None:
    assert process_seconds(QEMU_STAT) == pytest.approx((31337 + 4663) / hostload.CLK_TCK)


def _cpu(proc: subprocess.Popen[bytes]) -> float:
    return process_seconds(Path(f"/proc/{proc.pid}/stat").read_text())


def _spin_until(spinner: subprocess.Popen[bytes], cpu_seconds: float) -> None:
    Deadline(20, "spinner CPU time").wait_for(lambda: _cpu(spinner) >= cpu_seconds, "the spinner to burn CPU")


@pytest.fixture
def spinner():
    proc = subprocess.Popen(["sh", "-c", "while :; do :; done"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_process_spinning_beside_the_run_is_other_load(spinner) -> None:
    others = OtherLoad(lambda: None)  # no VM
    start = _cpu(spinner)
    others.start()
    _spin_until(spinner, start + 1.0)
    others.stop()
    assert others.other >= 0.8  # the spinner's second, give or take a tick
    assert others.share > hostload.BUSY_SHARE  # one busy core of at most a few
    assert "busy with other work" in busy_note(others.share)


def test_the_vm_and_the_harness_itself_are_not_other_load(spinner) -> None:
    # Two meters over the same window, so that whatever else the host runs
    # meanwhile weighs on both alike: one counts the spinner as the VM.
    as_vm, no_vm = OtherLoad(lambda: _cpu(spinner)), OtherLoad(lambda: None)
    spinner_start, own_start = _cpu(spinner), resource.getrusage(resource.RUSAGE_SELF)
    busy_start = busy_seconds(Path("/proc/stat").read_text())
    as_vm.start()
    no_vm.start()
    _spin_until(spinner, spinner_start + 1.0)
    cpu_start = time.process_time()
    while time.process_time() - cpu_start < 0.3:  # the harness's own CPU
        pass
    no_vm.stop()
    as_vm.stop()
    busy = busy_seconds(Path("/proc/stat").read_text()) - busy_start
    own_end = resource.getrusage(resource.RUSAGE_SELF)
    spun = _cpu(spinner) - spinner_start
    harness = (own_end.ru_utime + own_end.ru_stime) - (own_start.ru_utime + own_start.ru_stime)
    assert no_vm.other - as_vm.other == pytest.approx(spun, abs=0.1)
    # What as_vm left out of the host's busy time covers the VM and the harness.
    assert busy - as_vm.other >= spun + 0.8 * harness - 0.05
    assert harness >= 0.3


def test_the_busy_note_starts_at_the_busy_share() -> None:
    assert busy_note(hostload.BUSY_SHARE - 0.01) == ""
    assert busy_note(0.5).startswith("the host was busy with other work during the trials (50% of ")
