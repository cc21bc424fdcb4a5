"""The host side of the FreeBSD image build, with real parts: a real HTTP
mirror on 127.0.0.1 (tests/http_range_server.py) laid out like
download.freebsd.org, real lzma, real qemu-img on a small raw disk, the real
file server the guest fetches from. Only the guest steps (FreeBSD itself)
are not run here: tests/integration/test_freebsd_provision.py covers those
against a test double.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import shutil
import subprocess
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from harness import diskimage
from harness.diskimage import DiskImageError
from harness.download import DownloadError
from harness.errors import ConfigError
from harness.fileserve import serve_files
from harness.freebsd_build import Builder, check_pinned, kernel_from_txz, pack_tree
from harness.freebsd_image import BuildRequest
from tests.http_range_server import RangeServer

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")

MiB = 1 << 20


def small_raw_disk(path: Path) -> bytes:
    """4 MiB: data, a 2 MiB hole, data (like a mostly empty VM disk)."""
    data = os.urandom(4096) * 256 + bytes(2 * MiB) + b"FreeBSD UFS2 label".ljust(MiB, b"\xee")
    path.write_bytes(data)
    return data


def test_freebsd_decompress_xz_keeps_bytes_and_holes(tmp_path: Path) -> None:
    data = small_raw_disk(tmp_path / "disk.raw")
    (tmp_path / "disk.raw.xz").write_bytes(lzma.compress(data))
    out = diskimage.decompress_xz(tmp_path / "disk.raw.xz", tmp_path / "out.raw")
    assert out.read_bytes() == data
    assert out.stat().st_blocks * 512 < len(data)  # the zero MiBs stayed holes
    (tmp_path / "bad.xz").write_bytes(lzma.compress(data)[:1000])
    with pytest.raises(DiskImageError, match="is not a valid xz file"):
        diskimage.decompress_xz(tmp_path / "bad.xz", tmp_path / "bad.raw")
    assert not (tmp_path / "bad.raw").exists() and not (tmp_path / "bad.raw.tmp").exists()


def test_freebsd_qemu_img_convert_grow_and_commit(tmp_path: Path) -> None:
    data = small_raw_disk(tmp_path / "disk.raw")
    disk = diskimage.to_qcow2(tmp_path / "disk.raw", tmp_path / "disk.qcow2")
    info = diskimage.info(disk)
    assert info["format"] == "qcow2" and info["virtual-size"] == 4 * MiB
    assert diskimage.grow(disk, 8 * MiB) is True
    assert diskimage.info(disk)["virtual-size"] == 8 * MiB
    assert diskimage.grow(disk, 6 * MiB) is False  # never shrinks
    # an overlay as QemuVM makes it; a write into it; commit; the base has it
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(disk), str(overlay)],
                   check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0xab 1M 64k", str(overlay)], check=True, capture_output=True)
    diskimage.commit(overlay)
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(disk), str(tmp_path / "back.raw")], check=True)
    back = (tmp_path / "back.raw").read_bytes()
    assert back[:MiB] == data[:MiB] and back[MiB:MiB + 65536] == b"\xab" * 65536
    assert back[3 * MiB:4 * MiB] == data[3 * MiB:]
    with pytest.raises(DiskImageError, match="qemu-img info failed"):
        diskimage.info(tmp_path / "missing.qcow2")


def test_freebsd_builder_host_steps_against_a_local_mirror(tmp_path: Path) -> None:
    data = small_raw_disk(tmp_path / "disk.raw")
    xz = lzma.compress(data)
    name = "FreeBSD-13.2-RELEASE-amd64-BASIC-CI-ufs.raw.xz"  # only the -ufs name is published here
    latest = "/releases/CI-IMAGES/13.2-RELEASE/amd64/Latest/"
    checksum = f"SHA512 ({name}) = {hashlib.sha512(xz).hexdigest()}\n".encode()
    files = {latest + name: xz, latest + "CHECKSUM.SHA512": checksum}
    with RangeServer(files, cut={latest + name: len(xz) // 2}) as mirror:
        req = BuildRequest(version="13.2", out=tmp_path / "out", cache=tmp_path / "cache", mirror=mirror.base,
                           disk_size="8M", src=None)
        builder = Builder(req)
        builder.work.mkdir(parents=True)
        # the steps before the VM, in the order host_steps() gives them
        for step in ("fetch_image_checksums", "download_image", "decompress_image", "convert_image", "grow_disk"):
            getattr(builder, f"step_{step}")()
        assert mirror.gets(latest + name) == [None, f"bytes={len(xz) // 2}-"]  # cut, then resumed
    assert builder.image_name == name
    assert (tmp_path / "cache" / "freebsd" / "13.2-RELEASE" / "amd64" / name).read_bytes() == xz
    info = diskimage.info(builder.work / "disk.qcow2")
    assert info["format"] == "qcow2" and info["virtual-size"] == 8 * MiB
    assert not (builder.work / name.removesuffix(".xz")).exists()  # the raw intermediate is gone


def test_freebsd_pinned_digest_disagreement_deletes_the_download(tmp_path: Path) -> None:
    image = tmp_path / "FreeBSD-14.3-RELEASE-amd64-BASIC-CI.raw.xz"  # a pinned name, other bytes
    image.write_bytes(b"not the published image")
    with pytest.raises(DownloadError, match="while the harness pins ec0f5a4b"):
        check_pinned(image, "https://mirror.example/x")
    assert not image.exists()
    other = tmp_path / "FreeBSD-13.2-RELEASE-amd64-BASIC-CI.raw.xz"  # nothing pinned: left alone
    other.write_bytes(b"x")
    check_pinned(other, "https://mirror.example/x")
    assert other.exists()


def test_freebsd_kernel_dir_and_kernel_txz_preparation(tmp_path: Path) -> None:
    kdir = tmp_path / "kernel"
    kdir.mkdir()
    (kdir / "kernel").write_bytes(b"\x7fELF kernel")
    (kdir / "if_vtnet.ko").write_bytes(b"\x7fELF module")
    (kdir / ".git").mkdir()
    tar = pack_tree(kdir, tmp_path / "kernel.tar", arcname="boot/kernel")
    with tarfile.open(tar) as t:
        assert sorted(t.getnames()) == ["boot/kernel", "boot/kernel/if_vtnet.ko", "boot/kernel/kernel"]
    # a kernel.txz as a release ships it: ./boot/kernel/kernel
    txz = tmp_path / "kernel.txz"
    with tarfile.open(txz, "w:xz") as t:
        for member, payload in (("./boot/kernel/kernel", b"\x7fELF kernel"), ("./boot/kernel/netmap.ko", b"m")):
            info = tarfile.TarInfo(member)
            info.size = len(payload)
            t.addfile(info, io.BytesIO(payload))
    assert kernel_from_txz(txz, tmp_path / "k").read_bytes() == b"\x7fELF kernel"
    empty = tmp_path / "empty.txz"
    with tarfile.open(empty, "w:xz"):
        pass
    with pytest.raises(ConfigError, match="has no boot/kernel/kernel"):
        kernel_from_txz(empty, tmp_path / "k2")
    (tmp_path / "junk.txz").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="not a readable tarball"):
        kernel_from_txz(tmp_path / "junk.txz", tmp_path / "k3")


def test_freebsd_file_server_serves_only_what_it_was_given(tmp_path: Path) -> None:
    (tmp_path / "src.txz").write_bytes(b"source" * 1000)
    (tmp_path / "secret").write_text("not served")
    with serve_files({"src.txz": tmp_path / "src.txz"}) as server:
        assert server.url("src.txz") == f"http://10.0.2.2:{server.port}/src.txz"  # as the guest sees it
        with urllib.request.urlopen(server.url("src.txz", host="127.0.0.1"), timeout=5) as response:
            assert response.read() == b"source" * 1000
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/secret", timeout=5)
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/../secret", timeout=5)
    assert server.requests == ["src.txz", "secret", "../secret"]


def test_freebsd_manifest_is_a_loadable_guest_image_and_up_to_date_check(tmp_path: Path) -> None:
    """What the build writes after the guest steps (facts as the provisioning
    test double records them) loads as a GuestImage of the freebsd guest."""
    from harness.download import Digest
    from harness.freebsd_image import image_summary
    from harness.freebsd_provision import ProvisionResult, StepRecord
    from harness.image import GuestImage

    req = BuildRequest(version="13.2", out=tmp_path / "out", cache=tmp_path / "cache",
                       tunables=(("hw.vtnet.mq_disable", "1"),))
    builder = Builder(req)
    builder.work.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(builder.work / "disk.qcow2"), "8M"], check=True)
    (builder.work / "provision.log").write_text("log\n")
    builder.image_name = "FreeBSD-13.2-RELEASE-amd64-BASIC-CI.raw.xz"
    builder.image_digest = Digest("sha512", "ab" * 64, "https://mirror/CHECKSUM.SHA512")
    builder.src_digest = Digest("sha256", "cd" * 32, "https://mirror/MANIFEST")
    line = "FreeBSD 13.2-RELEASE releng/13.2-n254617-525ecfdad597 GENERIC"
    builder.result = ProvisionResult({"uname_r": "13.2-RELEASE", "uname_v": line, "version_line": line,
                                      "kern_ident": "GENERIC", "running_kernel_sha256": "1" * 64,
                                      "bootfile": "/boot/kernel/kernel", "stock_kernel_sha256": "1" * 64,
                                      "pkt_gen_path": "/usr/local/bin/pkt-gen", "pkt_gen_version": "canned-1.0",
                                      "pkt_gen_sha256": "3" * 64, "bridge_sha256": "2" * 64},
                                     [StepRecord("first-boot", 1.5)])
    builder.step_commit_disk()  # no backing file: passes
    builder.step_write_manifest()
    image = builder._install()
    assert image == GuestImage.load(tmp_path / "out", expect_os="freebsd")
    manifest = image.manifest
    assert (manifest["boot"], manifest["disk"], manifest["firmware"], manifest["mgmt_nic_model"]) == \
        ("disk", "disk.qcow2", "bios", "e1000")
    assert manifest["source_image"]["sha512"] == "ab" * 64
    assert manifest["netmap_tools"]["bridge"]["source"] == \
        "tools/tools/netmap of https://download.freebsd.org/releases/amd64/13.2-RELEASE/src.txz"
    assert manifest["src"]["sha256"] == "cd" * 32
    assert manifest["tunables"] == {"hw.vtnet.mq_disable": "1"}
    assert image.identity["kernel_release"] == "13.2-RELEASE" and image.identity["kernel_ident"] == "GENERIC"
    assert "kernel stock: the stock 13.2-RELEASE GENERIC kernel" in image_summary(manifest)
    assert oct((tmp_path / "out" / "disk.qcow2").stat().st_mode & 0o777) == "0o444"
    # the next build with the same inputs stops early; another tunable or --force does not
    assert Builder(req)._up_to_date() is False  # no digests fetched yet in a fresh builder
    again = Builder(req)
    again.image_digest, again.src_digest = builder.image_digest, builder.src_digest
    assert again._up_to_date() is True
    other = Builder(BuildRequest(**{**req.__dict__, "tunables": ()}))
    other.image_digest, other.src_digest = builder.image_digest, builder.src_digest
    assert other._up_to_date() is False
