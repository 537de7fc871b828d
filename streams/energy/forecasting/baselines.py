"""Baselines a utility would otherwise use: weekly seasonal naive, Holt-Winters, MSTL+ETS.

Each produces P10/P90 by adding the 10th/90th percentile of its own in-sample residuals
to the point forecast, so that pinball loss and coverage are comparable with ours:

* seasonal naive: residuals ``y[t] - y[t - period]`` over the history (a one-period-ahead
  error, i.e. the same error the forecast makes);
* Holt-Winters and MSTL+ETS: one-step-ahead in-sample residuals ``y - fitted`` of the
  fitted model (these understate day-ahead errors, so their bands are usually too narrow).

statsmodels is imported lazily; only the backtest needs it.
"""

from __future__ import annotations

import warnings

import numpy as np

from streams.energy.forecasting.base import FloatArray, GridForecaster
from streams.energy.forecasting.calendar import Calendar
from streams.energy.forecasting.errors import ForecastDataError


def _fill(y: FloatArray, period: int) -> FloatArray:
    """Fill NaN with the value one period earlier (else later, else linear)."""
    out = y.copy()
    bad = ~np.isfinite(out)
    if not bad.any():
        return out
    for i in np.flatnonzero(bad):
        if i >= period and np.isfinite(out[i - period]):
            out[i] = out[i - period]
    bad = ~np.isfinite(out)
    if bad.any():
        good = np.flatnonzero(~bad)
        if len(good) == 0:
            raise ForecastDataError("the history has no observations")
        out[bad] = np.interp(np.flatnonzero(bad), good, out[good])
    return out


def _band(point: FloatArray, resid: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    r = resid[np.isfinite(resid)]
    lo, hi = np.quantile(r, [0.1, 0.9]) if len(r) >= 10 else (0.0, 0.0)
    return point + lo, point, point + hi


def seasonal_naive_point(y: FloatArray, origin: int, horizon: int, period: int) -> FloatArray:
    """``y[t - m * period]`` with the smallest ``m`` that reaches an observation before
    ``origin``; NaN where the history has a gap there (falls back to older periods)."""
    y = y[:origin]
    out = np.full(horizon, np.nan)
    for k in range(horizon):
        j = origin + k - period * (k // period + 1)
        while j >= 0 and not np.isfinite(y[j]):
            j -= period
        if j >= 0:
            out[k] = y[j]
    return out


class SeasonalNaive(GridForecaster):
    """Repeat last week (or last day while the history is shorter than two weeks)."""

    def __init__(self, *, period_days: int = 7, tz: str = "UTC", country: str | None = None):
        super().__init__(tz=tz, country=country)
        self.period_days = period_days
        self._period = 0
        self._lo = 0.0
        self._hi = 0.0

    @property
    def name(self) -> str:
        return "weekly_naive" if self.period_days == 7 else f"naive_{self.period_days}d"

    def _fit(self, y: FloatArray, calendar: Calendar, temperature: FloatArray | None) -> None:
        D = self.steps_per_day
        period = self.period_days * D
        if len(y) < 2 * period:  # too short to have one period of residuals: use a day
            period = D if len(y) >= 2 * D else 1
        self._period = period
        resid = y[period:] - y[:-period]
        r = resid[np.isfinite(resid)]
        self._lo, self._hi = (
            (float(np.quantile(r, 0.1)), float(np.quantile(r, 0.9))) if len(r) >= 10 else (0.0, 0.0)
        )

    def _predict(
        self,
        y: FloatArray,
        origin: int,
        horizon: int,
        calendar: Calendar,
        temperature: FloatArray | None,
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        p = seasonal_naive_point(y, origin, horizon, self._period)
        if not np.isfinite(p).all():
            last = y[np.isfinite(y)]
            p = np.where(np.isfinite(p), p, last[-1] if len(last) else 0.0)
        return p + self._lo, p, p + self._hi


class _Refit(GridForecaster):
    """Statistical models refit at predict time on the history before the origin."""

    def _fit(self, y: FloatArray, calendar: Calendar, temperature: FloatArray | None) -> None:
        if np.isfinite(y).sum() < 2 * self.steps_per_day:
            raise ForecastDataError(f"{self.name} needs at least two days of history")


class HoltWinters(_Refit):
    """statsmodels Holt-Winters (ExponentialSmoothing), daily additive seasonality, no trend.

    An additive trend extrapolates a day ahead badly (30% MAPE on Taylor); no trend is the
    variant a utility would keep.  It has no weekly cycle, hence its weekend errors.
    """

    @property
    def name(self) -> str:
        return "holt_winters"

    def _predict(
        self,
        y: FloatArray,
        origin: int,
        horizon: int,
        calendar: Calendar,
        temperature: FloatArray | None,
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        from statsmodels.tsa.holtwinters import ExponentialSmoothing

        D = self.steps_per_day
        hist = _fill(y[:origin], D)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = ExponentialSmoothing(hist, trend=None, seasonal="add", seasonal_periods=D).fit()
        point = np.asarray(res.forecast(horizon), dtype=np.float64)
        return _band(point, hist - np.asarray(res.fittedvalues, dtype=np.float64))


class MSTLETS(_Refit):
    """statsmodels MSTL (daily + weekly seasonality) with ETS on the remainder.

    The seasonal components are continued by repeating their last cycle; trend plus
    residual is forecast by an additive damped-trend ETS model.
    """

    max_history_days = 84

    @property
    def name(self) -> str:
        return "mstl_ets"

    def _predict(
        self,
        y: FloatArray,
        origin: int,
        horizon: int,
        calendar: Calendar,
        temperature: FloatArray | None,
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        from statsmodels.tsa.exponential_smoothing.ets import ETSModel
        from statsmodels.tsa.seasonal import MSTL

        D = self.steps_per_day
        hist = _fill(y[:origin], 7 * D)[-self.max_history_days * D :]
        periods = [p for p in (D, 7 * D) if len(hist) >= 2 * p]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dec = MSTL(hist, periods=periods).fit()
            seasonal = np.asarray(dec.seasonal, dtype=np.float64).reshape(len(hist), -1)
            deseason = hist - seasonal.sum(axis=1)
            ets = ETSModel(deseason, error="add", trend="add", damped_trend=True).fit(disp=False)
        point = np.asarray(ets.forecast(horizon), dtype=np.float64)
        for c, p in enumerate(periods):
            last = seasonal[-p:, c]
            point = point + np.resize(last, horizon)
        return _band(point, deseason - np.asarray(ets.fittedvalues, dtype=np.float64))
