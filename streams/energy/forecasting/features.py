"""Direct multi-horizon features for load forecasting, with no lookahead.

A training or prediction *row* is a pair (origin ``i``, horizon step ``k``): the
forecast is issued at grid position ``i`` (observations at positions ``< i`` are
known) for the target position ``j = i + k``.  Every feature of a row reads the
load only at positions ``< i``; calendar and temperature are read at ``j`` (they
are known or forecast in advance).

The target is normalised: ``(y[j] - base) / scale`` with ``base`` the load one
week before the target (the weekly seasonal-naive forecast) and ``scale`` the
mean absolute load of the week before the origin.  This works for net load that
goes negative (rooftop solar) and lets one model serve feeders of any size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from streams.energy.forecasting.calendar import Calendar
from streams.energy.forecasting.errors import ForecastDataError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

FEATURE_NAMES: tuple[str, ...] = (
    "horizon_step",
    "minute_of_day",
    "weekday",
    "holiday",
    "holiday_base_day",
    "holiday_last_day",
    "lag_day",
    "lag_2week",
    "profile_7d",
    "level_day_change",
    "level_week_change",
    "recent_change",
    "last_change",
    "std_day",
    "base_over_scale",
    "temperature",
    "temperature_change_week",
)


@dataclass(frozen=True)
class Rows:
    """Feature matrix of a set of (origin, horizon step) rows."""

    X: FloatArray
    base: FloatArray
    scale: FloatArray
    origin: IntArray
    target: IntArray


def infer_step(index: pd.DatetimeIndex) -> pd.Timedelta:
    """The series' resolution: the most common spacing between timestamps."""
    if len(index) < 3:
        raise ForecastDataError("need at least 3 timestamps to infer the resolution")
    diffs = pd.Series(index[1:] - index[:-1])
    diffs = diffs[diffs > pd.Timedelta(0)]
    if diffs.empty:
        raise ForecastDataError("timestamps do not increase")
    step = pd.Timedelta(diffs.mode().iloc[0])
    if pd.Timedelta(days=1) % step != pd.Timedelta(0):
        raise ForecastDataError(f"resolution {step} must divide a day")
    return step


def regularize(series: pd.Series, step: pd.Timedelta | None = None) -> pd.Series:
    """Sort, de-duplicate (last wins) and reindex ``series`` onto a full UTC grid.

    Missing steps become NaN.  The index must be timezone-aware.
    """
    if not isinstance(series.index, pd.DatetimeIndex) or series.index.tz is None:
        raise ForecastDataError("the history needs a timezone-aware DatetimeIndex")
    s = series.astype("float64").sort_index()
    index = pd.DatetimeIndex(s.index).tz_convert("UTC")
    s.index = index
    s = s[~index.duplicated(keep="last")]
    index = pd.DatetimeIndex(s.index)
    if step is None:
        step = infer_step(index)
    grid = pd.date_range(index[0].floor(step), index[-1], freq=step, tz="UTC")
    if len(grid) and not index.isin(grid).all():
        # timestamps off the grid: put each on the step it falls in
        s = s.groupby(index.floor(step)).last()
    return s.reindex(grid)


def _take(y: FloatArray, idx: IntArray) -> FloatArray:
    out = np.full(idx.shape, np.nan)
    ok = (idx >= 0) & (idx < len(y))
    out[ok] = y[idx[ok]]
    return out


