"""`harness doctor`: what this host can do, checked for real."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from harness import accel
from harness.errors import HarnessError
from harness.image import GuestImage, default_image
from harness.vm import qemu_version


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    needed_for_tcg: bool = False


def run_checks(qemu: str = "qemu-system-x86_64", guest_netmap: Path | None = None) -> list[Check]:
    checks = [
        Check("root / CAP_NET_ADMIN", os.geteuid() == 0,
              "running as root" if os.geteuid() == 0 else "not root: namespaces, bridges and TAPs need root",
              True),
        Check("/dev/net/tun", os.path.exists("/dev/net/tun"),
              "present" if os.path.exists("/dev/net/tun") else "missing (modprobe tun)", True),
        _tool("iproute2 (ip)", "ip", True),
        _tool("ethtool", "ethtool", True),
        _tool("ping", "ping", True),
        _tool("qemu-img", "qemu-img", True),
    ]
    version = qemu_version(qemu)
    checks.append(Check("QEMU", version != "missing",
                        f"{qemu} {version}" if version != "missing" else f"{qemu} not found "
                        "(apt-get install qemu-system-x86)", True))
    if version != "missing":
        kvm = accel.probe_kvm(qemu, use_cache=False)
        checks.append(Check("KVM", kvm.usable, kvm.reason))
    vhost_ok, vhost_reason = accel.vhost_status()
    checks.append(Check("vhost-net", vhost_ok, vhost_reason))
    netmap = os.path.exists("/dev/netmap")
    checks.append(Check("netmap on the host", netmap,
                        "/dev/netmap present" if netmap else "no /dev/netmap: host side uses kernel pktgen/trafgen"))
    checks.append(_tool("trafgen (netsniff-ng)", "trafgen", False))
    for guest_os in ("linux", "freebsd"):
        checks.append(_image(guest_os))
    if guest_netmap is not None:
        checks.append(guest_netmap_check(guest_netmap))
    return checks


def guest_netmap_check(directory: Path) -> Check:
    """The --guest-netmap directory: what it holds, and whether its modules
    were built for the Linux image's kernel (read from the files, nothing loaded)."""
    from harness.guest_netmap import NetmapBuild

    try:
        build = NetmapBuild.from_directory(directory)
    except HarnessError as exc:
        return Check("guest netmap directory", False, str(exc).replace("\n  what to do: ", "; "))
    detail = f"{directory}: {build.summary()}"
    try:
        release = str(GuestImage.load(default_image("linux"), expect_os="linux", check=False)
                      .identity.get("kernel_release") or "")
    except HarnessError:
        release = ""
    if not release:
        return Check("guest netmap directory", True, f"{detail}; no Linux image to compare its kernel with")
    wrong = [f.name for f in build.modules if (f.vermagic or "").split()[:1] != [release]]
    if wrong:
        return Check("guest netmap directory", False,
                     f"{detail}; {' and '.join(wrong)} not built for the Linux image's kernel {release}")
    return Check("guest netmap directory", True, f"{detail}; built for the Linux image's kernel {release}")


def _tool(name: str, command: str, needed: bool) -> Check:
    path = shutil.which(command)
    return Check(name, path is not None, path or f"{command} not found", needed)


def _image(guest_os: str) -> Check:
    path = default_image(guest_os)
    try:
        image = GuestImage.load(path, expect_os=guest_os, check=False)
    except HarnessError as exc:
        return Check(f"{guest_os} image", False, str(exc).replace("\n  what to do: ", "; "))
    if guest_os == "freebsd":
        from harness.freebsd_image import image_summary

        return Check(f"{guest_os} image", True, f"{path}: {image_summary(image.manifest)}")
    ident = image.identity
    kernel = ident.get("kernel_release") or ident.get("kernel_ident") or "?"
    sha = str(ident.get("disk_sha256", ""))[:12]
    return Check(f"{guest_os} image", True, f"{path} (kernel {kernel}, disk {sha})")


def format_table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'check'.ljust(width)}  ok   detail", f"{'-' * width}  ---  ------"]
    for c in checks:
        lines.append(f"{c.name.ljust(width)}  {'yes' if c.ok else 'no ':3}  {c.detail}")
    return "\n".join(lines)


def tcg_path_ok(checks: list[Check]) -> bool:
    return all(c.ok for c in checks if c.needed_for_tcg)
