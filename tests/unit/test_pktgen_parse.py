"""pkt-gen output parser, JSON shape, CLI and command builder.

The fixtures in tests/fixtures/pktgen/ are real transcripts, copied unaltered
from /work/shared/data/pktgen/samples/ (provenance header on line 1). Every
expected number below was read by hand from the fixture file, not taken from
the parser.

No real transcript with a final summary ("Sent ... packets ...") or with -A
exists in the samples: the tests for those are named `*_source_only` and use
lines built from the format strings quoted in FORMAT-NOTES.md sections 3-4.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.pktgen_parse import (
    FORMAT_2015,
    FORMAT_CURRENT,
    FORMAT_PRE_2015,
    FORMAT_UNKNOWN,
    Interval,
    PktgenRun,
    host_port,
    parse_pktgen,
    pktgen_argv,
    to_json,
)

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "pktgen"


def run_of(name: str) -> PktgenRun:
    return parse_pktgen((FIXTURES / name).read_text())


def first_last(run: PktgenRun) -> tuple[Interval, Interval]:
    return run.intervals[0], run.intervals[-1]


def test_every_fixture_is_covered_by_a_test() -> None:
    """A sample added to the folder without a test here should fail loudly."""
    tested = {
        "01-linux-ixgbe-tx-2015-old-format.txt",
        "02-linux-rx-2015-avg_batch-no-min_space.txt",
        "03-linux-rx-verbose-idle-2015.txt",
        "04-linux-rx-waiting-for-packets-2015.txt",
        "05-linux-rx-multithread-2015.txt",
        "06-linux-tx-bad-nthreads-special-options-2015.txt",
        "07-linux-generic-adapter-tx-rate-limited-2016.txt",
        "08-linux-tx-Kpps-2017.txt",
        "09-linux-rx-low-rate-bps-Kbps-2017.txt",
        "10-linux-rx-Kpps-Gbps-2017.txt",
        "13-freebsd12-em0-tx-stuck-pending-nonnormalized-2018.txt",
        "14-linux-mlx5-rx-startup-2019.txt",
        "15-linux-tx-Mpps-libnetmap-era-2020.txt",
        "18-freebsd-igb-emulated-rx-4threads-2020.txt",
        "19-freebsd11-ixgbe-tx-rate-multithread-2019.txt",
        "20-linux-veth-tx-startup-2015.txt",
    }
    assert {p.name for p in FIXTURES.glob("*.txt")} == tested


def test_fixtures_keep_their_provenance_header() -> None:
    for path in FIXTURES.glob("*.txt"):
        assert path.read_text().startswith("# SOURCE: "), path.name


# ---------------------------------------------------------------- rate lines


def test_01_pre_2015_integer_format() -> None:
    run = run_of("01-linux-ixgbe-tx-2015-old-format.txt")
    assert run.direction == "tx"
    assert run.format == FORMAT_PRE_2015
    assert (run.port, run.queues, run.threads) == ("netmap:data0", 16, 1)
    assert len(run.intervals) == 2
    first, last = first_last(run)
    assert (first.pps, first.pkts, first.usec) == (12985190, 12998292, 1001009)
    assert (last.pps, last.pkts, last.usec) == (13327892, 13341580, 1001027)
    assert math.isnan(first.bps)  # the old format has no byte count
    assert first.avg_batch is None and first.min_space is None
    assert run.summary is None


def test_02_mid_2015_avg_batch_without_min_space() -> None:
    run = run_of("02-linux-rx-2015-avg_batch-no-min_space.txt")
    assert run.direction == "rx"
    assert run.format == FORMAT_2015
    assert (run.port, run.queues, run.threads) == ("netmap:eth7", 1, 1)
    assert len(run.intervals) == 8
    first, last = first_last(run)
    # 33.000 pps (33.000 pkts 369.600 Kbps in 1001053 usec) 3.00 avg_batch
    assert (first.pps, first.pkts, first.bps, first.usec) == (33.0, 33, 369_600.0, 1001053)
    assert first.avg_batch == 3.0
    assert first.min_space is None
    # 10.000 pps (10.000 pkts 112.000 Kbps in 1001080 usec) 1.00 avg_batch
    assert (last.pps, last.pkts, last.bps, last.usec) == (10.0, 10, 112_000.0, 1001080)
    assert last.avg_batch == 1.0
    assert run.warnings == []


def test_03_verbose_idle_rx() -> None:
    run = run_of("03-linux-rx-verbose-idle-2015.txt")
    assert run.direction == "rx"
    assert run.format == FORMAT_2015
    assert len(run.intervals) == 1
    only = run.intervals[0]
    assert (only.pps, only.pkts, only.bps, only.usec, only.avg_batch) == (0.0, 0, 0.0, 1001110, 0.0)
    assert run.summary is None


def test_04_rate_lines_interleaved_with_waiting_for_initial_packets() -> None:
    run = run_of("04-linux-rx-waiting-for-packets-2015.txt")
    assert run.direction == "rx"
    assert run.format == FORMAT_2015
    assert (run.port, run.queues) == ("netmap:eno2", 4)
    assert len(run.intervals) == 3
    first, last = first_last(run)
    assert (first.pps, first.pkts, first.usec) == (0.0, 0, 1001009)
    assert (last.pps, last.pkts, last.usec) == (0.0, 0, 1001076)
    assert run.warnings == []


def test_07_rate_limited_generic_adapter_zero_rate_and_poll_timeouts() -> None:
    run = run_of("07-linux-generic-adapter-tx-rate-limited-2016.txt")
    assert run.direction == "tx"
    assert run.format == FORMAT_CURRENT
    assert len(run.intervals) == 5
    first, last = first_last(run)
    assert (first.pps, first.pkts, first.bps, first.usec, first.min_space) == (0.0, 0, 0.0, 1000545, 0)
    assert (last.pps, last.pkts, last.usec, last.min_space) == (0.0, 0, 1001154, 99999)
    # printed twice in the log, reported once
    assert run.warnings == ["poll error/timeout on queue 0: Success"]


def test_08_kpps_mbps_and_drop_copy() -> None:
    run = run_of("08-linux-tx-Kpps-2017.txt")
    assert run.direction == "tx"
    assert run.format == FORMAT_CURRENT
    assert (run.port, run.queues, run.threads) == ("netmap:enp2s0", 1, 1)
    assert len(run.intervals) == 4
    first, last = first_last(run)
    # 907.878 Kpps (908.221 Kpkts 435.946 Mbps in 1000378 usec) 226.66 avg_batch 0 min_space
    assert (first.pps, first.pkts, first.bps, first.usec) == (907_878.0, 908_221, 435_946_000.0, 1000378)
    assert (first.avg_batch, first.min_space) == (226.66, 0)
    # 909.648 Kpps (910.603 Kpkts 437.089 Mbps in 1001050 usec) 226.80 avg_batch 99999 min_space
    assert (last.pps, last.pkts, last.bps, last.usec) == (909_648.0, 910_603, 437_089_000.0, 1001050)
    assert (last.avg_batch, last.min_space) == (226.80, 99999)
    assert run.warnings == []


def test_09_unitless_and_kbps_figures_at_low_rate() -> None:
    run = run_of("09-linux-rx-low-rate-bps-Kbps-2017.txt")
    assert run.direction == "rx"
    assert run.format == FORMAT_CURRENT
    assert len(run.intervals) == 6
    first, last = first_last(run)
    # 25.000 pps (25.000 pkts 19.648 Kbps in 1000882 usec) 12.50 avg_batch 0 min_space
    assert (first.pps, first.pkts, first.bps, first.usec) == (25.0, 25, 19_648.0, 1000882)
    assert (first.avg_batch, first.min_space) == (12.5, 0)
    # 2.000 pps (2.000 pkts 2.200 Kbps in 1001012 usec) 1.00 avg_batch 0 min_space
    assert (last.pps, last.pkts, last.bps, last.usec) == (2.0, 2, 2_200.0, 1001012)
    # 4th line: 1.000 pps (1.000 pkts 480.000 bps in 1000992 usec) 1.00 avg_batch 255 min_space
    fourth = run.intervals[3]
    assert (fourth.pps, fourth.pkts, fourth.bps, fourth.usec, fourth.min_space) == (1.0, 1, 480.0, 1000992, 255)


def test_10_kpps_gbps_after_user_elision() -> None:
    run = run_of("10-linux-rx-Kpps-Gbps-2017.txt")
    assert run.direction == "rx"
    assert (run.port, run.queues, run.threads) == ("netmap:enp7s0f0", 8, 1)
    assert len(run.intervals) == 1
    only = run.intervals[0]
    # 608.851 Kpps (609.448 Kpkts 6.826 Gbps in 1000980 usec) 2.83 avg_batch 492 min_space
    assert (only.pps, only.pkts, only.bps, only.usec) == (608_851.0, 609_448, 6_826_000_000.0, 1000980)
    assert (only.avg_batch, only.min_space) == (2.83, 492)


def test_13_unnormalised_rate_lines_and_pending_tx_flood() -> None:
    run = run_of("13-freebsd12-em0-tx-stuck-pending-nonnormalized-2018.txt")
    # the excerpt starts after the startup lines: nothing says tx or rx
    assert run.direction is None
    assert run.format == FORMAT_CURRENT
    assert len(run.intervals) == 2
    first, last = first_last(run)
    # 0 pps (0 pkts 0 bps in 1020567 usec) 0.00 avg_batch 99999 min_space
    assert (first.pps, first.pkts, first.bps, first.usec, first.min_space) == (0.0, 0, 0.0, 1020567, 99999)
    assert (last.pps, last.pkts, last.usec) == (0.0, 0, 1005933)
    # ten identical RD() lines, reported once
    assert run.warnings == ["pending tx tail 446 head 448 on ring 0"]


def test_15_mpps_gbps_and_user_trimmed_timestamp() -> None:
    path = FIXTURES / "15-linux-tx-Mpps-libnetmap-era-2020.txt"
    run = parse_pktgen(path.read_text())
    assert run.direction == "tx"
    assert run.format == FORMAT_CURRENT
    assert (run.port, run.queues, run.threads) == ("netmap:enp60s0", 2, 1)
    assert len(run.intervals) == 2
    first, last = first_last(run)
    # 6.728 Mpps (6.735 Mpkts 3.229 Gbps in 1001031 usec) 512.00 avg_batch 0 min_space
    assert (first.pps, first.pkts, first.bps, first.usec) == (6_728_000.0, 6_735_000, 3_229_000_000.0, 1001031)
    assert (first.avg_batch, first.min_space) == (512.0, 0)
    # 6.949 Mpps (6.956 Mpkts 3.335 Gbps in 1001051 usec) 512.00 avg_batch 99999 min_space
    assert (last.pps, last.pkts, last.bps, last.usec) == (6_949_000.0, 6_956_000, 3_335_000_000.0, 1001051)
    assert last.min_space == 99999
    # line 2 of the file, "46.055820 main [2916] interface is enp60s0", lost a digit when pasted
    trimmed = path.read_text().splitlines()[1]
    assert trimmed.startswith("46.055820 main [2916] ")
    assert parse_pktgen(trimmed).pktgen_lines == 1


# ------------------------------------------------------- startup-only samples


@pytest.mark.parametrize(
    ("name", "direction", "port", "queues", "threads"),
    [
        ("05-linux-rx-multithread-2015.txt", "rx", "netmap:eth4", 4, 4),
        ("06-linux-tx-bad-nthreads-special-options-2015.txt", "tx", "netmap:eth6", 4, 8),
        ("18-freebsd-igb-emulated-rx-4threads-2020.txt", "rx", "netmap:igb1", 4, 4),
        ("19-freebsd11-ixgbe-tx-rate-multithread-2019.txt", "tx", "netmap:orange", 8, 8),
        ("20-linux-veth-tx-startup-2015.txt", "tx", "netmap:eth0", 1, 1),
    ],
)
def test_startup_only_samples(name: str, direction: str, port: str, queues: int, threads: int) -> None:
    run = run_of(name)
    assert run.direction == direction
    assert (run.port, run.queues, run.threads) == (port, queues, threads)
    assert run.intervals == []
    assert run.summary is None
    assert run.format == FORMAT_UNKNOWN
    assert run.pktgen_lines > 0


def test_06_bad_nthreads_is_a_warning_and_patched_build_lines_are_ignored() -> None:
    run = run_of("06-linux-tx-bad-nthreads-special-options-2015.txt")
    assert run.warnings == ["bad nthreads 8, have 4 queues"]


def test_14_startup_without_direction_line_is_still_pktgen_output() -> None:
    run = run_of("14-linux-mlx5-rx-startup-2019.txt")
    assert run.direction is None
    assert run.intervals == [] and run.summary is None
    assert run.pktgen_lines > 0


# ------------------------------------------------------ robustness on real logs


def test_crlf_from_a_pty_changes_nothing() -> None:
    text = (FIXTURES / "08-linux-tx-Kpps-2017.txt").read_text()
    assert parse_pktgen(text.replace("\n", "\r\n")) == parse_pktgen(text)


def test_interleaved_kernel_and_console_lines_are_ignored() -> None:
    """Real sample with unrelated lines (made up here) pushed between every line."""
    text = (FIXTURES / "15-linux-tx-Mpps-libnetmap-era-2020.txt").read_text()
    noise = [
        "[  812.123456] netmap: Emulated adapter for tap1 activated",
        "vtnet0: link state changed to UP",
        "root@freebsd:~ # ",
        "",
        "Sent: this is not a pkt-gen summary",
    ]
    noisy = "\n".join(f"{line}\n{noise[i % len(noise)]}" for i, line in enumerate(text.splitlines()))
    assert parse_pktgen(noisy) == parse_pktgen(text)


def test_d_line_glued_after_other_text_on_a_pty() -> None:
    """A real stderr line from sample 07, landing after a prompt that has no newline yet."""
    lines = (FIXTURES / "07-linux-generic-adapter-tx-rate-limited-2016.txt").read_text().splitlines()
    poll = next(line for line in lines if "sender_body [1244] poll error" in line)
    run = parse_pktgen("root@guest:~ # " + poll)
    assert run.warnings == ["poll error/timeout on queue 0: Success"]
    assert run.pktgen_lines == 1


def test_concatenated_logs_of_two_eras_are_flagged() -> None:
    text = (FIXTURES / "01-linux-ixgbe-tx-2015-old-format.txt").read_text()
    text += (FIXTURES / "08-linux-tx-Kpps-2017.txt").read_text()
    run = parse_pktgen(text)
    assert len(run.intervals) == 2 + 4
    assert run.format == FORMAT_PRE_2015
    assert any(w.startswith("mixed output formats") for w in run.warnings)


def test_text_that_is_not_pktgen_output() -> None:
    run = parse_pktgen("hello\nworld\n")
    assert (run.direction, run.intervals, run.summary, run.pktgen_lines) == (None, [], None, 0)


def test_unparsable_rate_like_line_is_reported() -> None:
    run = parse_pktgen("123.456789 main_thread [2416] 1,000 pps (1,000 pkts in 1000000 usec)\n")
    assert run.intervals == []
    assert any(w.startswith("unrecognised rate-like line") for w in run.warnings)


# ------------------------------------------- formats known from source only


def test_pps_stats_avg_std_block_source_only() -> None:
    """-A: known from source only (no real -A sample); `[avg/std %s/%s pps]` sits before '('."""
    line = (
        "749.057310 main_thread [2666] 6.728 Mpps [avg/std 6.728 M/1.234 K pps]"
        "(6.735 Mpkts 3.229 Gbps in 1001031 usec) 512.00 avg_batch 0 min_space"
    )
    only = parse_pktgen(line).intervals[0]
    assert (only.pps, only.pkts, only.usec) == (6_728_000.0, 6_735_000, 1001031)
    assert (only.avg_pps, only.std_pps) == (6_728_000.0, 1_234.0)


def test_pps_stats_unitless_and_nan_source_only() -> None:
    """-A: known from source only. norm()'s trailing space gives "0.500  pps]" without a unit,
    and the average is 0/0 = NaN (glibc prints -nan) before any non-zero sample."""
    unitless = (
        "25.000 pps [avg/std 25.000 /0.500  pps](25.000 pkts 12.000 Kbps in 1000000 usec) 1.00 avg_batch 7 min_space"
    )
    only = parse_pktgen(unitless).intervals[0]
    assert (only.avg_pps, only.std_pps, only.pkts, only.min_space) == (25.0, 0.5, 25, 7)
    idle = "0.000 pps [avg/std -nan /-nan  pps](0.000 pkts 0.000 bps in 1000000 usec) 0.00 avg_batch 99999 min_space"
    run = parse_pktgen(idle)
    only = run.intervals[0]
    assert only.avg_pps is not None and math.isnan(only.avg_pps)
    data = to_json(run)
    assert data["extra"]["intervals"][0]["avg_pps"] is None
    json.dumps(data, allow_nan=False)


def test_no_normalize_large_exact_integers_source_only() -> None:
    """-N with traffic: built from the "%.0f %s" format (the real -N sample 13 only has zeros)."""
    line = "6728123 pps (6735000 pkts 3229000123 bps in 1001031 usec) 512.00 avg_batch 0 min_space"
    only = parse_pktgen(line).intervals[0]
    assert (only.pps, only.pkts, only.bps, only.usec) == (6_728_123.0, 6_735_000, 3_229_000_123.0, 1001031)


def test_tera_unit_source_only() -> None:
    """T is the last unit norm() scales to; line built from the format string."""
    line = "80.119 Mpps (80.203 Mpkts 1.313 Tbps in 1001040 usec) 511.50 avg_batch 1 min_space"
    only = parse_pktgen(line).intervals[0]
    assert (only.pps, only.pkts, only.bps) == (80_119_000.0, 80_203_000, 1_313_000_000_000.0)


SENT_SHORT = (
    "Sent 1000000 packets 60000000 bytes 1954 events 60 bytes each in 0.15 seconds.\n"
    "Speed: 6.729 Mpps Bandwidth: 3.230 Gbps (raw 3.230 Gbps). Average batch: 511.77 pkts\n"
)


def test_sent_summary_short_run_prefers_printed_speed_source_only() -> None:
    """Final summary: known from source only (the samples have none). For 0.15 s the 2-decimal
    seconds is coarser than the 3-decimal Speed figure, so pps is the printed one."""
    run = parse_pktgen("Sending on netmap:tap0: 1 queues, 1 threads and 1 cpus.\n" + SENT_SHORT)
    s = run.summary
    assert s is not None
    assert (s.packets, s.bytes, s.events, s.frame_bytes, s.seconds) == (1_000_000, 60_000_000, 1954, 60, 0.15)
    assert s.pps == 6_729_000.0
    assert s.speed_pps == 6_729_000.0
    assert (s.bandwidth_bps, s.raw_bps, s.avg_batch) == (3_230_000_000.0, 3_230_000_000.0, 511.77)
    assert run.direction == "tx"
    assert run.warnings == []


def test_sent_summary_long_run_computes_pps_source_only() -> None:
    """Final summary: known from source only. Over 89 s packets/seconds beats the printed Speed."""
    text = (
        "Sent 600000000 packets 36000000000 bytes 1171875 events 60 bytes each in 89.17 seconds.\n"
        "Speed: 6.729 Mpps Bandwidth: 3.230 Gbps (raw 3.230 Gbps). Average batch: 512.00 pkts\n"
    )
    s = parse_pktgen(text).summary
    assert s is not None
    assert s.pps == pytest.approx(600_000_000 / 89.17)
    assert s.speed_pps == 6_729_000.0


def test_received_summary_source_only() -> None:
    """Final rx summary: known from source only; the direction comes from the word "Received"."""
    text = (
        "Received 5000 packets 300000 bytes 4990 events 60 bytes each in 10.01 seconds.\n"
        "Speed: 499.500 pps Bandwidth: 239.760 Kbps (raw 239.760 Kbps). Average batch: 1.00 pkts\n"
    )
    run = parse_pktgen(text)
    assert run.direction == "rx"
    s = run.summary
    assert s is not None
    assert (s.packets, s.bytes, s.events, s.frame_bytes, s.seconds) == (5000, 300_000, 4990, 60, 10.01)
    assert s.pps == 499.5
    assert s.bandwidth_bps == 239_760.0


def test_summary_with_prefixed_and_indented_speed_line_source_only() -> None:
    """Known from source only: a Speed line glued after other text (pty interleaving) still counts."""
    text = SENT_SHORT.replace("Speed:", "\t  #Speed:")
    s = parse_pktgen(text).summary
    assert s is not None and s.speed_pps == 6_729_000.0


def test_summary_without_speed_line_warns_source_only() -> None:
    """Known from source only: the log was cut after the first summary line."""
    run = parse_pktgen(SENT_SHORT.splitlines()[0])
    assert run.summary is not None
    assert run.summary.pps == pytest.approx(1_000_000 / 0.15)
    assert run.summary.speed_pps is None
    assert any("no 'Speed:' line" in w for w in run.warnings)


@pytest.mark.parametrize(("text", "direction"), [("Sent nothing.\n", "tx"), ("Received nothing.\n", "rx")])
def test_nothing_summaries_source_only(text: str, direction: str) -> None:
    """"%s nothing." (known from source only) is a finished run with zero packets, not a missing summary."""
    run = parse_pktgen(text)
    assert run.direction == direction
    assert run.summary is not None
    assert (run.summary.packets, run.summary.bytes, run.summary.pps) == (0, 0, 0.0)


def test_direction_conflict_is_reported_source_only() -> None:
    """Known from source only: a startup line and a summary that disagree."""
    text = "Sending on netmap:tap0: 1 queues, 1 threads and 1 cpus.\nReceived nothing.\n"
    run = parse_pktgen(text)
    assert run.direction == "tx"
    assert any("summary says rx" in w for w in run.warnings)


def test_ping_pong_working_on_has_no_direction_source_only() -> None:
    """Known from source only: ping/pong print "Working on" and no summary."""
    run = parse_pktgen("Working on netmap:vtnet0: 1 queues, 1 threads and 1 cpus.\n")
    assert run.direction is None
    assert run.port == "netmap:vtnet0"
    assert any("ping/pong" in w for w in run.warnings)


def test_pre_2015_tx_summary_source_only() -> None:
    """Pre-2015 "Sent %llu packets, %d bytes each, in %.2f seconds." (known from source only):
    every frame had the -l size, so bytes = packets * size."""
    text = (
        "Sent 1000000 packets, 60 bytes each, in 0.15 seconds.\n"
        "Speed: 6.73 Mpps Bandwidth: 3.23 Gbps (raw 4.52 Gbps)\n"
    )
    run = parse_pktgen(text)
    assert run.direction == "tx"
    assert run.format == FORMAT_PRE_2015
    s = run.summary
    assert s is not None
    assert (s.packets, s.bytes, s.frame_bytes, s.seconds, s.events) == (1_000_000, 60_000_000, 60, 0.15, None)
    assert s.speed_pps == 6_730_000.0
    assert (s.bandwidth_bps, s.raw_bps) == (3_230_000_000.0, 4_520_000_000.0)


def test_2012_speed_line_with_nul_unit_source_only() -> None:
    """2012 "Speed: %.2f%cpps. Bandwidth: %.2f%cbps." prints a NUL for no unit (known from source only)."""
    text = "Sent 1000 packets, 60 bytes each, in 2.00 seconds.\nSpeed: 500.00\x00pps. Bandwidth: 240.00Kbps.\n"
    s = parse_pktgen(text).summary
    assert s is not None
    assert (s.packets, s.speed_pps, s.bandwidth_bps) == (1000, 500.0, 240_000.0)


def test_pre_2015_rx_summary_is_recognised_but_has_no_bytes_source_only() -> None:
    """Pre-2015 "Received %llu packets, in %.2f seconds." (known from source only) has no byte
    count, so no Summary is made up; the numbers go to a warning."""
    run = parse_pktgen("Received 1000 packets, in 2.00 seconds.\nSpeed: 500.00 pps\n")
    assert run.direction == "rx"
    assert run.format == FORMAT_PRE_2015
    assert run.summary is None
    assert any("1000 packets in 2.00 seconds" in w for w in run.warnings)


# ----------------------------------------------------------------- to_json


def test_to_json_shape_on_a_real_sample() -> None:
    data = to_json(run_of("08-linux-tx-Kpps-2017.txt"))
    assert set(data) == {"direction", "intervals", "summary", "extra"}
    assert data["direction"] == "tx"
    assert data["summary"] is None
    assert [set(i) for i in data["intervals"]] == [{"pps", "pkts", "bps", "usec"}] * 4
    assert data["intervals"][0] == {"pps": 907_878.0, "pkts": 908_221, "bps": 435_946_000.0, "usec": 1000378}
    assert data["extra"]["format"] == FORMAT_CURRENT
    assert data["extra"]["intervals"][1]["min_space"] == 99999
    json.dumps(data, allow_nan=False)


def test_to_json_summary_shape_source_only() -> None:
    """Summary JSON keys; summary text known from source only."""
    data = to_json(parse_pktgen(SENT_SHORT))
    assert data["summary"] == {
        "packets": 1_000_000,
        "bytes": 60_000_000,
        "seconds": 0.15,
        "pps": 6_729_000.0,
        "frame_bytes": 60,
    }
    assert data["extra"]["summary"]["events"] == 1954


def test_to_json_pre_2015_bps_is_null() -> None:
    data = to_json(run_of("01-linux-ixgbe-tx-2015-old-format.txt"))
    assert data["intervals"][0] == {"pps": 12985190.0, "pkts": 12998292, "bps": None, "usec": 1001009}
    json.dumps(data, allow_nan=False)


# --------------------------------------------------------------------- CLI


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness.pktgen_parse", *args],
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_on_kpps_fixture() -> None:
    result = cli(str(FIXTURES / "08-linux-tx-Kpps-2017.txt"))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["direction"] == "tx"
    assert len(data["intervals"]) == 4
    assert data["intervals"][-1] == {"pps": 909_648.0, "pkts": 910_603, "bps": 437_089_000.0, "usec": 1001050}
    assert data["summary"] is None


def test_cli_on_mid_2015_fixture() -> None:
    result = cli(str(FIXTURES / "02-linux-rx-2015-avg_batch-no-min_space.txt"))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["direction"] == "rx"
    assert len(data["intervals"]) == 8
    assert data["intervals"][0] == {"pps": 33.0, "pkts": 33, "bps": 369_600.0, "usec": 1001053}
    assert data["extra"]["format"] == FORMAT_2015


def test_cli_reads_stdin() -> None:
    text = (FIXTURES / "10-linux-rx-Kpps-Gbps-2017.txt").read_text()
    result = cli("-", stdin=text)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["intervals"] == [{"pps": 608_851.0, "pkts": 609_448, "bps": 6_826_000_000.0, "usec": 1000980}]


def test_cli_missing_file_exits_2(tmp_path: Path) -> None:
    result = cli(str(tmp_path / "does-not-exist.txt"))
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cannot read" in result.stderr


def test_cli_file_without_pktgen_output_exits_2() -> None:
    """A real log of another program (netmap bridge) is not pkt-gen output."""
    result = cli(str(REPO / "tests" / "fixtures" / "bridge" / "02-linux-ixgbe-single-port-host-rings-2017.txt"))
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no pkt-gen output" in result.stderr


def test_cli_empty_file_exits_2(tmp_path: Path) -> None:
    empty = tmp_path / "empty.log"
    empty.write_text("")
    assert cli(str(empty)).returncode == 2


# ------------------------------------------------------------ command builder


def test_host_port_always_prefixes_netmap() -> None:
    assert host_port("tap0") == "netmap:tap0"
    assert host_port("netmap:tap1") == "netmap:tap1"


@pytest.mark.parametrize("bad", ["", "tap 0", "a" * 16, "tap0:1", "netmap:"])
def test_host_port_rejects_bad_names(bad: str) -> None:
    with pytest.raises(ConfigError):
        host_port(bad)


def test_pktgen_argv_host_side_uses_netmap_port() -> None:
    argv = pktgen_argv(host_port("tap0"), "tx", length=60, count=1000, rate=100)
    assert argv == ["pkt-gen", "-i", "netmap:tap0", "-f", "tx", "-l", "60", "-n", "1000", "-R", "100"]


@pytest.mark.parametrize("bare", ["tap0", "tap:tap0", "tap1"])
def test_pktgen_argv_refuses_bare_tap(bare: str) -> None:
    with pytest.raises(ConfigError) as err:
        pktgen_argv(bare, "rx")
    assert err.value.hint is not None and "host_port" in err.value.hint


def test_pktgen_argv_all_options() -> None:
    argv = pktgen_argv(
        "netmap:vtnet0",
        "rx",
        program="/usr/local/bin/pkt-gen",
        length=1514,
        count=400,
        rate=1000,
        wait_link=0,
        report_ms=500,
        src="10.0.0.1:1234",
        dst="10.1.0.1:1234-10.1.0.9:1234",
        src_mac="52:54:00:12:34:56",
        dst_mac="ff:ff:ff:ff:ff:ff",
        threads=2,
        random_src=True,
        random_dst=True,
        no_normalize=True,
        pps_stats=True,
        count_framing=True,
        exit_when_idle=True,
        burst=64,
        cpus=2,
        affinity=1,
    )
    assert argv == [
        "/usr/local/bin/pkt-gen", "-i", "netmap:vtnet0", "-f", "rx",
        "-l", "1514", "-p", "2", "-n", "400", "-R", "1000", "-w", "0", "-T", "500",
        "-s", "10.0.0.1:1234", "-d", "10.1.0.1:1234-10.1.0.9:1234",
        "-S", "52:54:00:12:34:56", "-D", "ff:ff:ff:ff:ff:ff",
        "-b", "64", "-c", "2", "-a", "1",
        "-z", "-Z", "-N", "-A", "-B", "-W",
    ]  # fmt: skip


def test_pktgen_argv_minimum_and_maximum_frame_lengths() -> None:
    assert pktgen_argv("vtnet0", "tx", length=16)[-1] == "16"
    assert pktgen_argv("vtnet0", "tx", length=65536)[-1] == "65536"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"length": 15},
        {"length": 65537},
        {"length": True},
        {"length": 60.0},
        {"threads": 0},
        {"count": -1},
        {"count": 1000, "threads": 3},
        {"rate": 0},
        {"wait_link": -1},
        {"report_ms": 0},
        {"burst": 0},
        {"cpus": -1},
        {"affinity": -1},
        {"src": "10.0.0.300"},
        {"src": "10.0.0.1:70000"},
        {"dst": "fe80::1"},
        {"src_mac": "52:54:00:12:34"},
        {"dst_mac": "zz:ff:ff:ff:ff:ff"},
        {"exit_when_idle": True},
    ],
)
def test_pktgen_argv_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        pktgen_argv("netmap:vtnet0", "tx", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "net map:vtnet0"])
def test_pktgen_argv_rejects_bad_interface(bad: str) -> None:
    with pytest.raises(ConfigError):
        pktgen_argv(bad, "tx")


def test_pktgen_argv_rejects_unknown_function() -> None:
    with pytest.raises(ConfigError):
        pktgen_argv("netmap:vtnet0", "send")


@pytest.mark.parametrize("function", ["tx", "rx", "txseq", "rxseq", "ping", "pong"])
def test_pktgen_argv_accepts_every_function(function: str) -> None:
    assert pktgen_argv("netmap:vtnet0", function)[3:5] == ["-f", function]
