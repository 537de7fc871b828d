"""The writer's pure parts: generated SQL, table specs, row converters, buffering rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from citystream.db import rows, tables
from citystream.db.copy_writer import (
    CopyWriter,
    FlushResult,
    copy_sql,
    create_stage_sql,
    insert_sql,
    stage_table_name,
)
from citystream.db.tables import TABLES, Column, TableSpec
from schemas import messages as m

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def make_readings(n: int, meters: int = 3) -> list[m.MeterReading]:
    return [
        m.MeterReading(
            meter_id=f"m{i % meters}",
            ts=T0 + timedelta(minutes=15 * (i // meters)),
            import_kwh=0.25 + i,
            voltage_v=230.0,
        )
        for i in range(n)
    ]


def sql_text(composable: object) -> str:
    return composable.as_string(None)  # type: ignore[attr-defined, no-any-return]


def test_create_stage_sql() -> None:
    assert sql_text(create_stage_sql(tables.METER_READINGS)) == (
        'CREATE TEMP TABLE IF NOT EXISTS "_stage_meter_readings" '
        '(LIKE "meter_readings" INCLUDING DEFAULTS) ON COMMIT DELETE ROWS'
    )


@pytest.mark.parametrize(("binary", "suffix"), [(True, " (FORMAT BINARY)"), (False, "")])
def test_copy_sql(binary: bool, suffix: str) -> None:
    assert sql_text(copy_sql(tables.METER_READINGS, binary=binary)) == (
        'COPY "_stage_meter_readings" ("meter_id", "ts", "interval_s", "import_kwh", '
        '"export_kwh", "voltage_v") FROM STDIN' + suffix
    )


def test_insert_sql_uses_natural_key() -> None:
    assert sql_text(insert_sql(tables.FEEDER_LOAD)) == (
        'INSERT INTO "feeder_load" ("scope", "scope_id", "window_start", "window_s", '
        '"energy_kwh", "avg_kw", "meters_reporting", "late_readings") '
        'SELECT "scope", "scope_id", "window_start", "window_s", "energy_kwh", "avg_kw", '
        '"meters_reporting", "late_readings" FROM "_stage_feeder_load" '
        'ON CONFLICT ("scope", "scope_id", "window_start") DO NOTHING'
    )


def test_identifiers_are_quoted() -> None:
    spec = TableSpec(
        'we"ird; DROP',
        (Column("a b", "text"), Column('t"s', "timestamptz")),
        ('t"s',),
        't"s',
    )
    assert stage_table_name(spec) == '_stage_we"ird; DROP'
    text = sql_text(insert_sql(spec))
    assert 'INSERT INTO "we""ird; DROP" ("a b", "t""s")' in text
    assert 'ON CONFLICT ("t""s") DO NOTHING' in text


@pytest.mark.parametrize(
    ("key", "time_column", "error"),
    [
        (("a",), "ts", "must include the time column"),
        (("a", "nope"), "ts", "not in the columns"),
        (("a", "ts"), "nope", "not in the columns"),
    ],
)
def test_table_spec_validation(key: tuple[str, ...], time_column: str, error: str) -> None:
    cols = (Column("a", "text"), Column("ts", "timestamptz"))
    with pytest.raises(ValueError, match=error):
        TableSpec("x", cols, key, time_column)


def test_every_hypertable_has_a_spec() -> None:
    assert set(TABLES) == {
        "meter_readings",
        "feeder_load",
        "energy_forecasts",
        "traffic_counts",
        "violations",
        "signal_plans",
        "signal_phases",
        "events",
    }
    for spec in TABLES.values():
        assert spec.time_column in spec.key


def test_meter_reading_row_matches_spec() -> None:
    (r,) = make_readings(1)
    spec, out = rows.rows_for(r)
    assert spec is tables.METER_READINGS
    assert out == [("m0", T0, 900, 0.25, 0.0, 230.0)]
    assert len(out[0]) == len(spec.columns)


def _samples() -> list[m.Message]:
    plan = m.SignalPlan(
        intersection_id="i1",
        plan_id="p1",
        cycle_s=90,
        phases=[m.PhaseTiming(name="ns", signal_groups=["N"], green_s=30, amber_s=3, all_red_s=2)],
        valid_from=T0,
    )
    return [
        *make_readings(2),
        m.MeterBatch(gateway_id="g1", batch_seq=0, sent_at=T0, readings=make_readings(4)),
        m.FeederLoad(
            scope="feeder",
            scope_id="f1",
            window_start=T0,
            energy_kwh=5.0,
            avg_kw=20.0,
            meters_reporting=10,
        ),
        m.Forecast(
            scope="district",
            scope_id="d1",
            issued_at=T0,
            model="naive",
            points=[
                m.ForecastPoint(target=T0 + timedelta(minutes=15 * k), p10=1, p50=2, p90=3)
                for k in range(3)
            ],
        ),
        m.LaneCount(
            intersection_id="i1",
            camera_id="c1",
            lane_id="l1",
            movement="left",
            vehicle_class="car",
            window_start=T0,
            window_s=60,
            count=4,
            occupancy=0.2,
            queue_len=1,
        ),
        m.Violation(
            violation_id="v1",
            kind="red_light",
            camera_id="c1",
            intersection_id="i1",
            track_id=7,
            vehicle_class="car",
            occurred_at=T0,
            confidence=0.9,
            evidence_uri="file:///e/v1.jpg",
            evidence_sha256="a" * 64,
            details={"speed_kmh": 41.0},
        ),
        plan,
        m.SignalRecommendation(
            intersection_id="i1",
            issued_at=T0,
            basis_start=T0,
            basis_end=T0,
            current_plan_id="p1",
            recommended=plan,
            predicted_delay_current_s=30,
            predicted_delay_recommended_s=20,
        ),
        m.SignalPhaseChange(intersection_id="i1", signal_group="N", state="red", changed_at=T0),
        m.Alert(
            alert_id="a1",
            kind="peak_load",
            severity="warning",
            source="energy",
            subject_id="f1",
            raised_at=T0,
            message="feeder f1 above 90% rating",
        ),
    ]


@pytest.mark.parametrize("message", _samples(), ids=lambda msg: type(msg).__name__)
def test_rows_for_every_storable_type(message: m.Message) -> None:
    spec, out = rows.rows_for(message)
    assert out
    for row in out:
        assert len(row) == len(spec.columns)
        for value, col in zip(row, spec.columns, strict=True):
            if col.pg_type == "timestamptz" and value is not None:
                assert isinstance(value, datetime) and value.tzinfo is not None
            if col.pg_type == "jsonb":
                assert isinstance(value, dict)


def test_forecast_is_one_row_per_point_and_batch_expands() -> None:
    samples = {type(s): s for s in _samples()}
    assert len(rows.rows_for(samples[m.Forecast])[1]) == 3
    assert len(rows.rows_for(samples[m.MeterBatch])[1]) == 4
    assert rows.rows_for(samples[m.SignalRecommendation])[1][0][2] == "recommended"


def test_rows_for_rejects_unstored_type() -> None:
    header = m.FrameHeader(camera_id="c1", seq=0, captured_at=T0, width=10, height=10)
    with pytest.raises(TypeError, match="FrameHeader is not stored"):
        rows.rows_for(header)


class RecordingWriter(CopyWriter):
    """Buffers like the real writer; 'flush' records batches instead of touching a DB."""

    def __init__(self, batch_size: int) -> None:
        super().__init__("host=unused", tables.METER_READINGS, batch_size=batch_size)
        self.batches: list[int] = []

    def flush(self) -> FlushResult:
        if not self._buf:
            return FlushResult()
        self.batches.append(len(self._buf))
        result = FlushResult(len(self._buf), len(self._buf))
        self._buf.clear()
        return result


def test_backpressure_flushes_at_batch_size() -> None:
    w = RecordingWriter(batch_size=4)
    out = [rows.meter_reading_row(r) for r in make_readings(10)]
    assert w.add(out[0]) is None
    total = w.add_many(out[1:])
    assert w.batches == [4, 4] and w.pending == 2
    assert total == FlushResult(8, 8)
    assert w.flush() == FlushResult(2, 2) and w.pending == 0


def test_add_rejects_wrong_width() -> None:
    w = RecordingWriter(batch_size=4)
    with pytest.raises(ValueError, match="row has 2 values, expected 6"):
        w.add(("m1", T0))


@pytest.mark.parametrize("size", [0, -1, 10_000_000])
def test_batch_size_bounds(size: int) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        CopyWriter("host=unused", tables.METER_READINGS, batch_size=size)


def test_flush_result_arithmetic() -> None:
    assert FlushResult(5, 3).plus(FlushResult(2, 0)) == FlushResult(7, 3)
    assert FlushResult(7, 3).duplicates == 4


def test_add_many_rejects_wrong_width_row() -> None:
    w = RecordingWriter(batch_size=100)
    good = [rows.meter_reading_row(r) for r in make_readings(3)]
    with pytest.raises(ValueError, match="row has 1 values"):
        w.add_many([*good, ("m1",)])
    assert w.pending == 0