class _Windows:
    """O(1) NaN-aware window means and standard deviations over ``y[a:b]``."""

    def __init__(self, y: FloatArray) -> None:
        finite = np.isfinite(y)
        v = np.where(finite, y, 0.0)
        self.n = len(y)
        self.cs = np.concatenate([[0.0], np.cumsum(v)])
        self.cs2 = np.concatenate([[0.0], np.cumsum(v * v)])
        self.cabs = np.concatenate([[0.0], np.cumsum(np.abs(v))])
        self.cnt = np.concatenate([[0.0], np.cumsum(finite)])

    def _span(self, a: IntArray, b: IntArray) -> tuple[IntArray, IntArray, FloatArray]:
        a = np.clip(a, 0, self.n)
        b = np.clip(b, 0, self.n)
        cnt = self.cnt[b] - self.cnt[a]
        return a, b, cnt

    def mean(self, a: IntArray, b: IntArray) -> FloatArray:
        a, b, cnt = self._span(a, b)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(cnt > 0, (self.cs[b] - self.cs[a]) / cnt, np.nan)

    def mean_abs(self, a: IntArray, b: IntArray) -> FloatArray:
        a, b, cnt = self._span(a, b)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(cnt > 0, (self.cabs[b] - self.cabs[a]) / cnt, np.nan)

    def std(self, a: IntArray, b: IntArray) -> FloatArray:
        a, b, cnt = self._span(a, b)
        with np.errstate(invalid="ignore", divide="ignore"):
            m = (self.cs[b] - self.cs[a]) / cnt
            var = (self.cs2[b] - self.cs2[a]) / cnt - m * m
            return np.where(cnt > 1, np.sqrt(np.maximum(var, 0.0)), np.nan)


def build_rows(
    y: FloatArray,
    origins: IntArray,
    horizon: int,
    steps_per_day: int,
    calendar: Calendar,
    temperature: FloatArray | None = None,
) -> Rows:
    """Features of every (origin, step) row, ``origins x range(horizon)``.

    ``y`` is the load on the grid; only ``y[:origin]`` is read for a row.  ``calendar``
    and ``temperature`` must cover every target position (``max(origins) + horizon``).
    """
    D = steps_per_day
    W = 7 * D
    if not 0 < horizon <= W:
        raise ForecastDataError(f"horizon must be 1..{W} steps (one week)")
    o = np.asarray(origins, dtype=np.int64)
    k = np.arange(horizon, dtype=np.int64)
    O = np.repeat(o, horizon)  # noqa: E741 - origin / step / target positions
    K = np.tile(k, len(o))
    J = O + K
    if len(calendar.weekday) < (int(J.max()) + 1 if len(J) else 0):
        raise ForecastDataError("the calendar does not cover every target")
    win = _Windows(y)
    # days back to the most recent same time of day that is observed (< origin)
    nd = (K // D + 1).astype(np.int64)
    lag_w = _take(y, J - W)
    lag_d = _take(y, J - D * nd)
    lag_2w = _take(y, J - 2 * W)
    same_time = np.stack([_take(y, J - D * (nd + m)) for m in range(7)])
    n_same = np.isfinite(same_time).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        prof = np.where(n_same > 0, np.nansum(same_time, axis=0) / n_same, np.nan)
    base = np.where(np.isfinite(lag_w), lag_w, np.where(np.isfinite(lag_d), lag_d, prof))
    # origin-level quantities (computed per origin, then repeated over the horizon)
    scale_o = win.mean_abs(o - W, o)
    scale_o = np.where(np.isfinite(scale_o) & (scale_o > 0), scale_o, np.nan)
    lvl_d = win.mean(o - D, o) - win.mean(o - D - W, o - W)
    lvl_w = win.mean(o - W, o) - win.mean(o - 2 * W, o - W)
    rec = win.mean(o - 4, o) - win.mean(o - 4 - W, o - W)
    last = _take(y, o - 1) - _take(y, o - 1 - W)
    std_d = win.std(o - D, o)
    scale = np.repeat(scale_o, horizon)

    def rel(x: FloatArray) -> FloatArray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(x / scale, dtype=np.float64)

    def per_origin(x: FloatArray) -> FloatArray:
        return rel(np.repeat(x, horizon))

    if temperature is not None:
        temp = _take(temperature, J)
        temp_change = temp - _take(temperature, J - W)
    else:
        temp = np.full(len(J), np.nan)
        temp_change = np.full(len(J), np.nan)
    X = np.column_stack(
        [
            K.astype(np.float64),
            calendar.step_of_day[J],
            calendar.weekday[J],
            calendar.holiday[J],
            _take(calendar.holiday, J - W),
            _take(calendar.holiday, J - D * nd),
            rel(lag_d - base),
            rel(lag_2w - base),
            rel(prof - base),
            per_origin(lvl_d),
            per_origin(lvl_w),
            per_origin(rec),
            per_origin(last),
            per_origin(std_d),
            rel(base),
            temp,
            temp_change,
        ]
    )
    return Rows(X=X, base=base, scale=scale, origin=O, target=J)
