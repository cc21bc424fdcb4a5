"""netmap bridge: the `Ready to go` ring layout line and the argv builder.

tests/fixtures/bridge/ holds the two real transcripts from
/work/shared/data/bridge/samples/, copied unaltered; the expected values were
read by hand from them. No real vtnet transcript exists: the vtnet line below
is derived from bridge.c's format string (bridge/NOTES.md) and says so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.pktgen_parse import BridgeReady, bridge_argv, host_port, parse_bridge_ready

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "bridge"


def ready_of(name: str) -> BridgeReady:
    ready = parse_bridge_ready((FIXTURES / name).read_text())
    assert ready is not None
    return ready


def test_fixtures_are_covered_and_keep_their_header() -> None:
    names = {p.name for p in FIXTURES.glob("*.txt")}
    assert names == {
        "01-linux-vmxnet3-two-ports-nozerocopy-2022.txt",
        "02-linux-ixgbe-single-port-host-rings-2017.txt",
    }
    for name in names:
        assert (FIXTURES / name).read_text().startswith("# SOURCE: ")


def test_01_two_ports_without_zerocopy() -> None:
    # "Ready to go, ens192 0x0/8 <-> ens224 0x0/8." after "------- zerocopy NOT supported"
    ready = ready_of("01-linux-vmxnet3-two-ports-nozerocopy-2022.txt")
    assert (ready.a_port, ready.a_first_ring, ready.a_rings) == ("ens192", 0, 8)
    assert (ready.b_port, ready.b_first_ring, ready.b_rings) == ("ens224", 0, 8)
    assert ready.zerocopy is False
    assert ready.same_interface is False
    assert ready.is_host_rings_layout is False


def test_02_single_port_host_rings_to_hardware_rings() -> None:
    # "same interface, endpoint 0 goes to host", "------- zerocopy supported",
    # "Ready to go, enp3s0 0x8/8 <-> enp3s0 0x0/8."
    ready = ready_of("02-linux-ixgbe-single-port-host-rings-2017.txt")
    assert (ready.a_port, ready.a_first_ring, ready.a_rings) == ("enp3s0", 8, 8)
    assert (ready.b_port, ready.b_first_ring, ready.b_rings) == ("enp3s0", 0, 8)
    assert ready.zerocopy is True
    assert ready.same_interface is True
    assert ready.is_host_rings_layout is True


def test_02_before_ready_line_gives_none() -> None:
    """The real log cut just before "Ready to go": bridge is still waiting for the link."""
    lines = (FIXTURES / "02-linux-ixgbe-single-port-host-rings-2017.txt").read_text().splitlines()
    cut = [i for i, line in enumerate(lines) if "Ready to go" in line][0]
    assert parse_bridge_ready("\n".join(lines[:cut])) is None


def test_single_queue_vtnet_layout_derived_from_format() -> None:
    """Derived from the format string "Ready to go, %s 0x%x/%d <-> %s 0x%x/%d." (no real vtnet sample)."""
    ready = parse_bridge_ready("123.456789 main [305] Ready to go, vtnet0 0x1/1 <-> vtnet0 0x0/1.")
    assert ready is not None
    assert (ready.a_first_ring, ready.a_rings, ready.b_first_ring, ready.b_rings) == (1, 1, 0, 1)
    assert ready.is_host_rings_layout is True
    assert ready.zerocopy is None  # its line was not in the text


def test_first_ring_is_hex_derived_from_format() -> None:
    """Derived from the format: 32 hardware rings print the host ring index as 0x20."""
    ready = parse_bridge_ready("Ready to go, ix0 0x20/32 <-> ix0 0x0/32.")
    assert ready is not None
    assert ready.a_first_ring == 32
    assert ready.is_host_rings_layout is True


def test_layout_with_wrong_host_ring_is_not_host_rings_derived_from_format() -> None:
    """Derived from the format: same port but endpoint 0 on hardware ring 0 (e.g. -L loopback)."""
    ready = parse_bridge_ready("Ready to go, vtnet0 0x0/1 <-> vtnet0 0x0/1.")
    assert ready is not None
    assert ready.is_host_rings_layout is False


def test_no_bridge_output_gives_none() -> None:
    assert parse_bridge_ready("") is None
    assert parse_bridge_ready("cannot open netmap:vtnet0\n") is None


# ------------------------------------------------------------------- argv


def test_bridge_argv_default_is_guest_single_port() -> None:
    assert bridge_argv() == ["bridge", "-w0", "-i", "netmap:vtnet0"]


def test_bridge_argv_host_tap_uses_netmap_prefix() -> None:
    assert bridge_argv(host_port("tap0"), wait=2) == ["bridge", "-w2", "-i", "netmap:tap0"]


def test_bridge_argv_two_ports_and_options() -> None:
    argv = bridge_argv("netmap:vtnet0", 4, port2="netmap:vtnet0^", burst=512, zerocopy=False, verbose=2)
    assert argv == ["bridge", "-w4", "-i", "netmap:vtnet0", "-i", "netmap:vtnet0^", "-b", "512", "-c", "-v", "-v"]


def test_bridge_argv_loopback() -> None:
    assert bridge_argv("netmap:vtnet0", loopback=True)[-1] == "-L"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"wait": -1},
        {"wait": 101},
        {"burst": 0},
        {"burst": 8193},
        {"verbose": 3},
        {"port": "tap0"},
        {"port": "vtnet0"},
        {"port": ""},
        {"port2": "tap1"},
        {"port2": "netmap:vtnet1", "loopback": True},
    ],
)
def test_bridge_argv_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        bridge_argv(**kwargs)  # type: ignore[arg-type]
