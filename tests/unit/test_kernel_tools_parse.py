"""Linux host tools: kernel pktgen /proc results and netsniff-ng trafgen counters.

tests/fixtures/linux-tools/ holds the three real kernel pktgen outputs from
/work/shared/data/linux-tools/, copied unaltered; expected values were read by
hand from them. No real trafgen transcript exists: every trafgen test is named
`*_source_only` and builds its text from trafgen.c's printf formats as quoted
in linux-tools/NOTES.md section 4. They are not real output.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.pktgen_parse import parse_kernel_pktgen, parse_pktgen_params, parse_trafgen

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "linux-tools"
DOCS = "sample-01-kernel-pktgen-proc-output-kernel-docs.txt"
IMIX = "sample-02-kernel-pktgen-imix-result-netdev-2021.txt"
WIKI = "sample-03-kernel-pktgen-lf-wiki-old-kernel.txt"


def text_of(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_fixtures_are_covered_and_keep_their_header() -> None:
    assert {p.name for p in FIXTURES.glob("*.txt")} == {DOCS, IMIX, WIKI}
    for name in (DOCS, IMIX, WIKI):
        assert text_of(name).startswith("# SOURCE: ")


# ------------------------------------------------------------ kernel pktgen


def test_kernel_docs_result_indented_block() -> None:
    # Result: OK: 15430(c15405+d25) usec, 100000 (60byte,0frags)
    #   6480562pps 3110Mb/sec (3110669760bps) errors: 0
    r = parse_kernel_pktgen(text_of(DOCS))
    assert r is not None
    assert r.state == "ok"
    assert (r.elapsed_usec, r.busy_usec, r.idle_usec) == (15430, 15405, 25)
    assert (r.packets, r.frame_bytes, r.frags) == (100000, 60, 0)
    assert (r.pps, r.mbps, r.bps, r.errors) == (6480562, 3110, 3110669760, 0)


def test_imix_result() -> None:
    # Result: OK: 17992362(c17964678+d27684) usec, 200000 (859byte,0frags)
    #   11115pps 47Mb/sec (47977140bps) errors: 0
    r = parse_kernel_pktgen(text_of(IMIX))
    assert r is not None
    assert r.state == "ok"
    assert (r.elapsed_usec, r.busy_usec, r.idle_usec) == (17992362, 17964678, 27684)
    assert (r.packets, r.frame_bytes, r.frags) == (200000, 859, 0)
    assert (r.pps, r.mbps, r.bps, r.errors) == (11115, 47, 47977140, 0)


def test_old_kernel_result_with_errors() -> None:
    # Result: OK: 13101142(c12220741+d880401) usec, 10000000 (60byte,0frags)
    #   763292pps 390Mb/sec (390805504bps) errors: 39664
    r = parse_kernel_pktgen(text_of(WIKI))
    assert r is not None
    assert r.state == "ok"
    assert (r.elapsed_usec, r.busy_usec, r.idle_usec) == (13101142, 12220741, 880401)
    assert (r.packets, r.frame_bytes, r.frags) == (10000000, 60, 0)
    assert (r.pps, r.mbps, r.bps, r.errors) == (763292, 390, 390805504, 39664)


def test_thread_file_command_result_from_kernel_docs() -> None:
    """The real kpktgend_0 part of the docs sample (before its "[...]"): a write result, not a run."""
    head = text_of(DOCS).split("[...]")[0]
    r = parse_kernel_pktgen(head)
    assert r is not None
    assert r.state == "command"
    assert r.message == "OK: add_device=eth4@0"
    assert r.packets is None


def test_idle_source_only() -> None:
    """`Result: Idle` before any run: from the kernel's pktgen_if_show() (no sample collected)."""
    r = parse_kernel_pktgen("Params: count 1000  min_pkt_size: 60  max_pkt_size: 60\nResult: Idle\n")
    assert r is not None
    assert (r.state, r.message, r.packets) == ("idle", "Idle", None)


def test_rejected_write_source_only() -> None:
    """A rejected write: `No such parameter "%s"` from the kernel's pktgen_if_write() (no sample collected)."""
    r = parse_kernel_pktgen('Result: No such parameter "frobnicate"\n')
    assert r is not None
    assert r.state == "error"
    assert r.message == 'No such parameter "frobnicate"'


def test_no_skb_frags_minus_one_source_only() -> None:
    """show_results() prints nr_frags = -1 when no skb was built; line built from its format."""
    text = "Result: OK: 10(c10+d0) usec, 0 (60byte,-1frags)\n  0pps 0Mb/sec (0bps) errors: 0\n"
    r = parse_kernel_pktgen(text)
    assert r is not None
    assert (r.state, r.packets, r.frags) == ("ok", 0, -1)


