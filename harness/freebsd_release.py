"""Where a FreeBSD release keeps its VM images, sources and checksums.

Layout from release/Makefile.mirrors and release/Makefile.vm (FreeBSD src):
  CI-IMAGES/<X.Y>-RELEASE/<arch>/Latest/FreeBSD-<X.Y>-RELEASE-<arch>-BASIC-CI[-ufs].raw.xz
  VM-IMAGES/<X.Y>-RELEASE/<arch>/Latest/FreeBSD-<X.Y>-RELEASE-<arch>[-ufs].qcow2.xz
  with CHECKSUM.SHA512 and CHECKSUM.SHA256 in each Latest/ directory, and
  <arch>/<X.Y>-RELEASE/src.txz with its SHA-256 in MANIFEST next to it.
Image names differ between releases (the filesystem suffix), so each image
has candidate names; the first one its checksum file lists is the one used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.errors import ConfigError

DEFAULT_MIRROR = "https://download.freebsd.org"
FLAVOURS = ("basic-ci", "vm-image")
ARCHES = ("amd64",)
CHECKSUM_FILES = (("CHECKSUM.SHA512", "sha512"), ("CHECKSUM.SHA256", "sha256"))

# Digests published elsewhere than the checksum file, as a second opinion:
# QEMU's tests/vm/freebsd pins this SHA-256 for this file (the qemu-devel
# patch that moved that test from 14.1 to 14.3). Not checked against
# download.freebsd.org from here.
PINNED_SHA256 = {
    "FreeBSD-14.3-RELEASE-amd64-BASIC-CI.raw.xz":
        "ec0f5a4bbe63aa50a725d9fee0f1931f850e9a21cbebdadb991df00f168d6805",
}


@dataclass(frozen=True)
class ReleaseFile:
    """A file of the release: candidate names in one directory, and the
    checksum files (in order of preference) that vouch for it."""

    directory: str                              # URL of the directory, with a trailing /
    names: tuple[str, ...]                      # candidate file names, preferred first
    checksum_files: tuple[tuple[str, str], ...]  # (file name, format: sha512|sha256|manifest)

    def url(self, name: str | None = None) -> str:
        return self.directory + (name or self.names[0])

    def checksum_urls(self) -> list[str]:
        return [self.directory + name for name, _ in self.checksum_files]


def check_version(version: str) -> str:
    if not re.fullmatch(r"\d{1,2}\.\d", version):
        raise ConfigError(f"--version must be a release number like 14.3, not {version!r}")
    return version


def check_arch(arch: str) -> str:
    if arch not in ARCHES:
        raise ConfigError(f"--arch {arch} is not supported",
                          hint="the harness runs x86_64 QEMU guests: use --arch amd64")
    return arch


def image_file(version: str, arch: str, flavour: str, mirror: str = DEFAULT_MIRROR) -> ReleaseFile:
    check_version(version)
    check_arch(arch)
    stem = f"FreeBSD-{version}-RELEASE-{arch}"
    base = mirror.rstrip("/") + "/releases"
    if flavour == "basic-ci":
        directory = f"{base}/CI-IMAGES/{version}-RELEASE/{arch}/Latest/"
        names = (f"{stem}-BASIC-CI.raw.xz", f"{stem}-BASIC-CI-ufs.raw.xz")
    elif flavour == "vm-image":
        directory = f"{base}/VM-IMAGES/{version}-RELEASE/{arch}/Latest/"
        names = (f"{stem}-ufs.qcow2.xz", f"{stem}.qcow2.xz")
    else:
        raise ConfigError(f"--flavour must be one of {', '.join(FLAVOURS)}, not {flavour!r}")
    return ReleaseFile(directory, names, CHECKSUM_FILES)


def src_file(version: str, arch: str, mirror: str = DEFAULT_MIRROR) -> ReleaseFile:
    check_version(version)
    check_arch(arch)
    directory = f"{mirror.rstrip('/')}/releases/{arch}/{version}-RELEASE/"
    return ReleaseFile(directory, ("src.txz",), (("MANIFEST", "manifest"),))


def firmware_for(flavour: str) -> str:
    """BASIC-CI's loader.conf puts the console on COM1 (SeaBIOS is enough);
    the plain VM image finds its serial console only through UEFI ConOut."""
    return "bios" if flavour == "basic-ci" else "uefi"
