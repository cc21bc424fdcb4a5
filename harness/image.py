"""Guest images: a directory made by images/Makefile holding manifest.json,
the disk (never modified: every VM boots from a throw-away overlay) and, for
direct kernel boot, kernel and initrd."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ImageError, PhaseTimeout

REPO_ROOT = Path(__file__).resolve().parent.parent
MAKE_TARGETS = {"linux": "linux", "freebsd": "freebsd"}
DEFAULT_DIRS = {"linux": "debian-12", "freebsd": "freebsd-14.3"}


def images_dir() -> Path:
    return Path(os.environ.get("HARNESS_IMAGES_DIR", REPO_ROOT / "images" / "out"))


def default_image(guest_os: str) -> Path:
    return images_dir() / DEFAULT_DIRS.get(guest_os, guest_os)


def build_command(guest_os: str) -> str:
    return f"make -C {REPO_ROOT / 'images'} {MAKE_TARGETS.get(guest_os, guest_os)}"


def build_hint(guest_os: str) -> str:
    return f"build it with: {build_command(guest_os)}"


@dataclass(frozen=True)
class GuestImage:
    root: Path
    manifest: dict[str, Any] = field(repr=False)

    @property
    def guest_os(self) -> str:
        return str(self.manifest["guest_os"])

    @property
    def disk(self) -> Path:
        return self.root / self.manifest["disk"]

    @property
    def disk_format(self) -> str:
        return str(self.manifest.get("disk_format", "qcow2"))

    @property
    def kernel(self) -> Path | None:
        name = self.manifest.get("kernel")
        return self.root / name if self.manifest.get("boot") == "kernel" and name else None

    @property
    def initrd(self) -> Path | None:
        name = self.manifest.get("initrd")
        return self.root / name if self.kernel and name else None

    @property
    def cmdline(self) -> str:
        return str(self.manifest.get("cmdline", ""))

    @property
    def identity(self) -> dict[str, Any]:
        """What identifies this image in a result record."""
        keys = ("guest_os", "distro", "version", "disk_sha256", "kernel_sha256",
                "kernel_release", "kernel_ident", "inputs_hash", "built_at")
        ident = {k: self.manifest[k] for k in keys if k in self.manifest}
        ident["path"] = str(self.root)
        return ident

    @classmethod
    def load(cls, path: Path | str, *, expect_os: str | None = None, check: bool = True,
             check_timeout: float = 300.0) -> GuestImage:
        """Load the image at `path` (its directory or its manifest.json).

        Raises ImageError naming the make target that builds it when it is
        missing, and a clear error when it is corrupt or of the wrong OS."""
        path = Path(path)
        root = path.parent if path.name == "manifest.json" else path
        os_hint = expect_os or "linux"
        manifest_path = root / "manifest.json"
        if not manifest_path.is_file():
            raise ImageError(f"no guest image at {root} (manifest.json is missing)",
                             hint=build_hint(os_hint))
        try:
            manifest = json.loads(manifest_path.read_text())
            if not isinstance(manifest, dict) or "guest_os" not in manifest or "disk" not in manifest:
                raise ValueError("guest_os or disk missing")
        except ValueError as exc:
            raise ImageError(f"the image manifest {manifest_path} is not valid: {exc}",
                             hint=f"rebuild the image with: {build_command(os_hint)}") from None
        image = cls(root, manifest)
        if expect_os and image.guest_os != expect_os:
            raise ImageError(
                f"the image at {root} is a {image.guest_os} guest, but --guest {expect_os} was asked for",
                hint=f"pass --image with a {expect_os} image, or --guest {image.guest_os}")
        for needed in (image.disk, image.kernel, image.initrd):
            if needed is not None and not needed.is_file():
                raise ImageError(f"the image at {root} lacks {needed.name}",
                                 hint=f"rebuild it with: {build_command(image.guest_os)}")
        if check:
            image.check_disk(check_timeout)
        return image

    def check_disk(self, timeout: float = 300.0) -> None:
        """Ask qemu-img whether the disk is whole (catches truncation and corruption)."""
        if self.disk_format != "qcow2":
            return
        try:
            proc = subprocess.run(["qemu-img", "check", "-q", "-f", "qcow2", str(self.disk)],
                                  capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError:
            return  # QEMU missing is reported where QEMU is started
        except subprocess.TimeoutExpired:
            raise PhaseTimeout("image", timeout, f"qemu-img check of {self.disk}") from None
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise ImageError(f"the guest disk {self.disk} is corrupt or truncated: "
                             f"{detail[0] if detail else 'qemu-img check failed'}",
                             hint=f"delete {self.root} and rebuild it with: {build_command(self.guest_os)}")
