"""What the sink writes: one :class:`TableSpec` per hypertable, in one place.

A spec names the target table, the columns the writer sends (in row-tuple order) with their
PostgreSQL types (used for binary COPY), the natural key that deduplicates replays and the
time column the hypertable is partitioned by.  The specs must agree with the SQL in
``citystream/db/migrations/``; ``tests/integration/test_db.py`` checks that they do.

Columns with a database default that the stream never sets (``violations.review_state``,
``events.acknowledged_at``, ...) are not part of a spec.
"""

from __future__ import annotations

from dataclasses import dataclass

#: A row as the writer takes it: values in the spec's column order.
Row = tuple[object, ...]


@dataclass(frozen=True)
class Column:
    """A column the writer sends: its name and PostgreSQL type name (``"timestamptz"``)."""

    name: str
    pg_type: str


@dataclass(frozen=True)
class TableSpec:
    """A target table of the batch writer."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    time_column: str

    def __post_init__(self) -> None:
        names = self.column_names
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: duplicate column names in {names}")
        missing = [k for k in (*self.key, self.time_column) if k not in names]
        if missing:
            raise ValueError(f"{self.name}: key/time columns {missing} are not in the columns")
        if self.time_column not in self.key:
            raise ValueError(
                f"{self.name}: the natural key must include the time column "
                f"{self.time_column!r} (TimescaleDB unique constraints need it)"
            )

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def pg_types(self) -> tuple[str, ...]:
        return tuple(c.pg_type for c in self.columns)


def _spec(name: str, columns: str, key: str, time_column: str) -> TableSpec:
    """``columns`` as ``"name type, name type, ..."``; ``key`` as ``"a, b"``."""
    cols = tuple(Column(*part.split()) for part in columns.split(","))
    return TableSpec(name, cols, tuple(k.strip() for k in key.split(",")), time_column)


METER_READINGS = _spec(
    "meter_readings",
    "meter_id text, ts timestamptz, interval_s int4, import_kwh float8, export_kwh float8,"
    " voltage_v float8",
    "meter_id, ts",
    "ts",
)
FEEDER_LOAD = _spec(
    "feeder_load",
    "scope text, scope_id text, window_start timestamptz, window_s int4, energy_kwh float8,"
    " avg_kw float8, meters_reporting int4, late_readings int4",
    "scope, scope_id, window_start",
    "window_start",
)
ENERGY_FORECASTS = _spec(
    "energy_forecasts",
    "scope text, scope_id text, model text, issued_at timestamptz, target timestamptz,"
    " step_s int4, p10 float8, p50 float8, p90 float8",
    "scope, scope_id, model, issued_at, target",
    "issued_at",
)
TRAFFIC_COUNTS = _spec(
    "traffic_counts",
    "intersection_id text, camera_id text, lane_id text, movement text, vehicle_class text,"
    " window_start timestamptz, window_s int4, count int4, occupancy float8, queue_len int4,"
    " arrivals int4, arrivals_on_red int4, discharged int4, discharge_s float8",
    "intersection_id, camera_id, lane_id, movement, vehicle_class, window_start",
    "window_start",
)
VIOLATIONS = _spec(
    "violations",
    "violation_id text, occurred_at timestamptz, kind text, camera_id text,"
    " intersection_id text, track_id int4, vehicle_class text, confidence float8,"
    " evidence_uri text, evidence_sha256 text, details jsonb",
    "violation_id, occurred_at",
    "occurred_at",
)
SIGNAL_PLANS = _spec(
    "signal_plans",
    "intersection_id text, plan_id text, kind text, valid_from timestamptz, cycle_s float8,"
    " offset_s float8, plan jsonb, issued_at timestamptz, basis_start timestamptz,"
    " basis_end timestamptz, current_plan_id text, predicted_delay_current_s float8,"
    " predicted_delay_recommended_s float8, method text",
    "intersection_id, plan_id, kind, valid_from",
    "valid_from",
)
SIGNAL_PHASES = _spec(
    "signal_phases",
    "intersection_id text, signal_group text, changed_at timestamptz, state text, program_id text",
    "intersection_id, signal_group, changed_at",
    "changed_at",
)
EVENTS = _spec(
    "events",
    "alert_id text, raised_at timestamptz, kind text, severity text, source text,"
    " subject_id text, message text, details jsonb",
    "alert_id, raised_at",
    "raised_at",
)

#: Every hypertable the sink writes, by table name.
TABLES: dict[str, TableSpec] = {
    s.name: s
    for s in (
        METER_READINGS,
        FEEDER_LOAD,
        ENERGY_FORECASTS,
        TRAFFIC_COUNTS,
        VIOLATIONS,
        SIGNAL_PLANS,
        SIGNAL_PHASES,
        EVENTS,
    )
}

#: Reference tables (no time partitioning; written by operators and simulators).
REFERENCE_TABLES: tuple[str, ...] = ("districts", "feeders", "meters", "intersections", "cameras")