def test_no_result_line() -> None:
    assert parse_kernel_pktgen("") is None
    assert parse_kernel_pktgen("Running:\n Stopped: eth4@0\n") is None


def test_params_kernel_docs() -> None:
    params = parse_pktgen_params(text_of(DOCS))
    assert params["count"] == "100000"
    assert (params["min_pkt_size"], params["max_pkt_size"]) == ("60", "60")
    assert params["ifname"] == "eth4@0"
    assert params["dst_min"] == "192.168.81.2"
    assert params["dst_max"] == ""
    assert (params["src_min"], params["src_max"]) == ("", "")
    assert params["dst_mac"] == "00:1b:21:3c:9d:f8"
    assert params["Flags"] == "UDPSRC_RND NO_TIMESTAMP QUEUE_MAP_CPU"
    assert (params["pkts-sofar"], params["errors"]) == ("100000", "0")
    assert params["started"] == "623913381008us"
    assert params["cur_udp_src"] == "42"
    assert "Result" not in params and "add_device" not in str(params)


def test_params_old_kernel() -> None:
    params = parse_pktgen_params(text_of(WIKI))
    assert params["count"] == "10000000"
    assert params["clone_skb"] == "1000000"
    assert (params["dst_min"], params["dst_max"]) == ("", "")
    assert (params["pkts-sofar"], params["errors"]) == ("10000000", "39664")
    assert params["cur_saddr"] == "0x10a0a0a"
    assert "Name" not in params  # the kpktgend_0 part before Params is not the device's


def test_params_absent() -> None:
    assert parse_pktgen_params(text_of(IMIX)) == {}


# ------------------------------------------------------------------ trafgen


def printf(fmt: str, *args: object) -> str:
    """C printf for integer conversions, so trafgen.c's format strings can be pasted unchanged."""
    return re.sub(r"%(\d*)(?:ll|l|z)?[ud]", r"%\1d", fmt) % args


def trafgen_text(cpus: list[tuple[int, int, int | None]], packets: int, nbytes: int) -> str:
    """Built from trafgen.c's printf formats (linux-tools/NOTES.md section 4); NOT a real transcript."""
    text = printf("%6zu packets to schedule\n", 3)
    text += printf("%6zu bytes in total\n", 180)
    text += "Running! Hang up with ^C!\n\n"
    text += "\n"
    text += printf("\r%12llu packets outgoing\n", packets)
    text += printf("\r%12llu bytes outgoing\n", nbytes)
    for cpu, (sec, usec, pkts) in enumerate(cpus):
        if pkts is None:  # releases before the per-CPU packet count
            text += printf("\r%12lu sec, %lu usec on CPU%d\n", sec, usec, cpu)
        else:
            text += printf("\r%12lu sec, %lu usec on CPU%d (%llu packets)\n", sec, usec, cpu, pkts)
    return text


def test_trafgen_counters_source_only() -> None:
    """Format known from source only: two workers with per-CPU packet counts."""
    r = parse_trafgen(trafgen_text([(1, 250, 600), (1, 7, 400)], packets=1000, nbytes=60000))
    assert r is not None
    assert (r.packets, r.bytes) == (1000, 60000)
    assert (r.scheduled_packets, r.scheduled_bytes) == (3, 180)
    assert [(c.cpu, c.sec, c.usec, c.packets) for c in r.cpus] == [(0, 1, 250, 600), (1, 1, 7, 400)]
    assert r.cpus[0].seconds == pytest.approx(1.00025)


def test_trafgen_old_per_cpu_lines_source_only() -> None:
    """Format known from source only: older trafgen.c printed no "(N packets)" per CPU."""
    r = parse_trafgen(trafgen_text([(2, 500000, None)], packets=5, nbytes=300))
    assert r is not None
    assert [(c.cpu, c.sec, c.usec, c.packets) for c in r.cpus] == [(0, 2, 500000, None)]


def test_trafgen_through_a_pty_source_only() -> None:
    """Format known from source only; a pty turns each \\n into \\r\\n after the leading \\r."""
    text = trafgen_text([(1, 250, 1000)], packets=1000, nbytes=64000).replace("\n", "\r\n")
    r = parse_trafgen(text)
    assert r is not None
    assert (r.packets, r.bytes, len(r.cpus)) == (1000, 64000, 1)


def test_trafgen_before_the_end_source_only() -> None:
    """Format known from source only: only the pre-send lines so far."""
    assert parse_trafgen("     3 packets to schedule\n   180 bytes in total\nRunning! Hang up with ^C!\n\n") is None
