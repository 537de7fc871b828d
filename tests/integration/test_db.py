"""TimescaleDB adapter against a real PostgreSQL + TimescaleDB from the ``stack`` fixture.

Every test module run gets its own scratch database (created next to the stack's database,
migrated, dropped afterwards), so the stack's data is never touched.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from citystream.db import rows, tables
from citystream.db.copy_writer import BatchRejected, CopyWriter, FlushResult
from citystream.db.migrate import MigrationError, discover, migrate
from citystream.db.retention import RetentionScheduler, drop_old_chunks
from citystream.errors import SinkError
from citystream.settings import DbSettings
from schemas import messages as m

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def make_readings(n: int, meters: int = 50, start: datetime = T0) -> list[tables.Row]:
    return [
        rows.meter_reading_row(
            m.MeterReading(
                meter_id=f"m{i % meters:04d}",
                ts=start + timedelta(minutes=15 * (i // meters)),
                import_kwh=0.1 * (i % 7),
                voltage_v=None if i % 3 else 231.5,
            )
        )
        for i in range(n)
    ]


def _scratch_db(db: DbSettings) -> Iterator[str]:
    name = f"cs_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(db.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield db.model_copy(update={"name": name}).dsn
    finally:
        with psycopg.connect(db.dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="module")
def dsn(stack: Any) -> Iterator[str]:
    """A migrated scratch database."""
    for d in _scratch_db(stack.settings.db):
        migrate(d)
        yield d


@pytest.fixture
def empty_dsn(stack: Any) -> Iterator[str]:
    """A scratch database with nothing in it."""
    yield from _scratch_db(stack.settings.db)


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        for name in tables.TABLES:
            c.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(name)))
        yield c


def count(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    assert row is not None
    return int(row[0])


# --- migrations ------------------------------------------------------------------------------


def test_migrate_twice_is_noop(empty_dsn: str) -> None:
    files = discover()
    first = migrate(empty_dsn)
    assert [mig.version for mig in first] == [mig.version for mig in files]
    assert migrate(empty_dsn) == []
    with psycopg.connect(empty_dsn) as c:
        recorded = c.execute("SELECT version, checksum FROM schema_migrations ORDER BY 1")
        assert recorded.fetchall() == [(mig.version, mig.checksum) for mig in files]


def test_concurrent_migrators_do_not_race(empty_dsn: str) -> None:
    results: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(len(migrate(empty_dsn)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(results) == [0, 0, len(discover())]


def test_changed_migration_is_refused(empty_dsn: str) -> None:
    migrate(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as c:
        c.execute("UPDATE schema_migrations SET checksum = repeat('0', 64) WHERE version = 2")
    with pytest.raises(MigrationError, match=r"0002_reference\.sql changed after it was applied"):
        migrate(empty_dsn)


def test_all_hypertables_exist(conn: psycopg.Connection[Any]) -> None:
    found = conn.execute(
        "SELECT hypertable_name FROM timescaledb_information.hypertables"
    ).fetchall()
    assert {r[0] for r in found} == set(tables.TABLES)
    for ref in tables.REFERENCE_TABLES:
        assert conn.execute("SELECT to_regclass(%s)", (ref,)).fetchone() == (ref,)


@pytest.mark.parametrize("spec", tables.TABLES.values(), ids=lambda s: s.name)
def test_specs_match_the_schema(conn: psycopg.Connection[Any], spec: tables.TableSpec) -> None:
    cols = dict(
        conn.execute(
            "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            (spec.name,),
        ).fetchall()
    )
    aliases = {
        "int4": "integer",
        "float8": "double precision",
        "timestamptz": ("timestamp with time zone"),
    }
    for col in spec.columns:
        assert cols[col.name] == aliases.get(col.pg_type, col.pg_type), col.name
    pk = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
        "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = %s::regclass AND i.indisprimary",
        (spec.name,),
    ).fetchall()
    assert {r[0] for r in pk} == set(spec.key)


# --- writer ----------------------------------------------------------------------------------


def test_writer_inserts_then_replay_inserts_nothing(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    batch = make_readings(5_000)
    with CopyWriter(dsn, tables.METER_READINGS, batch_size=1_000) as w:
        assert w.add_many(batch) == FlushResult(5_000, 5_000)
    assert count(conn, "meter_readings") == 5_000
    with CopyWriter(dsn, tables.METER_READINGS, batch_size=1_000) as w:
        assert w.add_many(batch) == FlushResult(5_000, 0)
    assert count(conn, "meter_readings") == 5_000


@pytest.mark.parametrize("optimistic", [True, False])
def test_duplicates_inside_a_batch_collapse(
    conn: psycopg.Connection[Any], optimistic: bool
) -> None:
    batch = make_readings(100)
    w = CopyWriter(conn, tables.METER_READINGS, batch_size=1_000, optimistic=optimistic)
    w.add_many(batch + batch[:30])
    assert w.flush() == FlushResult(130, 100)
    # half old, half new: only the new half goes in
    w.add_many(batch[50:] + make_readings(50, start=T0 + timedelta(days=3)))
    assert w.flush() == FlushResult(100, 50)
    assert count(conn, "meter_readings") == 150


def test_every_storable_message_is_written_once(conn: psycopg.Connection[Any]) -> None:
    plan = m.SignalPlan(
        intersection_id="i1",
        plan_id="p1",
        cycle_s=90,
        phases=[m.PhaseTiming(name="ns", signal_groups=["N"], green_s=30, amber_s=3, all_red_s=2)],
        valid_from=T0,
    )
    messages: list[m.Message] = [
        m.FeederLoad(
            scope="feeder",
            scope_id="f1",
            window_start=T0,
            energy_kwh=5.0,
            avg_kw=20.0,
            meters_reporting=10,
        ),
        m.Forecast(
            scope="feeder",
            scope_id="f1",
            issued_at=T0,
            model="naive",
            points=[
                m.ForecastPoint(target=T0 + timedelta(minutes=15 * k), p10=1, p50=2, p90=3)
                for k in range(4)
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
            evidence_uri="file:///evidence/v1.jpg",
            evidence_sha256="ab" * 32,
            details={"speed_kmh": 41.5, "lane": "l1"},
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
            message="feeder f1 above 90% of rating",
            details={"load_pct": 93.0},
        ),
    ]
    writers = {name: CopyWriter(conn, spec) for name, spec in tables.TABLES.items()}
    for _ in range(2):  # the second pass is a replay
        for msg in messages:
            spec, out = rows.rows_for(msg)
            writers[spec.name].add_many(out)
        for w in writers.values():
            w.flush()
    expected = {
        "feeder_load": 1,
        "energy_forecasts": 4,
        "traffic_counts": 1,
        "violations": 1,
        "signal_plans": 2,
        "signal_phases": 1,
        "events": 1,
        "meter_readings": 0,
    }
    assert {name: w.totals.inserted for name, w in writers.items()} == expected
    assert {name: count(conn, name) for name in writers} == expected
    review, details = conn.execute("SELECT review_state, details FROM violations").fetchone() or ()
    assert review == "pending" and details == {"speed_kmh": 41.5, "lane": "l1"}


def test_unreachable_database_raises_sink_error() -> None:
    w = CopyWriter("host=127.0.0.1 port=1 dbname=x connect_timeout=2", tables.METER_READINGS)
    w.add_many(make_readings(3))
    with pytest.raises(SinkError, match="cannot connect"):
        w.flush()
    assert w.pending == 3  # nothing acknowledged, nothing lost


def test_bad_rows_are_rejected_and_kept(conn: psycopg.Connection[Any]) -> None:
    w = CopyWriter(conn, tables.METER_READINGS)
    w.add(("m1", T0, 900, -1.0, 0.0, None))  # violates import_kwh >= 0
    with pytest.raises(BatchRejected, match="meter_readings"):
        w.flush()
    assert w.pending == 1 and w.discard() == 1
    w.add_many(make_readings(10))
    assert w.flush() == FlushResult(10, 10)  # the connection is still usable


# --- retention -------------------------------------------------------------------------------


def test_drop_old_chunks_keeps_recent_data(dsn: str, conn: psycopg.Connection[Any]) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    old = make_readings(200, start=now - timedelta(days=20))  # 200/50 * 15 min = 1 hour
    new = make_readings(200, start=now - timedelta(hours=2))
    w = CopyWriter(conn, tables.METER_READINGS)
    w.add_many(old + new)
    assert w.flush().inserted == 400

    dropped = drop_old_chunks(conn, {"meter_readings": timedelta(days=7)}, now=now)
    assert len(dropped["meter_readings"]) >= 1
    assert count(conn, "meter_readings") == 200
    oldest = conn.execute("SELECT min(ts) FROM meter_readings").fetchone()
    assert oldest is not None and oldest[0] >= now - timedelta(hours=2)
    # nothing left to drop
    assert drop_old_chunks(conn, {"meter_readings": timedelta(days=7)}, now=now) == {
        "meter_readings": []
    }

    w.add_many(make_readings(50, start=now - timedelta(days=30)))
    w.flush()
    scheduler = RetentionScheduler(
        dsn, {name: timedelta(days=7) for name in tables.TABLES}, interval_s=3600
    )
    assert len(scheduler.run_once()["meter_readings"]) == 1
    assert count(conn, "meter_readings") == 200
