"""The host side of --guest-netmap: the ELF .modinfo reader against real
kernel modules (the Debian guest image's own, read out of its disk without
mounting or loading anything), the directory checks, the vermagic check, the
doctor row, and the engine choice from the guest's capabilities."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from harness import doctor
from harness.errors import ConfigError, HarnessError, ImageError
from harness.guest_netmap import (
    DIR_MUST_HOLD,
    GuestKernel,
    ModuleFormatError,
    NetmapBuild,
    VermagicMismatch,
    check_vermagic,
    parse_modinfo,
    read_modinfo,
)
from harness.image import GuestImage, default_image
from harness.plugin import strict_mode
from harness.traffic import Capabilities, choose

# Modules taken out of the image: small ones without dependencies, and virtio_net.
IMAGE_MODULES = ("kernel/lib", "kernel/drivers/net/virtio_net.ko", "kernel/drivers/net/dummy.ko")


@pytest.fixture(scope="module")
def image_modules(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(directory of real .ko files of the guest kernel, that kernel's release),
    dumped from the Debian image's ext4 disk with qemu-img and debugfs."""
    try:
        image = GuestImage.load(default_image("linux"), expect_os="linux", check=False)
    except ImageError as exc:
        if strict_mode():
            raise
        pytest.skip(f"needs the Debian guest image: {exc}")
    missing = [tool for tool in ("qemu-img", "debugfs") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"needs {' and '.join(missing)} (scripts/setup-host installs qemu-utils and e2fsprogs)")
    release = str(image.identity["kernel_release"])
    work = tmp_path_factory.mktemp("image-modules")
    raw = work / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(image.disk), str(raw)], check=True)
    out = work / "modules"
    out.mkdir()
    for item in IMAGE_MODULES:
        source = f"/lib/modules/{release}/{item}"
        command = f"dump {source} {out / Path(item).name}" if item.endswith(".ko") else f"rdump {source} {out}"
        subprocess.run(["debugfs", "-R", command, str(raw)], check=True, capture_output=True)
    raw.unlink()
    for module in (out / "lib").glob("*.ko"):  # the small lib modules next to virtio_net.ko
        module.rename(out / module.name)
    assert (out / "virtio_net.ko").stat().st_size > 10000
    return out, release


