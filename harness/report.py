"""`harness report`: the nightly performance regression report over the result history.

Reads SQLite results stores and/or directories of JSON result records (from
any number of CI runners; a run id counts once), keeps one series per testbed,
configuration (`harness.results.config_key`) and metric, runs the detection in
`harness.stats` over each, and writes one self-contained HTML page (inline CSS
and SVG, no JavaScript), and on request a markdown summary, CSV and JSON.

Exit status: 0 nothing regressed (acknowledged regressions included), 1 at
least one confirmed regression that is not acknowledged, 2 bad input.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import re
import sqlite3
import sys
import tomllib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from markupsafe import Markup, escape

from harness import __version__
from harness.errors import ConfigError
from harness.results import config_key, read_json_dir, utc_now, validate
from harness.stats import Analysis, Params, Regression, analyse, static_floor

log = logging.getLogger(__name__)

MPPS_ALIASES = ("generator", "sender_counters", "receiver_counters")   # threshold.metric names meaning "mpps"
ACK_TOLERANCE_RUNS = 2      # an acknowledgement still matches if the estimate moves by this many runs
SQLITE_MAGIC = b"SQLite format 3\x00"

# Severity order: the first is the worst. A configuration shows its worst series.
STATUSES = ("regressed", "failed", "acknowledged", "below floor", "out of band", "improved", "ok", "too few runs",
            "no metrics")
STATUS_HELP = {
    "regressed": "confirmed regression, not acknowledged",
    "failed": "latest run failed without a measurement",
    "acknowledged": "confirmed regression, acknowledged",
    "below floor": "latest run past the threshold floor",
    "out of band": "latest run outside the trailing-window band",
    "improved": "a lasting improvement",
    "ok": "within its history",
    "too few runs": "not enough runs for the band yet",
    "no metrics": "records carry no metrics",
}

USAGE_EPILOG = """\
nightly use in CI (e.g. GitHub Actions), on each runner:
  1. download the history stores of all runners from the last nightly (history/*.sqlite)
  2. run the scenarios; their JSON records land in runs/
  3. add tonight's records to this runner's store (harness.results.add_all), then
     harness report history/*.sqlite runs/ --out report.html --markdown "$GITHUB_STEP_SUMMARY" \\
         --csv series.csv --json series.json --ack reports/acknowledged.toml
  4. upload this runner's store and the page as artifacts; the job fails on exit 1

Several runners merge: give every runner's store or JSON directory as a SOURCE; a run id is
counted once, series are kept per testbed and configuration and never mixed.
exit status: 0 nothing regressed (acknowledged regressions do not count), 1 confirmed
unacknowledged regression, 2 bad input (one error line)
"""


# --- the data ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Point:
    """One run's value of one metric."""

    run_id: str
    started_at: datetime
    verdict: str
    value: float
    trials: tuple[float, ...]
    floor: float | None
    record: dict[str, Any] = field(compare=False, repr=False)

    @property
    def spread(self) -> tuple[float, float, float]:
        data = self.trials or (self.value,)
        return min(data), float(np.median(data)), max(data)


@dataclass
class Series:
    """The history of one metric of one configuration on one testbed."""

    testbed: str
    config_key: str
    metric: str
    unit: str
    direction: str
    points: list[Point] = field(default_factory=list)

    @property
    def record(self) -> dict[str, Any]:
        return self.points[-1].record

    @property
    def scenario(self) -> str:
        return str(self.record.get("scenario"))

    @property
    def anchor(self) -> str:
        return "s-" + re.sub(r"[^A-Za-z0-9]+", "-", f"{self.testbed}-{self.config_key}-{self.metric}").strip("-")


@dataclass(frozen=True)
class Ack:
    """One entry of the acknowledgement file."""

    testbed: str
    metric: str
    first_bad_run_id: str
    reason: str
    config_key: str | None = None
    scenario: str | None = None
    where: str = ""

    def covers(self, series: Series) -> bool:
        return (self.testbed == series.testbed and self.metric == series.metric
                and self.config_key in (None, series.config_key) and self.scenario in (None, series.scenario))


@dataclass
class Finding:
    """A confirmed regression, with the runs around it and what changed between them."""

    series: Series
    regression: Regression
    changes: list[tuple[str, str, str]]
    ack: Ack | None = None

    @property
    def last_good(self) -> Point:
        return self.series.points[self.regression.last_good]

    @property
    def first_bad(self) -> Point:
        return self.series.points[self.regression.first_bad]


@dataclass
class SeriesReport:
    series: Series
    analysis: Analysis
    findings: list[Finding]
    status: str = "ok"


@dataclass
class Report:
    """Everything the outputs are rendered from."""

    records: list[dict[str, Any]]
    sources: list[str]
    duplicates: int
    params: Params
    series: list[SeriesReport]
    configs: dict[tuple[str, str], str]          # (testbed, config key) -> status
    unmatched_acks: list[Ack]
    generated_at: str = field(default_factory=utc_now)

    @property
    def findings(self) -> list[Finding]:
        return [f for s in self.series for f in s.findings]

    @property
    def failing(self) -> list[Finding]:
        return [f for f in self.findings if f.ack is None]


# --- reading the sources -----------------------------------------------------------------------

def read_store(path: Path) -> list[dict[str, Any]]:
    """Records of a results store, opened read-only (the history artifact is not written)."""
    with path.open("rb") as handle:
        if handle.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
            raise ConfigError(f"{path}: not a results store (not an SQLite database) nor a directory of JSON records")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT run_id, record FROM runs ORDER BY started_at, run_id").fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise ConfigError(f"{path}: not a harness results store: {exc}") from None
    records = []
    for run_id, text in rows:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{path}: run {run_id}: stored record is not valid JSON: {exc}") from None
        records.append(validate(data, f"{path}: run {run_id}"))
    return records


def read_source(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise ConfigError(f"{path}: no such file or directory")
    if path.is_dir():
        return list(read_json_dir(path))
    return read_store(path)


def merge_sources(paths: Sequence[Path]) -> tuple[list[dict[str, Any]], int]:
    """All records of all sources, one per run id (the first seen), oldest first; and the duplicate count."""
    seen: dict[str, dict[str, Any]] = {}
    duplicates = 0
    for path in paths:
        conflicts = []
        for record in read_source(path):
            run_id = str(record["run_id"])
            started_at(record, str(path))     # check it parses before anything else uses it
            if run_id in seen:
                duplicates += 1
                if seen[run_id] != record:
                    conflicts.append(run_id)
                continue
            seen[run_id] = record
        if conflicts:
            log.warning("%s: %d run id(s) already read with different content, first copies kept: %s%s", path,
                        len(conflicts), ", ".join(conflicts[:3]), ", ..." if len(conflicts) > 3 else "")
    records = sorted(seen.values(), key=lambda r: (started_at(r, "record"), str(r["run_id"])))
    return records, duplicates


def started_at(record: dict[str, Any], source: str) -> datetime:
    try:
        when = datetime.fromisoformat(str(record["started_at"]))
    except ValueError:
        raise ConfigError(f"{source}: run {record.get('run_id')}: started_at {record['started_at']!r} "
                          "is not an ISO 8601 time") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def metrics_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The record's metrics, checked; a malformed one is bad input."""
    where = f"run {record.get('run_id')}"
    metrics = record.get("metrics") or []
    if not isinstance(metrics, list):
        raise ConfigError(f"{where}: metrics must be a list")
    for m in metrics:
        if not isinstance(m, dict) or not isinstance(m.get("name"), str) or not isinstance(m.get("unit"), str):
            raise ConfigError(f"{where}: malformed metric {m!r}: needs name and unit")
        if m.get("direction") not in ("higher", "lower"):
            raise ConfigError(f"{where}: metric {m['name']}: direction must be higher or lower")
        if m.get("value") is not None and not _number(m["value"]):
            raise ConfigError(f"{where}: metric {m['name']}: value {m['value']!r} is not a number")
        if not isinstance(m.get("trials", []), list) or not all(_number(t) for t in m.get("trials", [])):
            raise ConfigError(f"{where}: metric {m['name']}: trials must be a list of numbers")
    return metrics


def build_series(records: Iterable[dict[str, Any]]) -> list[Series]:
    """One series per (testbed, configuration, metric, unit); skipped runs and runs without a value left out."""
    series: dict[tuple[str, str, str, str], Series] = {}
    for record in records:
        if record["verdict"] == "skip":
            continue
        for m in metrics_of(record):
            if m.get("value") is None:
                continue
            key = (str(record["testbed"]), config_key(record), m["name"], m["unit"])
            s = series.setdefault(key, Series(*key, direction=m["direction"]))
            if s.direction != m["direction"]:
                raise ConfigError(f"run {record['run_id']}: metric {m['name']} changes direction within its series")
            aliases = MPPS_ALIASES if m["name"] == "mpps" else ()
            s.points.append(Point(run_id=str(record["run_id"]), started_at=started_at(record, "record"),
                                  verdict=record["verdict"], value=float(m["value"]),
                                  trials=tuple(float(t) for t in m.get("trials") or ()),
                                  floor=static_floor(record.get("threshold"), m["name"], m["direction"], aliases),
                                  record=record))
    return sorted(series.values(), key=lambda s: (s.testbed, s.scenario, s.config_key, s.metric))


# --- what changed between two runs ----------------------------------------------------------------

def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def guest_kernel_identity(provenance: dict[str, Any]) -> str | None:
    """The guest kernel's identity, from whichever of the provenance keys carries it."""
    kernel = provenance.get("guest_kernel")
    if isinstance(kernel, dict):
        for key in ("ident", "kernel_ident", "release", "kernel_release", "version", "uname"):
            if kernel.get(key):
                return str(kernel[key])
        if kernel:
            return json.dumps(kernel, sort_keys=True)
    elif kernel:
        return str(kernel)
    image = provenance.get("image") or {}
    value = _dig(image, "kernel_ident") or _dig(image, "kernel_release")
    return str(value) if value else None


IDENTITY = {
    "harness git sha": lambda p: p.get("git_sha"),
    "harness version": lambda p: p.get("harness_version"),
    "guest kernel": guest_kernel_identity,
    "image": lambda p: _dig(p, "image", "disk_sha256"),
    "QEMU": lambda p: p.get("qemu_version"),
    "host kernel": lambda p: p.get("host_kernel"),
    "host CPU": lambda p: p.get("host_cpu"),
    "CPU governor": lambda p: p.get("cpu_governor"),
}


def identity(record: dict[str, Any]) -> dict[str, str]:
    provenance = record.get("provenance") or {}
    values = {name: get(provenance) for name, get in IDENTITY.items()}
    return {name: str(value) for name, value in values.items() if value not in (None, "")}


def what_changed(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, str, str]]:
    a, b = identity(before), identity(after)
    return [(name, a.get(name, "-"), b.get(name, "-")) for name in IDENTITY if a.get(name) != b.get(name)]


# --- acknowledgements --------------------------------------------------------------------------

ACK_KEYS = {"testbed", "metric", "first_bad_run_id", "reason", "config_key", "scenario"}


def load_acks(path: Path) -> list[Ack]:
    """Read the acknowledgement file (TOML, `[[acknowledged]]` tables); any fault is bad input."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: acknowledgement file not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not a valid TOML acknowledgement file: {exc}") from None
    extra = set(data) - {"acknowledged"}
    if extra:
        raise ConfigError(f"{path}: unknown top-level key(s) {', '.join(sorted(extra))}; "
                          "entries go in [[acknowledged]] tables")
    entries = data.get("acknowledged", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: 'acknowledged' must be an array of tables ([[acknowledged]])")
    acks = [_ack(entry, f"{path}: entry {n}") for n, entry in enumerate(entries, 1)]
    keys = Counter((a.testbed, a.config_key, a.scenario, a.metric, a.first_bad_run_id) for a in acks)
    repeated = [k for k, count in keys.items() if count > 1]
    if repeated:
        raise ConfigError(f"{path}: the same acknowledgement appears twice: {repeated[0]}")
    return acks


def _ack(entry: Any, where: str) -> Ack:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a table")
    unknown = set(entry) - ACK_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    missing = sorted({"testbed", "metric", "first_bad_run_id", "reason"} - set(entry))
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    if ("config_key" in entry) == ("scenario" in entry):
        raise ConfigError(f"{where}: give exactly one of config_key or scenario")
    for key, value in entry.items():
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: {key} must be a non-empty string")
    return Ack(**entry, where=where)


def match_ack(finding: Finding, acks: Sequence[Ack]) -> Ack | None:
    """The acknowledgement naming this regression's first bad run (or one within ACK_TOLERANCE_RUNS of it)."""
    index = {p.run_id: i for i, p in enumerate(finding.series.points)}
    first_bad = finding.regression.first_bad
    for ack in acks:
        named = index.get(ack.first_bad_run_id)
        if ack.covers(finding.series) and named is not None and abs(named - first_bad) <= ACK_TOLERANCE_RUNS:
            return ack
    return None


# --- analysis ----------------------------------------------------------------------------------

def series_status(report: SeriesReport, params: Params) -> str:
    analysis = report.analysis
    if any(f.ack is None for f in report.findings):
        return "regressed"
    if report.findings:
        return "acknowledged"
    if analysis.below_floor[-1]:
        return "below floor"
    if analysis.out_of_band[-1]:
        return "out of band"
    if analysis.improvements:
        return "improved"
    return "too few runs" if len(analysis.values) < params.min_window_runs else "ok"


def analyse_series(series: Series, params: Params, acks: Sequence[Ack]) -> SeriesReport:
    analysis = analyse([p.value for p in series.points], series.direction, params,
                       floor=series.points[-1].floor)
    findings = []
    for regression in analysis.regressions:
        before, after = series.points[regression.last_good], series.points[regression.first_bad]
        finding = Finding(series=series, regression=regression, changes=what_changed(before.record, after.record))
        finding.ack = match_ack(finding, acks)
        findings.append(finding)
    report = SeriesReport(series=series, analysis=analysis, findings=findings)
    report.status = series_status(report, params)
    return report


def config_statuses(records: Sequence[dict[str, Any]], series: Sequence[SeriesReport]) -> dict[tuple[str, str], str]:
    """Each configuration's worst status; "failed" when its latest run failed without a measurement."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        if record["verdict"] != "skip":
            latest[(str(record["testbed"]), config_key(record))] = record
    statuses: dict[tuple[str, str], list[str]] = defaultdict(list)
    for s in series:
        statuses[(s.series.testbed, s.series.config_key)].append(s.status)
    for key, record in latest.items():
        if record["verdict"] == "fail" and not any(m.get("value") is not None for m in metrics_of(record)):
            statuses[key].append("failed")
        statuses.setdefault(key, ["no metrics"])
    return {key: min(values, key=STATUSES.index) for key, values in statuses.items()}


def build_report(paths: Sequence[Path], params: Params, acks: Sequence[Ack]) -> Report:
    records, duplicates = merge_sources(paths)
    if not records:
        raise ConfigError(f"no result records in {', '.join(map(str, paths))}")
    reports = [analyse_series(s, params, acks) for s in build_series(records)]
    used = {f.ack for r in reports for f in r.findings if f.ack is not None}
    unmatched = [a for a in acks if a not in used]
    for ack in unmatched:
        log.warning("%s: acknowledgement matches no confirmed regression (run %s)", ack.where, ack.first_bad_run_id)
    return Report(records=records, sources=[str(p) for p in paths], duplicates=duplicates, params=params,
                  series=reports, configs=config_statuses(records, reports), unmatched_acks=unmatched)


# --- plots -------------------------------------------------------------------------------------

COLORS = {"value": "#1f4e79", "spread": "#9db3c8", "band": "#cfe3f5", "floor": "#b3261e", "bad": "#c62828",
          "good": "#2e7d32", "level": "#6b7785", "fail": "#c62828"}


def plot_series(report: SeriesReport, params: Params) -> str:
    """The series' history as an inline SVG element (no XML prolog, no external references)."""
    import matplotlib
    from matplotlib.figure import Figure

    series, analysis = report.series, report.analysis
    x = np.arange(len(series.points))
    fig = Figure(figsize=(10, 3.0), dpi=96)
    ax = fig.subplots()
    low = [b.low if b else np.nan for b in analysis.bands]
    high = [b.high if b else np.nan for b in analysis.bands]
    ax.fill_between(x, low, high, step="mid", color=COLORS["band"], alpha=0.8, linewidth=0,
                    label=f"{100 * (1 - params.band_alpha):.0f}% band (last {params.window} runs)")
    spreads = np.array([p.spread for p in series.points])
    ax.vlines(x, spreads[:, 0], spreads[:, 2], color=COLORS["spread"], linewidth=2.2, label="trials min-max")
    ax.plot(x, analysis.values, color=COLORS["value"], marker="o", markersize=3.5, linewidth=0.9,
            label=f"run value ({series.unit})")
    failed = [i for i, p in enumerate(series.points) if p.verdict == "fail"]
    if failed:
        ax.plot(x[failed], np.array(analysis.values)[failed], linestyle="none", marker="x", markersize=7,
                color=COLORS["fail"], label="verdict fail")
    floors = [p.floor if p.floor is not None else np.nan for p in series.points]
    if not np.all(np.isnan(floors)):
        ax.step(x, floors, where="mid", color=COLORS["floor"], linestyle="--", linewidth=1.2, label="threshold floor")
    _draw_levels(ax, report)
    ax.set_xlim(-0.8, len(x) - 0.2)
    ax.set_xticks(*_date_ticks(series.points))
    ax.set_ylabel(series.unit if series.metric.lower() == series.unit.lower() else f"{series.metric} ({series.unit})",
                  fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(axis="y", color="#e5e8ec", linewidth=0.8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": series.anchor}):
        fig.savefig(buffer, format="svg", bbox_inches="tight")
    return clean_svg(buffer.getvalue())


def _draw_levels(ax: Any, report: SeriesReport) -> None:
    """Segment means as flat lines, change points as labelled dotted lines."""
    analysis = report.analysis
    values = np.array(analysis.values)
    bounds = [0, *(c.index for c in analysis.changes), values.size]
    for n, (start, end) in enumerate(zip(bounds, bounds[1:], strict=False)):
        ax.hlines(values[start:end].mean(), start - 0.4, end - 0.6, color=COLORS["level"], linewidth=1.4, alpha=0.8,
                  label="level (segment mean)" if n == 0 else None)
    confirmed = {f.regression.first_bad for f in report.findings}
    top = ax.get_ylim()[1]
    labelled: set[str] = set()
    for change in analysis.changes:
        bad = (change.rel_change < 0) == (analysis.direction == "higher")
        color = COLORS["bad"] if bad else COLORS["good"]
        kind = "confirmed regression" if change.index in confirmed else "change point"
        ax.axvline(change.index - 0.5, color=color, linestyle="-" if change.index in confirmed else ":",
                   linewidth=1.3, label=None if kind in labelled else kind)
        labelled.add(kind)
        ax.annotate(f"{100 * change.rel_change:+.1f}%", (change.index - 0.5, top), xytext=(3, -10),
                    textcoords="offset points", color=color, fontsize=8, fontweight="bold")


def _date_ticks(points: Sequence[Point]) -> tuple[list[int], list[str]]:
    step = max(1, len(points) // 8)
    ticks = list(range(0, len(points), step))
    return ticks, [points[i].started_at.strftime("%m-%d") for i in ticks]


def clean_svg(svg: str) -> str:
    """Matplotlib's SVG file made an inline element: no prolog, DOCTYPE or RDF metadata (namespace URLs only)."""
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    return re.sub(r'\s(width|height)="[^"]*pt"', "", svg, count=2).replace("<svg ", '<svg class="chart" ', 1)


# --- outputs -------------------------------------------------------------------------------------

def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.{digits}g}"


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def fmt_p(value: float) -> str:
    """A p-value as "p = 3.1e-05", or "p < 1e-12" past float precision."""
    return "p < 1e-12" if value < 1e-12 else f"p = {value:.1e}"


def fmt_mean(value: float) -> str:
    return f"{value:#.4g}".rstrip(".")


def short(value: str, size: int = 12) -> str:
    """Hashes and long identities shortened for tables (full text stays in the title attribute)."""
    return value if len(value) <= size + 3 else value[:size] + "…"


def evidence(finding: Finding) -> str:
    stats = finding.regression.change.stats
    return (f"{fmt_p(stats.adjusted_pvalue)}; mean {fmt_mean(stats.mean_before)} (n={stats.n_before}) -> "
            f"{fmt_mean(stats.mean_after)} (n={stats.n_after})")


def breakable(text: str) -> Markup:
    """Escaped text that may wrap after each "/" (long configuration keys in narrow cells)."""
    return Markup("/<wbr>").join(escape(part) for part in text.split("/"))


def ack_toml(finding: Finding) -> str:
    """The acknowledgement-file entry that would acknowledge this regression (reason left to fill in)."""
    s = finding.series
    return (f'[[acknowledged]]\ntestbed = {json.dumps(s.testbed)}\nconfig_key = {json.dumps(s.config_key)}\n'
            f'metric = {json.dumps(s.metric)}\nfirst_bad_run_id = {json.dumps(finding.first_bad.run_id)}\n'
            'reason = "..."\n')


def verdict_line(report: Report) -> str:
    failing, acked = len(report.failing), len(report.findings) - len(report.failing)
    if failing:
        return f"{plural(failing, 'confirmed regression')}" + (f", {acked} more acknowledged" if acked else "")
    return f"no unacknowledged regression ({acked} acknowledged)" if acked else "no confirmed regression"


def status_counts(report: Report) -> list[tuple[str, int]]:
    counts = Counter(report.configs.values())
    return [(status, counts[status]) for status in STATUSES if counts[status]]


def render_markdown(report: Report, html_name: str | None) -> str:
    lines = [f"## vtnet performance: {verdict_line(report)}", ""]
    testbeds = len({t for t, _ in report.configs})
    lines.append(f"{plural(len(report.records), 'run')}, {plural(len(report.configs), 'configuration')}, "
                 f"{plural(testbeds, 'testbed')}; "
                 + ", ".join(f"{n} {s}" for s, n in status_counts(report)) + ".")
    if report.findings:
        lines += ["", "| | testbed | configuration | metric | last good -> first bad | change | evidence | "
                  "what changed | acknowledged |", "|---|---|---|---|---|---|---|---|---|"]
        for f in report.findings:
            changed = "; ".join(f"{name}: {short(a)} -> {short(b)}" for name, a, b in f.changes) or "nothing recorded"
            mark = ":red_circle:" if f.ack is None else ":large_orange_diamond:"
            acked = f"yes: {f.ack.reason}" if f.ack else "no"
            lines.append(f"| {mark} | {f.series.testbed} | `{f.series.config_key}` | {f.series.metric} | "
                         f"`{f.last_good.run_id}` -> `{f.first_bad.run_id}` | "
                         f"{100 * f.regression.change.rel_change:+.1f}% | {evidence(f)} | {changed} | {acked} |")
    watch = [s for s in report.series if s.status in ("below floor", "out of band")]
    if watch:
        lines += ["", "Latest run worth a look: " + ", ".join(
            f"`{s.series.testbed}/{s.series.config_key}` {s.series.metric} ({s.status})" for s in watch)]
    for ack in report.unmatched_acks:
        lines.append(f"\nNote: {ack.where} matches no confirmed regression (run `{ack.first_bad_run_id}`).")
    if html_name:
        lines += ["", f"Charts, status grid and provenance: `{html_name}`."]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("testbed", "scenario", "config_key", "metric", "unit", "direction", "run_id", "started_at", "verdict",
              "value", "trial_min", "trial_median", "trial_max", "trials", "floor", "band_low", "band_high",
              "change_point", "confirmed_regression", "status", "git_sha")


def series_rows(report: Report) -> Iterable[dict[str, Any]]:
    for s in report.series:
        changes = {c.index: c for c in s.analysis.changes}
        confirmed = {f.regression.first_bad for f in s.findings}
        for i, point in enumerate(s.series.points):
            band = s.analysis.bands[i]
            change = changes.get(i)
            low, median, high = point.spread
            yield {"testbed": s.series.testbed, "scenario": s.series.scenario, "config_key": s.series.config_key,
                   "metric": s.series.metric, "unit": s.series.unit, "direction": s.series.direction,
                   "run_id": point.run_id, "started_at": point.record["started_at"], "verdict": point.verdict,
                   "value": point.value, "trial_min": low, "trial_median": median, "trial_max": high,
                   "trials": len(point.trials), "floor": point.floor,
                   "band_low": band.low if band else None, "band_high": band.high if band else None,
                   "change_point": round(change.rel_change, 6) if change else None,
                   "confirmed_regression": i in confirmed, "status": s.status if i == len(s.series.points) - 1 else "",
                   "git_sha": (point.record.get("provenance") or {}).get("git_sha")}


def render_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in series_rows(report):
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return out.getvalue()


def finding_json(f: Finding) -> dict[str, Any]:
    stats = f.regression.change.stats
    return {"testbed": f.series.testbed, "config_key": f.series.config_key, "scenario": f.series.scenario,
            "metric": f.series.metric, "last_good_run_id": f.last_good.run_id, "first_bad_run_id": f.first_bad.run_id,
            "rel_change": f.regression.change.rel_change, "pvalue": stats.adjusted_pvalue,
            "mean_before": stats.mean_before, "mean_after": stats.mean_after, "n_before": stats.n_before,
            "n_after": stats.n_after, "still_present_pvalue": f.regression.current.adjusted_pvalue,
            "changed": [{"what": n, "before": a, "after": b} for n, a, b in f.changes],
            "acknowledged": f.ack is not None, "ack_reason": f.ack.reason if f.ack else None}


def render_json(report: Report) -> str:
    rows = list(series_rows(report))
    by_series: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_series[(row["testbed"], row["config_key"], row["metric"])].append(row)
    series = [{"testbed": s.series.testbed, "config_key": s.series.config_key, "metric": s.series.metric,
               "unit": s.series.unit, "direction": s.series.direction, "status": s.status,
               "change_points": [{"run_id": s.series.points[c.index].run_id, "rel_change": c.rel_change,
                                  "pvalue": c.pvalue} for c in s.analysis.changes],
               "points": by_series[(s.series.testbed, s.series.config_key, s.series.metric)]} for s in report.series]
    data = {"generated_at": report.generated_at, "harness_version": __version__, "verdict": verdict_line(report),
            "params": vars(report.params), "sources": report.sources, "runs": len(report.records),
            "duplicates": report.duplicates,
            "regressions": [finding_json(f) for f in report.findings], "series": series}
    return json.dumps(data, indent=1, default=str) + "\n"


# --- the HTML page -------------------------------------------------------------------------------

GRID_ROWS = ("scenario", "guest_os", "engines")
GRID_COLS = ("accel", "frame", "queues")


def grid_fields(record: dict[str, Any]) -> dict[str, str]:
    engines = record.get("engines") or {}
    return {"scenario": str(record.get("scenario")), "guest_os": str(record.get("guest_os") or "-"),
            "engines": f"{engines.get('sender', '?')} -> {engines.get('receiver', '?')}",
            "accel": f"{record.get('accel') or '?'}{' vhost' if record.get('vhost') else ''}",
            "frame": f"{record['frame_bytes']} B" if record.get("frame_bytes") else "no frame size",
            "queues": f"{record.get('queues')} q"}


def status_grids(report: Report) -> list[dict[str, Any]]:
    """Per testbed, a pivot of configurations: rows scenario x guest OS x engines, columns accel x frame x queues."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for record in report.records:
        latest[(str(record["testbed"]), config_key(record))] = record
    first_series: dict[tuple[str, str], SeriesReport] = {}       # the series that sets the configuration's status
    for s in sorted(report.series, key=lambda s: STATUSES.index(s.status)):
        first_series.setdefault((s.series.testbed, s.series.config_key), s)
    grids = []
    for testbed in sorted({t for t, _ in report.configs}):
        cells: dict[tuple[tuple[str, ...], tuple[str, ...]], dict[str, Any]] = {}
        for (tb, key), status in report.configs.items():
            if tb != testbed:
                continue
            f = grid_fields(latest[(tb, key)])
            first = first_series.get((tb, key))
            value = f"{fmt(first.series.points[-1].value)} {first.series.unit}" if first else ""
            cells[(tuple(f[k] for k in GRID_ROWS), tuple(f[k] for k in GRID_COLS))] = {
                "status": status, "value": value, "anchor": first.series.anchor if first else None, "key": key}
        rows = sorted({r for r, _ in cells})
        cols = sorted({c for _, c in cells}, key=lambda c: (c[0], int(c[1].split()[0]) if c[1][0].isdigit() else 0,
                                                            c[2]))
        grids.append({"testbed": testbed, "rows": rows, "cols": cols, "cells": cells})
    return grids


def provenance_tables(report: Report) -> list[dict[str, Any]]:
    """Per testbed: the latest run's facts, and every value each identity field took over the history."""
    tables = []
    for testbed in sorted({str(r["testbed"]) for r in report.records}):
        runs = [r for r in report.records if str(r["testbed"]) == testbed]
        history: dict[str, dict[str, list[str]]] = defaultdict(dict)
        for record in runs:
            for name, value in identity(record).items():
                history[name].setdefault(value, []).append(str(record["started_at"])[:10])
        latest = runs[-1]
        provenance = latest.get("provenance") or {}
        facts = [(name, value) for name, value in identity(latest).items()]
        facts += [(k, str(provenance[k])) for k in ("accel", "vhost", "host_cpu_count") if k in provenance]
        seen = {name: [(value, dates[0], dates[-1], len(dates)) for value, dates in values.items()]
                for name, values in history.items()}
        tables.append({"testbed": testbed, "runs": len(runs), "first": str(runs[0]["started_at"])[:10],
                       "last": str(latest["started_at"])[:10], "facts": facts, "seen": seen})
    return tables


def history_groups(report: Report) -> list[dict[str, Any]]:
    """Series grouped testbed -> configuration, each with its chart."""
    groups: dict[tuple[str, str], list[SeriesReport]] = defaultdict(list)
    for s in report.series:
        groups[(s.series.testbed, s.series.config_key)].append(s)
    ordered = sorted(groups.items(), key=lambda kv: STATUSES.index(report.configs.get(kv[0], "ok")))
    ordered = [(key, sorted(items, key=lambda s: STATUSES.index(s.status))) for key, items in ordered]
    return [{"testbed": tb, "config_key": key, "status": report.configs.get((tb, key), "ok"),
             "charts": [{"series": s.series, "status": s.status, "svg": plot_series(s, report.params),
                         "latest": s.series.points[-1], "runs": len(s.series.points)} for s in items]}
            for (tb, key), items in ordered]


def render_html(report: Report, title: str) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("harness", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), trim_blocks=True,
                             lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters.update(fmt=fmt, fmt_p=fmt_p, fmt_mean=fmt_mean, short=short, pct=lambda v: f"{100 * v:+.1f}%",
                       ack_toml=ack_toml, breakable=breakable)
    template = env.get_template("report.html.j2")
    testbeds = sorted({str(r["testbed"]) for r in report.records})
    return template.render(
        title=title, report=report, verdict=verdict_line(report), counts=status_counts(report),
        statuses=STATUSES, status_help=STATUS_HELP, grids=status_grids(report), groups=history_groups(report),
        provenance=provenance_tables(report), testbeds=testbeds, evidence=evidence, version=__version__,
        first=str(report.records[0]["started_at"])[:10], last=str(report.records[-1]["started_at"])[:10],
        params=report.params)


# --- command line --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness report", description=__doc__.split("\n\n")[0],
                                     epilog=USAGE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", metavar="SOURCE", type=Path,
                        help="a results store (SQLite) or a directory of JSON result records; several merge")
    parser.add_argument("--out", required=True, type=Path, metavar="FILE.html", help="the HTML report to write")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="also write a markdown summary (CI job summary)")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="also write the series as CSV, one row per run")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the series and regressions as JSON")
    parser.add_argument("--ack", type=Path, metavar="FILE",
                        help="acknowledged regressions (TOML, e.g. reports/acknowledged.toml)")
    defaults = Params()
    parser.add_argument("--window", type=int, default=defaults.window, metavar="N",
                        help="runs in the trailing window for the band (default %(default)s)")
    parser.add_argument("--min-runs", type=int, default=defaults.min_window_runs, metavar="N",
                        help="runs the window needs before the band is drawn (default %(default)s)")
    parser.add_argument("--max-pvalue", type=float, default=defaults.max_pvalue, metavar="P",
                        help="change-point significance, after correction (default %(default)s)")
    parser.add_argument("--min-change", type=float, default=100 * defaults.min_magnitude, metavar="PCT",
                        help="smallest change of the mean that counts, in %% (default %(default)s)")
    parser.add_argument("--title", default="vtnet / virtio-net nightly performance", help="the page title")
    return parser


def write_outputs(report: Report, args: argparse.Namespace) -> None:
    outputs = [(args.out, lambda: render_html(report, args.title))]
    if args.markdown:
        outputs.append((args.markdown, lambda: render_markdown(report, args.out.name)))
    if args.csv:
        outputs.append((args.csv, lambda: render_csv(report)))
    if args.json:
        outputs.append((args.json, lambda: render_json(report)))
    for path, render in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(), encoding="utf-8")
        log.info("wrote %s", path)


def run(args: argparse.Namespace) -> int:
    try:
        params = Params(window=args.window, min_window_runs=args.min_runs, max_pvalue=args.max_pvalue,
                        min_magnitude=args.min_change / 100)
    except ValueError as exc:
        raise ConfigError(f"bad detection parameters: {exc}") from None
    acks = load_acks(args.ack) if args.ack else []
    report = build_report(args.sources, params, acks)
    write_outputs(report, args)
    print(f"harness report: {verdict_line(report)}; {len(report.records)} runs, {len(report.series)} series; "
          f"wrote {args.out}")
    for f in report.findings:
        state = f"acknowledged: {f.ack.reason}" if f.ack else "NOT acknowledged"
        print(f"  {f.series.testbed} {f.series.config_key} {f.series.metric}: "
              f"{100 * f.regression.change.rel_change:+.1f}% from run {f.first_bad.run_id} ({state})")
    return 1 if report.failing else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:      # --help (0) or a usage error (2), already printed by argparse
        return int(exc.code or 0)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="harness report: %(levelname)s: %(message)s")
    try:
        return run(args)
    except ConfigError as exc:
        hint = f" (what to do: {exc.hint})" if exc.hint else ""
        print(f"harness report: error: {exc.message}{hint}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"harness report: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
