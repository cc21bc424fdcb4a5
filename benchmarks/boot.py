#!/usr/bin/env python3
"""Boot-time benchmark: the harness's boot of the default guest against a bare
`qemu-system-x86_64` boot of the same kernel and image to its login prompt.

Prints, over N boots each, min/median/max of the time from QEMU start to:
the login prompt, console ready (logged in, marker command answered) and SSH
ready (host key pinned, key authorized, session up); next to the bare boot's
time from QEMU start to `login:`. The ratio of the two login-prompt times is
the harness's own overhead on boot (paused start, QMP, sockets, TAP fds).
Targets here under TCG: console ready <= 8 s, SSH ready <= 12 s, overhead
within 10% of the bare boot.

Usage: .venv/bin/python benchmarks/boot.py [--boots 5] [--image DIR]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from harness.config import RunConfig
from harness.guest import boot_guest
from harness.image import GuestImage, default_image


def bare_boot(image: GuestImage, accel: str, timeout: float = 120.0) -> float:
    """QEMU start -> `login:` on the serial console, nothing else."""
    with tempfile.TemporaryDirectory() as tmp:
        overlay = Path(tmp, "overlay.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                        str(image.disk.resolve()), str(overlay)], check=True)
        argv = ["qemu-system-x86_64", "-machine", f"q35,accel={accel}", "-cpu", "max", "-smp", "2",
                "-m", "1024", "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
                "-drive", f"file={overlay},if=none,id=d0,format=qcow2,cache=unsafe",
                "-device", "virtio-blk-pci,drive=d0",
                "-kernel", str(image.kernel), "-initrd", str(image.initrd),
                "-append", f"{image.cmdline} harness.mgmt_mac=52:54:00:ff:00:01",
                "-netdev", "user,id=m0,restrict=on", "-device", "virtio-net-pci,netdev=m0,mac=52:54:00:ff:00:01"]
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        seen = b""
        try:
            assert proc.stdout is not None
            while time.monotonic() - start < timeout:
                chunk = proc.stdout.read1(4096)  # type: ignore[attr-defined]
                if not chunk:
                    break
                seen = (seen + chunk)[-4096:]
                if b"login: " in seen:
                    return time.monotonic() - start
            raise RuntimeError("bare boot never reached login:")
        finally:
            proc.kill()
            proc.wait()


def fmt(values: list[float]) -> str:
    return f"min {min(values):5.2f}  median {statistics.median(values):5.2f}  max {max(values):5.2f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boots", type=int, default=5)
    parser.add_argument("--image", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = RunConfig(image=args.image)
    image = GuestImage.load(args.image or default_image("linux"), expect_os="linux")
    prompt, console, ssh, bare = [], [], [], []
    accel = "tcg"
    with tempfile.TemporaryDirectory(prefix="harness-boot-bench-") as tmp:
        for i in range(args.boots):
            with boot_guest(config, Path(tmp, f"boot{i}")) as guest:
                prompt.append(guest.since_start["login_prompt"])
                console.append(guest.since_start["console_ready"])
                ssh.append(guest.since_start["ssh_ready"])
                accel = guest.facts["accel"]
            bare.append(bare_boot(image, accel))
            print(f"boot {i + 1}: harness login prompt {prompt[-1]:.2f} s, console {console[-1]:.2f} s, "
                  f"SSH {ssh[-1]:.2f} s; bare qemu to login prompt {bare[-1]:.2f} s", flush=True)
    overhead = statistics.median(prompt) / statistics.median(bare)
    print(f"\n{args.boots} boots, accelerator {accel}, image {image.root}")
    print(f"harness, QEMU start -> login prompt:  {fmt(prompt)}")
    print(f"harness, QEMU start -> console ready: {fmt(console)}   (target <= 8 s)")
    print(f"harness, QEMU start -> SSH ready:     {fmt(ssh)}   (target <= 12 s)")
    print(f"bare QEMU start -> login prompt:      {fmt(bare)}")
    print(f"harness overhead on boot (login prompt, harness / bare, medians): {overhead:.3f}   (target <= 1.10)")
    print(f"login + shell setup after the prompt (median): "
          f"{statistics.median(c - p for c, p in zip(console, prompt, strict=True)):.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
