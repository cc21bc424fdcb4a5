"""A netmap build the user supplies (`--guest-netmap DIR`), installed into a
Linux guest after boot.

DIR holds netmap.ko built for the guest kernel and, optionally, a
netmap-patched virtio_net.ko and the pkt-gen and bridge programs (anything
else there is ignored). `install()` does, in order, each step a function of
its own:

  NetmapBuild.from_directory  validate DIR, hash each file, read each module's
                              vermagic from its ELF .modinfo section (host side,
                              nothing is loaded)
  guest_kernel / check_vermagic
                              compare with the running guest kernel: a mismatch
                              is one error naming both, before anything is
                              copied or loaded
  copy_to_guest               SFTP into /root/netmap, SHA-256 checked in the guest
  load_modules                insmod netmap.ko; then, when virtio_net.ko is
                              given, swap it in over the serial console (the
                              management NIC is virtio too, so SSH goes down
                              with it) and reconnect SSH
  verify                      /dev/netmap, the adapter mode and rings as the
                              guest kernel logged them, where pkt-gen/bridge are

and returns what a result's provenance records (JSON-ready).
"""

from __future__ import annotations

import hashlib
import logging
import shlex
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.command import Runner
from harness.deadline import Deadline
from harness.errors import ConfigError, HarnessError, PhaseTimeout

if TYPE_CHECKING:
    from harness.guest import Guest

log = logging.getLogger(__name__)

MODULES = ("netmap.ko", "virtio_net.ko")
PROGRAMS = ("pkt-gen", "bridge")
GUEST_DIR = "/root/netmap"
DIR_MUST_HOLD = ("it must hold netmap.ko built for the guest kernel, and may hold a netmap-patched virtio_net.ko "
                 "and the pkt-gen and bridge programs (README, 'netmap in the Linux guest')")
SWAP_SCRIPT = "/run/harness-swap-virtio-net.sh"


# -- ELF .modinfo ------------------------------------------------------------
class ModuleFormatError(ConfigError):
    """A file that should be a Linux kernel module is not one."""


@dataclass(frozen=True)
class ModinfoEntry:
    key: str
    value: str
    offset: int  # file offset of the value's first byte


@dataclass(frozen=True)
class ModuleInfo:
    """The `key=value` strings of a kernel module's .modinfo section (what
    `modinfo` prints), in file order."""

    entries: tuple[ModinfoEntry, ...]

    def get(self, key: str) -> str | None:
        return next((e.value for e in self.entries if e.key == key), None)

    def entry(self, key: str) -> ModinfoEntry | None:
        return next((e for e in self.entries if e.key == key), None)

    @property
    def vermagic(self) -> str | None:
        return self.get("vermagic")

    @property
    def name(self) -> str | None:
        return self.get("name")

    @property
    def depends(self) -> tuple[str, ...]:
        return tuple(d for d in (self.get("depends") or "").split(",") if d)


_SHT_NOBITS = 8
_ET_REL = 1
# Per ELF class: the header fields after e_ident, and one section header.
_LAYOUT = {1: ("HHIIIIIHHHHHH", "IIIIIIIIII"), 2: ("HHIQQQIHHHHHH", "IIQQQQIIQQ")}


