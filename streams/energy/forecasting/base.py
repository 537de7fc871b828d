"""The :class:`Forecaster` interface and the grid bookkeeping every model shares."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from datetime import datetime
from typing import NamedTuple, Protocol, Self

import numpy as np
import numpy.typing as npt
import pandas as pd

from schemas.messages import Forecast, ForecastPoint, LoadScope
from streams.energy.forecasting.calendar import Calendar, calendar_for
from streams.energy.forecasting.errors import ForecastDataError
from streams.energy.forecasting.features import regularize

FloatArray = npt.NDArray[np.float64]
History = pd.Series | pd.DataFrame


class QuantilePoint(NamedTuple):
    """One forecast step: the target window's start and its P10/P50/P90."""

    target: datetime
    p10: float
    p50: float
    p90: float


class Forecaster(Protocol):
    """What the stream app and the backtest use: fit on history, predict from an origin."""

    @property
    def name(self) -> str: ...

    def fit(self, history: History, temperature: pd.Series | None = None) -> Self: ...

    def predict(
        self,
        issued_at: datetime,
        horizon_steps: int,
        *,
        temperature: pd.Series | None = None,
    ) -> list[QuantilePoint]: ...


def split_history(
    history: History, temperature: pd.Series | None = None
) -> tuple[pd.Series, pd.Series | None]:
    """Accept a load Series, or a DataFrame with ``load`` (else the first column) and an
    optional ``temperature`` column."""
    if isinstance(history, pd.DataFrame):
        if history.shape[1] == 0:
            raise ForecastDataError("the history has no columns")
        load = history["load"] if "load" in history.columns else history.iloc[:, 0]
        if temperature is None and "temperature" in history.columns:
            temperature = history["temperature"]
        return load, temperature
    return history, temperature


