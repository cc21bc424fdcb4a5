"""--guest-netmap against the real Debian guest, with stand-ins for netmap
(netmap is not packaged for Debian, so no real netmap build is at hand):

- STAND-IN netmap.ko: a small in-tree module of the guest kernel (crc7 or the
  like: no dependencies, not loaded), copied out of the guest and supplied as
  if it were netmap.ko. Copy, vermagic check and load are real; /dev/netmap
  then does not appear, and install() says so.
- STAND-IN patched virtio_net.ko: the guest's own virtio_net.ko, so the swap
  over the serial console (every virtio NIC down, SSH with it) is real.
- STAND-IN /dev/netmap: `mknod /dev/netmap c 10 <free misc minor>`, and a
  STAND-IN pkt-gen script, where a test needs the guest to look as if it had
  netmap.

Every test leaves the shared session guest as it found it (checked).
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.guest_netmap import (
    GUEST_DIR,
    NetmapBuild,
    VermagicMismatch,
    check_vermagic,
    copy_to_guest,
    guest_kernel,
    install,
    load_modules,
    parse_modinfo,
    read_modinfo,
    verify,
)
from harness.ping import parse_ping
from harness.traffic import choose, probe
from tests.conftest import run_harness

pytestmark = pytest.mark.vm

STAND_IN_CANDIDATES = ("crc7", "crc-itu-t", "crc8", "crc4", "ts_kmp")
STAND_IN_PKTGEN = "#!/bin/sh\n# STAND-IN for netmap's pkt-gen (test double)\necho 'pkt-gen stand-in' \"$@\"\n"


@pytest.fixture(scope="module")
def guest_modules(guest, tmp_path_factory) -> dict[str, Path]:
    """Real modules of the running guest kernel, fetched out of the guest:
    'stand_in' (small, no dependencies, not loaded) and 'virtio_net'."""
    names = " ".join(STAND_IN_CANDIDATES)
    picked = guest.ssh.run(
        f"for m in {names}; do p=$(modinfo -n $m 2>/dev/null) || continue; "
        f"[ -z \"$(modinfo -F depends $m)\" ] && [ ! -d /sys/module/$(modinfo -F name $m) ] "
        "&& echo $p && break; done; modinfo -n virtio_net", check=True).output.split()
    assert len(picked) == 2, f"no unloaded dependency-free module among {names} in the guest: {picked}"
    out = tmp_path_factory.mktemp("guest-modules")
    modules = {}
    for key, remote in zip(("stand_in", "virtio_net"), picked, strict=True):
        assert remote.endswith(".ko"), remote
        modules[key] = out / Path(remote).name
        guest.ssh.get(remote, modules[key])
    stand_in = read_modinfo(modules["stand_in"])
    assert stand_in.depends == () and stand_in.name and stand_in.name != "netmap"
    return modules


def _state(guest) -> dict[str, object]:
    dut = shlex.quote(guest.dut_ifname)
    out = guest.ssh.run(
        f"cut -d' ' -f1 /proc/modules | sort | tr '\\n' ' '; echo; "
        f"ls -d {GUEST_DIR} /dev/netmap 2>/dev/null | tr '\\n' ' '; echo; "
        f"ip -o -4 addr show dev {dut} | awk '{{print $4}}' | sort | tr '\\n' ' '; echo; "
        f"echo $(( $(cat /sys/class/net/{dut}/flags) & 1 )); "
        f"cat /sys/class/net/{dut}/ifindex", check=True).output.splitlines()
    return {"modules": set(out[0].split()), "paths": set(out[1].split()), "dut_addrs": out[2].split(),
            "dut_up": out[3] == "1", "dut": guest.dut_ifname, "ifindex": int(out[4])}


@pytest.fixture
def as_found(guest):
    """Snapshot the guest, and afterwards put back what the test changed:
    modules it loaded, /root/netmap, a stand-in /dev/netmap, the DUT's
    addresses and up state. Then check the guest is as it was."""
    before = _state(guest)
    yield before
    after = _state(guest)
    dut = shlex.quote(guest.dut_ifname)
    undo = [f"rmmod {m}" for m in sorted(after["modules"] - before["modules"])]
    undo += [f"rm -rf {GUEST_DIR}"] if GUEST_DIR not in before["paths"] else []
    undo += ["rm -f /dev/netmap"] if "/dev/netmap" not in before["paths"] else []
    undo += [f"ip addr flush dev {dut}"] + [f"ip addr add {a} dev {dut}" for a in before["dut_addrs"]]
    undo += [f"ip link set {dut} {'up' if before['dut_up'] else 'down'}"]
    guest.ssh.run(" ; ".join(undo), check=False)
    restored = _state(guest)
    for key in ("modules", "paths", "dut_addrs", "dut_up", "dut"):
        assert restored[key] == before[key], f"the guest's {key} is not as the test found it"


def _build_dir(tmp_path: Path, files: dict[str, Path | str]) -> Path:
    """A --guest-netmap directory: name -> a file to copy, or text."""
    directory = tmp_path / "netmap-build"
    directory.mkdir()
    for name, content in files.items():
        target = directory / name
        if isinstance(content, Path):
            target.write_bytes(content.read_bytes())
        else:
            target.write_text(content)
    return directory


def _guest_sha256(guest, *paths: str) -> dict[str, str]:
    out = guest.ssh.run("sha256sum " + " ".join(paths), check=True).output
    return {path: digest for digest, path in (line.split() for line in out.splitlines())}


def test_install_copies_checks_loads_and_swaps_then_refuses_a_module_that_is_not_netmap(
        root_only, guest, guest_modules, as_found, tmp_path):
    stand_in = read_modinfo(guest_modules["stand_in"])
    directory = _build_dir(tmp_path, {"netmap.ko": guest_modules["stand_in"],
                                       "virtio_net.ko": guest_modules["virtio_net"], "pkt-gen": STAND_IN_PKTGEN})
    guest.configure_dut()  # an address and up state for the swap to give back
    configured = _state(guest)
    assert configured["dut_addrs"] == ["10.0.0.1/24"] and configured["dut_up"]

    with pytest.raises(HarnessError) as info:
        install(guest, directory)
    assert str(info.value).startswith("/dev/netmap did not appear after loading netmap.ko "
                                      f"({GUEST_DIR}/netmap.ko): no netmap device is registered")

    # Copied intact: the SHA-256 in the guest is the host's.
    build = NetmapBuild.from_directory(directory)
    in_guest = _guest_sha256(guest, *(f"{GUEST_DIR}/{name}" for name in build.files))
    assert in_guest == {f"{GUEST_DIR}/{name}": f.sha256 for name, f in build.files.items()}
    assert in_guest[f"{GUEST_DIR}/netmap.ko"] == hashlib.sha256(guest_modules["stand_in"].read_bytes()).hexdigest()
    # Loaded: the kernel lists the stand-in module.
    lsmod = guest.ssh.run("lsmod", check=True).output.split()
    assert stand_in.name in lsmod
    # virtio_net was swapped: the NIC under test is a new netdev, with its
    # address and up state back, and answers ping; SSH came back (we use it).
    after = _state(guest)
    assert after["ifindex"] != configured["ifindex"]
    assert (after["dut"], after["dut_addrs"], after["dut_up"]) == (configured["dut"], ["10.0.0.1/24"], True)
    ping = guest.net.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", guest.ip], timeout=30, check=False)
    assert parse_ping(ping.stdout).received == 3, ping.stdout
    assert guest.console.run("echo console", check=True).output == "console\n"


def test_install_records_what_was_installed(root_only, guest, guest_modules, as_found, tmp_path):
    directory = _build_dir(tmp_path, {"netmap.ko": guest_modules["stand_in"], "pkt-gen": STAND_IN_PKTGEN,
                                       "bridge": STAND_IN_PKTGEN.replace("pkt-gen", "bridge")})
    misc = guest.ssh.run("cat /proc/misc", check=True).output.split()[::2]
    minor = next(m for m in range(250, 200, -1) if str(m) not in misc)
    # STAND-IN /dev/netmap: the loaded module is not netmap, so make the node it would make.
    guest.ssh.run(f"mknod /dev/netmap c 10 {minor}", check=True)

    kernel = guest_kernel(guest.ssh)
    uname = guest.ssh.run("uname -r", check=True).output.strip()
    assert kernel.release == uname and kernel.reference == f"/lib/modules/{uname}/kernel/drivers/net/virtio_net.ko"
    assert kernel.vermagic == read_modinfo(guest_modules["virtio_net"]).vermagic

    facts = install(guest, directory)

    build = NetmapBuild.from_directory(directory)
    stand_in = read_modinfo(guest_modules["stand_in"])
    assert facts["present"] is True and facts["virtio_net_swapped"] is False
    assert facts["adapter_mode"] == "emulated" and facts["adapter_mode_source"] == "expected"
    assert facts["rings"] is None and facts["dut_ifname"] == guest.dut_ifname
    assert facts["tools"] == {"pkt-gen": f"{GUEST_DIR}/pkt-gen", "bridge": f"{GUEST_DIR}/bridge"}
    assert facts["guest_kernel"] == {"release": uname, "vermagic": kernel.vermagic}
    assert facts["directory"] == str(directory) and facts["installed_to"] == GUEST_DIR
    assert set(facts["files"]) == {"netmap.ko", "pkt-gen", "bridge"}
    netmap = facts["files"]["netmap.ko"]
    assert netmap == {"sha256": build.netmap.sha256, "bytes": guest_modules["stand_in"].stat().st_size,
                      "source": str(directory / "netmap.ko"), "vermagic": kernel.vermagic,
                      "module": stand_in.name, "installed": f"{GUEST_DIR}/netmap.ko"}
    for name in ("pkt-gen", "bridge"):
        assert facts["files"][name]["sha256"] == hashlib.sha256((directory / name).read_bytes()).hexdigest()
    assert _guest_sha256(guest, f"{GUEST_DIR}/pkt-gen")[f"{GUEST_DIR}/pkt-gen"] == facts["files"]["pkt-gen"]["sha256"]
    assert stand_in.name in guest.ssh.run("lsmod", check=True).output.split()
    assert guest.ssh.run(f"{GUEST_DIR}/pkt-gen -i x", check=True).output == "pkt-gen stand-in -i x\n"


def test_install_steps_one_by_one_and_a_second_install_replaces_the_first(
        root_only, guest, guest_modules, as_found, tmp_path):
    directory = _build_dir(tmp_path, {"netmap.ko": guest_modules["stand_in"], "bridge": STAND_IN_PKTGEN})
    build = NetmapBuild.from_directory(directory)
    check_vermagic(build, guest_kernel(guest.ssh))
    guest.ssh.run(f"mkdir -p {GUEST_DIR} && echo stale > {GUEST_DIR}/pkt-gen && chmod +x {GUEST_DIR}/pkt-gen",
                  check=True)
    installed = copy_to_guest(guest, build)
    assert installed == {"netmap.ko": f"{GUEST_DIR}/netmap.ko", "bridge": f"{GUEST_DIR}/bridge"}
    listing = guest.ssh.run(f"ls {GUEST_DIR}", check=True).output.split()
    assert listing == ["bridge", "netmap.ko"]  # the stale pkt-gen of an earlier build is gone
    name = read_modinfo(guest_modules["stand_in"]).name
    for _ in range(2):  # loading again unloads the loaded copy first
        load_modules(guest, build, installed)
        assert guest.ssh.run(f"test -d /sys/module/{name}").ok
    with pytest.raises(HarnessError, match=r"^/dev/netmap did not appear after loading netmap.ko"):
        verify(guest, build, installed)


def _mismatched(source: Path, directory: Path) -> tuple[str, str]:
    """Write a copy of the module `source` as directory/netmap.ko with the
    kernel ABI in its vermagic one lower (6.1.0-50-... -> 6.1.0-49-..., same
    length, rewritten in place in .modinfo). Returns (real, written) vermagic."""
    data = bytearray(source.read_bytes())
    entry = parse_modinfo(bytes(data)).entry("vermagic")
    assert entry is not None
    abi = entry.value.split()[0].split("-")[1]
    wrong_abi = str(int(abi) - 1).rjust(len(abi), "0")
    wrong = entry.value.replace(f"-{abi}-", f"-{wrong_abi}-", 1)
    assert len(wrong) == len(entry.value) and wrong != entry.value
    data[entry.offset:entry.offset + len(wrong)] = wrong.encode()
    (directory / "netmap.ko").write_bytes(bytes(data))
    assert read_modinfo(directory / "netmap.ko").vermagic == wrong
    return entry.value, wrong


def test_a_mismatched_vermagic_is_refused_before_anything_is_copied_or_loaded(
        root_only, guest, guest_modules, as_found, tmp_path):
    source = guest_modules["stand_in"]
    directory = _build_dir(tmp_path, {"pkt-gen": STAND_IN_PKTGEN})
    real, wrong = _mismatched(source, directory)
    release = real.split()[0]

    with pytest.raises(VermagicMismatch) as info:
        install(guest, directory)
    message = info.value.message
    assert f"netmap.ko has vermagic {wrong!r}" in message
    assert f"the guest kernel {release} has vermagic {real!r}" in message
    assert "nothing was copied or loaded" in message
    assert f"linux-headers-{release}" in (info.value.hint or "")
    state = _state(guest)
    assert GUEST_DIR not in state["paths"]
    assert read_modinfo(source).name not in state["modules"]
    assert state["modules"] == as_found["modules"]


def test_probe_and_choose_pick_netmap_engines_when_the_guest_has_dev_netmap_and_pkt_gen(
        root_only, guest, as_found):
    misc = guest.ssh.run("cat /proc/misc", check=True).output.split()[::2]
    minor = next(m for m in range(250, 200, -1) if str(m) not in misc)
    # STAND-INs for netmap in the guest: a /dev/netmap node and a pkt-gen script.
    guest.ssh.run(f"mknod /dev/netmap c 10 {minor} && mkdir -p {GUEST_DIR} && "
                  f"printf '%s' {shlex.quote(STAND_IN_PKTGEN)} > {GUEST_DIR}/pkt-gen && "
                  f"chmod 755 {GUEST_DIR}/pkt-gen", check=True)
    caps = probe(guest)
    assert caps.guest_netmap and caps.guest_pktgen_path == f"{GUEST_DIR}/pkt-gen"
    host_receiver = "netmap-pktgen" if caps.host_netmap else "host-counters"
    assert choose("tx", caps) == ("netmap-pktgen", host_receiver)
    assert choose("rx", caps)[1] == "netmap-pktgen"

    guest.ssh.run("rm -f /dev/netmap", check=True)  # pkt-gen alone is not enough
    caps = probe(guest)
    assert not caps.guest_netmap and caps.guest_pktgen_path is None and caps.guest_kernel_pktgen
    assert choose("tx", caps)[0] == "linux-pktgen"
    assert choose("rx", caps)[1] == "guest-counters"


def test_harness_boot_with_a_mismatched_build_is_one_clear_error_and_leaves_nothing(
        root_only, no_new_leftovers, guest_modules, tmp_path):
    """The user's view, through boot_guest's hook: a fresh guest boots, the
    build is refused, everything is torn down."""
    directory = _build_dir(tmp_path, {})
    real, wrong = _mismatched(guest_modules["stand_in"], directory)
    proc = run_harness("boot", "--guest-netmap", str(directory), "--run-dir", str(tmp_path / "run"),
                       "--command", "true", timeout=180)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("harness: error: netmap.ko was built for another kernel: "), proc.stderr
    assert f"netmap.ko has vermagic {wrong!r}" in proc.stderr and f"vermagic {real!r}" in proc.stderr
    assert "Traceback" not in proc.stderr