def parse_modinfo(data: bytes, what: str = "the file") -> ModuleInfo:
    """The .modinfo of an ELF relocatable object (a .ko), from its bytes."""
    if len(data) < 16 or data[:4] != b"\x7fELF":
        raise ModuleFormatError(f"{what} is not a Linux kernel module: not an ELF file"
                                + (" (it is compressed; give the uncompressed .ko)"
                                   if data[:2] == b"\x1f\x8b" or data[:6] == b"\xfd7zXZ\x00"
                                   or data[:4] == b"\x28\xb5\x2f\xfd" else ""))
    elf_class, encoding = data[4], data[5]
    if elf_class not in _LAYOUT or encoding not in (1, 2):
        raise ModuleFormatError(f"{what} is not a Linux kernel module: unknown ELF class {elf_class} "
                                f"or data encoding {encoding}")
    order = "<" if encoding == 1 else ">"
    header_fmt, section_fmt = _LAYOUT[elf_class]
    header = struct.Struct(order + "16x" + header_fmt)
    section = struct.Struct(order + section_fmt)
    if len(data) < header.size:
        raise ModuleFormatError(f"{what} is not a Linux kernel module: truncated ELF header")
    e_type, *_, e_shoff, _flags, _ehsize, _phentsize, _phnum, e_shentsize, e_shnum, e_shstrndx = \
        header.unpack_from(data)
    if e_type != _ET_REL:
        raise ModuleFormatError(f"{what} is not a Linux kernel module: an ELF file of type {e_type}, "
                                "not a relocatable object (ET_REL) as every .ko is")

    def section_header(index: int) -> tuple[int, ...]:
        start = e_shoff + index * e_shentsize
        if e_shoff == 0 or e_shentsize < section.size or start + section.size > len(data):
            raise ModuleFormatError(f"{what} is not a Linux kernel module: truncated ELF section headers")
        return section.unpack_from(data, start)

    count, names_index = e_shnum, e_shstrndx
    if count == 0 or names_index == 0xFFFF:  # the real values live in section 0 (many sections)
        first = section_header(0)
        count = count or first[5]
        names_index = first[6] if names_index == 0xFFFF else names_index
    if names_index >= count:
        raise ModuleFormatError(f"{what} is not a Linux kernel module: bad section name table index")
    names_offset = section_header(names_index)[4]
    for index in range(count):
        sh_name, sh_type, _, _, sh_offset, sh_size, *_ = section_header(index)
        start = names_offset + sh_name
        name = data[start:data.find(b"\0", start)]
        if name != b".modinfo":
            continue
        if sh_type == _SHT_NOBITS or sh_offset + sh_size > len(data):
            raise ModuleFormatError(f"{what} is not a Linux kernel module: its .modinfo section is empty "
                                    "or truncated")
        return ModuleInfo(tuple(_modinfo_entries(data, sh_offset, sh_size)))
    raise ModuleFormatError(f"{what} is not a Linux kernel module: an ELF object without a .modinfo section")


def _modinfo_entries(data: bytes, offset: int, size: int) -> list[ModinfoEntry]:
    entries = []
    position = offset
    for raw in data[offset:offset + size].split(b"\0"):
        key, sep, value = raw.partition(b"=")
        if sep and key:
            start = position + len(key) + 1
            entries.append(ModinfoEntry(key.decode(errors="replace"), value.decode(errors="replace"), start))
        position += len(raw) + 1
    return entries


