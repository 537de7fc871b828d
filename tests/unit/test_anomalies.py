"""Per-meter anomaly detectors on hand-made series, and scored against the simulator."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from schemas.messages import Alert, MeterReading, Severity
from simulators.meters import CityConfig, DirtConfig
from simulators.meters.scoring import evaluate_detectors
from streams.energy.anomalies import AnomalyDetector, AnomalyKind, Finding

T0 = datetime(2026, 6, 2, 17, 0, tzinfo=UTC)  # local midnight (UTC+7), Wednesday 3 June
STEP = 900
DAYS = 5  # history before the injected fault (Wed..Sun); faults go on Monday


def normal_series(days: int = DAYS + 2, seed: int = 0) -> np.ndarray:
    """A household-like series: night base, evening peak, 10% noise, Wh resolution."""
    n = days * 96
    hours = (np.arange(n) % 96) / 4.0
    shape = 0.08 + 0.12 * np.exp(-0.5 * ((hours - 19.5) / 2.0) ** 2)
    rng = np.random.default_rng(seed)
    return np.round(shape * np.exp(0.1 * rng.standard_normal(n)), 3)


def feed(
    values: np.ndarray, export: np.ndarray | None = None, *, solar: bool = False
) -> list[Finding]:
    det = AnomalyDetector(has_solar={"m1"} if solar else ())
    out: list[Finding] = []
    exp = np.zeros_like(values) if export is None else export
    for k, (v, e) in enumerate(zip(values.tolist(), exp.tolist(), strict=True)):
        out += det.observe_values("m1", T0.timestamp() + (k + 1) * STEP, STEP, v, e)
    return out


def at(day: int, hour: float) -> int:
    return day * 96 + int(hour * 4)


def kinds(found: list[Finding]) -> list[AnomalyKind]:
    return [f.kind for f in found]


def test_clean_series_raises_nothing() -> None:
    for seed in range(3):
        assert feed(normal_series(seed=seed)) == []


def test_outage_zeros_where_power_is_normal() -> None:
    v = normal_series()
    v[at(DAYS, 18) : at(DAYS, 21)] = 0.0
    found = feed(v)
    assert kinds(found) == [AnomalyKind.outage]
    assert found[0].ts == T0 + timedelta(seconds=(at(DAYS, 18) + 3) * STEP)


def test_zeros_are_normal_for_street_lights_by_day() -> None:
    v = normal_series()
    hours = (np.arange(v.size) % 96) / 4.0
    v[(hours >= 6) & (hours < 18)] = 0.0  # off by day, every day
    assert AnomalyKind.outage not in kinds(feed(v))


def test_stuck_value_repeated() -> None:
    v = normal_series()
    v[at(DAYS, 10) : at(DAYS, 16)] = v[at(DAYS, 10)]
    found = feed(v)
    assert kinds(found) == [AnomalyKind.stuck]


def test_tamper_sustained_drop() -> None:
    v = normal_series()
    v[at(DAYS, 2) :] = np.round(v[at(DAYS, 2) :] * 0.3, 3)
    found = feed(v)
    assert kinds(found) == [AnomalyKind.tamper]
    assert float(found[0].details["ratio"]) < 0.45


def test_tamper_ring_running_sums_match_the_ring() -> None:
    from streams.energy.anomalies import _MeterState

    st = _MeterState(ring=16)
    rng = np.random.default_rng(3)
    for k in range(5000):
        if k % 977 == 0:
            st.ring_clear()
        st.ring_push(float(rng.gamma(2.0, 0.5)), float(rng.uniform(0.1, 3.0)))
        assert st.ring_got == pytest.approx(sum(v for v, _ in st.low_ring), rel=1e-9)
        assert st.ring_base == pytest.approx(sum(b for _, b in st.low_ring), rel=1e-9)
    assert len(st.low_ring) == 16


def test_spike_far_above_robust_baseline() -> None:
    v = normal_series()
    v[at(DAYS, 11)] = 1.5
    found = feed(v)
    assert kinds(found) == [AnomalyKind.spike]
    assert found[0].severity.value == "info"


def test_reverse_flow_only_without_solar() -> None:
    v = normal_series()
    e = np.zeros_like(v)
    e[at(DAYS, 9) : at(DAYS, 12)] = v[at(DAYS, 9) : at(DAYS, 12)]
    v[at(DAYS, 9) : at(DAYS, 12)] = 0.0
    assert kinds(feed(v, e)) == [AnomalyKind.reverse_flow]
    assert AnomalyKind.reverse_flow not in kinds(feed(v, e, solar=True))


def test_stale_readings_are_skipped_and_alerts_are_valid() -> None:
    det = AnomalyDetector()
    r = MeterReading(meter_id="m1", ts=T0 + timedelta(minutes=15), import_kwh=0.1)
    assert det.observe(r) == [] and det.observe(r) == [] and det.stale == 1
    f = Finding("m1", AnomalyKind.spike, T0, Severity.info, "x", {"a": 1.0})
    alert = f.to_alert()
    assert isinstance(alert, Alert) and alert.kind == "spike" and alert.source == "energy"


def test_state_per_meter_is_bounded() -> None:
    det = AnomalyDetector()
    for k in range(2000):
        det.observe_values("m1", T0.timestamp() + (k + 1) * STEP, STEP, 0.1 + 0.001 * (k % 7), 0)
    st = det._meters["m1"]
    assert len(st.level) == 72 and len(st.low_ring) <= det.config.tamper_intervals
    assert math.isfinite(st.typical)


# Measured with this configuration (400 meters, faults x25, 3 warm-up days + 1 scored day,
# seed 1): recall / precision outage 0.91 / 1.0, stuck 1.0 / 1.0, tamper 1.0 / 0.67,
# reverse_flow 1.0 / 1.0, spike 0.86 / 0.74.  The floors leave room for simulator changes.
RECALL_FLOOR = {"outage": 0.8, "stuck": 0.75, "tamper": 0.5, "reverse_flow": 0.8, "spike": 0.8}
PRECISION_FLOOR = 0.6


@pytest.mark.timeout(60)
def test_detectors_against_simulator_ground_truth() -> None:
    ev = evaluate_detectors(
        city=CityConfig(n_meters=400, seed=1),
        seed=1,
        warmup_days=3,
        eval_days=1,
        dirt=DirtConfig().scaled(25),
    )
    for kind, floor in RECALL_FLOOR.items():
        s = ev.scores[kind]
        assert s.truth_events > 0, kind
        assert s.recall >= floor, ev.table()
        assert s.precision >= PRECISION_FLOOR, ev.table()