def non_crossing(
    p10: FloatArray, p50: FloatArray, p90: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Sort the three quantiles of every step so that ``p10 <= p50 <= p90``."""
    q = np.sort(np.stack([p10, p50, p90]), axis=0)
    return q[0], q[1], q[2]


class GridForecaster(ABC):
    """Base of the models: keeps the history on a regular UTC grid.

    Subclasses implement :meth:`_fit` and :meth:`_predict` over numpy arrays, where
    position ``i`` is ``start + i * step``.  ``tz`` and ``country`` set the local
    calendar (weekday, step of day, public holidays).
    """

    def __init__(self, *, tz: str = "UTC", country: str | None = None) -> None:
        self.tz = tz
        self.country = country
        self._start: pd.Timestamp | None = None
        self._step: pd.Timedelta | None = None
        self._y: FloatArray = np.zeros(0)
        self._temp: pd.Series | None = None

    @property
    @abstractmethod
    def name(self) -> str: ...

    @property
    def step(self) -> pd.Timedelta:
        if self._step is None:
            raise ForecastDataError(f"{self.name}: fit() first")
        return self._step

    @property
    def steps_per_day(self) -> int:
        return int(pd.Timedelta(days=1) // self.step)

    @property
    def history_end(self) -> pd.Timestamp:
        """Start of the first step after the last observation."""
        assert self._start is not None
        return self._start + len(self._y) * self.step

    def _load(self, history: History, temperature: pd.Series | None) -> None:
        load, temp = split_history(history, temperature)
        s = regularize(load, self._step)
        if len(s) < 2:
            raise ForecastDataError("the history needs at least 2 steps")
        self._start = s.index[0]
        self._step = pd.Timedelta(s.index[1] - s.index[0])
        self._y = s.to_numpy(dtype=np.float64, na_value=np.nan)
        self._temp = self._merge_temp(None, temp)

    @staticmethod
    def _merge_temp(old: pd.Series | None, new: pd.Series | None) -> pd.Series | None:
        if new is None:
            return old
        if not isinstance(new.index, pd.DatetimeIndex) or new.index.tz is None:
            raise ForecastDataError("temperature needs a timezone-aware DatetimeIndex")
        new = new.astype("float64").tz_convert("UTC").sort_index()
        new = new[~new.index.duplicated(keep="last")]
        if old is None:
            return new
        return new.combine_first(old)

    def fit(self, history: History, temperature: pd.Series | None = None) -> Self:
        """Fit on ``history`` (tz-aware index; NaN or missing steps allowed)."""
        self._step = None
        self._load(history, temperature)
        n = len(self._y) + 7 * self.steps_per_day  # calendar also covers targets past the end
        self._fit(self._y, self._calendar(n), self._temp_array(n))
        return self

    def update(self, history: History, temperature: pd.Series | None = None) -> Self:
        """Replace the observed history without refitting (new data between retrains)."""
        self._load(history, temperature)
        return self

    def predict(
        self,
        issued_at: datetime,
        horizon_steps: int,
        *,
        temperature: pd.Series | None = None,
    ) -> list[QuantilePoint]:
        """Forecast ``horizon_steps`` steps from ``issued_at`` (rounded up to the grid).

        Only observations before the origin are used; the first target is the origin.
        ``temperature`` may carry a weather forecast for the targets.
        """
        if self._start is None or self._step is None:
            raise ForecastDataError(f"{self.name}: fit() first")
        if horizon_steps < 1:
            raise ForecastDataError("horizon_steps must be >= 1")
        ts = pd.Timestamp(issued_at)
        if ts.tzinfo is None:
            raise ForecastDataError("issued_at must be timezone-aware")
        i = math.ceil((ts.tz_convert("UTC") - self._start) / self._step)
        if i < 1:
            raise ForecastDataError("issued_at is before the history")
        y = self._y[:i]
        if len(y) < i:
            y = np.concatenate([y, np.full(i - len(y), np.nan)])
        temp_series = self._merge_temp(self._temp, temperature)
        n = i + horizon_steps
        p10, p50, p90 = self._predict(
            y, i, horizon_steps, self._calendar(n), self._temp_array(n, temp_series)
        )
        p10, p50, p90 = non_crossing(p10, p50, p90)
        origin = self._start + i * self._step
        return [
            QuantilePoint(
                (origin + k * self._step).to_pydatetime(),
                float(p10[k]),
                float(p50[k]),
                float(p90[k]),
            )
            for k in range(horizon_steps)
        ]

    def _index(self, n: int) -> pd.DatetimeIndex:
        assert self._start is not None
        return pd.date_range(self._start, periods=n, freq=self._step, tz="UTC")

    def _calendar(self, n: int) -> Calendar:
        return calendar_for(self._index(n), self.tz, self.country)

    def _temp_array(self, n: int, temp: pd.Series | None = None) -> FloatArray | None:
        temp = self._temp if temp is None else temp
        if temp is None:
            return None
        idx = self._index(n)
        if not temp.index.isin(idx).all():  # e.g. hourly weather for 15-min load
            both = temp.reindex(temp.index.union(idx))
            temp = both.interpolate(method="time", limit_area="inside")
        return temp.reindex(idx).to_numpy(dtype=np.float64, na_value=np.nan)

    @abstractmethod
    def _fit(self, y: FloatArray, calendar: Calendar, temperature: FloatArray | None) -> None: ...

    @abstractmethod
    def _predict(
        self,
        y: FloatArray,
        origin: int,
        horizon: int,
        calendar: Calendar,
        temperature: FloatArray | None,
    ) -> tuple[FloatArray, FloatArray, FloatArray]: ...


def to_forecast(
    points: list[QuantilePoint],
    *,
    scope: LoadScope | str,
    scope_id: str,
    issued_at: datetime,
    model: str,
    step_s: int,
) -> Forecast:
    """Convert forecaster output to the wire message ``schemas.messages.Forecast``."""
    return Forecast(
        scope=LoadScope(scope),
        scope_id=scope_id,
        issued_at=issued_at,
        model=model,
        step_s=step_s,
        points=[ForecastPoint(target=p.target, p10=p.p10, p50=p.p50, p90=p.p90) for p in points],
    )
