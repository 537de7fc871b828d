"""Schema messages -> table rows, at the boundary, once.

Each converter returns tuples in the column order of the matching :class:`TableSpec`;
:func:`rows_for` dispatches any storable message.  JSON columns get plain ``dict``/``list``
values (the writer sends them with the ``jsonb`` type).  Pure: no database import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from citystream.db import tables as t
from schemas import messages as m

Row = t.Row


def meter_reading_row(r: m.MeterReading) -> Row:
    return (r.meter_id, r.ts, r.interval_s, r.import_kwh, r.export_kwh, r.voltage_v)


def feeder_load_row(f: m.FeederLoad) -> Row:
    return (
        f.scope.value,
        f.scope_id,
        f.window_start,
        f.window_s,
        f.energy_kwh,
        f.avg_kw,
        f.meters_reporting,
        f.late_readings,
    )


def forecast_rows(f: m.Forecast) -> list[Row]:
    return [
        (f.scope.value, f.scope_id, f.model, f.issued_at, p.target, f.step_s, p.p10, p.p50, p.p90)
        for p in f.points
    ]


def lane_count_row(c: m.LaneCount) -> Row:
    return (
        c.intersection_id,
        c.camera_id,
        c.lane_id,
        c.movement,
        c.vehicle_class.value,
        c.window_start,
        c.window_s,
        c.count,
        c.occupancy,
        c.queue_len,
        c.arrivals,
        c.arrivals_on_red,
        c.discharged,
        c.discharge_s,
    )


def violation_row(v: m.Violation) -> Row:
    return (
        v.violation_id,
        v.occurred_at,
        v.kind.value,
        v.camera_id,
        v.intersection_id,
        v.track_id,
        v.vehicle_class.value,
        v.confidence,
        v.evidence_uri,
        v.evidence_sha256,
        dict(v.details),
    )


def _plan_json(p: m.SignalPlan) -> dict[str, Any]:
    return p.model_dump(mode="json")


def signal_plan_row(p: m.SignalPlan) -> Row:
    no_recommendation = (None,) * 7  # issued_at .. method
    return (
        p.intersection_id,
        p.plan_id,
        "current",
        p.valid_from,
        p.cycle_s,
        p.offset_s,
        _plan_json(p),
        *no_recommendation,
    )


def signal_recommendation_row(r: m.SignalRecommendation) -> Row:
    p = r.recommended
    return (
        r.intersection_id,
        p.plan_id,
        "recommended",
        p.valid_from,
        p.cycle_s,
        p.offset_s,
        _plan_json(p),
        r.issued_at,
        r.basis_start,
        r.basis_end,
        r.current_plan_id,
        r.predicted_delay_current_s,
        r.predicted_delay_recommended_s,
        r.method,
    )


def signal_phase_row(s: m.SignalPhaseChange) -> Row:
    return (s.intersection_id, s.signal_group, s.changed_at, s.state.value, s.program_id)


def alert_row(a: m.Alert) -> Row:
    return (
        a.alert_id,
        a.raised_at,
        a.kind,
        a.severity.value,
        a.source,
        a.subject_id,
        a.message,
        dict(a.details),
    )


def _one(fn: Callable[[Any], Row]) -> Callable[[Any], list[Row]]:
    return lambda msg: [fn(msg)]


_CONVERTERS: dict[type[m.Message], tuple[t.TableSpec, Callable[[Any], list[Row]]]] = {
    m.MeterReading: (t.METER_READINGS, _one(meter_reading_row)),
    m.MeterBatch: (t.METER_READINGS, lambda b: [meter_reading_row(r) for r in b.readings]),
    m.FeederLoad: (t.FEEDER_LOAD, _one(feeder_load_row)),
    m.Forecast: (t.ENERGY_FORECASTS, forecast_rows),
    m.LaneCount: (t.TRAFFIC_COUNTS, _one(lane_count_row)),
    m.Violation: (t.VIOLATIONS, _one(violation_row)),
    m.SignalPlan: (t.SIGNAL_PLANS, _one(signal_plan_row)),
    m.SignalRecommendation: (t.SIGNAL_PLANS, _one(signal_recommendation_row)),
    m.SignalPhaseChange: (t.SIGNAL_PHASES, _one(signal_phase_row)),
    m.Alert: (t.EVENTS, _one(alert_row)),
}


def storable_types() -> tuple[type[m.Message], ...]:
    """The message types :func:`rows_for` accepts."""
    return tuple(_CONVERTERS)


def rows_for(message: m.Message) -> tuple[t.TableSpec, list[Row]]:
    """The target table and rows of a storable message; ``TypeError`` for any other."""
    try:
        spec, convert = _CONVERTERS[type(message)]
    except KeyError:
        raise TypeError(f"{type(message).__name__} is not stored in the database") from None
    return spec, convert(message)
