"""The speed filter: follows the current speed (no chord lag), resists position noise, and
survives a snapshot exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streams.vision.speed import STATE_SIZE, SpeedConfig, SpeedFilter

FPS = 10.0


def drive(v0: float, accel: float, seconds: float, noise_m: float, seed: int = 0) -> list[tuple]:
    """(t, x, y, true km/h) along a diagonal at 10 fps; speed v0 + accel*t, floored at 0."""
    rng = np.random.default_rng(seed)
    out, s = [], 0.0
    for k in range(int(seconds * FPS)):
        t = k / FPS
        v = max(v0 + accel * t, 0.0)
        s += v / FPS
        x, y = s / math.sqrt(2) + rng.normal(0, noise_m), s / math.sqrt(2) + rng.normal(0, noise_m)
        out.append((1000.0 + t, x, y, v * 3.6))
    return out


def filtered(points: list[tuple], config: SpeedConfig | None = None) -> list[float | None]:
    cfg = config or SpeedConfig()
    f = SpeedFilter(cfg, *points[0][:3])
    return [f.speed_kmh, *(f.update(*p[:3]) for p in points[1:])]


def chord(points: list[tuple], window_s: float = 2.0) -> list[float | None]:
    out: list[float | None] = []
    for i, (t, x, y, _) in enumerate(points):
        j = next(k for k in range(i + 1) if points[k][0] >= t - window_s)
        t0, x0, y0, _ = points[j]
        out.append(math.hypot(x - x0, y - y0) / (t - t0) * 3.6 if t - t0 >= 0.5 else None)
    return out


def mae(points: list[tuple], speeds: list[float | None], after_s: float = 2.0) -> float:
    errs = [
        abs(s - p[3])
        for p, s in zip(points, speeds, strict=True)
        if s is not None and p[0] - points[0][0] >= after_s
    ]
    return sum(errs) / len(errs)


def test_no_speed_until_min_age_then_a_steady_speed_through_noise() -> None:
    points = drive(50 / 3.6, 0.0, 10.0, noise_m=0.5)
    speeds = filtered(points)
    assert speeds[:5] == [None] * 5 and speeds[5] is not None  # 0.5 s at 10 fps
    assert mae(points, speeds) < 3.0


def test_follows_braking_where_a_chord_lags() -> None:
    # from 50 km/h braking at 2.5 m/s² to a stop, positions with 0.3 m of noise
    points = drive(50 / 3.6, -2.5, 8.0, noise_m=0.3)
    ours, lagging = mae(points, filtered(points)), mae(points, chord(points))
    assert ours < 3.0, ours
    assert ours < lagging / 2, (ours, lagging)


def test_a_restored_filter_goes_on_exactly() -> None:
    points = drive(40 / 3.6, 1.0, 6.0, noise_m=0.5, seed=3)
    cfg = SpeedConfig()
    f = SpeedFilter(cfg, *points[0][:3])
    for p in points[1:30]:
        f.update(*p[:3])
    g = SpeedFilter.from_state(cfg, f.state())
    assert f.state().shape == (STATE_SIZE,)
    assert [f.update(*p[:3]) for p in points[30:]] == [g.update(*p[:3]) for p in points[30:]]


def test_stale_points_are_ignored() -> None:
    f = SpeedFilter(SpeedConfig(min_age_s=0.0), 10.0, 0.0, 0.0)
    f.update(11.0, 10.0, 0.0)
    before = f.state()
    assert f.update(10.5, 50.0, 50.0) == f.speed_kmh
    assert np.array_equal(f.state(), before)


@pytest.mark.parametrize(
    "state",
    [np.zeros(STATE_SIZE - 1), np.full(STATE_SIZE, np.nan), np.array([5.0, 4.0, *[0.0] * 7])],
)
def test_a_bad_state_is_refused(state: np.ndarray) -> None:
    with pytest.raises(ValueError):
        SpeedFilter.from_state(SpeedConfig(), state)


def test_config_is_checked() -> None:
    with pytest.raises(ValueError):
        SpeedConfig(position_std=0.0)
    with pytest.raises(ValueError):
        SpeedConfig(min_age_s=-1.0)