def read_modinfo(path: Path) -> ModuleInfo:
    """The .modinfo of the kernel module at `path` (read, never loaded)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    return parse_modinfo(data, str(path))


# -- the supplied build --------------------------------------------------------
@dataclass(frozen=True)
class SuppliedFile:
    name: str  # netmap.ko, virtio_net.ko, pkt-gen or bridge
    path: Path
    sha256: str
    size: int
    module: ModuleInfo | None = None

    @property
    def vermagic(self) -> str | None:
        return self.module.vermagic if self.module else None

    @property
    def module_name(self) -> str:
        """The name the kernel will know the module by (lsmod, /sys/module)."""
        return (self.module.name if self.module else None) or self.name.removesuffix(".ko")

    def record(self, installed: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"sha256": self.sha256, "bytes": self.size, "source": str(self.path)}
        if self.module is not None:
            out.update(vermagic=self.vermagic, module=self.module.name)
        if installed is not None:
            out["installed"] = installed
        return out


@dataclass(frozen=True)
class NetmapBuild:
    """The files of a --guest-netmap directory, checked and hashed."""

    directory: Path
    files: dict[str, SuppliedFile]

    @classmethod
    def from_directory(cls, directory: Path) -> NetmapBuild:
        directory = Path(directory)
        if not directory.is_dir():
            state = "is not a directory" if directory.exists() else "does not exist"
            raise ConfigError(f"--guest-netmap {directory} {state}; {DIR_MUST_HOLD}")
        if not (directory / "netmap.ko").exists():
            raise ConfigError(f"--guest-netmap {directory} has no netmap.ko; {DIR_MUST_HOLD}")
        files: dict[str, SuppliedFile] = {}
        for name in MODULES + PROGRAMS:
            path = directory / name
            if not path.exists():
                continue
            if not path.is_file():
                raise ConfigError(f"--guest-netmap {directory}: {name} is not a regular file; {DIR_MUST_HOLD}")
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"--guest-netmap {directory}: cannot read {name}: {exc.strerror}") from None
            module = parse_modinfo(data, str(path)) if name.endswith(".ko") else None
            if module is not None and not module.vermagic:
                raise ModuleFormatError(f"{path} is not a Linux kernel module: its .modinfo has no vermagic")
            if name == "virtio_net.ko" and module is not None and module.name not in (None, "virtio_net"):
                raise ConfigError(f"{path} is the kernel module {module.name!r}, not virtio_net",
                                  hint="give the netmap-patched virtio_net.ko that netmap's build made")
            files[name] = SuppliedFile(name, path, hashlib.sha256(data).hexdigest(), len(data), module)
        ignored = sorted(p.name for p in directory.iterdir() if p.name not in files)
        if ignored:
            log.info("--guest-netmap %s: ignoring %s", directory, ", ".join(ignored))
        netmap = files["netmap.ko"].module
        if netmap is not None and netmap.name not in (None, "netmap"):
            # Old netmap builds name it netmap_lin; /dev/netmap is the real test.
            log.info("%s is the kernel module %r", files["netmap.ko"].path, netmap.name)
        return cls(directory, files)

    @property
    def netmap(self) -> SuppliedFile:
        return self.files["netmap.ko"]

    @property
    def virtio_net(self) -> SuppliedFile | None:
        return self.files.get("virtio_net.ko")

    @property
    def modules(self) -> list[SuppliedFile]:
        return [f for f in self.files.values() if f.module is not None]

    @property
    def programs(self) -> list[SuppliedFile]:
        return [f for f in self.files.values() if f.module is None]

    def summary(self) -> str:
        parts = [f"{f.name} ({(f.vermagic or '').split(' ')[0]})" if f.module else f.name
                 for f in self.files.values()]
        return ", ".join(parts)


# -- the guest kernel and the vermagic check ---------------------------------------
@dataclass(frozen=True)
class GuestKernel:
    release: str  # uname -r
    vermagic: str | None  # of a module of the running kernel, when one could be read
    reference: str | None = None  # that module's path in the guest


def guest_kernel(runner: Runner) -> GuestKernel:
    """The running kernel's release, and the vermagic its own modules carry
    (virtio_net's, or any in-tree module's)."""
    out = runner.run(
        'uname -r; m=$(modinfo -n virtio_net 2>/dev/null || '
        'find "/lib/modules/$(uname -r)/kernel" -name "*.ko*" -print 2>/dev/null | head -n 1); '
        'echo "$m"; [ -z "$m" ] || modinfo -F vermagic "$m" 2>/dev/null; true', check=True).output
    lines = out.splitlines() + ["", "", ""]
    release, reference, vermagic = lines[0].strip(), lines[1].strip(), lines[2]  # vermagic exactly as built
    if not release:
        raise HarnessError(f"cannot read the guest's kernel release (uname -r printed {out!r})")
    return GuestKernel(release, vermagic if vermagic.strip() else None, reference or None)


class VermagicMismatch(ConfigError):
    """A supplied module was built for another kernel than the guest runs."""

    def __init__(self, modules: dict[str, str], kernel: GuestKernel) -> None:
        expected = kernel.vermagic or kernel.release
        theirs = "; ".join(f"{name} has vermagic {vermagic!r}" for name, vermagic in modules.items())
        super().__init__(
            f"{' and '.join(modules)} {'was' if len(modules) == 1 else 'were'} built for another kernel: "
            f"{theirs}, but the guest kernel {kernel.release} has vermagic {expected!r}; "
            "nothing was copied or loaded",
            hint=f"build netmap against linux-headers-{kernel.release} (README, 'netmap in the Linux guest')")
        self.modules = modules
        self.guest_vermagic = expected


def _same_vermagic(module: str, kernel: GuestKernel) -> bool:
    if kernel.vermagic:
        return module.split() == kernel.vermagic.split()
    return module.split()[:1] == [kernel.release]


def check_vermagic(build: NetmapBuild, kernel: GuestKernel) -> None:
    """Refuse modules whose vermagic differs from the guest kernel's (stricter
    than the kernel, which with modversions compares only the part after the
    release, and then fails or taints at load time)."""
    wrong = {f.name: f.vermagic or "" for f in build.modules if not _same_vermagic(f.vermagic or "", kernel)}
    if wrong:
        raise VermagicMismatch(wrong, kernel)


# -- copy, load, verify ------------------------------------------------------------
def copy_to_guest(guest: Guest, build: NetmapBuild, dest: str = GUEST_DIR) -> dict[str, str]:
    """Copy the build into `dest` in the guest (emptied first, so nothing of an
    earlier build stays findable) and check each copy's SHA-256 there."""
    ssh = guest.ssh
    ssh.run(f"rm -rf {shlex.quote(dest)} && mkdir -p {shlex.quote(dest)}", check=True)
    installed = {}
    for f in build.files.values():
        remote = f"{dest}/{f.name}"
        ssh.put(f.path, remote, mode=0o644 if f.module else 0o755)
        installed[f.name] = remote
    out = ssh.run("sha256sum " + " ".join(shlex.quote(p) for p in installed.values()), check=True).output
    in_guest = {path: digest for digest, path in (line.split(maxsplit=1) for line in out.splitlines() if line)}
    for name, remote in installed.items():
        if in_guest.get(remote) != build.files[name].sha256:
            raise HarnessError(f"{name} arrived in the guest damaged: SHA-256 {in_guest.get(remote)} in the guest, "
                               f"{build.files[name].sha256} on the host")
    log.info("copied %s into the guest's %s", ", ".join(installed), dest)
    return installed


