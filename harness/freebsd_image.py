"""`harness image build freebsd`: the FreeBSD guest image, from the official
release image to a provisioned base image with the kernel under test.

This module holds the request (options, validation), the plan that the dry
run prints, the image summary for `harness doctor`, and `main()`. The build
itself is harness.freebsd_build; the guest side is harness.freebsd_provision.

    python -m harness.freebsd_image --version 14.3 --kernel stock --dry-run
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.diskimage import parse_size
from harness.errors import ConfigError, run_command
from harness.freebsd_provision import (
    GuestPlan,
    KernelChoice,
    ServedFile,
    SourceChoice,
    guest_steps,
)
from harness.freebsd_release import (
    DEFAULT_MIRROR,
    FLAVOURS,
    ReleaseFile,
    check_arch,
    check_version,
    firmware_for,
    image_file,
    src_file,
)
from harness.image import REPO_ROOT, images_dir

log = logging.getLogger(__name__)

DEFAULT_VERSION = "14.3"
DEFAULT_CACHE = REPO_ROOT / "images" / "cache"
_TUNABLE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.%-]*")
_KERNCONF = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class BuildRequest:
    """Everything that decides the image, validated by `validate()`."""

    version: str = DEFAULT_VERSION
    arch: str = "amd64"
    flavour: str = "basic-ci"
    kernel: str = "stock"                  # stock | src | a kernel directory | a kernel.txz
    src: Path | None = None                # a FreeBSD src tree (else the release's src.txz)
    patch: Path | None = None              # applied to the src tree; implies --kernel src
    patch_strip: int = 1
    kernconf: str = "GENERIC"
    tunables: tuple[tuple[str, str], ...] = ()
    out: Path | None = None
    cache: Path | None = None
    mirror: str = DEFAULT_MIRROR
    accel: str = "auto"
    qemu: str = "qemu-system-x86_64"
    memory_mb: int | None = None
    vcpus: int = 2
    disk_size: str | None = None
    timeout_scale: float | None = None
    force: bool = False

    @property
    def kernel_kind(self) -> str:
        if self.kernel in ("stock", "src"):
            return self.kernel
        return "prebuilt"

    @property
    def kernel_path(self) -> Path | None:
        return Path(self.kernel) if self.kernel_kind == "prebuilt" else None

    @property
    def out_dir(self) -> Path:
        return self.out or images_dir() / f"freebsd-{self.version}"

    @property
    def cache_dir(self) -> Path:
        return self.cache or DEFAULT_CACHE

    @property
    def release_cache(self) -> Path:
        return self.cache_dir / "freebsd" / f"{self.version}-RELEASE" / self.arch

    @property
    def disk_bytes(self) -> int:
        default = "30G" if self.kernel_kind == "src" else "10G"
        return parse_size(self.disk_size or default)

    @property
    def memory(self) -> int:
        return self.memory_mb or (4096 if self.kernel_kind == "src" else 2048)

    @property
    def firmware(self) -> str:
        return firmware_for(self.flavour)

    def image(self) -> ReleaseFile:
        return image_file(self.version, self.arch, self.flavour, self.mirror)

    def release_src(self) -> ReleaseFile | None:
        """The release's src.txz, unless the user gave a src tree."""
        return None if self.src is not None else src_file(self.version, self.arch, self.mirror)


def parse_tunable(text: str) -> tuple[str, str]:
    """`hw.vtnet.mq_disable=1` -> (key, value) for loader.conf."""
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip().strip('"')
    if not sep or not _TUNABLE_KEY.fullmatch(key):
        raise ConfigError(f"--tunable must be key=value with a loader.conf variable name, not {text!r}",
                          hint="e.g. --tunable hw.vtnet.mq_disable=1")
    if not value or any(c in value for c in '"\\\n\r\''):
        raise ConfigError(f"--tunable {key}: the value {value!r} is empty or has a quote, backslash or newline")
    return key, value


