"""Our model: direct multi-horizon LightGBM quantile regression with conformal calibration.

* One LightGBM model per quantile (P10, P50, P90, quantile loss) over (origin, step) rows
  built by :func:`~streams.energy.forecasting.features.build_rows`; the target is the
  load's deviation from last week's same step, in units of last week's mean load.
* The P10-P90 band is calibrated on a held-out recent stretch (conformalised quantile
  regression, CQR): fit on the history before it, measure how far actuals fall outside
  the band, widen (or narrow) the band by the quantile of those scores that gives the
  wanted coverage, then refit on all the history.
* While the history is shorter than ``min_history_days`` it falls back to the seasonal
  naive baseline (``method`` says which one is active).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streams.energy.forecasting.base import FloatArray, GridForecaster
from streams.energy.forecasting.baselines import SeasonalNaive
from streams.energy.forecasting.calendar import Calendar
from streams.energy.forecasting.features import IntArray, Rows, build_rows
from streams.energy.forecasting.metrics import QUANTILES


@dataclass(frozen=True)
class GBMConfig:
    """Settings of :class:`LoadForecaster` (defaults tuned on Taylor's series)."""

    horizon_steps: int | None = None
    """Longest horizon it is trained for; ``None``: 48 hours of steps."""
    n_estimators: int = 150
    learning_rate: float = 0.1
    num_leaves: int = 15
    min_child_samples: int = 40
    feature_fraction: float = 0.9
    bagging_fraction: float = 0.8
    origins_per_day: int = 4
    """Training origins per day (more rows, slower fit); spaced evenly from local midnight."""
    max_train_days: int = 365
    max_train_rows: int = 60_000
    min_history_days: int = 14
    calibration_days: int = 7
    coverage: float = 0.8
    """Wanted P10-P90 coverage after calibration."""
    n_jobs: int = 1
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class LoadForecaster(GridForecaster):
    """P10/P50/P90 load forecaster for one feeder or district."""

    def __init__(
        self, config: GBMConfig | None = None, *, tz: str = "UTC", country: str | None = None
    ) -> None:
        super().__init__(tz=tz, country=country)
        self.config = config or GBMConfig()
        self._models: list[Any] = []
        self._fallback: SeasonalNaive | None = None
        self._band_adjust = 0.0
        self._horizon = 0

    @property
    def name(self) -> str:
        return "lgbm_quantile"

    @property
    def method(self) -> str:
        """The model actually in use: ``lgbm_quantile`` or the seasonal-naive fallback."""
        return self._fallback.name if self._fallback is not None else self.name

    @property
    def band_adjust(self) -> float:
        """Conformal widening of the band, in units of the weekly mean load."""
        return self._band_adjust

    # --- training ------------------------------------------------------------------------

    def _origins(self, n: int, calendar: Calendar, lo: int, hi: int) -> IntArray:
        D = self.steps_per_day
        stride = max(1, D // max(1, self.config.origins_per_day))
        mids = np.flatnonzero(calendar.local_midnight[:n])
        anchor = int(mids[0]) if len(mids) else 0
        first = lo + ((anchor - lo) % stride)
        origins = np.arange(first, hi, stride, dtype=np.int64)
        budget = max(1, self.config.max_train_rows // self._horizon)
        if len(origins) > budget:  # keep the most recent, thinning evenly
            keep = math.ceil(len(origins) / budget)
            origins = origins[::-1][::keep][::-1]
        return origins

    def _rows(
        self, y: FloatArray, origins: IntArray, calendar: Calendar, temp: FloatArray | None
    ) -> tuple[Rows, FloatArray, np.ndarray]:
        rows = build_rows(y, origins, self._horizon, self.steps_per_day, calendar, temp)
        yt = np.full(len(rows.target), np.nan)
        inside = rows.target < len(y)
        yt[inside] = y[rows.target[inside]]
        with np.errstate(invalid="ignore", divide="ignore"):
            z = (yt - rows.base) / rows.scale
        ok = np.isfinite(z)
        return rows, z, ok

    def _train(self, X: FloatArray, z: FloatArray) -> list[Any]:
        import lightgbm as lgb

        c = self.config
        models = []
        for q in QUANTILES:
            params = {
                "objective": "quantile",
                "alpha": q,
                "learning_rate": c.learning_rate,
                "num_leaves": c.num_leaves,
                "min_data_in_leaf": c.min_child_samples,
                "feature_fraction": c.feature_fraction,
                "bagging_fraction": c.bagging_fraction,
                "bagging_freq": 1,
                "num_threads": c.n_jobs,
                "seed": c.seed,
                "deterministic": True,
                "verbose": -1,
                **c.extra,
            }
            ds = lgb.Dataset(X, z, free_raw_data=True)
            models.append(lgb.train(params, ds, num_boost_round=c.n_estimators))
        return models

    @staticmethod
    def _raw(models: list[Any], X: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        p = [np.asarray(m.predict(X), dtype=np.float64) for m in models]
        q = np.sort(np.stack(p), axis=0)
        return q[0], q[1], q[2]

    def _fit(self, y: FloatArray, calendar: Calendar, temperature: FloatArray | None) -> None:
        c = self.config
        D = self.steps_per_day
        W = 7 * D
        self._horizon = min(c.horizon_steps or 2 * D, W)
        self._models = []
        self._band_adjust = 0.0
        n = len(y)
        if n < max(c.min_history_days, 8) * D:
            self._fallback = SeasonalNaive(tz=self.tz, country=self.country)
            self._fallback._start, self._fallback._step = self._start, self._step
            self._fallback._y = y
            self._fallback._fit(y, calendar, temperature)
            return
        self._fallback = None
        lo = max(W, n - c.max_train_days * D)
        origins = self._origins(n, calendar, lo, n)
        rows, z, ok = self._rows(y, origins, calendar, temperature)
        # conformal calibration on the last `calibration_days`
        cal_start = n - c.calibration_days * D
        train = ok & (rows.target < cal_start)
        calib = ok & (rows.origin >= cal_start)
        if c.calibration_days > 0 and train.sum() > 20 * self._horizon and calib.sum() > 2 * D:
            early = self._train(rows.X[train], z[train])
            lo_q, _, hi_q = self._raw(early, rows.X[calib])
            score = np.maximum(lo_q - z[calib], z[calib] - hi_q)
            level = min(1.0, c.coverage * (1 + 1 / len(score)))
            self._band_adjust = float(np.quantile(score, level))
        self._models = self._train(rows.X[ok], z[ok])

    # --- prediction ----------------------------------------------------------------------

    def _predict(
        self,
        y: FloatArray,
        origin: int,
        horizon: int,
        calendar: Calendar,
        temperature: FloatArray | None,
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        if self._fallback is not None:
            return self._fallback._predict(y, origin, horizon, calendar, temperature)
        if horizon > self._horizon:
            from streams.energy.forecasting.errors import ForecastDataError

            raise ForecastDataError(f"trained for {self._horizon} steps, asked for {horizon}")
        rows = build_rows(
            y,
            np.array([origin], dtype=np.int64),
            horizon,
            self.steps_per_day,
            calendar,
            temperature,
        )
        lo_q, mid, hi_q = self._raw(self._models, rows.X)
        lo_q = np.minimum(lo_q - self._band_adjust, mid)
        hi_q = np.maximum(hi_q + self._band_adjust, mid)
        p = [rows.base + v * rows.scale for v in (lo_q, mid, hi_q)]
        if not all(np.isfinite(v).all() for v in p):  # gaps in the history: patch with naive
            naive = SeasonalNaive(tz=self.tz, country=self.country)
            naive._start, naive._step, naive._y = self._start, self._step, y
            naive._fit(y, calendar, temperature)
            fb = naive._predict(y, origin, horizon, calendar, temperature)
            p = [np.where(np.isfinite(a), a, b) for a, b in zip(p, fb, strict=True)]
        return p[0], p[1], p[2]
