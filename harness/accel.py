"""Which accelerator and which vhost this host can really use.

KVM is judged by what it does, not by /dev/kvm: a tiny probe guest
(kvm_probe.S) must reach long mode and finish a memory loop within a
deadline. Some hosts expose a paravirtual or nested /dev/kvm that runs
firmware but crawls through ordinary guest code; there the probe times out
and `auto` falls back to TCG.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from harness import leases
from harness.errors import ConfigError, PreconditionError

log = logging.getLogger(__name__)

PROBE_IMAGE = bytes.fromhex(
    "02b0ad1b00000100fe4f51e4000010000000100000000000000000002000100066ba0204"
    "b050eebf0000200031c0b9000c0000f3abc7050000200003102000c70500102000032020"
    "00bf00202000b883000000b9000200008907050000200083c708e2f4b8000020000f22d8"
    "0f20e083c8200f22e0b9800000c00f320d000100000f300f20c00d010000800f22c00f01"
    "1510011000ea9c001000080066ba0204b04cee48c7c70000400048893f4881c700002000"
    "4881ff0000e03f72ed66ba0204b04dee48c7c70000400048c7c1000080004831c0f348ab"
    "b057ee48c7c70000400048c7c10000400080070148ffc7e2f8b042eeb04feeb04beeb00a"
    "eef4ebfd000000000000000000000000009a20000f0000011000"
)
PROBE_DONE = "PLMWBOK"
PROBE_SECONDS = 3.0
ACCELS = ("auto", "kvm", "tcg")
VHOST_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class KvmStatus:
    usable: bool
    reason: str
    seconds: float = 0.0


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _cache_path() -> Path:
    return leases.state_dir().parent / "kvm-probe.json"


def probe_kvm(qemu: str, *, timeout: float = PROBE_SECONDS, use_cache: bool = True) -> KvmStatus:
    """Run the probe guest under KVM; cached per host boot and QEMU binary."""
    if not os.path.exists("/dev/kvm"):
        return KvmStatus(False, "/dev/kvm does not exist (no KVM module, or not passed to this container)")
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        return KvmStatus(False, f"cannot open /dev/kvm: {exc.strerror} (add the user to the kvm group)")
    key = {"boot_id": _boot_id(), "qemu": qemu, "qemu_mtime": _mtime(qemu), "probe": PROBE_DONE}
    cache = _cache_path()
    if use_cache:
        try:
            cached = json.loads(cache.read_text())
            if cached.get("key") == key:
                return KvmStatus(**cached["status"])
        except (OSError, ValueError, TypeError, KeyError):
            pass
    status = run_probe(qemu, timeout)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"key": key, "status": asdict(status)}))
    except OSError:
        pass
    return status


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def run_probe(qemu: str, timeout: float, accel: str = "kvm") -> KvmStatus:
    """Boot the probe guest once with `accel` (tests run it under TCG to show
    the probe itself is sound)."""
    with tempfile.TemporaryDirectory(prefix="harness-kvm-probe-") as tmp:
        image = Path(tmp, "probe.bin")
        image.write_bytes(PROBE_IMAGE)
        out = Path(tmp, "debugcon.log")
        argv = [qemu, "-machine", f"pc,accel={accel}", "-cpu", "host" if accel == "kvm" else "max", "-m", "1024",
                "-nodefaults", "-no-user-config", "-display", "none",
                "-kernel", str(image),
                "-chardev", f"file,id=dbg,path={out}",
                "-device", "isa-debugcon,iobase=0x402,chardev=dbg"]
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        progress = ""
        try:
            while time.monotonic() - start < timeout:
                progress = _progress(out)
                if progress.endswith(PROBE_DONE) or proc.poll() is not None:
                    break
                time.sleep(0.02)
            progress = _progress(out)
        finally:
            proc.kill()
            _, stderr = proc.communicate()
        seconds = time.monotonic() - start
    if progress.endswith(PROBE_DONE):
        return KvmStatus(True, f"{accel.upper()} ran the probe guest to completion in {seconds:.2f} s", seconds)
    if proc.returncode not in (None, -9) and not progress:
        detail = (stderr or "").strip().splitlines()[-1:] or ["no message"]
        return KvmStatus(False, f"QEMU could not start a {accel.upper()} guest: {detail[0]}", seconds)
    stage = progress[-1] if progress else "nothing"
    return KvmStatus(False, f"the {accel.upper()} probe guest got no further than '{stage}' in {timeout:.1f} s "
                     "(this /dev/kvm runs firmware but not ordinary guest code, as a "
                     "paravirtual or nested KVM may)", seconds)


def _progress(path: Path) -> str:
    """The probe's progress letters. The debug console also carries SeaBIOS's
    messages; the probe's letters are the last line."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    match = re.search(r"(?:^|\n)(P[LMWBOK]*)\n?$", text)
    return match.group(1) if match else ""


def resolve_accel(requested: str, qemu: str) -> tuple[str, str]:
    """Map --accel auto|kvm|tcg to the accelerator to use, with the reason."""
    if requested not in ACCELS:
        raise ConfigError(f"--accel must be one of {', '.join(ACCELS)}, not {requested!r}")
    if requested == "tcg":
        return "tcg", "TCG was asked for"
    status = probe_kvm(qemu)
    if status.usable:
        return "kvm", status.reason
    if requested == "kvm":
        raise PreconditionError(f"--accel kvm was asked for, but KVM is not usable here: {status.reason}",
                                hint="use --accel auto or --accel tcg, or run on a host with working KVM")
    return "tcg", f"KVM not usable ({status.reason}); using TCG"


def vhost_status() -> tuple[bool, str]:
    if not os.path.exists("/dev/vhost-net"):
        return False, "/dev/vhost-net does not exist (modprobe vhost_net)"
    try:
        os.close(os.open("/dev/vhost-net", os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        return False, f"cannot open /dev/vhost-net: {exc.strerror}"
    return True, "/dev/vhost-net is usable"


def resolve_vhost(requested: str) -> tuple[bool, str]:
    """Map --vhost auto|on|off to whether vhost-net is used, with the reason."""
    if requested not in VHOST_MODES:
        raise ConfigError(f"--vhost must be one of {', '.join(VHOST_MODES)}, not {requested!r}")
    if requested == "off":
        return False, "vhost-net switched off"
    usable, reason = vhost_status()
    if requested == "on" and not usable:
        raise PreconditionError(f"--vhost on was asked for, but {reason}",
                                hint="load vhost_net (modprobe vhost_net) or use --vhost auto")
    return usable, reason