def _insmod(runner: Runner, name: str, remote: str) -> None:
    quoted = shlex.quote(name)
    result = runner.run(f"if [ -d /sys/module/{quoted} ]; then rmmod {quoted} || exit 3; fi; "
                        f"insmod {shlex.quote(remote)}")
    if result.ok:
        return
    dmesg = runner.run("dmesg | tail -n 5").output
    if result.status == 3:
        raise HarnessError(f"the kernel module {name} is already loaded in the guest and cannot be unloaded:\n"
                           f"{result.output}{dmesg}")
    raise HarnessError(f"insmod {remote} failed in the guest:\n{result.output}{dmesg}",
                       hint="the kernel log lines above say why")


# Runs on the console: takes every virtio NIC down (the management NIC too),
# loads the given virtio_net.ko (or the in-tree one again if that fails), and
# gives each NIC, found again by its MAC, its IPv4 addresses and up state back.
_SWAP = r"""#!/bin/sh
ko=$1
state=/run/harness-virtio-net.state
: > "$state"
for d in /sys/class/net/*; do
    drv=$(readlink "$d/device/driver" 2>/dev/null) || continue
    [ "${drv##*/}" = virtio_net ] || continue
    i=${d##*/}
    addrs=$(ip -o -4 addr show dev "$i" | awk '{print $4}' | tr '\n' ' ')
    echo "$(cat "$d/address") $(( $(cat "$d/flags") & 1 )) $addrs" >> "$state"
done
rmmod virtio_net || exit 10
s=0
if ! insmod "$ko"; then
    echo "insmod $ko failed; the in-tree virtio_net is loaded again"
    modprobe virtio_net
    s=11
fi
while read -r mac up addrs; do
    i=
    n=0
    while [ -z "$i" ] && [ $n -lt 100 ]; do
        for d in /sys/class/net/*; do [ "$(cat "$d/address")" = "$mac" ] && i=${d##*/}; done
        [ -n "$i" ] || { sleep 0.1; n=$((n + 1)); }
    done
    if [ -z "$i" ]; then echo "no interface has MAC $mac after reloading virtio_net"; s=12; continue; fi
    for a in $addrs; do ip addr add "$a" dev "$i"; done
    if [ "$up" = 1 ]; then ip link set "$i" up; fi
done < "$state"
rm -f "$state" "$0"
exit $s
"""


def swap_virtio_net(guest: Guest, remote: str) -> None:
    """Replace the guest's virtio_net with `remote` (a .ko in the guest). Every
    virtio NIC goes down meanwhile, so it runs on the serial console; SSH is
    closed first and reconnected after, and the NICs get their addresses back."""
    guest.ssh.run(f"cat > {SWAP_SCRIPT} <<'HARNESS_EOF'\n{_SWAP}HARNESS_EOF", check=True)
    guest.ssh.close()
    log.info("swapping the guest's virtio_net for %s (over the console)", remote)
    result = guest.console.run(f"sh {SWAP_SCRIPT} {shlex.quote(remote)}", timeout=60)
    guest.ssh.connect(Deadline(guest.config.timeouts.ssh_ready, "SSH after the virtio_net swap"))
    if not result.ok:
        dmesg = guest.ssh.run("dmesg | tail -n 5").output
        raise HarnessError(f"swapping in {remote} as virtio_net failed in the guest (status {result.status}):\n"
                           f"{result.output}{dmesg}")
    old, guest.dut_ifname = guest.dut_ifname, guest.profile.dut_ifname(guest.ssh, guest.vm.spec.mac)
    if old != guest.dut_ifname:
        log.info("the NIC under test is %s after the virtio_net swap (was %s)", guest.dut_ifname, old)
    # Set up again by the script if it was up: ready once its link is, as after configure_dut.
    if guest.ssh.run(f"ip -o link show dev {shlex.quote(guest.dut_ifname)} up").output.strip():
        Deadline(30, "NIC link up after the virtio_net swap").wait_for(
            lambda: guest.profile.link_up(guest.ssh, guest.dut_ifname), f"{guest.dut_ifname} link up", interval=0.2)


