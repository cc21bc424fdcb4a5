#!/usr/bin/env python3
"""Measurement fidelity: do the meters agree, and does measuring perturb?

Boots the default guest once and, for guest TX and guest RX, runs N trials of
D seconds, printing per scenario: generator Mpps, sender-counter Mpps,
receiver-counter Mpps, their ratios, the coefficient of variation over the
trials, the bottleneck verdict, and the harness process's CPU time per trial
second. Targets: ratios within 1%, CV at most 10% under TCG here, harness CPU
under 1% of one core.

Usage: .venv/bin/python benchmarks/fidelity.py [--trials 5] [--seconds 5] [--frame-bytes 60]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from harness.config import RunConfig
from harness.guest import boot_guest
from harness.hostload import busy_note
from harness.traffic import Datapath


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--frame-bytes", type=int, default=60)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = RunConfig()
    with tempfile.TemporaryDirectory(prefix="harness-fidelity-") as tmp, \
            boot_guest(config, Path(tmp, "guest")) as guest:
        guest.configure_dut()
        print(f"guest up ({guest.facts['accel']}); {args.trials} trials of {args.seconds:g} s, "
              f"{args.frame_bytes}-byte frames\n")
        for scenario, direction in (("guest TX", "tx"), ("guest RX", "rx")):
            path = Datapath(guest, direction, Path(tmp, direction))
            m = path.measure(args.frame_bytes, trials=args.trials, seconds=args.seconds, warmup=1.0,
                             trial_timeout=60)
            print(f"{scenario}: sender {path.sender_name}, receiver {path.receiver_name}")
            print("  trial  generator  sender-ctr  receiver-ctr   sender/gen  receiver/sender")
            for i, t in enumerate(m.trials, 1):
                print(f"  {i:5d}  {t.generator_mpps:9.5f}  {t.sender_counters_mpps:10.5f}  "
                      f"{t.receiver_counters_mpps:12.5f}   {t.sender_counters_mpps / t.generator_mpps:10.5f}  "
                      f"{t.receiver_counters_mpps / t.sender_counters_mpps:15.5f}")
            mpps = m.mpps
            spread = m.spread()
            print(f"  median Mpps: generator {mpps['generator']:.5f}, sender counters {mpps['sender_counters']:.5f},"
                  f" receiver counters {mpps['receiver_counters']:.5f}")
            print(f"  ratios: sender/generator {mpps['sender_counters'] / mpps['generator']:.5f}, "
                  f"receiver/sender {mpps['receiver_counters'] / mpps['sender_counters']:.5f}   (target: within 1%)")
            print(f"  worst generator-vs-counters gap {m.generator_vs_counters():.3%}; loss {m.loss:.3%}")
            print(f"  CV over trials {spread['cv']:.2%} (target <= 10%); min {spread['min']:.5f}, "
                  f"max {spread['max']:.5f}")
            print(f"  bottleneck: {m.bottleneck['side']}: {m.bottleneck['detail']}")
            print(f"  harness CPU per trial second: {m.cpu_seconds_per_trial_second:.3%} of one core "
                  f"(target < 1%)")
            note = busy_note(m.other_cpu_share)
            print(f"  other load on the host during the trials: {m.other_cpu_share:.1%} of its CPUs"
                  f"{f' ({note})' if note else ''}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
