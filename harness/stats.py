"""Regression detection over the nightly history of one metric: pure functions.

A *series* is the run-by-run values of one metric of one configuration on one
testbed (one value per run: the metric's value, the median of its trials),
oldest first. Three checks run over it:

1. **Static floor** (`static_floor`): the threshold profile's limit, for the
   metric it names. A run past it failed its own verdict already; the report
   shows it, it does not decide a regression.

2. **Trailing-window boundary** (`trailing_band`): for run *i*, a two-sided
   t-based *prediction interval* for one new observation from up to `window`
   previous runs: ``mean +/- t(1 - alpha/2, n - 1) * sd * sqrt(1 + 1/n)``,
   active once the window holds `min_window_runs` runs. The window stays
   within one level: after a change point (3) the new level's runs are judged
   by the old level's band until the new level has `min_window_runs` runs of
   its own. Why a prediction interval and not ``median - k * IQR``: under the
   usual model of nightly numbers (a level plus Gaussian night-to-night noise)
   its false-alarm rate per run is exactly `alpha` whatever the window size,
   so the one knob means what it says; ``k * IQR`` has no calibrated rate for
   windows of 5-15 runs, and an IQR from so few runs is coarse. The price: an
   outlier night inside the window widens the band for a while, which errs
   towards fewer alarms, never more. The band is a per-run warning ("out of
   band"); it never fails the job by itself.

3. **Change points** (`change_points`): E-divisive means (Matteson & James
   2014) as used by MongoDB's signal-processing CI analysis and Apache Otava
   (Hunter, Fleming et al. 2023). Split phase: recursively split each segment
   at the (tau, kappa) maximising the energy statistic between
   segment[start:tau] and segment[tau:kappa] (kappa free, so a change that is
   later undone is found too), keeping candidates that pass a relaxed test
   (10 x `max_pvalue`, Otava's first pass). Merge phase (Hunter's): re-test
   every candidate against its two neighbouring segments and drop the weakest
   until each has ``p < max_pvalue`` and moves the mean by at least
   `min_magnitude`. The test is Student's pooled two-sample t-test, its p
   Bonferroni-corrected for the number of split positions the segment offered
   (the split was chosen as the best of them). Segments are at least
   `min_segment` runs long, so one night is never a segment of its own.
   Measured on noise-only histories, the correction and the pooled test (a
   Welch test trusts the tiny spread of a 3-run segment) took false alarms
   from 2.2 % of 45-run histories to 0.02 % (README, "The nightly performance report").

A **confirmed regression** (`confirmed_regressions`) is a change point at run
*i* such that:

- it survived the merge phase and its change is in the metric's bad
  direction (down for "higher is better", up for "lower is better");
- at least `min_segment` runs sit at or after *i* (the new level was seen on
  several nights);
- run *i* itself sits nearer the new level than the old one (with only
  `min_segment` runs after a change, a good night next to two bad ones would
  otherwise be named the first bad run);
- the latest segment (from the last change point to the newest run) is still
  worse than the segment just before *i*, by at least `min_magnitude`, with
  ``p < max_pvalue`` in a t-test between the two. A regression that later
  recovered stays a change point, not a confirmed regression; a regression in
  two steps gives two.

Run *i* is the first bad run, run *i - 1* the last good one. A *lasting
improvement* is the mirror image, except that its level must also beat every
earlier level (climbing out of a dip is a recovery, not an improvement).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

log = logging.getLogger(__name__)

Values = Sequence[float] | np.ndarray     # a series or a stretch of one

HIGHER = "higher"
LOWER = "lower"


@dataclass(frozen=True)
class Params:
    """Detection parameters (defaults are the report's defaults)."""

    window: int = 10                # trailing-window length, runs
    min_window_runs: int = 5        # the band is active from this many runs in the window
    band_alpha: float = 0.01        # two-sided: a 99 % prediction interval
    max_pvalue: float = 0.001       # change-point significance (Otava's default)
    min_magnitude: float = 0.02     # relative change of the mean a change point must reach
    min_segment: int = 3            # runs per segment, so also runs needed to confirm

    def __post_init__(self) -> None:
        if self.window < 2 or not 2 <= self.min_window_runs <= self.window:
            raise ValueError("need 2 <= min_window_runs <= window")
        if not 0 < self.band_alpha < 1 or not 0 < self.max_pvalue < 1:
            raise ValueError("band_alpha and max_pvalue must be in (0, 1)")
        if self.min_magnitude < 0 or self.min_segment < 2:
            raise ValueError("min_magnitude must be >= 0 and min_segment >= 2")


@dataclass(frozen=True)
class Band:
    """The trailing-window prediction interval for one run."""

    low: float
    high: float
    center: float
    n: int


@dataclass(frozen=True)
class Comparison:
    """Two adjacent stretches of a series compared with Welch's t-test."""

    mean_before: float
    mean_after: float
    sd_before: float
    sd_after: float
    n_before: int
    n_after: int
    pvalue: float           # Welch's two-sided p-value for this one split
    searched: int = 1       # how many split positions the split was chosen from

    @property
    def adjusted_pvalue(self) -> float:
        """`pvalue` Bonferroni-corrected for the split positions searched (selection of the best split)."""
        return min(1.0, self.pvalue * self.searched)

    @property
    def rel_change(self) -> float:
        """(after - before) / |before|; infinite when before is 0 and they differ."""
        if self.mean_before == 0:
            return 0.0 if self.mean_after == 0 else math.copysign(math.inf, self.mean_after)
        return (self.mean_after - self.mean_before) / abs(self.mean_before)


@dataclass(frozen=True)
class ChangePoint:
    """A change of level starting at series index `index` (the first run of the new level)."""

    index: int
    stats: Comparison

    @property
    def rel_change(self) -> float:
        return self.stats.rel_change

    @property
    def pvalue(self) -> float:
        """The adjusted p-value: the one compared with `max_pvalue`."""
        return self.stats.adjusted_pvalue


@dataclass(frozen=True)
class Regression:
    """A change point whose new level still holds: a confirmed regression (or a lasting improvement).

    `current` compares the level before the change with the latest segment.
    """

    change: ChangePoint
    current: Comparison     # the segment before the change vs the latest segment

    @property
    def first_bad(self) -> int:
        return self.change.index

    @property
    def last_good(self) -> int:
        return self.change.index - 1


@dataclass(frozen=True)
class Analysis:
    """Everything the report shows about one series."""

    values: tuple[float, ...]
    direction: str
    floor: float | None
    bands: tuple[Band | None, ...]
    changes: tuple[ChangePoint, ...]
    regressions: tuple[Regression, ...]
    improvements: tuple[Regression, ...]

    @property
    def below_floor(self) -> tuple[bool, ...]:
        return tuple(past_floor(v, self.floor, self.direction) for v in self.values)

    @property
    def out_of_band(self) -> tuple[bool, ...]:
        return tuple(outside_band(v, b, self.direction) for v, b in zip(self.values, self.bands, strict=True))


def check_direction(direction: str) -> None:
    if direction not in (HIGHER, LOWER):
        raise ValueError(f"direction must be {HIGHER!r} or {LOWER!r}, not {direction!r}")


def is_worse(change: float, direction: str) -> bool:
    """True when a change of the mean by `change` is in the bad direction."""
    check_direction(direction)
    return change < 0 if direction == HIGHER else change > 0


# --- static floor -------------------------------------------------------------------------------

def static_floor(threshold: dict[str, object] | None, metric: str, direction: str,
                 aliases: Sequence[str] = ()) -> float | None:
    """The threshold profile's limit for `metric`, or None when there is none.

    The threshold applies when it was applied to the verdict and names this
    metric (or one of `aliases`, e.g. the `mpps` keys for the "mpps" metric).
    For a higher-is-better metric the limit is ``min``; for a lower-is-better
    one it is ``max`` (a ceiling).
    """
    check_direction(direction)
    if not threshold or not threshold.get("applied"):
        return None
    if threshold.get("metric") not in (metric, *aliases):
        return None
    limit = threshold.get("min" if direction == HIGHER else "max")
    return float(limit) if isinstance(limit, int | float) and not isinstance(limit, bool) else None


def past_floor(value: float, floor: float | None, direction: str) -> bool:
    if floor is None:
        return False
    return value < floor if direction == HIGHER else value > floor


# --- trailing-window prediction interval -------------------------------------------------------

@functools.lru_cache(maxsize=256)
def _t_quantile(q: float, df: int) -> float:
    return float(sps.t.ppf(q, df))


def prediction_interval(window: Sequence[float], alpha: float) -> Band:
    """Two-sided (1 - alpha) prediction interval for one new value after `window`."""
    data = np.asarray(window, dtype=float)
    n = data.size
    center = float(data.mean())
    sd = float(data.std(ddof=1))
    half = _t_quantile(1 - alpha / 2, n - 1) * sd * math.sqrt(1 + 1 / n)
    return Band(low=center - half, high=center + half, center=center, n=n)


def trailing_band(values: Sequence[float], params: Params, changes: Sequence[int] = ()) -> tuple[Band | None, ...]:
    """For each run, the band from up to `params.window` runs before it (None while too few).

    The window stays within one level (`changes`: indexes of the first runs of new
    levels): a band over two levels says nothing. Until a new level has
    `min_window_runs` runs, its runs are judged by the band of the level before it.
    """
    starts = sorted({0, *changes})
    bands: list[Band | None] = []
    for i in range(len(values)):
        level = max(c for c in starts if c <= i)
        if i - level < params.min_window_runs and level > 0:      # a young level: the previous level's band
            previous = max(c for c in starts if c < level)
            window = values[max(previous, level - params.window):level]
        else:
            window = values[max(level, i - params.window):i]
        bands.append(prediction_interval(window, params.band_alpha)
                     if len(window) >= params.min_window_runs else None)
    return tuple(bands)


def outside_band(value: float, band: Band | None, direction: str) -> bool:
    """True when `value` is past the band on the metric's bad side."""
    if band is None:
        return False
    return value < band.low if direction == HIGHER else value > band.high


# --- change points: E-divisive means with t-test significance ----------------------------------

def compare(before: Values, after: Values, searched: int = 1) -> Comparison:
    """Welch's two-sided t-test between two stretches of a series.

    `searched` is the number of split positions the boundary between them was
    chosen from; it only feeds `Comparison.adjusted_pvalue`.
    """
    a = np.asarray(before, dtype=float)
    b = np.asarray(after, dtype=float)
    sd_a = float(a.std(ddof=1)) if a.size > 1 else 0.0
    sd_b = float(b.std(ddof=1)) if b.size > 1 else 0.0
    mean_a, mean_b = float(a.mean()), float(b.mean())
    if sd_a == 0 and sd_b == 0:
        pvalue = 1.0 if mean_a == mean_b else 0.0     # constant stretches: no noise to weigh against
    else:
        pvalue = float(sps.ttest_ind(a, b, equal_var=True).pvalue)
    return Comparison(mean_before=mean_a, mean_after=mean_b, sd_before=sd_a, sd_after=sd_b,
                      n_before=int(a.size), n_after=int(b.size), pvalue=pvalue, searched=max(1, searched))



def energy_candidate(segment: Values, min_segment: int) -> tuple[int, int, float] | None:
    """The split of `segment` maximising the E-divisive statistic, as (tau, kappa, qhat).

    For a left part x = segment[:tau] (n values) and a right part y = segment[tau:kappa]
    (m values), ``qhat = n*m/(n+m) * (2/(n*m) sum|x-y| - 1/C(n,2) sum|x-x'| - 1/C(m,2) sum|y-y'|)``
    (Matteson & James). Maximising over kappa as well as tau finds a change that is
    undone later (a dip, or an improvement followed by a regression), which a split
    against everything after tau would dilute. Pair sums come from a 2-D prefix sum of
    the distance matrix: O(len^2) for all (tau, kappa).
    """
    x = np.asarray(segment, dtype=float)
    size = x.size
    if size < 2 * min_segment:
        return None
    prefix = np.zeros((size + 1, size + 1))
    prefix[1:, 1:] = np.abs(x[:, None] - x[None, :]).cumsum(axis=0).cumsum(axis=1)

    def block(r0: Any, r1: Any, c0: Any, c1: Any) -> np.ndarray:
        return prefix[r1, c1] - prefix[r0, c1] - prefix[r1, c0] + prefix[r0, c0]

    tau, kappa = np.meshgrid(np.arange(min_segment, size - min_segment + 1), np.arange(size + 1), indexing="ij")
    valid = kappa - tau >= min_segment
    tau, kappa = tau[valid], kappa[valid]
    n, m = tau.astype(float), (kappa - tau).astype(float)
    energy = (2 * block(0, tau, tau, kappa) / (n * m) - block(0, tau, 0, tau) / (n * (n - 1))
              - block(tau, kappa, tau, kappa) / (m * (m - 1)))
    qhat = n * m / (n + m) * energy
    best = int(np.argmax(qhat))
    return int(tau[best]), int(kappa[best]), float(qhat[best])


def split_positions(size: int, min_segment: int) -> int:
    """How many ways a stretch of `size` runs splits into two parts of at least `min_segment`."""
    return max(1, size - 2 * min_segment + 1)


def compare_split(values: np.ndarray, start: int, index: int, end: int, min_segment: int) -> Comparison:
    """Compare values[start:index] with values[index:end], a split chosen among all positions of [start, end)."""
    return compare(values[start:index], values[index:end], split_positions(end - start, min_segment))


def _split(values: np.ndarray, start: int, end: int, params: Params, found: list[int]) -> None:
    """Binary segmentation with a relaxed test (Otava's first pass: 10 x max_pvalue); the merge pass decides."""
    candidate = energy_candidate(values[start:end], params.min_segment)
    if candidate is None:
        return
    index, kappa = start + candidate[0], start + candidate[1]
    relaxed = min(0.5, 10 * params.max_pvalue)
    if compare_split(values, start, index, kappa, params.min_segment).adjusted_pvalue >= relaxed:
        return
    found.append(index)
    _split(values, start, index, params, found)
    _split(values, index, end, params, found)


def _stats_at(values: np.ndarray, indexes: list[int], min_segment: int) -> list[ChangePoint]:
    bounds = [0, *indexes, values.size]
    return [ChangePoint(index=b, stats=compare_split(values, a, b, c, min_segment))
            for a, b, c in zip(bounds, bounds[1:], bounds[2:], strict=False)]


def _weakest(points: list[ChangePoint], params: Params) -> int | None:
    """Position of the change point to drop next in the merge pass, or None if all hold."""
    worst = max(range(len(points)), key=lambda k: points[k].pvalue)
    if points[worst].pvalue >= params.max_pvalue:
        return worst
    smallest = min(range(len(points)), key=lambda k: abs(points[k].rel_change))
    return smallest if abs(points[smallest].rel_change) < params.min_magnitude else None


def change_points(values: Sequence[float], params: Params) -> tuple[ChangePoint, ...]:
    """Significant changes of level in `values`, oldest first (E-divisive split, then merge)."""
    data = np.asarray(values, dtype=float)
    found: list[int] = []
    _split(data, 0, data.size, params, found)
    indexes = sorted(found)
    points = _stats_at(data, indexes, params.min_segment)
    while points:
        drop = _weakest(points, params)
        if drop is None:
            break
        log.debug("merge: dropping change point at %d (adjusted p=%.3g, change %.2f%%)", points[drop].index,
                  points[drop].pvalue, 100 * points[drop].rel_change)
        del indexes[drop]
        points = _stats_at(data, indexes, params.min_segment)
    return tuple(points)


# --- confirmed regressions ------------------------------------------------------------------------

def _nearer_new_level(value: float, change: ChangePoint) -> bool:
    return abs(value - change.stats.mean_after) < abs(value - change.stats.mean_before)


def _still_holds(values: np.ndarray, bounds: list[int], k: int, params: Params, direction: str,
                 worse: bool) -> Comparison | None:
    """The segment before change point k against the latest segment, if the latest is still past it."""
    before = values[bounds[k]:bounds[k + 1]]
    current = compare(before, values[bounds[-1]:])
    holds = (current.adjusted_pvalue < params.max_pvalue and abs(current.rel_change) >= params.min_magnitude
             and is_worse(current.rel_change, direction) == worse)
    return current if holds else None


def confirmed_regressions(values: Sequence[float], changes: Sequence[ChangePoint], direction: str,
                          params: Params) -> tuple[Regression, ...]:
    """Change points in the bad direction that the latest runs still sit on (see module doc)."""
    check_direction(direction)
    data = np.asarray(values, dtype=float)
    bounds = [0, *(c.index for c in changes)]
    found = []
    for k, change in enumerate(changes):
        if (not is_worse(change.rel_change, direction) or data.size - change.index < params.min_segment
                or not _nearer_new_level(float(data[change.index]), change)):
            continue
        current = _still_holds(data, bounds, k, params, direction, worse=True)
        if current is not None:
            found.append(Regression(change=change, current=current))
    return tuple(found)


def lasting_improvements(values: Sequence[float], changes: Sequence[ChangePoint], direction: str,
                         params: Params) -> tuple[Regression, ...]:
    """Changes for the better whose level the latest segment holds, above every level before them.

    Stricter than a regression on purpose: climbing back out of a dip is a recovery, not an improvement.
    """
    check_direction(direction)
    data = np.asarray(values, dtype=float)
    bounds = [0, *(c.index for c in changes)]
    found = []
    for k, change in enumerate(changes):
        if is_worse(change.rel_change, direction):
            continue
        current = _still_holds(data, bounds, k, params, direction, worse=False)
        beats_all = all(_still_holds(data, bounds, j, params, direction, worse=False) for j in range(k))
        if current is not None and beats_all:
            found.append(Regression(change=change, current=current))
    return tuple(found)


def analyse(values: Sequence[float], direction: str, params: Params, floor: float | None = None) -> Analysis:
    """Floor, band, change points, confirmed regressions and lasting improvements of a series."""
    check_direction(direction)
    data = tuple(float(v) for v in values)
    if not all(math.isfinite(v) for v in data):
        raise ValueError("series values must be finite numbers")
    changes = change_points(data, params)
    bands = trailing_band(data, params, [c.index for c in changes])
    return Analysis(values=data, direction=direction, floor=floor, bands=bands,
                    changes=changes, regressions=confirmed_regressions(data, changes, direction, params),
                    improvements=lasting_improvements(data, changes, direction, params))
