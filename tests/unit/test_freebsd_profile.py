"""The FreeBSD guest profile: console patterns and parsers.

tests/fixtures/freebsd-console/ and tests/fixtures/freebsd-formats/ are the
real samples from /work/shared/data, copied unaltered (provenance header on
line 1). Expected values were read by hand from those files.

No real capture exists of `netstat --libxo json -I`, `vmstat --libxo json -i`,
`sysctl dev.virtio_pci.N.negotiated_features` or a FreeBSD panic: the tests
for those are named `*_source_only`; their inputs are built from the format in
the FreeBSD sources (usr.bin/netstat/if.c intpr(), usr.bin/vmstat/vmstat.c
print_intrcnts(), sys/dev/virtio/virtio.c virtio_describe_sbuf(), kern_shutdown.c
/ trap.c messages), as each docstring says.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.command import CommandResult
from harness.errors import HarnessError
from harness.guests import PROFILES, get_profile
from harness.guests.base import NetmapRings
from harness.guests.freebsd import (
    KERNEL_IDENTITY_COMMAND,
    FreeBSDProfile,
    find_ifname_by_mac,
    offload_states_from_ifconfig,
    parse_ifconfig,
    parse_kernel_identity,
    parse_negotiated_features,
    parse_netmap_rings,
    parse_netstat_interface_json,
    parse_vmstat_interrupts_json,
    split_device,
)
from harness.host_tap import Counters

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CONSOLE = FIXTURES / "freebsd-console" / "sample-01-freebsd-13.2-vmimage-serial-login-bhyve.txt"
IFCONFIG_13 = FIXTURES / "freebsd-formats" / "sample-01-ifconfig-vtnet0-freebsd13.2-bhyve.txt"
DMESG_10 = FIXTURES / "freebsd-formats" / "sample-02-dmesg-freebsd10.2-kvm-vtnet-probe.txt"
KVM_15 = FIXTURES / "freebsd-formats" / "sample-03-freebsd-15.0-vmimage-kvm-ifconfig-dmesg-vtnet-netmap.txt"
PROFILE = FreeBSDProfile()


def body(path: Path) -> str:
    """The sample without its provenance header."""
    return path.read_text().split("\n", 1)[1]


def test_fixtures_are_the_shared_samples_unaltered() -> None:
    for local in [CONSOLE, IFCONFIG_13, DMESG_10, KVM_15]:
        shared = Path("/work/shared/data") / local.parent.name / local.name
        assert local.read_text().startswith("# SOURCE: ")
        if shared.exists():
            assert local.read_bytes() == shared.read_bytes()


def test_profile_is_registered_with_an_e1000_management_nic() -> None:
    assert PROFILES["freebsd"] is FreeBSDProfile
    profile = get_profile("freebsd")
    assert profile.mgmt_nic_model == "e1000" and profile.name == "freebsd"
    assert profile.shell_setup[0] == "exec /bin/sh" and profile.shell_setup[1] == "stty -echo"


# -- console patterns against console sample-01 ---------------------------------
def test_login_prompt_matches_getty_on_the_13_2_console() -> None:
    text = body(CONSOLE)
    up_to_prompt = text[:text.index("login: root") + len("login: ")]
    assert re.search(PROFILE.patterns.login, up_to_prompt, re.MULTILINE)
    # ...and not the syslog line that reports the login afterwards
    assert not re.search(PROFILE.patterns.login, "May  8 17:28:15 freebsd login[802]: ROOT LOGIN (root) ON ttyu0",
                         re.MULTILINE)
    banner = re.search(PROFILE.getty_banner_pattern, up_to_prompt)
    assert banner is not None and banner.group(0) == "FreeBSD/amd64 (freebsd) (ttyu0)"


def test_shell_prompt_after_the_motd_and_with_a_syslog_line_behind_it() -> None:
    text = body(CONSOLE)
    after_motd = text[:text.index("root@freebsd:~ # uname -a") + len("root@freebsd:~ # ")]
    assert re.search(PROFILE.patterns.shell, after_motd, re.MULTILINE)
    # the sample's prompt with dhclient's syslog line written right behind it
    line = next(line for line in text.splitlines() if line.startswith("root@freebsd:~ # May  8"))
    assert re.search(PROFILE.patterns.shell, line, re.MULTILINE)
    # a prompt followed by a typed command is not a fresh prompt
    assert not re.search(PROFILE.patterns.shell, "root@freebsd:~ # uname -a", re.MULTILINE)
    assert not re.search(PROFILE.patterns.password, text, re.MULTILINE)  # no Password: for root


def test_kernel_line_matches_what_freebsd_writes_unasked() -> None:
    console, dmesg = body(CONSOLE).splitlines(), body(KVM_15).splitlines()
    unasked = [console[console.index("login: root") + 1],      # May  8 17:28:15 freebsd login[802]: ROOT LOGIN...
               "May  8 17:28:49 freebsd dhclient[386]: connection closed",
               next(line for line in dmesg if "vtnet_netmap_attach" in line),
               "vtnet0: link state changed to UP"]
    assert unasked[0].startswith("May  8 17:28:15 freebsd login[802]")
    assert unasked[3] in dmesg
    for line in unasked:
        assert PROFILE.kernel_line.match(line), line
    asked = ["vtnet0: flags=8863<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST> metric 0 mtu 1500",
             "        options=80028<VLAN_MTU,JUMBO_MTU,LINKSTATE>",
             "FreeBSD 13.2-RELEASE releng/13.2-n254617-525ecfdad597 GENERIC",
             "64 bytes from 8.8.8.8: icmp_seq=0 ttl=57 time=3.167 ms",
             "vtnet0: netmap queues/slots: TX 1/4096, RX 1/2048"]
    for line in asked:
        assert line in body(CONSOLE) + body(KVM_15)
        assert not PROFILE.kernel_line.match(line), line


def test_panic_patterns_source_only() -> None:
    """No real FreeBSD panic transcript exists here: `panic: %s` (kern_shutdown.c),
    `Fatal trap %d: %s while in %s mode` (amd64 trap.c) and the ddb prompt
    `db> ` are taken from the sources."""
    panics = [re.compile(p) for p in PROFILE.panic_patterns]
    for text in ["cpuid = 0\npanic: page fault\n", "\n\nFatal trap 12: page fault while in kernel mode\n",
                 "KDB: enter: panic\n[ thread pid 11 tid 100003 ]\nStopped at kdb_enter+0x33\ndb> "]:
        assert any(p.search(text) for p in panics), text
    for text in body(CONSOLE), body(KVM_15), "grep: no panic: here\n":
        assert not any(p.search(text) for p in panics)
    assert PROFILE.debugger_prompt == "db> " and PROFILE.debugger_commands[:2] == ("bt", "show pcpu")


# -- ifconfig -----------------------------------------------------------------
def test_ifconfig_13_2_bhyve_without_offloads() -> None:
    entries = parse_ifconfig(body(IFCONFIG_13))
    assert list(entries) == ["vtnet0", "lo0"]
    vtnet = entries["vtnet0"]
    assert vtnet.flags == ("UP", "BROADCAST", "RUNNING", "SIMPLEX", "MULTICAST")
    assert vtnet.options_hex == 0x80028 and vtnet.options == ("VLAN_MTU", "JUMBO_MTU", "LINKSTATE")
    assert vtnet.ether == "fa:16:3e:b1:69:35"
    assert entries["lo0"].ether is None and entries["lo0"].options_hex == 0x680003
    assert offload_states_from_ifconfig(body(IFCONFIG_13), "vtnet0") == dict.fromkeys(
        ["rxcsum", "txcsum", "tso4", "tso6", "lro", "rxcsum6", "txcsum6"], False)
    # lo0 of the same output has the checksum offloads on
    lo0 = offload_states_from_ifconfig(body(IFCONFIG_13), "lo0")
    assert [k for k, on in lo0.items() if on] == ["rxcsum", "txcsum", "rxcsum6", "txcsum6"]


def test_link_up_needs_up_running_and_an_active_carrier() -> None:
    text = body(IFCONFIG_13)
    entries = parse_ifconfig(text)
    assert entries["vtnet0"].status == "active" and entries["vtnet0"].link_up
    assert entries["lo0"].status is None and entries["lo0"].link_up  # lo0 reports no carrier status
    no_carrier = parse_ifconfig(text.replace("status: active", "status: no carrier"))["vtnet0"]
    assert no_carrier.status == "no carrier" and not no_carrier.link_up
    not_running = parse_ifconfig(text.replace("<UP,BROADCAST,RUNNING,", "<UP,BROADCAST,"))["vtnet0"]
    assert not not_running.link_up
    assert not PROFILE.link_up(ScriptedRunner({}), "vtnet0")  # ifconfig failed: not up


def test_ifconfig_15_0_kvm_with_every_offload_on() -> None:
    ifconfig = body(KVM_15).split("\n\n")[0]
    vtnet = parse_ifconfig(ifconfig)["vtnet0"]
    assert vtnet.options_hex == 0xEC07BB and "LOWER_UP" in vtnet.flags
    assert vtnet.options == ("RXCSUM", "TXCSUM", "VLAN_MTU", "VLAN_HWTAGGING", "JUMBO_MTU", "VLAN_HWCSUM",
                             "TSO4", "TSO6", "LRO", "VLAN_HWTSO", "LINKSTATE", "RXCSUM_IPV6", "TXCSUM_IPV6",
                             "HWSTATS")
    assert all(offload_states_from_ifconfig(ifconfig, "vtnet0").values())


def test_dut_ifname_by_mac_in_both_samples() -> None:
    assert find_ifname_by_mac(body(KVM_15), "00:16:3E:45:BC:81") == "vtnet0"
    assert find_ifname_by_mac(body(CONSOLE), "fa:16:3e:b1:69:35") == "vtnet0"  # the ifconfig inside the session
    with pytest.raises(HarnessError, match="found none"):
        find_ifname_by_mac(body(IFCONFIG_13), "52:54:00:12:34:01")


# -- dmesg ----------------------------------------------------------------------
def test_netmap_rings_from_the_15_0_kvm_dmesg() -> None:
    assert parse_netmap_rings(body(KVM_15), "vtnet0") == NetmapRings(1, 4096, 1, 2048)
    assert parse_netmap_rings(body(KVM_15), "vtnet1") is None
    assert parse_netmap_rings(body(DMESG_10), "vtnet0") is None  # 10.2 logs no netmap line


def test_parent_device_names_from_the_probe_lines() -> None:
    assert "vtnet0: <VirtIO Networking Adapter> on virtio_pci2" in body(KVM_15)
    assert split_device("virtio_pci2") == ("virtio_pci", 2)
    assert split_device("vtnet0") == ("vtnet", 0) and split_device("em0") == ("em", 0)
    with pytest.raises(HarnessError):
        split_device("vtnet")


# -- formats known only from source -------------------------------------------
NETSTAT_JSON = """{"statistics": {"interface": [
 {"name":"vtnet0","flags":"0x8843","mtu":1500,"network":"<Link#1>","address":"52:54:00:12:34:01",
  "received-packets":1000,"received-errors":1,"dropped-packets":2,"received-bytes":64000,
  "sent-packets":900,"send-errors":3,"sent-bytes":57600,"collisions":0,"dropped-packets":4},
 {"name":"vtnet0","flags":"0x8843","mtu":1500,"network":"10.0.0.0/24","address":"10.0.0.1",
  "received-packets":10,"received-bytes":640,"sent-packets":9,"sent-bytes":576}
]}}"""


def test_netstat_libxo_counters_source_only() -> None:
    """Built from usr.bin/netstat/if.c intpr(): a {"statistics": {"interface": [...]}}
    list with one row per address; only the <Link#N> row has errors, and -d
    emits "dropped-packets" a second time for the output drops."""
    assert parse_netstat_interface_json(NETSTAT_JSON, "vtnet0") == Counters(
        rx_packets=1000, rx_bytes=64000, rx_dropped=2, rx_errors=1,
        tx_packets=900, tx_bytes=57600, tx_dropped=4, tx_errors=3)
    without_d = NETSTAT_JSON.replace(',"dropped-packets":4', "")
    assert parse_netstat_interface_json(without_d, "vtnet0").tx_dropped == 0
    with pytest.raises(HarnessError, match="no link-level row for vtnet1"):
        parse_netstat_interface_json(NETSTAT_JSON, "vtnet1")
    with pytest.raises(HarnessError, match="lacks 'received-bytes'"):
        parse_netstat_interface_json(NETSTAT_JSON.replace('"received-bytes":64000,', ""), "vtnet0")
    with pytest.raises(HarnessError, match="not understood"):
        parse_netstat_interface_json("netstat: interface vtnet0 not found", "vtnet0")


def test_negotiated_features_source_only() -> None:
    """Built from virtio_describe_sbuf(): `%#jx` then ` <Name,...>` from bit 63
    down. The names are FreeBSD's; the parser keeps the bits and names them
    as the virtio spec (and the Linux profile) does."""
    text = "0x120038023 <Version1,RingEventIdx,CtrlVq,Status,MrgRxBuf,MAC,RxChecksum,TxChecksum>\n"
    features = parse_negotiated_features(text)
    assert features.bits == 0x120038023
    assert features.names == ("CSUM", "GUEST_CSUM", "MAC", "MRG_RXBUF", "STATUS", "CTRL_VQ",
                              "RING_EVENT_IDX", "VERSION_1")
    assert parse_negotiated_features("0").bits == 0  # %#jx prints a bare 0
    with pytest.raises(HarnessError):
        parse_negotiated_features("unknown oid 'dev.virtio_pci.9.negotiated_features'")


VMSTAT_JSON = """{"__version": "2", "interrupt-statistics": {"interrupt": [
 {"name":"irq1: atkbd0","total":100,"rate":0},
 {"name":"irq11: virtio_pci1 uhci0+","total":9,"rate":0},
 {"name":"irq24: virtio_pci2","total":7,"rate":0},
 {"name":"irq25: virtio_pci2","total":1234,"rate":12},
 {"name":"irq26: virtio_pci2","total":567,"rate":5},
 {"name":"irq30: virtio_pci20","total":99,"rate":0}
], "total-interrupts": 2016, "total-rate": 17}}"""


def test_vmstat_interrupts_source_only() -> None:
    """Built from usr.bin/vmstat/vmstat.c print_intrcnts(): rows {name, total,
    rate} in "interrupt-statistics"; MSI-X vectors of one device are one
    `irqN: virtio_pciM` row each (virtio_pci does not describe them)."""
    assert parse_vmstat_interrupts_json(VMSTAT_JSON, "virtio_pci2") == {
        "irq24: virtio_pci2": 7, "irq25: virtio_pci2": 1234, "irq26: virtio_pci2": 567}
    assert parse_vmstat_interrupts_json(VMSTAT_JSON, "virtio_pci1") == {"irq11: virtio_pci1 uhci0+": 9}
    with pytest.raises(HarnessError):
        parse_vmstat_interrupts_json("vmstat: sysctl(hw.intrcnt): ...", "virtio_pci2")


def test_kernel_identity_of_the_13_2_console_kernel() -> None:
    version = "FreeBSD 13.2-RELEASE releng/13.2-n254617-525ecfdad597 GENERIC"
    assert version in body(CONSOLE)  # as `uname -a` shows it in the sample
    sha = "ab" * 32
    out = f"13.2-RELEASE\n{version}\nGENERIC\n/boot/kernel/kernel\n{sha}\n"
    assert parse_kernel_identity(out) == {"release": "13.2-RELEASE", "version": version, "ident": "GENERIC",
                                          "bootfile": "/boot/kernel/kernel", "kernel_sha256": sha}
    with pytest.raises(HarnessError):
        parse_kernel_identity("13.2-RELEASE\n")


# -- the methods, with a scripted Runner ---------------------------------------
class ScriptedRunner:
    """Test double for a Runner: exact command -> (output, status); records the commands."""

    def __init__(self, replies: dict[str, tuple[str, int]]) -> None:
        self.replies = replies
        self.commands: list[str] = []

    def run(self, command: str, timeout: float = 30.0, *, check: bool = False) -> CommandResult:
        self.commands.append(command)
        output, status = self.replies.get(command, ("", 127))
        result = CommandResult(command, status, output, "scripted")
        return result.check() if check else result


def test_methods_ask_freebsd_the_right_questions() -> None:
    ifconfig_15 = body(KVM_15).split("\n\n")[0].split("\n", 1)[1]  # without the prompt line
    runner = ScriptedRunner({
        "ifconfig -a": (ifconfig_15, 0),
        "ifconfig vtnet0": (ifconfig_15, 0),
        "ifconfig vtnet0 -rxcsum -txcsum -tso4 -tso6 -lro -rxcsum6 -txcsum6": ("", 0),
        "sysctl -n dev.vtnet.0.%parent": ("virtio_pci2\n", 0),
        "sysctl -n dev.virtio_pci.2.negotiated_features": ("0x120038023 <Version1,...>\n", 0),
        "sysctl -n dev.vtnet.0.act_vq_pairs": ("1\n", 0),
        "vmstat --libxo json -i": (VMSTAT_JSON, 0),
        "netstat --libxo json -I vtnet0 -b -n -d": (NETSTAT_JSON, 0),
        "cat /var/run/dmesg.boot 2>/dev/null; dmesg": (body(KVM_15), 0),
        "sysctl -n dev.netmap.admode": ("0\n", 0),
        KERNEL_IDENTITY_COMMAND: (f"15.0-RELEASE\nFreeBSD 15.0-RELEASE releng/15.0-n280995-7aedc8de6446 GENERIC\n"
                                  f"GENERIC\n/boot/kernel/kernel\n{'cd' * 32}\n", 0),
        "ifconfig vtnet0 inet 10.0.0.1/24 up": ("", 0),
    })
    assert PROFILE.dut_ifname(runner, "00:16:3e:45:bc:81") == "vtnet0"
    assert PROFILE.disable_offloads(runner, "vtnet0")["lro"] is True  # the sample never switched them off
    assert PROFILE.negotiated_features(runner, "vtnet0").bits == 0x120038023  # type: ignore[union-attr]
    assert PROFILE.queue_pairs(runner, "vtnet0") == 1
    assert PROFILE.interrupt_counts(runner, "vtnet0")["irq25: virtio_pci2"] == 1234
    assert PROFILE.interface_counters(runner, "vtnet0").tx_dropped == 4
    assert PROFILE.netmap_rings(runner, "vtnet0") == NetmapRings(1, 4096, 1, 2048)
    assert PROFILE.kernel_identity(runner)["release"] == "15.0-RELEASE"
    assert PROFILE.link_up(runner, "vtnet0")
    PROFILE.set_address(runner, "vtnet0", "10.0.0.1/24")
    assert all(reply in runner.replies for reply in runner.commands), runner.commands


def test_unreadable_sysctls_give_none() -> None:
    runner = ScriptedRunner({})
    assert PROFILE.negotiated_features(runner, "vtnet0") is None
    assert PROFILE.queue_pairs(runner, "vtnet0") is None
    with pytest.raises(HarnessError, match="virtio device under vtnet0"):
        PROFILE.interrupt_counts(runner, "vtnet0")
