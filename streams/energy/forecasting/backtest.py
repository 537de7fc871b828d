"""Rolling-origin day-ahead backtest of our model against the baselines, in one run.

Protocol: an origin at each local midnight of the last ``days`` days whose whole next day
is in the series; at each origin every method is fitted on the history strictly before it
and forecasts the whole next day (one day of steps).  Scores pool all forecast steps:
MAPE (%), MAE, pinball loss averaged over P10/P50/P90, and P10-P90 coverage (%).
Temperature, when given, is used at the targets as if it were a perfect weather forecast.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from streams.energy.forecasting import metrics
from streams.energy.forecasting.base import FloatArray, Forecaster
from streams.energy.forecasting.baselines import MSTLETS, HoltWinters, SeasonalNaive
from streams.energy.forecasting.calendar import calendar_for
from streams.energy.forecasting.errors import ForecastDataError
from streams.energy.forecasting.features import regularize
from streams.energy.forecasting.gbm import GBMConfig, LoadForecaster

Factory = Callable[[int], Forecaster]
"""Builds a fresh forecaster; gets the horizon (steps) it must support."""
Progress = Callable[[str], None]

OURS = "lgbm_quantile"


def default_methods(tz: str = "UTC", country: str | None = None) -> dict[str, Factory]:
    """Ours first, then the baselines a utility would otherwise use."""
    return {
        OURS: lambda h: LoadForecaster(GBMConfig(horizon_steps=h), tz=tz, country=country),
        "weekly_naive": lambda h: SeasonalNaive(tz=tz, country=country),
        "holt_winters": lambda h: HoltWinters(tz=tz, country=country),
        "mstl_ets": lambda h: MSTLETS(tz=tz, country=country),
    }


@dataclass(frozen=True)
class MethodScore:
    method: str
    mape: float
    mae: float
    pinball: float
    coverage: float
    n_points: int
    failed_origins: int
    seconds: float


@dataclass(frozen=True)
class BacktestResult:
    origins: list[datetime]
    horizon_steps: int
    step_s: int
    scores: list[MethodScore]
    seconds: float
    meta: dict[str, Any] = field(default_factory=dict)

    def score(self, method: str) -> MethodScore:
        for s in self.scores:
            if s.method == method:
                return s
        raise KeyError(method)

    def best_baseline(self) -> MethodScore:
        """The baseline with the lowest MAPE."""
        base = [s for s in self.scores if s.method != OURS and np.isfinite(s.mape)]
        return min(base, key=lambda s: s.mape)

    def to_dict(self) -> dict[str, Any]:
        def clean(v: Any) -> Any:
            return None if isinstance(v, float) and not np.isfinite(v) else v

        return {
            "protocol": "rolling-origin day-ahead, origin at local midnight",
            "days": len(self.origins),
            "first_origin": self.origins[0].isoformat(),
            "last_origin": self.origins[-1].isoformat(),
            "horizon_steps": self.horizon_steps,
            "step_s": self.step_s,
            "seconds": round(self.seconds, 2),
            **self.meta,
            "scores": [{k: clean(v) for k, v in asdict(s).items()} for s in self.scores],
        }


def score_arrays(
    actual: FloatArray, p10: FloatArray, p50: FloatArray, p90: FloatArray
) -> dict[str, float]:
    """The four backtest metrics of pooled forecasts."""
    return {
        "mape": metrics.mape(actual, p50),
        "mae": metrics.mae(actual, p50),
        "pinball": metrics.mean_pinball(actual, [p10, p50, p90]),
        "coverage": metrics.coverage(actual, p10, p90),
    }


def backtest_origins(load: pd.Series, days: int, tz: str) -> list[int]:
    """Positions of the last ``days`` local midnights with a full next day in ``load``."""
    step = pd.Timedelta(load.index[1] - load.index[0])
    D = int(pd.Timedelta(days=1) // step)
    cal = calendar_for(pd.DatetimeIndex(load.index), tz)
    mids = [int(i) for i in np.flatnonzero(cal.local_midnight) if i + D <= len(load)]
    mids = [i for i in mids if i >= 2 * D]
    if not mids:
        raise ForecastDataError("no midnight with two days of history before and a full day after")
    return mids[-days:]


def run_backtest(
    series: pd.Series,
    freq: str | pd.Timedelta | None = None,
    temperature: pd.Series | None = None,
    days: int = 28,
    *,
    tz: str = "UTC",
    country: str | None = None,
    methods: Mapping[str, Factory] | None = None,
    progress: Progress | None = None,
) -> BacktestResult:
    """Run the day-ahead backtest of every method on ``series`` (tz-aware index)."""
    if days < 1:
        raise ForecastDataError("days must be >= 1")
    t_start = time.perf_counter()
    load = regularize(series, pd.Timedelta(freq) if freq is not None else None)
    if len(load) < 3:
        raise ForecastDataError("the series is too short")
    step = pd.Timedelta(load.index[1] - load.index[0])
    D = int(pd.Timedelta(days=1) // step)
    origins = backtest_origins(load, days, tz)
    if len(origins) < days and progress:
        progress(f"only {len(origins)} origins available (asked for {days})")
    methods = dict(methods) if methods is not None else default_methods(tz, country)
    y = load.to_numpy(dtype=np.float64, na_value=np.nan)
    actual = np.concatenate([y[i : i + D] for i in origins])
    scores = []
    for name, factory in methods.items():
        t0 = time.perf_counter()
        preds: list[list[FloatArray]] = [[], [], []]
        failed = 0
        for n_done, i in enumerate(origins, 1):
            try:
                f = factory(D).fit(load.iloc[:i], temperature)
                pts = f.predict(load.index[i].to_pydatetime(), D, temperature=temperature)
                q = np.array([[p.p10, p.p50, p.p90] for p in pts], dtype=np.float64).T
            except (ValueError, np.linalg.LinAlgError) as exc:
                failed += 1
                q = np.full((3, D), np.nan)
                if progress:
                    progress(f"{name}: origin {load.index[i]} failed: {exc}")
            for k in range(3):
                preds[k].append(q[k])
            if progress:
                progress(
                    f"{name}: {n_done}/{len(origins)} origins, {time.perf_counter() - t0:.1f}s"
                )
        p10, p50, p90 = (np.concatenate(p) for p in preds)
        sc = score_arrays(actual, p10, p50, p90)
        scores.append(
            MethodScore(
                method=name,
                n_points=int(np.isfinite(actual).sum()),
                failed_origins=failed,
                seconds=round(time.perf_counter() - t0, 2),
                **sc,
            )
        )
    return BacktestResult(
        origins=[load.index[i].to_pydatetime() for i in origins],
        horizon_steps=D,
        step_s=int(step.total_seconds()),
        scores=scores,
        seconds=time.perf_counter() - t_start,
        meta={"tz": tz, "country": country},
    )
