"""Disk image files on the host: xz decompression and qemu-img.

Every function writes to a temporary name and renames on success, so an
interrupted build never leaves a half-written disk under its final name.
"""

from __future__ import annotations

import json
import logging
import lzma
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from harness.errors import HarnessError, PreconditionError

log = logging.getLogger(__name__)

_BLOCK = 1 << 20
_SIZE = re.compile(r"^(\d+)([KMGT]?)$")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class DiskImageError(HarnessError):
    """qemu-img or decompression failed."""


def parse_size(text: str) -> int:
    """`20G`, `512M`, `1073741824` -> bytes."""
    match = _SIZE.match(text.strip().upper())
    if not match:
        raise ValueError(f"not a size: {text!r} (use e.g. 20G or 512M)")
    return int(match.group(1)) * _UNITS[match.group(2)]


def decompress_xz(src: Path, dest: Path) -> Path:
    """xz -> plain file; runs of zero blocks stay holes (a 5 GB raw image
    that is mostly empty takes little space)."""
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        with lzma.open(src, "rb") as fin, open(tmp, "wb") as fout:
            while block := fin.read(_BLOCK):
                if block.count(0) == len(block):
                    fout.seek(len(block), os.SEEK_CUR)
                else:
                    fout.write(block)
            fout.truncate()
    except (lzma.LZMAError, EOFError) as exc:
        tmp.unlink(missing_ok=True)
        raise DiskImageError(f"{src} is not a valid xz file: {exc}",
                             hint=f"delete {src} so that it is downloaded again") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(dest)
    return dest


def _qemu_img(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    argv = ["qemu-img", *args]
    log.info("running %s", " ".join(argv))
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise PreconditionError("qemu-img is not installed", hint="apt-get install qemu-utils") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise DiskImageError(f"qemu-img {args[0]} failed (exit {proc.returncode}): {detail}")
    return proc


def info(path: Path) -> dict[str, Any]:
    """`qemu-img info --output=json`: format, virtual-size, backing file..."""
    data = json.loads(_qemu_img("info", "--output=json", str(path)).stdout)
    return dict(data)


def to_qcow2(src: Path, dest: Path) -> Path:
    """Convert any image qemu-img reads to qcow2 (a qcow2 is copied compactly too)."""
    fmt = str(info(src)["format"])
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        _qemu_img("convert", "-f", fmt, "-O", "qcow2", str(src), str(tmp))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(dest)
    return dest


def grow(path: Path, size: int) -> bool:
    """Grow the disk's virtual size to `size` bytes; never shrinks. True if grown."""
    current = int(info(path)["virtual-size"])
    if current >= size:
        log.info("%s is already %d bytes (asked for %d): not resized", path, current, size)
        return False
    _qemu_img("resize", "-q", str(path), str(size))
    return True


def commit(overlay: Path) -> None:
    """Write an overlay's changes into its backing file (after the VM exited)."""
    _qemu_img("commit", "-q", str(overlay), timeout=3600)