def validate(req: BuildRequest) -> BuildRequest:
    """Raise one clear ConfigError for the first bad input."""
    check_version(req.version)
    check_arch(req.arch)
    if req.flavour not in FLAVOURS:
        raise ConfigError(f"--flavour must be one of {', '.join(FLAVOURS)}, not {req.flavour!r}")
    if req.kernel_kind == "prebuilt":
        path = Path(req.kernel)
        if path.is_dir():
            if not (path / "kernel").is_file():
                raise ConfigError(f"--kernel {path} is a directory without a 'kernel' file",
                                  hint="give the directory that holds kernel and the modules "
                                       "(what installs as /boot/kernel)")
        elif not path.is_file():
            raise ConfigError(f"--kernel {req.kernel!r} is neither stock, src, a kernel directory nor a "
                              "kernel.txz file")
        elif not path.name.endswith((".txz", ".tar.xz", ".tar", ".tgz", ".tar.gz")):
            raise ConfigError(f"--kernel {path} is not a tarball (kernel.txz) or a kernel directory")
        if req.patch is not None:
            raise ConfigError("--patch applies to a kernel built from source; it cannot go with a "
                              f"prebuilt --kernel {req.kernel}", hint="use --kernel src --patch FILE")
    if req.patch is not None and not req.patch.is_file():
        raise ConfigError(f"--patch {req.patch} does not exist")
    if req.patch is not None and req.kernel_kind == "stock":
        raise ConfigError("--patch needs --kernel src (the patched kernel is built in the guest)")
    if not 0 <= req.patch_strip <= 9:
        raise ConfigError(f"--patch-strip must be 0..9, not {req.patch_strip}")
    if req.src is not None:
        if not req.src.is_dir():
            raise ConfigError(f"--src {req.src} is not a directory")
        needed = ["tools/tools/netmap"] + (["sys/conf", "Makefile"] if req.kernel_kind == "src" else [])
        missing = [n for n in needed if not (req.src / n).exists()]
        if missing:
            raise ConfigError(f"--src {req.src} is not a FreeBSD src tree: it lacks {', '.join(missing)}")
    if not _KERNCONF.fullmatch(req.kernconf):
        raise ConfigError(f"--kernconf must be a kernel config name like GENERIC, not {req.kernconf!r}")
    keys = [k for k, _ in req.tunables]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ConfigError(f"--tunable given twice for {', '.join(dupes)}")
    try:
        req.disk_bytes  # noqa: B018 (validates --disk-size)
    except ValueError as exc:
        raise ConfigError(f"--disk-size: {exc}") from None
    if req.vcpus < 1 or req.memory < 512:
        raise ConfigError("--vcpus must be at least 1 and --memory at least 512 (MiB)")
    if req.timeout_scale is not None and req.timeout_scale <= 0:
        raise ConfigError(f"--timeout-scale must be positive, not {req.timeout_scale}")
    return req


# -- the plan -----------------------------------------------------------------
def source_description(req: BuildRequest) -> str:
    if req.src is not None:
        return f"the src tree {req.src}"
    return f"the release's src.txz ({req.version}-RELEASE)"


def kernel_description(req: BuildRequest) -> str:
    if req.kernel_kind == "stock":
        return f"the stock {req.version}-RELEASE GENERIC kernel"
    if req.kernel_kind == "src":
        patch = f" with {req.patch.name}" if req.patch else ""
        return f"{req.kernconf} built from {source_description(req)}{patch}"
    return f"the prebuilt kernel {req.kernel}"


def planned_guest(req: BuildRequest, *, served: dict[str, str] | None = None,
                  kernel_sha256: str | None = None, kernel_file: Path | None = None,
                  base_url: str | None = None) -> GuestPlan:
    """The guest plan; `served` maps served names to SHA-256 (placeholders in the dry run)."""
    served = served or {}

    def file(name: str) -> ServedFile:
        return ServedFile(name, served.get(name, "<sha256>"))

    src_name = "src.tar" if req.src is not None else "src.txz"
    source = SourceChoice(file(src_name), full=req.kernel_kind == "src", description=source_description(req))
    if req.kernel_kind == "prebuilt":
        assert req.kernel_path is not None
        name = "kernel.tar" if req.kernel_path.is_dir() else "kernel.txz"
        kernel = KernelChoice("prebuilt", kernel_description(req), archive=file(name),
                              kernel_sha256=kernel_sha256 or "<sha256>", kernel_file=kernel_file)
    elif req.kernel_kind == "src":
        kernel = KernelChoice("src", kernel_description(req), patch=file("kernel.patch") if req.patch else None,
                              patch_strip=req.patch_strip, kernconf=req.kernconf)
    else:
        kernel = KernelChoice("stock", kernel_description(req))
    plan = GuestPlan(req.version, req.arch, req.flavour, source, kernel, req.tunables)
    return plan if base_url is None else replace(plan, base_url=base_url)