def all_modules(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.ko"))


def with_vermagic(source: Path, target: Path, vermagic: str) -> Path:
    """A copy of the module `source` whose .modinfo says `vermagic` (same
    length as the real one, so the ELF layout is untouched)."""
    data = bytearray(source.read_bytes())
    entry = parse_modinfo(bytes(data)).entry("vermagic")
    assert entry is not None and len(vermagic) == len(entry.value)
    data[entry.offset:entry.offset + len(entry.value)] = vermagic.encode()
    target.write_bytes(bytes(data))
    return target


def older(vermagic: str) -> str:
    """The same vermagic for another ABI of the same kernel (6.1.0-50-... -> 6.1.0-49-...)."""
    match = re.match(r"(\d+\.\d+\.\d+-)(\d+)(.*)", vermagic, re.DOTALL)
    assert match, vermagic
    abi = str(int(match[2]) - 1).rjust(len(match[2]), "0")
    assert len(abi) == len(match[2])
    return match[1] + abi + match[3]


# -- the .modinfo reader ------------------------------------------------------------
def test_modinfo_reads_what_kmod_reads_for_every_real_module(image_modules):
    if shutil.which("modinfo") is None:
        pytest.fail("needs kmod's modinfo to compare with (scripts/setup-host installs kmod)")
    directory, _ = image_modules
    host = Path("/lib/modules") / os.uname().release / "kernel" / "lib"
    modules = all_modules(directory) + (all_modules(host)[:20] if host.is_dir() else [])
    assert len(modules) >= 10
    for path in modules:
        info = read_modinfo(path)
        for key in ("vermagic", "name", "depends", "license", "srcversion"):
            expected = subprocess.run(["modinfo", "-F", key, str(path)], capture_output=True, text=True,
                                      check=True).stdout.rstrip("\n")
            assert (info.get(key) or "") == expected, f"{path.name}: {key}"


def test_the_image_modules_carry_the_image_kernels_vermagic(image_modules):
    directory, release = image_modules
    vermagics = {read_modinfo(p).vermagic for p in all_modules(directory)}
    assert len(vermagics) == 1
    vermagic = vermagics.pop()
    assert vermagic is not None and vermagic.split()[0] == release
    assert "modversions" in vermagic.split()
    virtio = read_modinfo(directory / "virtio_net.ko")
    assert virtio.name == "virtio_net"
    assert set(virtio.depends) == {"virtio_ring", "virtio", "net_failover"}
    crc7 = read_modinfo(directory / "crc7.ko")
    assert crc7.name == "crc7" and crc7.depends == ()


def test_each_value_offset_points_at_the_value_in_the_file(image_modules):
    path = image_modules[0] / "virtio_net.ko"
    data = path.read_bytes()
    info = read_modinfo(path)
    assert len(info.entries) > 8
    for entry in info.entries:
        assert data[entry.offset - len(entry.key) - 1:entry.offset + len(entry.value)] == \
            f"{entry.key}={entry.value}".encode()


def _to_big_endian(data: bytes) -> bytes:
    """The same ELF32 object with its ELF and section headers byte-swapped
    (.modinfo is strings, so it needs no swapping)."""
    out = bytearray(data)
    out[5] = 2  # ELFDATA2MSB
    fields = "HHIIIIIHHHHHH"
    values = struct.unpack_from("<16x" + fields, data)
    struct.pack_into(">" + fields, out, 16, *values)
    shoff, shentsize, shnum = values[5], values[10], values[11]
    for index in range(shnum):
        header = struct.unpack_from("<10I", data, shoff + index * shentsize)
        struct.pack_into(">10I", out, shoff + index * shentsize, *header)
    return bytes(out)


def test_elf32_and_big_endian_modules_are_read_too(image_modules, tmp_path):
    if shutil.which("objcopy") is None:
        pytest.fail("needs objcopy (scripts/setup-host installs binutils)")
    source = image_modules[0] / "crc7.ko"
    elf32 = tmp_path / "crc7-x32.ko"
    subprocess.run(["objcopy", "-O", "elf32-x86-64", str(source), str(elf32)], check=True)
    assert elf32.read_bytes()[4] == 1  # ELFCLASS32
    expected = read_modinfo(source)
    assert read_modinfo(elf32).vermagic == expected.vermagic
    assert read_modinfo(elf32).name == "crc7"
    big = parse_modinfo(_to_big_endian(elf32.read_bytes()))
    assert (big.vermagic, big.name) == (expected.vermagic, "crc7")


def test_files_that_are_not_modules_are_refused_with_the_reason(image_modules, tmp_path):
    module = (image_modules[0] / "crc7.ko").read_bytes()
    text = tmp_path / "text.ko"
    text.write_text("not a module\n")
    with pytest.raises(ModuleFormatError, match=r"text.ko is not a Linux kernel module: not an ELF file$"):
        read_modinfo(text)
    with pytest.raises(ModuleFormatError, match="not a relocatable object"):
        read_modinfo(Path(os.path.realpath(shutil.which("ls") or "/bin/ls")))
    truncated = tmp_path / "truncated.ko"
    truncated.write_bytes(module[:200])
    with pytest.raises(ModuleFormatError, match="truncated ELF section headers"):
        read_modinfo(truncated)
    compressed = tmp_path / "gz.ko"
    compressed.write_bytes(gzip.compress(module))
    with pytest.raises(ModuleFormatError, match=r"compressed; give the uncompressed \.ko"):
        read_modinfo(compressed)
    if shutil.which("objcopy"):
        stripped = tmp_path / "stripped.ko"
        subprocess.run(["objcopy", "--remove-section", ".modinfo", str(image_modules[0] / "crc7.ko"),
                        str(stripped)], check=True)
        with pytest.raises(ModuleFormatError, match="without a .modinfo section"):
            read_modinfo(stripped)
    with pytest.raises(ConfigError, match="cannot read .*missing.ko"):
        read_modinfo(tmp_path / "missing.ko")


# -- the directory -------------------------------------------------------------------
def test_a_full_directory_is_hashed_and_read_and_extras_are_ignored(image_modules, tmp_path):
    modules = image_modules[0]
    shutil.copy(modules / "crc7.ko", tmp_path / "netmap.ko")
    shutil.copy(modules / "virtio_net.ko", tmp_path / "virtio_net.ko")
    (tmp_path / "pkt-gen").write_bytes(b"\x7fELF pkt-gen stand-in")
    (tmp_path / "bridge").write_bytes(b"\x7fELF bridge stand-in")
    (tmp_path / "lb").write_text("another netmap app, not used")
    (tmp_path / "build-apps").mkdir()
    build = NetmapBuild.from_directory(tmp_path)
    assert list(build.files) == ["netmap.ko", "virtio_net.ko", "pkt-gen", "bridge"]
    for name, supplied in build.files.items():
        data = (tmp_path / name).read_bytes()
        assert supplied.sha256 == hashlib.sha256(data).hexdigest() and supplied.size == len(data)
    assert [f.name for f in build.modules] == ["netmap.ko", "virtio_net.ko"]
    assert [f.name for f in build.programs] == ["pkt-gen", "bridge"]
    assert build.netmap.vermagic == read_modinfo(modules / "crc7.ko").vermagic
    assert build.netmap.module_name == "crc7" and build.virtio_net is not None
    assert build.virtio_net.module_name == "virtio_net"
    record = build.netmap.record("/root/netmap/netmap.ko")
    assert record == {"sha256": build.netmap.sha256, "bytes": build.netmap.size,
                      "source": str(tmp_path / "netmap.ko"), "vermagic": build.netmap.vermagic,
                      "module": "crc7", "installed": "/root/netmap/netmap.ko"}
    assert build.files["pkt-gen"].record() == {"sha256": hashlib.sha256(b"\x7fELF pkt-gen stand-in").hexdigest(),
                                               "bytes": 21, "source": str(tmp_path / "pkt-gen")}


def test_netmap_ko_alone_is_enough(image_modules, tmp_path):
    shutil.copy(image_modules[0] / "crc7.ko", tmp_path / "netmap.ko")
    build = NetmapBuild.from_directory(tmp_path)
    assert list(build.files) == ["netmap.ko"] and build.virtio_net is None and build.programs == []


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("a file", "is not a directory"),
    ("empty", "has no netmap.ko"),
    ("only programs", "has no netmap.ko"),
    ("netmap.ko is a directory", "netmap.ko is not a regular file"),
])
def test_a_directory_without_a_netmap_ko_is_one_clear_error(tmp_path, case, message):
    directory = tmp_path / "build"
    if case == "a file":
        directory.write_text("")
    elif case != "missing":
        directory.mkdir()
    if case == "only programs":
        (directory / "pkt-gen").write_text("")
        (directory / "bridge").write_text("")
    if case == "netmap.ko is a directory":
        (directory / "netmap.ko").mkdir()
    with pytest.raises(ConfigError) as info:
        NetmapBuild.from_directory(directory)
    assert f"--guest-netmap {directory}" in info.value.message and message in info.value.message
    assert DIR_MUST_HOLD in info.value.message


