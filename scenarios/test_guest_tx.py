"""Guest TX, the vtnet netmap review's first test plan.

In the guest `pkt-gen -i vtnet0 -f tx`, on the host `pkt-gen -i netmap:tap1
-f rx`; the review measured about 1.5 Mpps (FreeBSD guest, 4 vCPUs, QEMU/KVM
with vhost-net, 3rd-generation Core i7). Without netmap the guest sends with
kernel pktgen and the host TAP's counters receive. The result names the
engines that ran.
"""

import pytest

from harness.traffic import below_floor, run_scenario


def test_guest_tx(guest, record, run_config, session_dir, frame_bytes):
    result, threshold = run_scenario(guest, record, run_config, "guest_tx", frame_bytes,
                                     session_dir / record.run_id)

    # Two meters on the sending end agree: the generator's own count and
    # the guest interface's counters, and so their rates over the same interval.
    assert not result.meter_disagreements(0.01), result.meter_disagreements(0.01)
    assert result.loss == 0, f"{result.loss:.2%} of the frames the guest sent never reached the host"
    assert result.mpps["receiver_counters"] > 0

    if not threshold.applied:
        pytest.skip(f"rate not asserted: {threshold.reason}")
    assert result.mpps["receiver_counters"] >= threshold.min, below_floor(result, threshold)
