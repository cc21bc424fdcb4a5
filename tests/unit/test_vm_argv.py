"""The QEMU command line, built without running QEMU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.image import GuestImage
from harness.vm import VMSpec, build_argv


@pytest.fixture
def image(tmp_path) -> GuestImage:
    for name in ("disk.qcow2", "vmlinuz", "initrd.img"):
        (tmp_path / name).write_text("")
    manifest = {"guest_os": "linux", "disk": "disk.qcow2", "boot": "kernel", "kernel": "vmlinuz",
                "initrd": "initrd.img", "cmdline": "console=ttyS0 root=/dev/vda"}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return GuestImage.load(tmp_path, check=False)


def _argv(spec: VMSpec, fds=(7,)) -> list[str]:
    return build_argv(spec, tap_fds=list(fds), overlay=Path("/run/x/overlay.qcow2"), run_dir=Path("/run/x"),
                      socket_dir=Path("/run/harness/sock/r1"), ssh_port=2222)


def _value(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_single_queue_tcg(image):
    argv = _argv(VMSpec(image=image, name="r1"))
    assert all(isinstance(a, str) for a in argv)
    assert _value(argv, "-machine") == ["q35,accel=tcg"] and _value(argv, "-cpu") == ["max"]
    assert "-S" in argv
    assert _value(argv, "-qmp") == ["unix:/run/harness/sock/r1/qmp.sock,server=on,wait=off"]
    assert _value(argv, "-chardev") == ["socket,id=con0,path=/run/harness/sock/r1/console.sock,server=on,"
                                        "wait=off,logfile=/run/x/console.log"]
    assert _value(argv, "-netdev")[0] == "tap,id=dut0,fds=7,vhost=off"
    dut = _value(argv, "-device")[1]
    assert dut.startswith("virtio-net-pci,netdev=dut0,") and "mac=52:54:00:12:34:01" in dut
    assert "mq=on" not in dut
    # The overlay, not the image, is the disk.
    assert "file=/run/x/overlay.qcow2" in _value(argv, "-drive")[0]
    assert _value(argv, "-append") == ["console=ttyS0 root=/dev/vda harness.mgmt_mac=52:54:00:ff:00:01"]


def test_management_channel_reaches_only_a_loopback_forward(image):
    mgmt = _value(_argv(VMSpec(image=image, name="r1")), "-netdev")[1]
    assert mgmt.startswith("user,id=mgmt0,restrict=on,")
    assert "hostfwd=tcp:127.0.0.1:2222-10.0.2.15:22" in mgmt


def test_multiqueue_kvm_vhost_and_device_properties(image):
    spec = VMSpec(image=image, name="r2", accel="kvm", vhost=True, queues=4,
                  nic_props={"csum": "off", "guest_csum": "off"})
    argv = _argv(spec, fds=(7, 8, 9, 10))
    assert _value(argv, "-machine") == ["q35,accel=kvm"] and _value(argv, "-cpu") == ["host"]
    assert _value(argv, "-netdev")[0] == "tap,id=dut0,fds=7:8:9:10,vhost=on"
    dut = _value(argv, "-device")[1]
    assert "mq=on,vectors=10" in dut and dut.endswith(",csum=off,guest_csum=off")


def test_uefi_and_no_nic_under_test_for_provisioning(image):
    argv = _argv(VMSpec(image=image, name="r3", firmware="uefi", mgmt_restrict=False), fds=())
    assert "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd" in _value(argv, "-drive")
    assert not any(n.startswith("tap") for n in _value(argv, "-netdev"))
    assert _value(argv, "-netdev")[0].startswith("user,id=mgmt0,restrict=off,")


@pytest.mark.parametrize("changes,needle", [
    ({"queues": 0}, "queues"), ({"vcpus": 0}, "vcpus"), ({"memory_mb": 16}, "memory"),
    ({"accel": "auto"}, "resolved"), ({"firmware": "coreboot"}, "firmware"),
])
def test_spec_validation(image, changes, needle):
    with pytest.raises(ConfigError, match=needle):
        VMSpec(image=image, name="x", **changes).validate()
