"""Bad input gets one clear error (exit 2) and leaves nothing behind."""

from __future__ import annotations

import pytest

from tests.conftest import run_harness

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("root_only", "no_new_leftovers")]


def _one_clear_error(proc, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("harness: error: ")
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in proc.stderr


def test_missing_image_names_the_make_target(tmp_path):
    proc = run_harness("boot", "--image", str(tmp_path / "nope"), "--run-dir", str(tmp_path))
    _one_clear_error(proc, "no guest image at", "make -C", "images linux")


def test_not_root(tmp_path):
    # A user namespace without a mapping for root: the process is really not root.
    proc = run_harness("boot", "--run-dir", str(tmp_path), prefix=["unshare", "--user"])
    _one_clear_error(proc, "must run as root")


def test_no_dev_net_tun(tmp_path):
    # Hide /dev/net in a private mount namespace.
    proc = run_harness("boot", "--run-dir", str(tmp_path),
                       prefix=["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               'mount -t tmpfs none /dev/net && exec "$@"', "sh"])
    _one_clear_error(proc, "/dev/net/tun is missing", "modprobe tun")


def test_qemu_missing(tmp_path):
    config = tmp_path / "harness.toml"
    config.write_text('[run]\nqemu = "qemu-system-nonexistent"\n')
    proc = run_harness("boot", "--config", str(config), "--run-dir", str(tmp_path))
    _one_clear_error(proc, "QEMU is not installed", "apt-get install qemu-system-x86")


@pytest.mark.parametrize("args,needle", [
    (["--queues", "0"], "queues must be a whole number of at least 1, not 0"),
    (["--vcpus", "-2"], "vcpus must be a whole number of at least 1"),
])
def test_bad_values(tmp_path, args, needle):
    _one_clear_error(run_harness("boot", *args, "--run-dir", str(tmp_path)), needle)


def test_bad_config_key_and_type(tmp_path):
    config = tmp_path / "harness.toml"
    config.write_text('[run]\nqeues = 2\n')
    _one_clear_error(run_harness("boot", "--config", str(config)), "unknown key 'qeues'")
    config.write_text('[run]\nqueues = "many"\n')
    _one_clear_error(run_harness("boot", "--config", str(config)), "queues must be a whole number")


def test_run_dir_not_writable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    _one_clear_error(run_harness("boot", "--run-dir", str(blocker / "sub")), "is not writable")
