"""`harness image build freebsd` (harness.freebsd_image:main): the dry run and
the input checks. The dry run must print every URL, checksum source and
step, and must not touch the network: these tests make any socket connect
raise, so a dry run that tried would fail.

The URL layout is from release/Makefile.mirrors and Makefile.vm; the 14.3
BASIC-CI image name is the one QEMU's tests/vm/freebsd downloads.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.freebsd_image import BuildRequest, host_steps, image_summary, main, parse_tunable, planned_guest, validate
from harness.freebsd_provision import guest_steps

CI = "https://download.freebsd.org/releases/CI-IMAGES/14.3-RELEASE/amd64/Latest/"
VM = "https://download.freebsd.org/releases/VM-IMAGES/14.3-RELEASE/amd64/Latest/"
SRC = "https://download.freebsd.org/releases/amd64/14.3-RELEASE/"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the dry run tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def dry(capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    assert main(["--dry-run", *args]) == 0
    return capsys.readouterr().out.splitlines()


def step_names(lines: list[str]) -> list[str]:
    return [line.split(". ", 1)[1].split(":", 1)[0] for line in lines if line[:5].strip().rstrip(".").isdigit()]


def test_freebsd_dry_run_default_prints_urls_checksums_and_steps(capsys: pytest.CaptureFixture[str]) -> None:
    lines = dry(capsys)
    assert lines[0] == "FreeBSD 14.3-RELEASE amd64, basic-ci image, BIOS firmware"
    assert f"image:      {CI}FreeBSD-14.3-RELEASE-amd64-BASIC-CI.raw.xz" in lines
    assert f"            or {CI}FreeBSD-14.3-RELEASE-amd64-BASIC-CI-ufs.raw.xz" in lines
    assert f"checksums:  {CI}CHECKSUM.SHA512" in lines and f"checksums:  {CI}CHECKSUM.SHA256" in lines
    assert f"src:        {SRC}src.txz" in lines and f"checksums:  {SRC}MANIFEST (SHA-256)" in lines
    assert step_names(lines) == ["fetch-image-checksums", "fetch-src-checksums", "check-up-to-date",
                                 "download-image", "download-src", "decompress-image", "convert-image",
                                 "grow-disk", "provision", "commit-disk", "write-manifest"]
    guest = [line.strip()[2:].split(" (")[0] for line in lines if line.startswith("        - ")]
    assert guest == ["first-boot", "identify", "base-config", "loader-conf", "sshd", "install-pkt-gen",
                     "fetch-src", "build-bridge", "reboot", "verify-kernel", "check-netmap", "record", "poweroff"]
    assert "            $ env ASSUME_ALWAYS_YES=yes pkg install -y pkt-gen" in lines
    assert "            $ tar -C / -xf /tmp/src.txz usr/src/tools/tools/netmap" in lines


def test_freebsd_dry_run_vm_image_uses_uefi_and_the_qcow2(capsys: pytest.CaptureFixture[str]) -> None:
    lines = dry(capsys, "--flavour", "vm-image", "--tunable", "hw.vtnet.mq_disable=1")
    assert lines[0].endswith("vm-image image, UEFI firmware")
    assert f"image:      {VM}FreeBSD-14.3-RELEASE-amd64-ufs.qcow2.xz" in lines
    assert f"            or {VM}FreeBSD-14.3-RELEASE-amd64.qcow2.xz" in lines
    assert f"checksums:  {VM}CHECKSUM.SHA512" in lines
    loader = next(line for line in lines if "/boot/loader.conf" in line and "printf" in line)
    assert "console=" not in loader  # UEFI finds the serial console itself
    assert "'hw.vtnet.mq_disable=\"1\"'" in loader


def test_freebsd_dry_run_own_kernel_dir_src_tree_and_patch(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    kdir = tmp_path / "obj" / "kernel"
    kdir.mkdir(parents=True)
    (kdir / "kernel").write_bytes(b"elf")
    lines = dry(capsys, "--kernel", str(kdir), "--version", "14.2")
    assert lines[1] == f"kernel under test: the prebuilt kernel {kdir}"
    assert "prepare-kernel" in step_names(lines)
    assert "        - install-kernel (run): install the prebuilt kernel " \
           f"{kdir}; keep the stock one as /boot/kernel.stock" in lines
    src = tmp_path / "src"
    for sub in ("tools/tools/netmap", "sys/conf"):
        (src / sub).mkdir(parents=True)
    (src / "Makefile").write_text("")
    patch = tmp_path / "D12345.diff"
    patch.write_text("--- a/sys/dev/virtio/network/if_vtnet.c\n")
    lines = dry(capsys, "--src", str(src), "--patch", str(patch))
    assert lines[1] == f"kernel under test: GENERIC built from the src tree {src} with D12345.diff"
    assert not any(line.startswith("src:") for line in lines)  # no src.txz download
    names = step_names(lines)
    assert "pack-src" in names and "prepare-patch" in names and "download-src" not in names
    assert "            $ patch -p1 -N -d /usr/src -i /tmp/kernel.patch" in lines


@pytest.mark.parametrize(("args", "message"), [
    (["--version", "14"], "--version must be a release number like 14.3, not '14'"),
    (["--arch", "arm64"], "--arch arm64 is not supported"),
    (["--kernel", "/nonexistent/kernel.txz"], "is neither stock, src, a kernel directory nor a kernel.txz"),
    (["--tunable", "hw.vtnet.mq_disable"], "--tunable must be key=value"),
    (["--tunable", 'hw.vtnet.x=1"2'], "has a quote, backslash or newline"),
    (["--tunable", "a=1", "--tunable", "a=2"], "--tunable given twice for a"),
    (["--disk-size", "lots"], "--disk-size: not a size: 'lots'"),
    (["--kernconf", "GENERIC; rm -rf /"], "--kernconf must be a kernel config name"),
    (["--patch", "/nonexistent.diff"], "--patch /nonexistent.diff does not exist"),
])
def test_freebsd_bad_input_gives_one_clear_error(args: list[str], message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dry-run", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("harness image build freebsd: error: ")
    assert message in err
    assert err.count("error:") == 1


def test_freebsd_inputs_that_do_not_fit_together(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="is a directory without a 'kernel' file"):
        validate(BuildRequest(kernel=str(empty)))
    (tmp_path / "kernel.txz").write_bytes(b"")
    patch = tmp_path / "p.diff"
    patch.write_text("")
    with pytest.raises(ConfigError, match="cannot go with a prebuilt --kernel"):
        validate(BuildRequest(kernel=str(tmp_path / "kernel.txz"), patch=patch))
    with pytest.raises(ConfigError, match="is not a FreeBSD src tree: it lacks tools/tools/netmap"):
        validate(BuildRequest(src=empty))
    with pytest.raises(ConfigError, match="--patch needs --kernel src"):
        validate(BuildRequest(patch=patch))
    assert parse_tunable(' hw.vtnet.lro_disable = "1" ') == ("hw.vtnet.lro_disable", "1")


def test_freebsd_plan_and_dry_run_share_the_guest_steps() -> None:
    req = BuildRequest()
    assert [name for name, _ in host_steps(req)][-3:] == ["provision", "commit-disk", "write-manifest"]
    plan = planned_guest(req, base_url="http://10.0.2.2:1234/", served={"src.txz": "a" * 64})
    fetch = next(s for s in guest_steps(plan) if s.name == "fetch-src").commands
    assert fetch[0].text == "fetch -q -o /tmp/src.txz http://10.0.2.2:1234/src.txz"
    assert fetch[1].text == f'test "$(sha256 -q /tmp/src.txz)" = {"a" * 64}'


def test_freebsd_image_summary_for_doctor() -> None:
    manifest = json.loads(json.dumps({
        "version": "14.3", "flavour": "basic-ci", "kernel_release": "14.3-RELEASE", "kernel_ident": "GENERIC",
        "kernel_sha256": "ab" * 32, "kernel_version": "FreeBSD 14.3-RELEASE #0 n1-dirty: ...",
        "kernel": {"kind": "src", "description": "GENERIC built from the release's src.txz with D1.diff"}}))
    assert image_summary(manifest) == (
        "FreeBSD 14.3-RELEASE (basic-ci), kernel src: GENERIC built from the release's src.txz with D1.diff; "
        "running ident GENERIC, sha256 abababababab, uname -v 'FreeBSD 14.3-RELEASE #0 n1-dirty: ...'")


@pytest.mark.parametrize("kernel", ["stock", "src", "dir", "txz"])
def test_freebsd_every_planned_host_step_has_an_implementation(kernel: str, tmp_path: Path) -> None:
    from harness.freebsd_build import Builder

    if kernel == "dir":
        (tmp_path / "kernel").write_bytes(b"elf")
        kernel = str(tmp_path)
    elif kernel == "txz":
        (tmp_path / "kernel.txz").write_bytes(b"")
        kernel = str(tmp_path / "kernel.txz")
    req = validate(BuildRequest(kernel=kernel, out=tmp_path / "out"))
    builder = Builder(req)
    for name, _ in host_steps(req):
        assert name == "check-up-to-date" or callable(getattr(builder, "step_" + name.replace("-", "_"), None)), name
