from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness import accel
from harness.errors import ConfigError, PreconditionError

SOURCE = Path(accel.__file__).with_name("kvm_probe.S")


@pytest.mark.skipif(shutil.which("as") is None or shutil.which("ld") is None, reason="needs binutils")
def test_embedded_probe_is_the_assembled_source(tmp_path):
    subprocess.run(["as", "--32", "-o", tmp_path / "p.o", SOURCE], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-Ttext=0x100000", "--oformat", "binary",
                    "-o", tmp_path / "p.bin", tmp_path / "p.o"], check=True)
    assert (tmp_path / "p.bin").read_bytes() == accel.PROBE_IMAGE


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU")
def test_probe_guest_completes_on_an_accelerator_that_works():
    status = accel.run_probe("qemu-system-x86_64", timeout=20, accel="tcg")
    assert status.usable, status.reason


def test_unknown_modes_are_config_errors():
    with pytest.raises(ConfigError, match="--accel must be one of"):
        accel.resolve_accel("xen", "qemu-system-x86_64")
    with pytest.raises(ConfigError, match="--vhost must be one of"):
        accel.resolve_vhost("maybe")


def test_vhost_on_without_vhost_net_is_an_error_not_a_fallback():
    usable, _ = accel.vhost_status()
    if usable:
        pytest.skip("this host has vhost-net")
    with pytest.raises(PreconditionError, match="--vhost on was asked for"):
        accel.resolve_vhost("on")
    assert accel.resolve_vhost("auto")[0] is False
    assert accel.resolve_vhost("off") == (False, "vhost-net switched off")


def test_tcg_needs_no_probe():
    assert accel.resolve_accel("tcg", "/nonexistent/qemu") == ("tcg", "TCG was asked for")
