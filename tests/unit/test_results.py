"""Result records and the SQLite store (a real SQLite file)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from harness.errors import ConfigError
from harness.results import REQUIRED_KEYS, Metric, Record, ResultStore, read_json_dir, validate, write_json


def _record(run_id="s1-guest_tx-60", value=0.066) -> Record:
    rec = Record(run_id, "guest_tx", "ci-tcg-1", guest_os="linux", accel="tcg", vhost=False,
                 engines={"sender": "linux-pktgen", "receiver": "host-counters"}, frame_bytes=60,
                 trials=[{"generator_mpps": value, "sender_counters_mpps": value, "receiver_counters_mpps": value,
                          "sent": 1, "received": 1, "seconds": 4.0}],
                 mpps={"generator": value, "sender_counters": value, "receiver_counters": value}, loss=0.0,
                 bottleneck={"side": "sender (guest)"}, threshold={"applied": True, "min": 0.02},
                 metrics=[Metric("mpps", "Mpps", "higher", value, [value])])
    rec.finish("pass")
    return rec


def test_record_has_the_contract_keys_and_round_trips(tmp_path):
    path = write_json(_record(), tmp_path)
    data = json.loads(path.read_text())
    assert set(REQUIRED_KEYS) <= data.keys()
    assert data["started_at"].endswith("Z") and data["schema"] == 1
    assert list(read_json_dir(tmp_path)) == [data]


def test_store_keeps_raw_trials_and_metrics_once_per_run_id(tmp_path):
    db = tmp_path / "results.sqlite"
    with ResultStore(db) as store:
        assert store.add(_record()) is True
        assert store.add(_record()) is False
        assert store.add(_record("s2-guest_tx-60", 0.07)) is True
        assert [r["run_id"] for r in store.records()] == ["s1-guest_tx-60", "s2-guest_tx-60"]
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT count(*) FROM trials").fetchone()[0] == 2
    assert con.execute("SELECT value FROM metrics WHERE run_id='s2-guest_tx-60'").fetchone()[0] == 0.07


WRITER = """
import sys
from harness.results import Metric, Record, ResultStore
with ResultStore(__import__("pathlib").Path(sys.argv[1])) as store:
    for i in range(int(sys.argv[2]), int(sys.argv[2]) + 20):
        rec = Record(f"p-{i}", "guest_tx", "tb", trials=[{"seconds": 1}], mpps={}, loss=0.0, bottleneck={},
                     threshold={}, metrics=[Metric("mpps", "Mpps", "higher", 1.0)])
        rec.finish("pass")
        store.add(rec)
"""


def test_store_takes_concurrent_writers(tmp_path):
    """Four processes append at once (separate processes, as parallel runs are)."""
    db = tmp_path / "results.sqlite"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(n * 20)]) for n in range(4)]
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0, 0]
    with ResultStore(db) as store:
        assert len(store.records()) == 80


@pytest.mark.parametrize("change,needle", [
    ({"verdict": "great"}, "verdict 'great'"),
    ({"schema": 99}, "newer than this harness"),
])
def test_validate_refuses_bad_records(change, needle):
    with pytest.raises(ConfigError, match=needle):
        validate({**_record().to_dict(), **change})
    broken = _record().to_dict()
    del broken["trials"]
    with pytest.raises(ConfigError, match="missing trials"):
        validate(broken)


def test_metric_direction_is_declared():
    with pytest.raises(ValueError):
        Metric("mpps", "Mpps", "up", 1.0)
