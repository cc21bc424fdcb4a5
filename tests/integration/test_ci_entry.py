"""`harness ci` end to end, as the GitHub and GitLab jobs run it, here under TCG with the Debian
guest and the tcg-ci profile: the repository's own ci/harness-ci.toml with the overrides a manual
run would give (--guest linux --accel tcg --vhost auto --profile tcg-ci), so only the KVM and the
FreeBSD download steps do not run, each with its reason printed. Then the nightly step
(`harness ci report`) over the records this run produced plus a stored history of past nights made
from them.

Real guests: about a minute on a 2-core machine.
"""

from __future__ import annotations

import copy
import json
import os
import re
import sqlite3
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from harness.results import ResultStore

pytestmark = [pytest.mark.vm, pytest.mark.netns, pytest.mark.usefixtures("root_only", "no_new_leftovers")]

REPO = Path(__file__).resolve().parents[2]
CI = [sys.executable, "-m", "harness.ci"]       # what `harness ci` runs
SCENARIOS = ("smoke", "guest_tx", "guest_rx")
TESTBED = "ci-entry-test"
PAST_NIGHTS = 12


def run_ci(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CI, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env})


def past_nights(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records shifted back 1..PAST_NIGHTS days, new run ids, values within 1 % of tonight's."""
    past = []
    for night in range(1, PAST_NIGHTS + 1):
        wiggle = 1 + 0.005 * ((night * 7) % 5 - 2)
        for record in records:
            rec = copy.deepcopy(record)
            started = datetime.fromisoformat(rec["started_at"].replace("Z", "+00:00")) - timedelta(days=night)
            rec["started_at"] = started.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            rec["run_id"] = f"night-{night:02d}-{rec['run_id']}"
            for metric in rec.get("metrics", []):
                if metric.get("value") is not None:
                    metric["value"] *= wiggle
                    metric["trials"] = [t * wiggle for t in metric["trials"]]
            past.append(rec)
    return past


def test_harness_ci_runs_the_job_and_the_nightly_report(tmp_path: Path) -> None:
    out = tmp_path / "ci-out"
    step_summary = tmp_path / "step-summary.md"
    github_output = tmp_path / "github-output"
    env = {"GITHUB_STEP_SUMMARY": str(step_summary), "GITHUB_OUTPUT": str(github_output)}

    proc = run_ci("--config", "ci/harness-ci.toml", "--out", str(out), "--guest", "linux", "--accel", "tcg",
                  "--vhost", "auto", "--profile", "tcg-ci", "--trials", "1", "--trial-seconds", "2",
                  "--warmup-seconds", "0.5", "--testbed", TESTBED, *SCENARIOS, env=env, timeout=900)
    printed = proc.stdout
    assert proc.returncode == 0, printed[-6000:] + proc.stderr[-3000:]

    # The steps, in order, each with its name, start time and duration.
    steps = re.findall(r"^== harness ci: ([\w-]+) \(.*\), started \d\d:\d\d:\d\d UTC$", printed, re.M)
    assert steps == ["host-check", "image", "scenarios"]
    for name in steps:
        assert re.search(rf"^== harness ci: {name}: ok in [\d.]+ s$", printed, re.M), name
    # Only KVM and the FreeBSD download are skipped, each with its reason.
    skips = re.findall(r"^  skip: ([^:]+): (.+)$", printed, re.M)
    assert [what for what, _ in skips if what != "vhost-net"] == ["KVM", "FreeBSD download"], skips
    reasons = dict(skips)
    assert reasons["KVM"].startswith("not demanded (--accel tcg)")
    assert reasons["FreeBSD download"].startswith("the guest is linux")
    assert "note: the [image] table of ci/harness-ci.toml is for the FreeBSD guest" in printed

    # The cache key, printed, in the output directory and in $GITHUB_OUTPUT.
    key = (out / "cache-key.txt").read_text().strip()
    assert key.startswith("harness-image-linux-debian-12-kernel-stock-") and f"cache key: {key}" in printed
    assert f"key={key}" in github_output.read_text().splitlines()

    # One output directory: JUnit XML, JSON records, console and QEMU logs.
    run_dir = out / "run" / "main"
    cases = ET.parse(run_dir / "junit.xml").getroot().findall(".//testcase")
    assert sorted(c.get("classname", "").rsplit(".", 1)[-1] for c in cases) == sorted(f"test_{s}" for s in SCENARIOS)
    assert not [c for c in cases if c.find("failure") is not None or c.find("error") is not None]
    records = [json.loads(p.read_text()) for p in sorted(run_dir.glob("*/records/*.json"))]
    assert {"guest_tx", "guest_rx"} <= {r["scenario"] for r in records}
    assert {r["testbed"] for r in records} == {TESTBED} and {r["accel"] for r in records} == {"tcg"}
    assert all(r["verdict"] in ("pass", "skip") for r in records)
    consoles = list(run_dir.glob("*/guest-default/console.log"))
    assert consoles and consoles[0].stat().st_size > 0
    assert consoles[0].with_name("qemu.log").is_file() and consoles[0].with_name("qemu.argv").is_file()
    assert (run_dir / "harness-run.log").read_text().count("passed") >= 1
    assert 'profile = "tcg-ci"' in (run_dir / "run-config.toml").read_text()
    assert json.loads((out / "ci.json").read_text())["exit"] == 0
    summary = step_summary.read_text()
    assert summary.startswith(f"## harness ci: {len(SCENARIOS)} passed, 0 failed")
    assert summary == (out / "summary.md").read_text()

    # The nightly step: this run's records plus a stored history of flat past nights.
    history = tmp_path / "history" / "history.sqlite"
    with ResultStore(history) as store:
        for record in past_nights(records):
            store.add(record)
    proc = run_ci("report", "--out", str(out), "--history", str(history), env=env, timeout=300)
    printed = proc.stdout
    assert proc.returncode == 0, printed[-6000:] + proc.stderr[-3000:]
    assert re.search(r"^== harness ci: history: ok in [\d.]+ s$", printed, re.M)
    assert re.search(r"^== harness ci: report: ok in [\d.]+ s$", printed, re.M)
    assert f"{len(records)} new runs added" in printed
    db = sqlite3.connect(history)
    try:
        stored = {row[0] for row in db.execute("SELECT run_id FROM runs")}
    finally:
        db.close()
    assert len(stored) == (PAST_NIGHTS + 1) * len(records) and {r["run_id"] for r in records} <= stored
    series = json.loads((out / "report" / "series.json").read_text())
    assert series["regressions"] == [] and series["runs"] == len(stored)
    tonight = {r["run_id"] for r in records if r.get("metrics")}
    reported = {p["run_id"] for s in series["series"] for p in s["points"]}
    assert tonight and tonight <= reported and any(r.startswith("night-12-") for r in reported)
    page = (out / "report" / "index.html").read_text()
    assert page.lstrip().lower().startswith("<!doctype html>")
    # The job summary now holds the scenarios' table and then the report's verdict.
    summary = step_summary.read_text()
    assert summary.index("## harness ci:") < summary.index("no confirmed regression")