def test_bad_modules_in_the_directory_are_one_clear_error(image_modules, tmp_path):
    modules = image_modules[0]
    (tmp_path / "netmap.ko").write_text("#!/bin/sh\n")
    with pytest.raises(ModuleFormatError, match=r"netmap.ko is not a Linux kernel module: not an ELF file"):
        NetmapBuild.from_directory(tmp_path)
    shutil.copy(modules / "crc7.ko", tmp_path / "netmap.ko")
    shutil.copy(modules / "crc-itu-t.ko", tmp_path / "virtio_net.ko")
    with pytest.raises(ConfigError, match=r"virtio_net.ko is the kernel module 'crc_itu_t', not virtio_net"):
        NetmapBuild.from_directory(tmp_path)
    (tmp_path / "virtio_net.ko").unlink()
    data = bytearray((modules / "crc7.ko").read_bytes())
    entry = parse_modinfo(bytes(data)).entry("vermagic")
    assert entry is not None
    start = entry.offset - len("vermagic=")
    data[start:start + 1] = b"x"  # the key becomes xermagic: no vermagic left
    (tmp_path / "netmap.ko").write_bytes(bytes(data))
    with pytest.raises(ModuleFormatError, match="its .modinfo has no vermagic"):
        NetmapBuild.from_directory(tmp_path)


# -- the vermagic check ------------------------------------------------------------
def test_vermagic_must_equal_the_guest_kernels(image_modules, tmp_path):
    modules, release = image_modules
    real = read_modinfo(modules / "crc7.ko").vermagic
    assert real is not None
    shutil.copy(modules / "crc7.ko", tmp_path / "netmap.ko")
    shutil.copy(modules / "virtio_net.ko", tmp_path / "virtio_net.ko")
    build = NetmapBuild.from_directory(tmp_path)
    check_vermagic(build, GuestKernel(release, real, f"/lib/modules/{release}/kernel/drivers/net/virtio_net.ko"))
    check_vermagic(build, GuestKernel(release, None))  # no module to compare with: the release decides

    other_release = older(real).split()[0]
    with pytest.raises(VermagicMismatch) as info:
        check_vermagic(build, GuestKernel(other_release, older(real)))
    text = str(info.value)
    assert "netmap.ko and virtio_net.ko were built for another kernel" in text
    assert f"netmap.ko has vermagic {real!r}; virtio_net.ko has vermagic {real!r}" in text
    assert f"the guest kernel {other_release} has vermagic {older(real)!r}" in text
    assert "nothing was copied or loaded" in text and f"linux-headers-{other_release}" in text
    assert info.value.modules == {"netmap.ko": real, "virtio_net.ko": real}

    # Same release, other build options: refused too.
    rest = real.replace(" preempt ", " preempt_dynamic ") if " preempt " in real else real + " x"
    with pytest.raises(VermagicMismatch):
        check_vermagic(build, GuestKernel(release, rest))


