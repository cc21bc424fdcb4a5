"""Guest RX, the vtnet netmap review's second test plan.

In the guest `pkt-gen -i vtnet0 -f rx`, on the host `pkt-gen -i netmap:tap1
-f tx`; the review measured about 2.1 Mpps (FreeBSD guest, 4 vCPUs, QEMU/KVM
with vhost-net, 3rd-generation Core i7). Without netmap the host sends with
trafgen into the TAP and the guest interface's counters receive.
"""

import pytest

from harness.traffic import below_floor, run_scenario

# Loss bound: frames the host TAP handed to QEMU that the guest's NIC did not
# count. Frames the TAP could not hand over because the guest was not taking
# them are not loss but the bottleneck, and are recorded as such.
LOSS_BOUND = 0.01


def test_guest_rx(guest, record, run_config, session_dir, frame_bytes):
    result, threshold = run_scenario(guest, record, run_config, "guest_rx", frame_bytes,
                                     session_dir / record.run_id)

    # Two meters on the sending end agree: the generator's own count and
    # the host TAP's counters, and so their rates over the same interval.
    assert not result.meter_disagreements(0.01), result.meter_disagreements(0.01)
    assert result.loss <= LOSS_BOUND, f"{result.loss:.2%} of the frames handed to the guest were not counted"
    assert result.mpps["receiver_counters"] > 0
    assert record.bottleneck["side"] in ("receiver (guest)", "sender (host)")

    if not threshold.applied:
        pytest.skip(f"rate not asserted: {threshold.reason}")
    assert result.mpps["receiver_counters"] >= threshold.min, below_floor(result, threshold)
