#!/usr/bin/env python3
"""Soak: the smoke scenario N times in a row, then N times two at a time.

After each run it prints pass/fail, its slowest phase (from the guest's
phases.json: image, network_up, qemu_start, boot_to_console, login,
ssh_ready, teardown) and how many harness resources of that run are left
(namespaces, QEMU processes, leases, overlays). Target: N/N passes, zero
leftovers.

Usage: .venv/bin/python benchmarks/soak.py [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pyroute2 import netns

from harness import leases
from harness.vm import run_ids_in

REPO = Path(__file__).resolve().parent.parent
PHASES = ("image", "network_up", "qemu_start", "boot_to_console", "login", "ssh_ready", "teardown")


def leftovers(run_dir: Path) -> int:
    ids = run_ids_in(run_dir)
    qemu = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True).stdout
    count = sum(1 for n in netns.listnetns() for i in ids if n == f"{leases.NETNS_PREFIX}{i}")
    count += sum(1 for line in qemu.splitlines() for i in ids if f"harness-{i}," in line)
    count += sum(1 for p in leases.state_dir().glob("*.json") for i in ids if i in p.name)
    count += len(list(run_dir.rglob("overlay.qcow2")))
    return count


def one_run(run_dir: Path) -> dict[str, object]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "scenarios/test_smoke.py", "--run-dir", str(run_dir),
                           "-q", "-p", "no:cacheprovider"], cwd=REPO, capture_output=True, text=True)
    phases: dict[str, float] = {}
    for path in run_dir.rglob("phases.json"):
        phases = json.loads(path.read_text())
    slowest = max((p for p in PHASES if p in phases), key=lambda p: phases[p], default="?")
    return {"ok": proc.returncode == 0, "seconds": time.monotonic() - start, "slowest": slowest,
            "slowest_s": phases.get(slowest, 0.0), "leftovers": leftovers(run_dir),
            "tail": proc.stdout[-800:]}


def report(label: str, index: int, result: dict[str, object]) -> None:
    print(f"{label} {index:2d}: {'pass' if result['ok'] else 'FAIL'}  {result['seconds']:5.1f} s  "
          f"slowest phase {result['slowest']} {result['slowest_s']:.1f} s  leftovers {result['leftovers']}",
          flush=True)
    if not result["ok"]:
        print(result["tail"])


def summary(label: str, results: list[dict[str, object]]) -> None:
    passes = sum(1 for r in results if r["ok"])
    worst = max(results, key=lambda r: float(r["slowest_s"]))  # type: ignore[arg-type]
    print(f"{label}: {passes}/{len(results)} passed, {len(results) - passes} failed, "
          f"leftovers {sum(int(r['leftovers']) for r in results)}, slowest phase overall "
          f"{worst['slowest']} {worst['slowest_s']:.1f} s\n", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="harness-soak-") as tmp:
        serial = []
        for i in range(args.runs):
            serial.append(one_run(Path(tmp, f"serial-{i}")))
            report("in a row", i + 1, serial[-1])
        summary("in a row", serial)
        parallel = []
        with ThreadPoolExecutor(max_workers=2) as pool:
            for i, result in enumerate(pool.map(one_run, [Path(tmp, f"parallel-{i}") for i in range(args.runs)])):
                parallel.append(result)
                report("2-wide  ", i + 1, result)
        summary("2-wide", parallel)
    failed = [r for r in serial + parallel if not r["ok"] or r["leftovers"]]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