def load_modules(guest: Guest, build: NetmapBuild, installed: dict[str, str]) -> None:
    """insmod netmap.ko (a netmap-patched driver needs its symbols), then swap
    in the patched virtio_net.ko when one was supplied."""
    _insmod(guest.ssh, build.netmap.module_name, installed["netmap.ko"])
    log.info("loaded %s in the guest", installed["netmap.ko"])
    if build.virtio_net is not None:
        swap_virtio_net(guest, installed["virtio_net.ko"])


def verify(guest: Guest, build: NetmapBuild, installed: dict[str, str],
           device_timeout: float = 5.0) -> dict[str, Any]:
    """Check that netmap is there (/dev/netmap) and that the guest finds the
    supplied programs; return netmap's state as the guest reports it."""
    ssh, profile = guest.ssh, guest.profile
    if not profile.netmap_present(ssh):
        registered = ssh.run("grep -qw netmap /proc/misc").ok
        if not registered:
            raise HarnessError(f"/dev/netmap did not appear after loading netmap.ko ({installed['netmap.ko']}): "
                               "no netmap device is registered (/proc/misc)",
                               hint=f"is {build.netmap.path} really netmap's module? `dmesg` in the guest may say")
        try:
            Deadline(device_timeout, "/dev/netmap").wait_for(lambda: profile.netmap_present(ssh),
                                                              "/dev/netmap", interval=0.2)
        except PhaseTimeout:
            raise HarnessError(f"/dev/netmap did not appear after loading netmap.ko: netmap is registered "
                               f"(/proc/misc) but no device node showed up within {device_timeout:.0f} s") from None
    tools = {}
    for program in build.programs:
        found = profile.tool_path(ssh, program.name)
        if found != installed[program.name]:
            raise HarnessError(f"the guest finds {program.name} at {found}, not the supplied one at "
                               f"{installed[program.name]}", hint=f"remove {found} from the guest image")
        tools[program.name] = found
    rings = profile.netmap_rings(ssh, guest.dut_ifname)
    expected = "native" if build.virtio_net is not None else "emulated"
    return {
        "present": True,
        "adapter_mode": rings.mode if rings else expected,
        # dmesg: netmap logged the NIC's rings; expected: it did not yet (the
        # emulated adapter logs on first open), so the mode is what the
        # supplied files imply.
        "adapter_mode_source": "dmesg" if rings else "expected",
        "rings": ({"tx_rings": rings.tx_rings, "tx_slots": rings.tx_slots, "rx_rings": rings.rx_rings,
                   "rx_slots": rings.rx_slots} if rings and rings.tx_slots else None),
        "dut_ifname": guest.dut_ifname,
        "tools": tools,
    }


def install(guest: Guest, directory: Path) -> dict[str, Any]:
    """Install the netmap build in `directory` into the (Linux) guest and
    return what the results record about it."""
    if guest.profile.name != "linux":
        raise ConfigError(f"--guest-netmap is for Linux guests; this guest is {guest.profile.name}",
                          hint="FreeBSD images have netmap in their kernel already")
    build = NetmapBuild.from_directory(directory)
    kernel = guest_kernel(guest.ssh)
    check_vermagic(build, kernel)
    installed = copy_to_guest(guest, build)
    load_modules(guest, build, installed)
    state = verify(guest, build, installed)
    log.info("netmap in the guest: %s adapter on %s (%s)", state["adapter_mode"], state["dut_ifname"],
             build.summary())
    return {**state, "directory": str(build.directory), "installed_to": GUEST_DIR,
            "virtio_net_swapped": build.virtio_net is not None,
            "guest_kernel": {"release": kernel.release, "vermagic": kernel.vermagic},
            "files": {name: f.record(installed[name]) for name, f in build.files.items()}}
