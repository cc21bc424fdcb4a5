"""`harness report`: records -> SQLite store and JSON directory -> report -> exit code.

The histories are built with `harness.results.Record` and `Metric`, written
with `write_json` and `ResultStore.add` exactly as the scenarios write them;
the values are synthetic (seeded), with a known step where one is wanted.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness import report
from harness.results import Metric, Record, ResultStore, add_all, config_key, read_json_dir, write_json

T0 = datetime(2026, 10, 1, 2, 0, tzinfo=UTC)
SHA_OLD, SHA_NEW = "3fd35b0" + "1" * 33, "9c41e7a" + "2" * 33


def make_record(night: int, level: float, *, seed: int, testbed: str = "ci-tcg-1", scenario: str = "guest_tx",
                guest_os: str = "freebsd", engines: tuple[str, str] = ("netmap-pktgen", "host-counters"),
                frame: int = 60, queues: int = 1, accel: str = "tcg", vhost: bool = False,
                git_sha: str = SHA_OLD, qemu: str = "8.2.2", verdict: str = "pass", floor: float | None = None,
                extra_metrics: Sequence[Metric] = (), sigma: float = 0.03) -> dict[str, Any]:
    """One nightly run with 5 trials around `level` (relative noise `sigma`); the metric value is their median."""
    rng = np.random.default_rng(seed)
    trials = [round(float(v), 5) for v in level * (1 + sigma * rng.standard_normal(5))]
    rec = Record(run_id=f"{testbed}-{scenario}-{accel}-{engines[0]}-{frame}-q{queues}-n{night:03d}", scenario=scenario,
                 testbed=testbed, session_id=f"s{night}", guest_os=guest_os, accel=accel, vhost=vhost,
                 engines={"sender": engines[0], "receiver": engines[1]}, frame_bytes=frame, queues=queues)
    rec.started_at = (T0 + timedelta(days=night, seconds=seed % 600)).isoformat(timespec="milliseconds")
    rec.started_at = rec.started_at.replace("+00:00", "Z")
    rec.trials = [{"generator_mpps": t, "sender_counters_mpps": t, "receiver_counters_mpps": t * 0.99,
                   "sent": int(t * 1e7), "received": int(t * 0.99e7), "seconds": 10.0} for t in trials]
    median = float(np.median(trials))
    rec.mpps = {"generator": median, "sender_counters": median, "receiver_counters": median * 0.99}
    rec.loss = 0.01
    rec.bottleneck = {"side": "guest"}
    rec.threshold = {"profile": "tcg", "metric": "mpps", "min": floor, "applied": floor is not None,
                     "reason": None if floor is not None else "TCG: no floor"}
    rec.metrics = [Metric("mpps", "Mpps", "higher", median, trials), *extra_metrics]
    rec.provenance = {"harness_version": "0.1.0", "git_sha": git_sha, "qemu_version": qemu,
                      "qemu_argv": ["qemu-system-x86_64", "-accel", accel], "accel": accel, "vhost": vhost,
                      "image": {"disk_sha256": "ab" * 32, "kernel_release": "14.2-RELEASE"},
                      "guest_kernel": {"ident": "GENERIC", "release": "14.2-RELEASE"},
                      "host_cpu": "AMD EPYC 7B13", "cpu_governor": "none (no cpufreq)", "host_kernel": "6.1.0-27"}
    rec.finish(verdict, None if verdict == "pass" else "below floor")
    return rec.to_dict()


def step_history(nights: int = 36, step_at: int | None = 28, drop: float = 0.15, seed: int = 0,
                 **kw: Any) -> list[dict[str, Any]]:
    """`nights` runs at 1.0 Mpps; from night `step_at` (the first bad run) 1 - drop, with a new harness sha."""
    out = []
    for n in range(nights):
        bad = step_at is not None and n >= step_at
        out.append(make_record(n, 1.0 - drop if bad else 1.0, seed=seed + n, git_sha=SHA_NEW if bad else SHA_OLD,
                               **kw))
    return out


def write_sources(records: Sequence[dict[str, Any]], tmp: Path) -> list[Path]:
    """First two thirds into a store, last two thirds as JSON files: the middle third is in both."""
    store_path, json_dir = tmp / "history" / "runner-a.sqlite", tmp / "runs"
    cut_a, cut_b = len(records) // 3, 2 * len(records) // 3
    with ResultStore(store_path) as store:
        for r in records[:cut_b]:
            store.add(r)
    for r in records[cut_a:]:
        write_json(_as_record(r), json_dir)
    return [store_path, json_dir]


def _as_record(data: dict[str, Any]) -> Record:
    fields = dict(data)
    fields["metrics"] = [Metric(**m) for m in data["metrics"]]
    return Record(**fields)


def run_report(tmp: Path, sources: Sequence[Path], *extra: str) -> tuple[int, dict[str, str]]:
    out = {k: tmp / f"out/report.{k}" for k in ("html", "md", "csv", "json")}
    code = report.main([*map(str, sources), "--out", str(out["html"]), "--markdown", str(out["md"]),
                        "--csv", str(out["csv"]), "--json", str(out["json"]), "--window", "8", *extra])
    return code, {k: p.read_text() if p.exists() else "" for k, p in out.items()}


# --- the whole path ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def regressed(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, str], list[dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("regressed")
    records = step_history() + step_history(step_at=None, seed=100, scenario="guest_rx", guest_os="linux",
                                            engines=("linux-pktgen", "guest-counters"))
    code, out = run_report(tmp, write_sources(records, tmp))
    return code, out, records


def test_confirmed_regression_exits_1_and_names_the_first_bad_run(regressed: Any) -> None:
    code, out, records = regressed
    assert code == 1
    data = json.loads(out["json"])
    [finding] = data["regressions"]
    assert finding["first_bad_run_id"].endswith("-n028")
    assert finding["last_good_run_id"].endswith("-n027")
    assert finding["scenario"] == "guest_tx" and finding["metric"] == "mpps"
    assert -0.18 < finding["rel_change"] < -0.12
    assert finding["pvalue"] < 1e-3 and finding["mean_before"] > finding["mean_after"]
    assert finding["changed"] == [{"what": "harness git sha", "before": SHA_OLD, "after": SHA_NEW}]
    assert finding["acknowledged"] is False


def test_sources_are_merged_and_deduplicated_by_run_id(regressed: Any) -> None:
    _, out, records = regressed
    rows = list(csv.DictReader(io.StringIO(out["csv"])))
    assert len(rows) == len(records)                       # the middle third was in both sources, counted once
    assert len({(r["run_id"], r["metric"]) for r in rows}) == len(rows)
    data = json.loads(out["json"])
    assert data["runs"] == len(records) and data["duplicates"] == len(records) // 3
    assert f"({len(records) // 3} duplicate runs merged)" in out["html"]


def test_conflicting_copies_keep_the_first_and_warn_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    records = step_history(nights=12, step_at=None)
    first, second = tmp_path / "runner-a", tmp_path / "runner-b"
    for r in records:
        write_json(_as_record(r), first)
    for r in records[:5]:
        write_json(_as_record({**r, "metrics": [{**r["metrics"][0], "value": 0.5}]}), second)
    with caplog.at_level(logging.WARNING, logger="harness.report"):
        code, out = run_report(tmp_path, [first, second])
    assert code == 0
    [warning] = [r.getMessage() for r in caplog.records if "different content" in r.getMessage()]
    assert warning.startswith(f"{second}: 5 run id(s)") and warning.endswith(", ...")
    values = [float(row["value"]) for row in csv.DictReader(io.StringIO(out["csv"]))]
    assert len(values) == 12 and 0.5 not in values


def test_markdown_summary(regressed: Any) -> None:
    md = regressed[1]["md"]
    assert md.startswith("## vtnet performance: 1 confirmed regression")
    assert "`guest_tx/freebsd/netmap-pktgen->host-counters/60B/q1/tcg/novhost`" in md
    assert "-n027` -> `" in md and "-n028`" in md
    assert "harness git sha: 3fd35b011111… -> 9c41e7a22222…" in md
    assert re.search(r"\| -1\d\.\d% \|", md)
    assert "72 runs, 2 configurations, 1 testbed; 1 regressed, 1 ok." in md


def test_csv_columns_and_values(regressed: Any) -> None:
    _, out, records = regressed
    rows = list(csv.DictReader(io.StringIO(out["csv"])))
    assert tuple(rows[0]) == report.CSV_FIELDS
    tx = [r for r in rows if r["scenario"] == "guest_tx"]
    assert [r["run_id"][-4:] for r in tx] == [f"n{n:03d}" for n in range(36)]
    by_id = {r["run_id"]: r for r in records}
    for row in tx:
        metric = by_id[row["run_id"]]["metrics"][0]
        assert float(row["value"]) == pytest.approx(metric["value"])
        assert float(row["trial_min"]) == pytest.approx(min(metric["trials"]))
    confirmed = [r["run_id"][-4:] for r in tx if r["confirmed_regression"] == "True"]
    assert confirmed == ["n028"]
    assert tx[-1]["status"] == "regressed"
    assert tx[3]["band_low"] == "" and tx[8]["band_low"] != ""      # band from 5 runs in the window on


def test_html_is_self_contained(regressed: Any) -> None:
    html = regressed[1]["html"]
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert not re.search(r"<script", html, re.I)
    assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", html, re.I)
    assert not re.search(r"<link\b", html, re.I)
    assert "<?xml" not in html and "<!DOCTYPE svg" not in html
    assert html.count('<svg class="chart"') == 2
    assert 'class="regressions"' in html and "9c41e7a22222" in html


def test_html_regression_row_links_to_its_chart(regressed: Any) -> None:
    html = regressed[1]["html"]
    anchors = re.findall(r'<a href="#(s-[^"]+)"><code>guest_tx/', html)
    assert anchors and f'id="{anchors[0]}"' in html


# --- exit codes ------------------------------------------------------------------------------------

def test_stable_history_exits_0(tmp_path: Path) -> None:
    code, out = run_report(tmp_path, write_sources(step_history(step_at=None), tmp_path))
    assert code == 0
    assert out["md"].startswith("## vtnet performance: no confirmed regression")
    assert "Nothing regressed" in out["html"]


def test_improvement_is_not_a_regression(tmp_path: Path) -> None:
    code, out = run_report(tmp_path, write_sources(step_history(drop=-0.15), tmp_path))
    assert code == 0
    assert "1 improved" in out["md"]


def test_lower_is_better_metric_regresses_upwards(tmp_path: Path) -> None:
    records, rng = [], np.random.default_rng(7)
    for n in range(30):
        rtt = 0.40 if n < 22 else 0.52
        trials = [float(v) for v in rtt * (1 + 0.04 * rng.standard_normal(5))]
        ping = Metric("ping_rtt_avg_ms", "ms", "lower", float(np.median(trials)), trials)
        records.append(make_record(n, 1.0, seed=n, scenario="host_rings", engines=("host-counters", "guest-counters"),
                                   extra_metrics=[ping]))
    code, out = run_report(tmp_path, write_sources(records, tmp_path))
    assert code == 1
    [finding] = json.loads(out["json"])["regressions"]
    assert finding["metric"] == "ping_rtt_avg_ms" and finding["rel_change"] > 0.2
    assert finding["first_bad_run_id"].endswith("-n022")


def test_single_bad_last_night_is_out_of_band_not_a_regression(tmp_path: Path) -> None:
    records = step_history(nights=30, step_at=None)
    records.append(make_record(30, 0.7, seed=99))
    code, out = run_report(tmp_path, write_sources(records, tmp_path))
    assert code == 0
    assert "1 out of band" in out["md"] and "Latest run worth a look" in out["md"]


def test_floor_and_failed_runs_show_in_status(tmp_path: Path) -> None:
    records = [make_record(n, 1.0, seed=n, floor=0.9) for n in range(12)]
    records.append(make_record(12, 0.8, seed=12, floor=0.9, verdict="fail"))
    other = [make_record(n, 1.0, seed=n, frame=1514) for n in range(12)]
    crashed = Record(run_id="crash-1514", scenario="guest_tx", testbed="ci-tcg-1", guest_os="freebsd", accel="tcg",
                     vhost=False, engines={"sender": "netmap-pktgen", "receiver": "host-counters"}, frame_bytes=1514,
                     started_at="2026-10-20T02:00:00.000Z", threshold={"applied": False},
                     metrics=[Metric("mpps", "Mpps", "higher", None)])
    crashed.finish("fail", "guest panicked")
    skipped = make_record(14, 0.1, seed=14, verdict="skip")
    code, out = run_report(tmp_path, write_sources([*records, *other, crashed.to_dict(), skipped], tmp_path))
    assert code == 0
    assert "1 failed, 1 below floor" in out["md"]
    rows = list(csv.DictReader(io.StringIO(out["csv"])))
    assert "crash-1514" not in {r["run_id"] for r in rows} and skipped["run_id"] not in {r["run_id"] for r in rows}
    assert {r["floor"] for r in rows if r["config_key"].endswith("/60B/q1/tcg/novhost")} == {"0.9"}
    assert {r["floor"] for r in rows if r["config_key"].endswith("/1514B/q1/tcg/novhost")} == {""}


# --- series are never mixed ------------------------------------------------------------------------

def test_series_are_kept_per_testbed_engine_and_accelerator(tmp_path: Path) -> None:
    """Other testbeds/engines/accelerators join at night 20 at very different levels: mixed, they would be a step."""
    base = step_history(nights=36, step_at=None)
    others = [make_record(n, level, seed=500 + n, **kw) for n in range(20, 36) for level, kw in (
        (0.4, {"testbed": "ci-tcg-2"}),
        (0.5, {"engines": ("trafgen", "host-counters")}),
        (6.0, {"accel": "kvm", "vhost": True}))]
    records = base + others
    code, out = run_report(tmp_path, write_sources(records, tmp_path))
    assert code == 0, out["md"]
    series = report.build_series(sorted(records, key=lambda r: r["started_at"]))
    assert len(series) == 4
    for s in series:
        keys = {(p.record["testbed"], config_key(p.record)) for p in s.points}
        assert keys == {(s.testbed, s.config_key)}
    assert sorted(len(s.points) for s in series) == [16, 16, 16, 36]


# --- acknowledgements ------------------------------------------------------------------------------

ACK = """\
[[acknowledged]]
testbed = "ci-tcg-1"
config_key = "guest_tx/freebsd/netmap-pktgen->host-counters/60B/q1/tcg/novhost"
metric = "mpps"
first_bad_run_id = "{run}"
reason = "expected: the new ring sizing costs 15% under TCG (issue 12)"
"""


@pytest.fixture(scope="module")
def step_sources(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    tmp = tmp_path_factory.mktemp("step")
    return write_sources(step_history(), tmp)


def test_acknowledged_regression_passes_but_shows(tmp_path: Path, step_sources: list[Path]) -> None:
    ack = tmp_path / "acknowledged.toml"
    ack.write_text(ACK.format(run="ci-tcg-1-guest_tx-tcg-netmap-pktgen-60-q1-n028"))
    code, out = run_report(tmp_path, step_sources, "--ack", str(ack))
    assert code == 0
    assert out["md"].startswith("## vtnet performance: no unacknowledged regression (1 acknowledged)")
    assert "yes: expected: the new ring sizing costs 15% under TCG (issue 12)" in out["md"]
    assert "the new ring sizing costs 15%" in out["html"]
    assert json.loads(out["json"])["regressions"][0]["acknowledged"] is True


def test_acknowledgement_tolerates_a_moved_estimate(tmp_path: Path, step_sources: list[Path]) -> None:
    ack = tmp_path / "acknowledged.toml"
    ack.write_text(ACK.format(run="ci-tcg-1-guest_tx-tcg-netmap-pktgen-60-q1-n029"))     # one run late: still it
    assert run_report(tmp_path, step_sources, "--ack", str(ack))[0] == 0
    ack.write_text(ACK.format(run="ci-tcg-1-guest_tx-tcg-netmap-pktgen-60-q1-n020"))     # another event: not it
    code, out = run_report(tmp_path, step_sources, "--ack", str(ack))
    assert code == 1
    assert "matches no confirmed regression" in out["md"]


def test_acknowledgement_for_another_config_does_not_count(tmp_path: Path, step_sources: list[Path]) -> None:
    ack = tmp_path / "acknowledged.toml"
    ack.write_text(ACK.format(run="ci-tcg-1-guest_tx-tcg-netmap-pktgen-60-q1-n028").replace("q1/tcg", "q2/tcg"))
    assert run_report(tmp_path, step_sources, "--ack", str(ack))[0] == 1


@pytest.mark.parametrize(("text", "message"), [
    ("[[acknowledged]]\ntestbed = 'a'\nscenario = 'guest_tx'\nmetric = 'mpps'\nfirst_bad_run_id = 'r'\n",
     "entry 1: missing reason"),
    ("[[acknowledged]]\ntestbed = 'a'\nscenario = 'guest_tx'\nmetric = 'mpps'\nfirst_bad_run_id = 'r'\n"
     "reason = ''\n", "entry 1: reason must be a non-empty string"),
    ("[[acknowledged]]\ntestbed = 'a'\nmetric = 'mpps'\nfirst_bad_run_id = 'r'\nreason = 'x'\n",
     "entry 1: give exactly one of config_key or scenario"),
    ("[[acknowledged]]\ntestbed = 'a'\nscenario = 'x'\nmetric = 'mpps'\nfirst_bad_run_id = 'r'\nreason = 'x'\n"
     "expires = 2027-01-01\n", "entry 1: unknown key(s) expires"),
    ("[[ack]]\ntestbed = 'a'\n", "unknown top-level key(s) ack"),
    ("[[acknowledged]\n", "not a valid TOML acknowledgement file"),
])
def test_bad_acknowledgement_file_exits_2(tmp_path: Path, step_sources: list[Path], capsys: pytest.CaptureFixture[str],
                                          text: str, message: str) -> None:
    ack = tmp_path / "acknowledged.toml"
    ack.write_text(text)
    code, _ = run_report(tmp_path, step_sources, "--ack", str(ack))
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and err.startswith("harness report: error: ")


# --- bad input ----------------------------------------------------------------------------------------

def _bad_sources(tmp: Path) -> dict[str, tuple[Path, str]]:
    not_db = tmp / "notes.sqlite"
    not_db.write_text("hello")
    other_db = tmp / "other.sqlite"
    sqlite3.connect(other_db).execute("CREATE TABLE x (a)").connection.close()
    broken = tmp / "broken"
    broken.mkdir()
    (broken / "r.json").write_text("{not json")
    partial = tmp / "partial"
    partial.mkdir()
    (partial / "r.json").write_text(json.dumps({"run_id": "r1", "scenario": "guest_tx", "testbed": "t"}))
    bad_metric = tmp / "bad_metric"
    record = make_record(0, 1.0, seed=0)
    record["metrics"][0]["direction"] = "up"
    bad_metric.mkdir()
    (bad_metric / "r.json").write_text(json.dumps(record))
    bad_time = tmp / "bad_time"
    bad_time.mkdir()
    (bad_time / "r.json").write_text(json.dumps({**make_record(0, 1.0, seed=0), "started_at": "last tuesday"}))
    empty = tmp / "empty"
    empty.mkdir()
    return {"missing": (tmp / "nope.sqlite", "no such file or directory"),
            "not a store": (not_db, "not a results store"),
            "foreign sqlite": (other_db, "not a harness results store"),
            "invalid json": (broken, "not valid JSON"),
            "missing keys": (partial, "not a harness result record, missing"),
            "bad metric": (bad_metric, "direction must be higher or lower"),
            "bad time": (bad_time, "is not an ISO 8601 time"),
            "empty": (empty, "no result records")}


def test_bad_input_exits_2_with_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, (source, message) in _bad_sources(tmp_path).items():
        code, out = run_report(tmp_path / name, [source])
        err = capsys.readouterr().err
        assert code == 2, name
        assert err.startswith("harness report: error: ") and message in err and err.count("\n") == 1, (name, err)
        assert not out["html"], name


def test_help_shows_nightly_ci_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert report.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "harness report history/*.sqlite runs/ --out report.html --markdown" in text
    assert "a run id is\ncounted once" in text
    assert report.main([]) == 2


# --- real records ----------------------------------------------------------------------------------

REAL_RECORDS = Path(__file__).resolve().parent.parent / "fixtures" / "records"


def test_real_records_from_the_scenarios_go_through_the_whole_path(tmp_path: Path) -> None:
    """Records the four scenarios wrote on this project's TCG machine (copied
    unchanged into tests/fixtures/records) -> a store -> the report -> exit 0."""
    store_path = tmp_path / "results.sqlite"
    with ResultStore(store_path) as store:
        assert add_all(store, read_json_dir(REAL_RECORDS)) == 4
    code, out = run_report(tmp_path, [store_path, REAL_RECORDS])
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out["csv"])))
    metrics = {(r["config_key"].split("/")[0], r["metric"]) for r in rows}
    assert metrics == {("guest_tx", "mpps"), ("guest_rx", "mpps"), ("host_rings", "ping_rtt_avg_ms"),
                       ("host_rings", "tcp_host_to_guest_mbps"), ("host_rings", "tcp_guest_to_host_mbps"),
                       ("smoke", "console_ready_s"), ("smoke", "ssh_ready_s")}
    tx = next(r for r in rows if r["config_key"].startswith("guest_tx/"))
    assert tx["config_key"] == "guest_tx/linux/linux-pktgen->host-counters/60B/q1/tcg/novhost"
    assert float(tx["value"]) == pytest.approx(json.loads(next(REAL_RECORDS.glob("*guest_tx-60.json")).read_text())
                                               ["metrics"][0]["value"])
    assert "linux-pktgen" in out["html"] and "too few runs" in out["html"]
