from __future__ import annotations

import pytest

from harness import thresholds
from harness.errors import ConfigError

TCG_RUN = {"accel": "tcg", "vhost": False, "guest_os": "linux", "engine": "linux-pktgen"}
KVM_RUN = {"accel": "kvm", "vhost": True, "guest_os": "freebsd", "engine": "netmap-pktgen"}


def test_the_shipped_profiles_hold_the_reviews_numbers():
    profiles = thresholds.load()
    review = profiles["review-kvm-i7"]
    assert review.floors == {"tx_mpps": 1.5, "rx_mpps": 2.1}
    assert review.conditions == {"accel": "kvm", "vhost": True, "guest_os": "freebsd", "engine": "netmap-pktgen"}
    assert "Core i7" in review.hardware


def test_auto_picks_the_profile_the_run_matches():
    verdict = thresholds.decide("guest_tx", TCG_RUN)
    assert (verdict.profile, verdict.applied, verdict.metric) == ("tcg-ci", True, "tx_mpps")
    verdict = thresholds.decide("guest_rx", KVM_RUN)
    assert (verdict.profile, verdict.min, verdict.applied) == ("review-kvm-i7", 2.1, True)


def test_kvm_numbers_on_tcg_are_skipped_with_the_reason_not_failed():
    verdict = thresholds.decide("guest_tx", TCG_RUN, profile_name="review-kvm-i7")
    assert verdict.applied is False and verdict.min == 1.5
    assert "accel is 'tcg', the profile is for 'kvm'" in verdict.reason


def test_no_matching_profile_is_a_skip_with_the_reason():
    verdict = thresholds.decide("guest_tx", {**TCG_RUN, "guest_os": "freebsd"})
    assert verdict.applied is False and "no threshold profile matches" in verdict.reason


def test_mpps_min_overrides_every_profile():
    verdict = thresholds.decide("guest_rx", TCG_RUN, profile_name="review-kvm-i7", mpps_min=0.5)
    assert (verdict.applied, verdict.min, verdict.profile) == (True, 0.5, "--mpps-min")


def test_unknown_profile_name():
    with pytest.raises(ConfigError, match="unknown threshold profile 'fast'"):
        thresholds.decide("guest_tx", TCG_RUN, profile_name="fast")


@pytest.mark.parametrize("text,needle", [
    ('[p]\ntx_mpps = 1\ntx_mps = 2\n', "unknown key 'tx_mps'"),
    ('[p]\ntx_mpps = "fast"\n', "tx_mpps must be a positive number of Mpps, not 'fast'"),
    ('[p]\ntx_mpps = -1\n', "tx_mpps must be a positive number"),
    ('[p]\ntx_mpps = 1\nvhost = "yes"\n', "vhost must be a bool"),
    ('[p]\naccel = "kvm"\n', "sets neither tx_mpps nor rx_mpps"),
    ('p = 3\n', "'p' must be a table"),
    ('[p\n', "not valid TOML"),
])
def test_bad_files_name_the_key(tmp_path, text, needle):
    path = tmp_path / "t.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        thresholds.load(path)
