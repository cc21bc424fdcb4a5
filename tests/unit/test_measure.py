"""Trial arithmetic, spread, loss and the bottleneck verdict."""

from __future__ import annotations

import pytest

from harness.measure import Measurement, Trial
from harness.thresholds import Verdict
from harness.traffic import below_floor


def _trial(gen, sent, received, *, seconds=4.0, sender_dropped=0, receiver_dropped=0):
    return Trial(seconds=seconds, generator_packets=gen, sent=sent, received=received,
                 sender_dropped=sender_dropped, receiver_dropped=receiver_dropped,
                 receiver_engine_packets=None, wall_seconds=seconds + 0.7)


def test_rates_use_the_generators_interval():
    trial = _trial(280132, 280132, 280132, seconds=4.24569)
    assert trial.generator_mpps == pytest.approx(0.065980, abs=1e-6)
    assert trial.sender_counters_mpps == trial.receiver_counters_mpps == trial.generator_mpps
    assert trial.offered == 280132
    record = trial.as_record()
    assert {"generator_mpps", "sender_counters_mpps", "receiver_counters_mpps", "sent", "received",
            "seconds"} <= record.keys()


def test_medians_spread_and_cv():
    m = Measurement([_trial(400, 400, 400), _trial(440, 440, 440), _trial(420, 420, 420)], "guest", {})
    assert m.mpps["receiver_counters"] == pytest.approx(420 / 4 / 1e6)
    spread = m.spread()
    assert spread["min"] == pytest.approx(100e-6) and spread["max"] == pytest.approx(110e-6)
    assert spread["cv"] == pytest.approx(0.0389, abs=1e-3)


def test_generator_vs_counters_is_the_worst_trial():
    m = Measurement([_trial(1000, 1000, 1000), _trial(1030, 1000, 1000)], "guest", {})
    assert m.generator_vs_counters() == pytest.approx(0.03)


def test_loss_counts_what_the_receiver_did_not_see():
    m = Measurement([_trial(1000, 1000, 990), _trial(1000, 1000, 1000)], "guest", {})
    assert m.loss == pytest.approx(0.005)


def test_guest_rx_limited_by_the_guest_when_the_tap_drops():
    m = Measurement([_trial(300, 300, 300, sender_dropped=4500)], "host", {})
    verdict = m.bottleneck
    assert verdict["side"] == "receiver (guest)" and verdict["lower_bound"] is False
    assert "dropped 4500" in verdict["detail"]


def test_guest_rx_limited_by_the_generator_is_a_lower_bound():
    m = Measurement([_trial(300, 300, 300, sender_dropped=1)], "host", {})
    assert m.bottleneck["side"] == "sender (host)" and m.bottleneck["lower_bound"] is True


def test_guest_tx_receiver_drops_make_the_host_the_limit():
    m = Measurement([_trial(1000, 1000, 900, receiver_dropped=100)], "guest", {})
    assert m.bottleneck["side"] == "receiver (host)"
    assert Measurement([_trial(1000, 1000, 1000)], "guest", {}).bottleneck["side"] == "sender (guest)"


def test_meter_disagreements_name_the_trial():
    m = Measurement([_trial(1000, 1000, 1000), _trial(1030, 1000, 1000)], "guest", {})
    problems = m.meter_disagreements(0.01)
    assert problems == ["trial 2: generator counted 1030, the sender's interface 1000",
                        "trial 2: generator 0.00026 Mpps, sender counters 0.00025 Mpps"]
    assert m.meter_disagreements(0.05) == []


def test_a_rate_below_its_floor_names_host_load_only_when_others_held_the_cpus():
    verdict = Verdict("tcg-ci", "mpps", 0.02, True, "profile 'tcg-ci'")
    quiet = Measurement([_trial(76_000, 76_000, 76_000)], "guest", {}, other_cpu_share=0.0)
    busy = Measurement([_trial(76_000, 76_000, 76_000)], "guest", {}, other_cpu_share=0.5)
    assert below_floor(quiet, verdict) == "0.0190 Mpps < 0.02 Mpps (profile 'tcg-ci')"
    assert below_floor(busy, verdict).startswith("0.0190 Mpps < 0.02 Mpps (profile 'tcg-ci'); the host was busy")
