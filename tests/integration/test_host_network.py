"""The host network against real namespaces, bridges and TAPs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pyroute2 import IPRoute, netns

from harness import leases
from harness.errors import ConfigError, PhaseTimeout
from harness.host_tap import HostNetwork, netlink_in
from tests.conftest import assert_nothing_left

pytestmark = pytest.mark.netns


def _root_links() -> set[str]:
    with IPRoute() as ipr:
        return {link.get("IFLA_IFNAME") for link in ipr.get_links()}


def _root_addresses() -> set[str]:
    with IPRoute() as ipr:
        return {a.get("IFA_ADDRESS") for a in ipr.get_addr()}


def test_comes_up_in_its_own_namespace_and_goes_away_completely(root_only):
    links_before, addrs_before = _root_links(), _root_addresses()
    net = HostNetwork("t0net1", taps=2, queues=3)
    with net:
        assert net.netns in netns.listnetns()
        assert all(len(name) <= 15 for name in (net.bridge, *net.taps))
        # Nothing appeared in the root namespace, and nothing there got an address.
        assert _root_links() == links_before
        assert _root_addresses() == addrs_before
        with netlink_in(net.netns) as ipr:
            bridge = ipr.link("get", ifname=net.bridge)[0]
            assert bridge.get(("IFLA_LINKINFO", "IFLA_INFO_KIND")) == "bridge"
            addrs = [a.get("IFA_ADDRESS") for a in ipr.get_addr(index=bridge["index"])]
            assert addrs == ["10.0.0.2"]
            for tap in net.taps:
                link = ipr.link("get", ifname=tap)[0]
                assert link.get("IFLA_MASTER") == bridge["index"]
        for index in range(2):
            fds = net.tap_fds(index)
            assert len(fds) == 3
            assert all(os.readlink(f"/proc/self/fd/{fd}") == "/dev/net/tun" for fd in fds)
        flags = net.run(["cat", f"/sys/class/net/{net.taps[0]}/tun_flags"], timeout=5).stdout
        tun_flags = int(flags, 16)
        assert tun_flags & 0x0100 and tun_flags & 0x4000  # IFF_MULTI_QUEUE, IFF_VNET_HDR
        assert net.counters(net.taps[0]).rx_packets == 0
        assert leases.Lease("netns", net.netns).path.exists()
    assert net.netns not in netns.listnetns()
    assert not leases.Lease("netns", net.netns).path.exists()
    assert_nothing_left("t0net1")
    net.close()  # idempotent


def test_counters_follow_real_traffic(root_only):
    with HostNetwork("t0net2") as net:
        before = net.counters(net.bridge)
        # ARP for an absent neighbour leaves through the bridge: real packets.
        net.run(["ping", "-c", "3", "-i", "0.2", "-W", "1", "10.0.0.99"], timeout=15, check=False)
        after = net.counters(net.bridge)
        assert (after - before).tx_packets >= 3


def test_link_up_returns_once_the_bridge_forwards_on_the_port(root_only):
    with HostNetwork("t0net4") as net:
        tap = net.taps[0]
        assert net.port_forwarding(tap)
        net.link_state(tap, up=False)
        assert not net.port_forwarding(tap)
        # A bridge that is down never enables its ports: waiting for the port
        # times out, naming the link, instead of returning early.
        net.link_state(net.bridge, up=False)
        with pytest.raises(PhaseTimeout, match=f"link {tap} up"):
            net.link_state(tap, up=True, timeout=1)
        net.link_state(net.bridge, up=True)
        net.link_state(tap, up=False)
        net.link_state(tap, up=True)
        assert net.port_forwarding(tap)


def test_offloads_switch_and_read_back(root_only):
    with HostNetwork("t0net3") as net:
        states = net.set_offloads(net.taps[0], tx=False, gso=False)
        assert states["tx"] is False and states["gso"] is False
        states = net.set_offloads(net.taps[0], gso=True)
        assert states["gso"] is True


def test_sweeps_namespace_of_dead_owner(root_only):
    # A child makes a network and is SIGKILLed: its namespace and lease stay.
    code = ("import os, signal; from harness.host_tap import HostNetwork; "
            "n = HostNetwork('t0dead1'); n.open(); print('up', flush=True); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "up" and proc.returncode == -9
    assert "hns-t0dead1" in netns.listnetns()
    assert leases.Lease("netns", "hns-t0dead1").path.exists()
    # The next run sweeps it away when it starts.
    with HostNetwork("t0next1"):
        assert "hns-t0dead1" not in netns.listnetns()
    assert_nothing_left("t0dead1")


def test_orphan_namespace_without_lease_is_swept(root_only):
    subprocess.run(["ip", "netns", "add", "hns-t0orph1"], check=True)
    removed = leases.sweep()
    assert "netns hns-t0orph1 (no lease)" in removed
    assert "hns-t0orph1" not in netns.listnetns()


@pytest.mark.parametrize("queues", [0, -1, "2"])
def test_bad_queue_count_is_refused_before_anything_is_made(queues):
    before = set(netns.listnetns()) if os.geteuid() == 0 else set()
    with pytest.raises(ConfigError, match="queues"):
        HostNetwork("t0bad1", queues=queues)  # type: ignore[arg-type]
    if os.geteuid() == 0:
        assert set(netns.listnetns()) == before
