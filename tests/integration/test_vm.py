"""The QEMU VM against real QEMU: early exit, accelerator choice, shutdown
ladder, and a harness SIGKILLed halfway whose leftovers the next run sweeps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyroute2 import netns

from harness import leases
from harness.accel import probe_kvm
from harness.errors import QEMUError
from harness.host_tap import HostNetwork
from harness.image import GuestImage, default_image
from harness.vm import QemuVM, VMSpec
from tests.conftest import assert_nothing_left, qemu_processes, run_harness

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def image() -> GuestImage:
    try:
        return GuestImage.load(default_image("linux"), expect_os="linux")
    except Exception as exc:
        if os.environ.get("HARNESS_STRICT"):
            raise
        pytest.skip(str(exc))


def test_early_exit_error_carries_exit_code_argv_and_log_tail(root_only, image, tmp_path):
    spec = VMSpec(image=image, name="t1early", nic_props={"no-such-property": "1"})
    with HostNetwork("t1early") as net:
        vm = QemuVM(spec, net, tmp_path)
        with pytest.raises(QEMUError) as info:
            vm.start()
    err = info.value
    assert err.exit_code == 1
    assert err.argv[0] == "qemu-system-x86_64" and any("no-such-property=1" in a for a in err.argv)
    assert "no-such-property" in err.log_tail
    assert "argv: qemu-system-x86_64" in str(err) and "QEMU log tail" in str(err)
    assert not (tmp_path / "overlay.qcow2").exists()
    assert_nothing_left("t1early")


def test_qmp_confirms_the_accelerator_and_shutdown_is_bounded_when_qemu_hangs(root_only, image, tmp_path):
    spec = VMSpec(image=image, name="t1stop", accel="tcg")
    with HostNetwork("t1stop") as net:
        vm = QemuVM(spec, net, tmp_path, shutdown_timeout=3.0)
        vm.start()
        assert vm.facts["accel"] == "tcg"
        assert vm.status()["status"] == "prelaunch"  # started paused (-S)
        assert vm.overlay.exists()
        vm.kill(signal.SIGSTOP)  # a hung QEMU ignores QMP quit and SIGTERM
        start = time.monotonic()
        vm.shutdown()
        assert time.monotonic() - start < 6
        assert vm.proc is not None and vm.proc.returncode == -signal.SIGKILL
    assert not vm.overlay.exists()
    assert GuestImage.load(default_image("linux")).disk.exists()  # the image itself untouched
    assert_nothing_left("t1stop")


def test_accel_kvm_fails_fast_with_a_clear_message_when_kvm_does_not_work(root_only, image, no_new_leftovers):
    status = probe_kvm("qemu-system-x86_64")
    if status.usable:
        pytest.skip(f"KVM works on this host ({status.reason})")
    start = time.monotonic()
    proc = run_harness("boot", "--accel", "kvm", "--run-dir", "/tmp/harness-test-kvm")
    assert time.monotonic() - start < 15
    assert proc.returncode == 2
    assert "--accel kvm was asked for, but KVM is not usable here" in proc.stderr
    assert "what to do: use --accel auto or --accel tcg" in proc.stderr


def test_sigkilled_run_leaves_leftovers_that_the_next_run_sweeps(root_only, image, tmp_path):
    code = f"""
import os, signal
from pathlib import Path
from harness.config import RunConfig
from harness.guest import boot_guest
with boot_guest(RunConfig(), Path({str(tmp_path)!r}), run_id="t1kill") as g:
    print("booted", g.vm.proc.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert proc.returncode == -9, proc.stderr[-2000:]
    qemu_pid = int(proc.stdout.split()[1])
    # Halfway state: namespace, leases and overlay are still there.
    assert "hns-t1kill" in netns.listnetns()
    held = sorted(p.name for p in leases.state_dir().glob("*t1kill*.json"))
    assert held == ["file--overlay-t1kill.json", "file--sockets-t1kill.json", "netns--hns-t1kill.json",
                    "process--qemu-t1kill.json"]
    assert (tmp_path / "overlay.qcow2").exists()
    # QEMU dies with its parent (PR_SET_PDEATHSIG) rather than running on.
    deadline = time.monotonic() + 10
    while leases.alive(qemu_pid, None) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not qemu_processes("harness-t1kill")
    removed = leases.sweep()
    assert {"netns hns-t1kill", "file overlay-t1kill", "file sockets-t1kill", "process qemu-t1kill"} <= set(removed)
    assert not (tmp_path / "overlay.qcow2").exists()
    assert not (leases.state_dir().parent / "sock" / "t1kill").exists()
    assert_nothing_left("t1kill")


def test_sweep_kills_a_qemu_whose_owner_died(root_only, image, tmp_path):
    """A QEMU that outlived its owner (e.g. started by an older harness without
    the parent-death signal) is killed by the sweep, verified by start time."""
    qemu = subprocess.Popen(["qemu-system-x86_64", "-name", "harness-t1orph", "-display", "none",
                             "-nodefaults", "-S"], start_new_session=True)
    owner = subprocess.Popen(["sleep", "60"])
    lease = leases.Lease("process", "qemu-t1orph", {"pid": qemu.pid,
                                                     "start_time": leases.process_start_time(qemu.pid)},
                         owner_pid=owner.pid)
    lease.write()
    owner.kill()
    owner.wait()
    assert "process qemu-t1orph" in leases.sweep()
    assert qemu.wait(5) == -signal.SIGKILL
    assert not Path(lease.path).exists()