def test_a_rewritten_vermagic_is_read_back_and_refused(image_modules, tmp_path):
    modules, release = image_modules
    real = read_modinfo(modules / "crc7.ko").vermagic
    assert real is not None
    with_vermagic(modules / "crc7.ko", tmp_path / "netmap.ko", older(real))
    build = NetmapBuild.from_directory(tmp_path)
    assert build.netmap.vermagic == older(real) != real
    with pytest.raises(VermagicMismatch, match=rf"netmap.ko was built for another kernel: netmap.ko has vermagic "
                       rf"'{older(real).split()[0]} .*the guest kernel {release} has vermagic '{real.split()[0]} "):
        check_vermagic(build, GuestKernel(release, real))


# -- doctor ------------------------------------------------------------------------
def test_doctor_row_shows_the_directory_and_whether_it_fits_the_image(image_modules, tmp_path):
    modules, release = image_modules
    good = tmp_path / "good"
    good.mkdir()
    shutil.copy(modules / "crc7.ko", good / "netmap.ko")
    (good / "pkt-gen").write_text("")
    check = doctor.guest_netmap_check(good)
    assert check.ok and not check.needed_for_tcg
    assert check.detail == f"{good}: netmap.ko ({release}), pkt-gen; built for the Linux image's kernel {release}"

    bad = tmp_path / "bad"
    bad.mkdir()
    real = read_modinfo(modules / "crc7.ko").vermagic or ""
    with_vermagic(modules / "crc7.ko", bad / "netmap.ko", older(real))
    check = doctor.guest_netmap_check(bad)
    assert not check.ok
    assert f"netmap.ko not built for the Linux image's kernel {release}" in check.detail
    assert older(real).split()[0] in check.detail

    check = doctor.guest_netmap_check(tmp_path / "missing")
    assert not check.ok and "does not exist" in check.detail and "must hold netmap.ko" in check.detail


# -- engine choice -------------------------------------------------------------------
FLAGS = ("guest_netmap", "guest_pktgen", "guest_kernel_pktgen", "host_netmap", "trafgen")


@pytest.mark.parametrize("flags", list(itertools.product((False, True), repeat=len(FLAGS))),
                         ids=lambda flags: "-".join(n for n, on in zip(FLAGS, flags, strict=True) if on) or "none")
def test_guest_side_uses_netmap_pktgen_exactly_when_the_guest_has_dev_netmap_and_pkt_gen(flags):
    guest_netmap, guest_pktgen, kernel_pktgen, host_netmap, trafgen = flags
    caps = Capabilities(guest_netmap=guest_netmap,
                        guest_pktgen_path="/root/netmap/pkt-gen" if guest_pktgen else None,
                        guest_kernel_pktgen=kernel_pktgen, host_netmap=host_netmap, trafgen=trafgen)
    netmap_in_guest = guest_netmap and guest_pktgen
    host_receiver = "netmap-pktgen" if host_netmap else "host-counters"
    # guest TX: the guest sends
    if netmap_in_guest:
        assert choose("tx", caps) == ("netmap-pktgen", host_receiver)
    elif kernel_pktgen:
        assert choose("tx", caps) == ("linux-pktgen", host_receiver)
    else:
        with pytest.raises(HarnessError, match="no engine can send from this guest"):
            choose("tx", caps)
    # guest RX: the guest receives
    guest_receiver = "netmap-pktgen" if netmap_in_guest else "guest-counters"
    if host_netmap:
        assert choose("rx", caps) == ("netmap-pktgen", guest_receiver)
    elif trafgen:
        assert choose("rx", caps) == ("trafgen", guest_receiver)
    else:
        with pytest.raises(HarnessError, match="no engine can send from the host"):
            choose("rx", caps)
