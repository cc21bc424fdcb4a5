"""Host-ring steps under faults, against the real Debian guest: a transfer
whose guest listener stops halfway fails at its stall deadline saying how far
it got and leaves nothing running; a real guest panic fails a scenario within
seconds with the panic text in its report."""

from __future__ import annotations

import re
import subprocess
import threading
import time

import pytest

from harness import host_rings

pytest_plugins = ("pytester",)
pytestmark = pytest.mark.vm

SIZE = 64 * 1024 * 1024  # long enough under TCG to stop it halfway


def _guest_nc(guest) -> str:
    return guest.ssh.run("pgrep -a -x nc || true").output.strip()


def _host_nc(guest) -> str:
    return subprocess.run(["pgrep", "-af", f"nc -N {guest.ip}"], capture_output=True, text=True).stdout.strip()


def test_transfer_whose_listener_stops_halfway_fails_at_its_deadline(guest, tmp_path):
    guest.configure_dut()
    target = "/tmp/harness-from-host.bin"
    stopped = threading.Event()

    def stop_listener_halfway() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            size = guest.profile.file_size(guest.ssh, target)
            if size >= 4 * 1024 * 1024:
                guest.ssh.run("pkill -STOP -x nc")
                stopped.set()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=stop_listener_halfway)
    watcher.start()
    start = time.monotonic()
    with pytest.raises(host_rings.TransferFailed) as info:
        host_rings.tcp_to_guest(guest, SIZE, tmp_path, timeout=120, stall=3)
    elapsed = time.monotonic() - start
    watcher.join()
    assert stopped.is_set(), "the listener was never stopped: the transfer ended too soon"
    err = info.value
    assert 0 < err.moved < SIZE and err.expected == SIZE
    assert re.search(rf"TCP host -> guest stalled: {err.moved} of {SIZE} bytes moved in [\d.]+ s, "
                     r"none in the last 3 s", str(err))
    assert elapsed < 60
    # Nothing of the transfer is left running, at either end.
    assert _guest_nc(guest) == ""
    assert _host_nc(guest) == ""
    assert guest.console.run("ls /tmp/harness-from-host.bin 2>&1").status != 0


def test_real_guest_panic_fails_the_scenario_within_seconds_with_the_panic_text(root_only, pytester, tmp_path):
    pytester.makepyfile(test_panics="""
import time
from harness import host_rings

def test_tcp_while_the_guest_panics(guest, tmp_path):
    guest.configure_dut()
    guest.ssh.run_background("sleep 1; echo c > /proc/sysrq-trigger", pty=False)
    start = time.monotonic()
    try:
        host_rings.tcp_to_guest(guest, 256 * 1024 * 1024, tmp_path, timeout=300, stall=60)
    finally:
        print(f"FAILED-AFTER {time.monotonic() - start:.1f} s")
""")
    result = pytester.runpytest_subprocess("-p", "harness.plugin", "--run-dir", str(tmp_path),
                                           "-p", "no:cacheprovider", timeout=300)
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    assert "GuestPanic" in text and "guest kernel panic detected on the console" in text
    assert "Kernel panic - not syncing: sysrq triggered crash" in text
    seconds = float(re.search(r"FAILED-AFTER ([\d.]+) s", text).group(1))
    assert seconds < 20, f"the panic was noticed only after {seconds} s"
    assert "harness resources left behind" not in text
