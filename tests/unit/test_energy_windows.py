"""Event-time windows: assignment, watermark, lateness, dedup, sums."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.messages import FeederLoad, LoadScope, MeterReading
from streams.energy.windows import DuplicateReading, LateReading, WindowAggregator

T0 = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)


def rd(meter: str, step: int, imp: float = 1.0, exp: float = 0.0, **kw: Any) -> MeterReading:
    """Reading of the interval ending at T0 + 15 min * step (window start T0 + 15*(step-1))."""
    return MeterReading(
        meter_id=meter, ts=T0 + timedelta(minutes=15 * step), import_kwh=imp, export_kwh=exp, **kw
    )


def loads(events: list[Any], scope: LoadScope = LoadScope.feeder) -> list[FeederLoad]:
    return [e for e in events if isinstance(e, FeederLoad) and e.scope == scope]


def test_window_closes_when_watermark_passes_its_end() -> None:
    agg = WindowAggregator(window_s=900, allowed_lateness_s=900)
    assert agg.add(rd("m1", 1, 1.0), "f1", "d1") == []
    assert agg.add(rd("m2", 1, 2.0, exp=0.5), "f1", "d1") == []
    assert agg.add(rd("m1", 2), "f1", "d1") == []  # watermark = 00:15 - 15 min = 00:00
    out = agg.add(rd("m1", 3), "f1", "d1")  # watermark 00:15 closes [00:00, 00:15)
    (f,) = loads(out)
    assert f.window_start == T0 and f.scope_id == "f1"
    assert f.energy_kwh == pytest.approx(2.5)
    assert f.avg_kw == pytest.approx(2.5 / 0.25)
    assert f.meters_reporting == 2 and f.late_readings == 0
    (d,) = loads(out, LoadScope.district)
    assert d.scope_id == "d1" and d.energy_kwh == pytest.approx(2.5)
    assert agg.watermark == T0 + timedelta(minutes=15)
    assert agg.watermark_s == (T0 + timedelta(minutes=15)).timestamp()


@pytest.mark.parametrize(
    ("late_step", "expect"),
    [
        (4, "on_time"),  # its window is the newest one
        (3, "late_accepted"),  # behind the max event time, within the allowance
        (2, "too_late"),  # its window already closed (watermark 00:30 >= its end)
    ],
)
def test_lateness_classes(late_step: int, expect: str) -> None:
    agg = WindowAggregator(window_s=900, allowed_lateness_s=900)
    for step in (1, 2, 3, 4):
        agg.add(rd("m1", step), "f1", "d1")  # max interval start 00:45, watermark 00:30
    out = agg.add(rd("m2", late_step, 5.0), "f1", "d1")
    if expect == "too_late":
        (late,) = out
        assert isinstance(late, LateReading)
        assert late.window_start == T0 + timedelta(minutes=15) and late.feeder_id == "f1"
        assert agg.stats.too_late == 1
    else:
        assert out == []
        assert agg.stats.late_accepted == (1 if expect == "late_accepted" else 0)
    flushed = loads(agg.flush())
    by_start = {f.window_start: f for f in flushed}
    if expect != "too_late":
        f = by_start[T0 + timedelta(minutes=15 * (late_step - 1))]
        assert f.energy_kwh == pytest.approx(6.0)
        assert f.late_readings == (1 if expect == "late_accepted" else 0)


def test_duplicates_collapse_and_keys_expire() -> None:
    agg = WindowAggregator(window_s=900, allowed_lateness_s=900, dedup_horizon_s=900)
    agg.add(rd("m1", 1, 1.0), "f1", "d1")
    (dup,) = agg.add(rd("m1", 1, 1.0), "f1", "d1")
    assert isinstance(dup, DuplicateReading)
    events: list[Any] = []
    for step in range(2, 8):
        events += agg.add(rd("m1", step, 1.0), "f1", "d1")
    first = next(f for f in loads(events) if f.window_start == T0)
    assert first.energy_kwh == pytest.approx(1.0) and agg.stats.duplicates == 1
    # only windows inside the horizon keep dedup keys: bounded memory
    assert agg.dedup_keys() <= 4
    # a copy older than the horizon is still not lost: it comes back as too late
    (late,) = agg.add(rd("m1", 1, 1.0), "f1", "d1")
    assert isinstance(late, LateReading)


def test_skewed_and_irregular_timestamps_use_interval_start() -> None:
    agg = WindowAggregator(window_s=900, allowed_lateness_s=0)
    r = rd("m1", 1, 1.0).model_copy(update={"ts": T0 + timedelta(minutes=19)})
    agg.add(r, "f1", "d1")  # interval starts 00:04 -> window [00:00, 00:15)
    (f,) = loads(agg.flush())
    assert f.window_start == T0


def test_sums_per_feeder_and_district_match_inputs() -> None:
    agg = WindowAggregator(window_s=900, allowed_lateness_s=1800)
    topo = {"m1": ("f1", "d1"), "m2": ("f1", "d1"), "m3": ("f2", "d1"), "m4": ("f3", "d2")}
    events: list[Any] = []
    expect: dict[tuple[str, datetime], float] = {}
    for step in range(1, 9):
        for i, (m, (f, d)) in enumerate(topo.items()):
            imp, exp = 0.1 * step + i, 0.05 * i
            events += agg.add(rd(m, step, imp, exp), f, d)
            ws = T0 + timedelta(minutes=15 * (step - 1))
            for key in (f, d):
                expect[(key, ws)] = expect.get((key, ws), 0.0) + imp - exp
    events += agg.flush()
    got = {(e.scope_id, e.window_start): e.energy_kwh for e in events if isinstance(e, FeederLoad)}
    assert got.keys() == expect.keys()
    for k, v in expect.items():
        assert got[k] == pytest.approx(v)
    assert agg.open_windows() == 0


def test_advance_closes_windows_when_input_is_idle() -> None:
    agg = WindowAggregator(window_s=900, allowed_lateness_s=900)
    agg.add(rd("m1", 1), "f1", "d1")
    assert agg.advance(T0 + timedelta(minutes=15)) == []
    out = agg.advance(T0 + timedelta(minutes=30))
    assert [f.window_start for f in loads(out)] == [T0]
