"""Two harness runs at once on one machine do not collide: names, ports,
run directories and the results store. Run for real: two pytest invocations
side by side sharing one --run-dir, and pytest-xdist with two workers."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from harness.vm import run_ids_in
from tests.conftest import REPO, assert_nothing_left

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("root_only")]

SCENARIOS = ["scenarios/test_smoke.py", "scenarios/test_guest_tx.py"]
QUICK = ["--trials", "2", "--trial-seconds", "3", "-p", "no:cacheprovider", "-q"]


def _records(run_dir) -> list[dict]:
    return [json.loads(p.read_text()) for p in run_dir.glob("*/records/*.json")]


def test_two_invocations_at_once_share_a_run_dir_without_colliding(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-m", "pytest", *SCENARIOS, "--run-dir", str(tmp_path), *QUICK],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-3000:]
    sessions = [d for d in tmp_path.iterdir() if d.is_dir()]
    assert len(sessions) == 2  # one session directory each
    records = _records(tmp_path)
    assert len(records) == 4 and len({r["run_id"] for r in records}) == 4
    # One store, both runs' records in it.
    with sqlite3.connect(tmp_path / "results.sqlite") as db:
        assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 4
    # The perf scenarios did not measure on shared CPUs: one waited for the other.
    tx = [r for r in records if r["scenario"] == "guest_tx"]
    assert all(r["provenance"]["cpus"]["shared"] is False for r in tx)
    ports = {r["provenance"]["ssh_port"] for r in records}
    assert len(ports) == 2
    for run_id in run_ids_in(tmp_path):
        assert_nothing_left(run_id)


def test_xdist_two_workers(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", *SCENARIOS, "scenarios/test_guest_rx.py",
                           "--run-dir", str(tmp_path), *QUICK], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    records = _records(tmp_path)
    assert sorted(r["scenario"] for r in records) == ["guest_rx", "guest_tx", "smoke"]
    assert all(r["verdict"] == "pass" for r in records)
    assert len(run_ids_in(tmp_path)) == 2  # one guest per worker
    for run_id in run_ids_in(tmp_path):
        assert_nothing_left(run_id)
