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


def _image_copy(tmp_path, **manifest_changes):
    import json
    import shutil

    from harness.image import default_image

    source = default_image("linux")
    copy = tmp_path / "image"
    copy.mkdir()
    for name in ("disk.qcow2", "vmlinuz", "initrd.img"):
        shutil.copyfile(source / name, copy / name)
    manifest = {**json.loads((source / "manifest.json").read_text()), **manifest_changes}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_truncated_image(tmp_path):
    image = _image_copy(tmp_path)
    disk = image / "disk.qcow2"
    disk.chmod(0o644)
    with open(disk, "r+b") as f:
        f.truncate(disk.stat().st_size // 2)
    _one_clear_error(run_harness("boot", "--image", str(image), "--run-dir", str(tmp_path / "run")),
                     "is corrupt or truncated", "rebuild it with: make -C")


def test_image_of_the_wrong_guest_os(tmp_path):
    image = _image_copy(tmp_path, guest_os="freebsd")
    _one_clear_error(run_harness("boot", "--guest", "linux", "--image", str(image), "--run-dir", str(tmp_path)),
                     "is a freebsd guest, but --guest linux was asked for")


def test_unknown_guest_profile(tmp_path):
    _one_clear_error(run_harness("boot", "--guest", "plan9", "--run-dir", str(tmp_path)), "unknown guest 'plan9'")


@pytest.mark.parametrize("args,needle", [
    (["nosuch"], "unknown scenario 'nosuch'"),
    (["--profile", "fastest"], "unknown threshold profile 'fastest'"),
])
def test_run_refuses_unknown_names_before_anything_starts(tmp_path, args, needle):
    _one_clear_error(run_harness("run", *args, "--run-dir", str(tmp_path)), needle)
    assert not (tmp_path / "results.sqlite").exists()


@pytest.mark.parametrize("text,needle", [
    ('[p]\ntx_mpps = "fast"\n', "tx_mpps must be a positive number of Mpps, not 'fast'"),
    ('[p]\ntx_mpps = 1\nspeed = 2\n', "unknown key 'speed'"),
])
def test_run_refuses_a_bad_thresholds_file(tmp_path, text, needle):
    path = tmp_path / "thresholds.toml"
    path.write_text(text)
    _one_clear_error(run_harness("run", "--thresholds", str(path), "--run-dir", str(tmp_path)), needle)