def host_steps(req: BuildRequest) -> list[tuple[str, str]]:
    """(name, what it does) for every build step, in order."""
    image = req.image()
    cache = req.release_cache
    release_src = req.release_src()
    steps = [("fetch-image-checksums",
              f"fetch {image.checksum_urls()[0]} (if missing: {image.checksum_urls()[1]})")]
    if release_src is not None:
        steps.append(("fetch-src-checksums", f"fetch {release_src.checksum_urls()[0]} (SHA-256 per dist file)"))
    steps.append(("check-up-to-date", f"stop here if {req.out_dir}/manifest.json was built from the same "
                                      "inputs (image and src checksums, kernel, patch, tunables)"))
    steps.append(("download-image", f"download {image.url()} (or {', '.join(image.names[1:])}, whichever the "
                                    f"checksum file lists) into {cache}/, resuming a partial download, and "
                                    "verify its checksum"))
    if release_src is not None:
        steps.append(("download-src", f"download {release_src.url()} into {cache}/ and verify its SHA-256"))
    else:
        part = "the whole tree" if req.kernel_kind == "src" else "tools/tools/netmap"
        steps.append(("pack-src", f"pack {part} of {req.src} into src.tar"))
    if req.kernel_kind == "prebuilt":
        what = "pack the directory into kernel.tar" if Path(req.kernel).is_dir() else \
            "check that it holds boot/kernel/kernel"
        steps.append(("prepare-kernel", f"{req.kernel}: {what}; take its kernel's SHA-256"))
    if req.patch is not None:
        steps.append(("prepare-patch", f"serve {req.patch} as kernel.patch"))
    steps += [
        ("decompress-image", "xz-decompress the image (Python lzma)"),
        ("convert-image", "qemu-img convert to qcow2"),
        ("grow-disk", f"qemu-img resize to {req.disk_bytes >> 30} GiB"),
        ("provision", f"boot it once in QEMU ({req.firmware.upper()} firmware, accel {req.accel}, "
                      f"{req.memory} MiB, {req.vcpus} vCPUs, management e1000 on user-mode networking "
                      "without restrict, no NIC under test), host files served on 127.0.0.1 "
                      "(10.0.2.2 in the guest), and run the guest steps below on the serial console"),
        ("commit-disk", "qemu-img commit the VM's overlay into disk.qcow2"),
        ("write-manifest", f"write {req.out_dir}/manifest.json with the image and kernel identity"),
    ]
    return steps


def dry_run_lines(req: BuildRequest) -> list[str]:
    """What a build would fetch and do, without touching the network."""
    validate(req)
    image = req.image()
    lines = [f"FreeBSD {req.version}-RELEASE {req.arch}, {req.flavour} image, {req.firmware.upper()} firmware",
             f"kernel under test: {kernel_description(req)}",
             f"image:      {image.url()}"]
    lines += [f"            or {image.url(name)}" for name in image.names[1:]]
    lines += [f"checksums:  {url}" for url in image.checksum_urls()]
    release_src = req.release_src()
    if release_src is not None:
        lines += [f"src:        {release_src.url()}", f"checksums:  {release_src.checksum_urls()[0]} (SHA-256)"]
    lines += [f"cache:      {req.release_cache}", f"output:     {req.out_dir}",
              f"tunables:   {', '.join(f'{k}={v}' for k, v in req.tunables) or 'none'}", "steps:"]
    for number, (name, what) in enumerate(host_steps(req), 1):
        lines.append(f"  {number:2d}. {name}: {what}")
        if name == "provision":
            for step in guest_steps(planned_guest(req)):
                lines.append(f"        - {step.name} ({step.action}): {step.summary}")
                lines += [f"            $ {command.text}" for command in step.commands]
    return lines


