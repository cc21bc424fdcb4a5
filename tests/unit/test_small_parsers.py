"""ping, ethtool, sysfs and /proc/interrupts parsers."""

from __future__ import annotations

import pytest

from harness import ethtool
from harness.errors import HarnessError
from harness.guests.linux import parse_proc_interrupts, parse_sysfs_counters, parse_virtio_feature_string
from harness.ping import parse_ping

# Captured from iputils ping 20221126 in this project's host namespace
# (Debian 12), pinging the Debian guest.
PING = """PING 10.0.0.1 (10.0.0.1) 56(84) bytes of data.
64 bytes from 10.0.0.1: icmp_seq=1 ttl=64 time=2.93 ms
64 bytes from 10.0.0.1: icmp_seq=2 ttl=64 time=0.571 ms
64 bytes from 10.0.0.1: icmp_seq=3 ttl=64 time=0.630 ms

--- 10.0.0.1 ping statistics ---
3 packets transmitted, 3 received, 0% packet loss, time 403ms
rtt min/avg/max/mdev = 0.571/1.375/2.926/1.096 ms
"""


def test_ping_summary():
    stats = parse_ping(PING)
    assert (stats.transmitted, stats.received, stats.loss_percent) == (3, 3, 0.0)
    assert (stats.rtt_min_ms, stats.rtt_avg_ms, stats.rtt_max_ms, stats.rtt_mdev_ms) == (0.571, 1.375, 2.926, 1.096)


def test_ping_with_loss_and_errors_and_no_rtt():
    stats = parse_ping("5 packets transmitted, 0 received, +5 errors, 100% packet loss, time 4080ms\n")
    assert (stats.received, stats.loss_percent, stats.rtt_avg_ms) == (0, 100.0, None)
    with pytest.raises(HarnessError):
        parse_ping("ping: connect: Network is unreachable\n")


# Real outputs captured from the Debian 12 guest (kernel 6.1.0-50-cloud-amd64,
# ethtool 6.1) by this project, with `harness boot --command`.
ETHTOOL = """Features for eth0:
rx-checksumming: on [fixed]
tx-checksumming: on
\ttx-checksum-ipv4: off [fixed]
\ttx-checksum-ip-generic: on
\ttx-checksum-ipv6: off [fixed]
\ttx-checksum-fcoe-crc: off [fixed]
\ttx-checksum-sctp: off [fixed]
scatter-gather: on
\ttx-scatter-gather: on
\ttx-scatter-gather-fraglist: off [fixed]
tcp-segmentation-offload: on
"""
INTERRUPTS = """ 24:          0          0   PCI-MSI 81920-edge      virtio2-config
 25:        208          0   PCI-MSI 81921-edge      virtio2-req.0
 26:          0        232   PCI-MSI 81922-edge      virtio2-req.1
 27:          0          0   PCI-MSI 49152-edge      virtio0-config
 28:          1          0   PCI-MSI 49153-edge      virtio0-input.0
 29:          0          0   PCI-MSI 49154-edge      virtio0-output.0
 30:          0          0   PCI-MSI 65536-edge      virtio1-config
 31:          0         25   PCI-MSI 65537-edge      virtio1-input.0
 32:         23          0   PCI-MSI 65538-edge      virtio1-output.0
"""
FEATURES = "1110010111111111111101010000110010000000100000000000000000000000"


def test_ethtool_features():
    features = ethtool.parse_features(ETHTOOL)
    # virtio_net's receive checksumming is fixed on: the guest cannot switch it off.
    assert features["rx"] == {"on": True, "fixed": True}
    assert features["tx-checksum-ip-generic"] == {"on": True, "fixed": False}
    assert features["tx-checksum-sctp"] == {"on": False, "fixed": True}
    assert ethtool.offload_states(ETHTOOL) == {"rx": True, "tx": True, "sg": True, "tso": True}


def test_sysfs_counters():
    text = ("rx_packets:12\nrx_bytes:1500\nrx_dropped:1\nrx_errors:0\n"
            "tx_packets:10\ntx_bytes:900\ntx_dropped:0\ntx_errors:2\n")
    counters = parse_sysfs_counters(text)
    assert (counters.rx_packets, counters.rx_dropped, counters.tx_bytes, counters.tx_errors) == (12, 1, 900, 2)
    with pytest.raises(HarnessError, match="missing"):
        parse_sysfs_counters("rx_packets:12\n")


def test_virtio_feature_string_is_bit_zero_first():
    features = parse_virtio_feature_string(FEATURES)
    # Read by hand: 1s at positions 0,1,2,5,7-19,21,23,28,29,32,40.
    for bit in (0, 1, 2, 5, 7, 15, 17, 19, 21, 23, 28, 29, 32, 40):
        assert features.bits >> bit & 1, bit
    for bit in (3, 4, 6, 20, 22, 24, 33):
        assert not features.bits >> bit & 1, bit
    assert {"CSUM", "GUEST_CSUM", "MRG_RXBUF", "CTRL_VQ", "RING_EVENT_IDX", "VERSION_1"} <= set(features.names)
    assert "MQ" not in features.names  # bit 22 is off: QEMU was not given mq=on


def test_proc_interrupts_sums_cpus_per_vector():
    counts = parse_proc_interrupts(INTERRUPTS)
    assert counts["virtio2-req.0"] == 208 and counts["virtio2-req.1"] == 232
    assert counts["virtio1-input.0"] == 25 and counts["virtio1-output.0"] == 23
    assert len(counts) == 9


def test_effective_offloads_follow_the_negotiated_features():
    from harness.guests.linux import effective_offloads

    states = {"rx": True, "tx": False, "sg": False, "tso": False, "gso": False, "gro": False}
    # Captured from the Debian guest booted with csum=off,guest_csum=off,...: GUEST_CSUM (bit 1) is off.
    no_csum = parse_virtio_feature_string("0010010000000001111101010000110010000000100000000000000000000000")
    assert "GUEST_CSUM" not in no_csum.names
    assert effective_offloads(states, no_csum)["rx"] is False
    assert effective_offloads(states, parse_virtio_feature_string(FEATURES))["rx"] is True
    assert effective_offloads(states, None) == states
