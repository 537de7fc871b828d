"""Feature building, the seasonal-naive baseline and the LightGBM quantile forecaster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from schemas.messages import Forecast
from streams.energy.forecasting import (
    ForecastDataError,
    GBMConfig,
    LoadForecaster,
    SeasonalNaive,
    to_forecast,
)
from streams.energy.forecasting.calendar import calendar_for
from streams.energy.forecasting.features import FEATURE_NAMES, build_rows, regularize

STEP = timedelta(hours=1)
D = 24
W = 7 * D


def make_load(days: int, *, noise: float = 0.0, seed: int = 0, step: timedelta = STEP) -> pd.Series:
    """Daily + weekly shaped load on a UTC grid starting Monday 2024-01-01."""
    per_day = int(timedelta(days=1) / step)
    n = days * per_day
    t = np.arange(n)
    hour = (t % per_day) * 24 / per_day
    dow = (t // per_day) % 7
    y = 100 + 30 * np.sin(2 * np.pi * (hour - 6) / 24) + np.where(dow >= 5, -20.0, 0.0)
    y = y + noise * np.random.default_rng(seed).standard_normal(n)
    index = pd.date_range(datetime(2024, 1, 1, tzinfo=UTC), periods=n, freq=step)
    return pd.Series(y, index, name="load")


def test_features_read_no_load_at_or_after_origin() -> None:
    s = make_load(30, noise=3.0)
    y = s.to_numpy()
    cal = calendar_for(pd.DatetimeIndex(s.index), "Asia/Ho_Chi_Minh", "VN")
    origins = np.array([W + 5, 20 * D, 25 * D + 7])
    rows = build_rows(y, origins, 36, D, cal)
    assert rows.X.shape == (3 * 36, len(FEATURE_NAMES))
    for o in origins:
        poisoned = y.copy()
        poisoned[o:] = 1e9  # the future: must not change any feature of this origin
        again = build_rows(poisoned, np.array([o]), 36, D, cal)
        mine = rows.origin == o
        np.testing.assert_array_equal(again.X, rows.X[mine])
        np.testing.assert_array_equal(again.base, rows.base[mine])


def test_feature_lags_are_the_right_positions() -> None:
    y = np.arange(30 * D, dtype=np.float64)
    idx = pd.date_range(datetime(2024, 1, 1, tzinfo=UTC), periods=len(y), freq=STEP)
    cal = calendar_for(idx)
    o = 20 * D
    rows = build_rows(y, np.array([o]), 30, D, cal)
    # base = load one week before the target; lag_day (relative) = most recent same hour < origin
    np.testing.assert_array_equal(rows.base, y[o + np.arange(30) - W])
    k = np.arange(30)
    lag_day = y[o + k - D * (k // D + 1)]
    col = FEATURE_NAMES.index("lag_day")
    np.testing.assert_allclose(rows.X[:, col] * rows.scale + rows.base, lag_day)
    assert rows.X[:, FEATURE_NAMES.index("horizon_step")].tolist() == list(range(30))


def test_vietnamese_holidays_include_tet() -> None:
    idx = pd.date_range(datetime(2026, 2, 16, 17, tzinfo=UTC), periods=48, freq=STEP)
    cal = calendar_for(idx, "Asia/Ho_Chi_Minh", "VN")
    # 2026-02-17 (Tet) local midnight is 2026-02-16 17:00 UTC: the first 24 steps are Tet
    assert cal.holiday[:24].all()
    assert cal.local_midnight[0] and cal.step_of_day[0] == 0


def test_regularize_fills_gaps_and_rejects_naive_index() -> None:
    s = make_load(3).drop(make_load(3).index[[5, 6]])
    r = regularize(s)
    assert len(r) == 3 * D and r.isna().sum() == 2
    with pytest.raises(ForecastDataError):
        regularize(pd.Series([1.0, 2.0, 3.0], pd.date_range("2024-01-01", periods=3, freq="h")))


def test_seasonal_naive_reproduces_a_weekly_series() -> None:
    s = make_load(21)
    origin = s.index[14 * D]
    f = SeasonalNaive().fit(s.iloc[: 14 * D])
    pts = f.predict(origin.to_pydatetime(), 2 * D)
    np.testing.assert_allclose([p.p50 for p in pts], s.iloc[14 * D : 16 * D].to_numpy())
    assert pts[0].target == origin.to_pydatetime()
    assert all(p.p10 <= p.p50 <= p.p90 for p in pts)


def test_short_history_falls_back_to_seasonal_naive() -> None:
    s = make_load(10)
    f = LoadForecaster(GBMConfig(horizon_steps=D)).fit(s)
    assert f.method == "weekly_naive"
    pts = f.predict(s.index[-1].to_pydatetime() + STEP, D)
    assert len(pts) == D and all(np.isfinite(p.p50) for p in pts)


@pytest.fixture(scope="module")
def fitted() -> tuple[LoadForecaster, pd.Series]:
    s = make_load(35, noise=4.0)
    cfg = GBMConfig(horizon_steps=2 * D, n_estimators=40, calibration_days=5)
    return LoadForecaster(cfg, tz="Asia/Ho_Chi_Minh", country="VN").fit(s), s


def test_lgbm_quantiles_do_not_cross_and_track_the_shape(
    fitted: tuple[LoadForecaster, pd.Series],
) -> None:
    f, s = fitted
    assert f.method == "lgbm_quantile"
    truth = make_load(37)  # noise-free continuation
    pts = f.predict(s.index[-1].to_pydatetime() + STEP, 2 * D)
    p10, p50, p90 = (np.array([getattr(p, q) for p in pts]) for q in ("p10", "p50", "p90"))
    assert (p10 <= p50).all() and (p50 <= p90).all()
    assert np.mean(np.abs(p50 - truth.iloc[35 * D :].to_numpy())) < 6.0
    assert [p.target for p in pts][1] - pts[0].target == STEP


def test_predict_uses_updated_history_and_rounds_origin_up(
    fitted: tuple[LoadForecaster, pd.Series],
) -> None:
    f, s = fitted
    issued = s.index[-1].to_pydatetime() + STEP + timedelta(minutes=10)
    pts = f.predict(issued, 4)
    assert pts[0].target == s.index[-1].to_pydatetime() + 2 * STEP
    with pytest.raises(ForecastDataError):
        f.predict(issued, 3 * D)  # longer than trained for
    with pytest.raises(ForecastDataError):
        f.predict(datetime(2024, 3, 1), 4)  # naive timestamp


def test_to_forecast_builds_the_wire_message(fitted: tuple[LoadForecaster, pd.Series]) -> None:
    f, s = fitted
    issued = s.index[-1].to_pydatetime() + STEP
    msg = to_forecast(
        f.predict(issued, 8),
        scope="feeder",
        scope_id="F001",
        issued_at=issued,
        model=f.method,
        step_s=int(STEP.total_seconds()),
    )
    assert isinstance(msg, Forecast)
    assert len(msg.points) == 8 and msg.points[0].target == issued
    assert all(p.p10 <= p.p50 <= p.p90 for p in msg.points)