# -- what doctor shows --------------------------------------------------------
def image_summary(manifest: dict[str, Any]) -> str:
    """One line on a built FreeBSD image and the kernel it carries."""
    kernel = manifest.get("kernel", {}) if isinstance(manifest.get("kernel"), dict) else {}
    sha = str(manifest.get("kernel_sha256", ""))[:12]
    return (f"FreeBSD {manifest.get('kernel_release', manifest.get('version', '?'))} "
            f"({manifest.get('flavour', '?')}), kernel {kernel.get('kind', '?')}: "
            f"{kernel.get('description', '?')}; running ident {manifest.get('kernel_ident', '?')}, "
            f"sha256 {sha}, uname -v '{manifest.get('kernel_version', '?')}'")


# -- command line ---------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness image build freebsd",
                                description="Build the FreeBSD guest image from an official release image.")
    p.add_argument("--version", default=DEFAULT_VERSION, help="FreeBSD release, e.g. 14.3 (default %(default)s)")
    p.add_argument("--arch", default="amd64", help="architecture (only amd64)")
    p.add_argument("--flavour", default="basic-ci", choices=FLAVOURS,
                   help="basic-ci: CI raw image with serial console and sshd (default); "
                        "vm-image: plain qcow2 VM image, booted with UEFI")
    p.add_argument("--kernel", default="stock",
                   help="stock (default), src (build from the source tree in the guest), "
                        "a kernel directory, or a kernel.txz")
    p.add_argument("--src", type=Path, help="a FreeBSD src tree to use instead of the release's src.txz")
    p.add_argument("--patch", type=Path, help="a patch for the src tree (e.g. a review's diff); "
                                              "implies --kernel src")
    p.add_argument("--patch-strip", type=int, default=1, help="patch -p level (default 1)")
    p.add_argument("--kernconf", default="GENERIC", help="kernel config for --kernel src (default GENERIC)")
    p.add_argument("--tunable", action="append", default=[], metavar="KEY=VALUE",
                   help="a loader.conf tunable, e.g. hw.vtnet.mq_disable=1 (repeatable)")
    p.add_argument("--out", type=Path, help="output directory (default images/out/freebsd-VERSION)")
    p.add_argument("--cache", type=Path, help=f"download cache (default {DEFAULT_CACHE})")
    p.add_argument("--mirror", default=DEFAULT_MIRROR, help="download site (default %(default)s)")
    p.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"))
    p.add_argument("--qemu", default="qemu-system-x86_64")
    p.add_argument("--memory", type=int, help="guest MiB (default 2048; 4096 for a source build)")
    p.add_argument("--vcpus", type=int, default=2)
    p.add_argument("--disk-size", help="grow the disk to this size (default 10G; 30G for a source build)")
    p.add_argument("--timeout-scale", type=float,
                   help="multiply every guest timeout (default 1 with KVM, 6 with TCG)")
    p.add_argument("--force", action="store_true", help="rebuild even if the image is up to date")
    p.add_argument("--dry-run", action="store_true",
                   help="print every URL, checksum source and step, and stop (no network access)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return p


def request_from_args(args: argparse.Namespace) -> BuildRequest:
    kernel = args.kernel
    if args.patch is not None and kernel == "stock":
        kernel = "src"
    req = BuildRequest(version=args.version, arch=args.arch, flavour=args.flavour, kernel=kernel, src=args.src,
                       patch=args.patch, patch_strip=args.patch_strip, kernconf=args.kernconf,
                       tunables=tuple(parse_tunable(t) for t in args.tunable), out=args.out, cache=args.cache,
                       mirror=args.mirror, accel=args.accel, qemu=args.qemu, memory_mb=args.memory,
                       vcpus=args.vcpus, disk_size=args.disk_size, timeout_scale=args.timeout_scale,
                       force=args.force)
    return validate(req)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet or args.dry_run else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")

    def body() -> int:
        req = request_from_args(args)
        if args.dry_run:
            print("\n".join(dry_run_lines(req)))
            return 0
        from harness.freebsd_build import build

        image = build(req)
        print(f"FreeBSD image ready in {image.root}\n  {image_summary(image.manifest)}")
        return 0

    return run_command("harness image build freebsd", body)


if __name__ == "__main__":
    raise SystemExit(main())
