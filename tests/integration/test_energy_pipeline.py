"""The energy path end to end on the real stack.

simulated city → edge gateway agent (durable outbox, MQTT QoS 1) → Mosquitto → bridge →
Kafka meter.readings → energy router → energy.district-readings → aggregator (windows,
anomalies) → energy.load / energy.alerts → DB sink → TimescaleDB; then the forecaster.

Every worker runs as a real subprocess.  The expected data comes from running the same
deterministic simulator in the test.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from citystream.testing import Stack, wait_for_drain, wait_until
from schemas.messages import MeterBatch, MeterReading
from simulators.meters.block import to_readings
from simulators.meters.generator import MeterSimulator
from simulators.meters.seed import seed_reference
from simulators.meters.topology import CityConfig, build_city
from streams.energy.forecast_job import ForecastConfig, ForecastJob

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
METERS, SEED, HOURS = 300, 11, 48
START = "2026-03-02T00:00:00+07:00"


def expected_readings() -> dict[tuple[str, datetime], MeterReading]:
    """Distinct readings of the simulated run (first arrival wins)."""
    city = build_city(CityConfig(n_meters=METERS, seed=SEED))
    sim = MeterSimulator(city, seed=SEED, record_truth=False)
    t0 = datetime.fromisoformat(START)
    readings: dict[tuple[str, datetime], MeterReading] = {}
    for block in sim.run(t0, t0 + timedelta(hours=HOURS)):
        for r in to_readings(block):
            readings.setdefault((r.meter_id, r.ts), r)
    return readings


@pytest.fixture
def tag() -> str:
    """This test's suffix of the workers' consumer groups."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def workers(stack: Stack, tmp_path: Path, tag: str) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    cli = ("-m", "citystream.cli")
    procs = {
        "bridge": stack.spawn(
            tmp_path / "bridge.log", "-m", "edge.bridge", "--client-id", f"e2e-bridge-{tag}"
        ),
        "router": stack.spawn(
            tmp_path / "router.log",
            *cli,
            "energy",
            "stage",
            "router",
            "--group-id",
            f"e2e-router-{tag}",
        ),
        "aggregator": stack.spawn(
            tmp_path / "aggregator.log",
            *cli,
            "energy",
            "stage",
            "aggregator",
            "--group-id",
            f"e2e-agg-{tag}",
            "--idle-advance",
            "3",
        ),
        "sink": stack.spawn(
            tmp_path / "sink.log",
            *cli,
            "sink",
            "--group-id",
            f"e2e-sink-{tag}",
            "--max-delay",
            "0.5",
        ),
    }
    yield procs
    for p in procs.values():
        p.terminate()
    codes = {name: p.wait(timeout=60) for name, p in procs.items()}
    assert all(c == 0 for c in codes.values()), codes


def test_simulated_city_lands_exactly_and_is_forecast(
    stack: Stack, workers: dict[str, subprocess.Popen[bytes]], tmp_path: Path, tag: str
) -> None:
    city = build_city(CityConfig(n_meters=METERS, seed=SEED))
    with stack.db() as conn:
        seed_reference(conn, city)
    expected = expected_readings()
    # Other tests use the same meter ids in other time ranges: look at ours only.
    lo, hi = min(ts for _, ts in expected), max(ts for _, ts in expected)
    feeder_of = {m["meter_id"]: m["feeder_id"] for m in city.meter_records()}

    agent = stack.spawn(
        tmp_path / "agent.log",
        "-m",
        "edge.meter",
        "--gateway-id",
        "gw-e2e",
        "--sim",
        "--meters",
        str(METERS),
        "--seed",
        str(SEED),
        "--hours",
        str(HOURS),
        "--start",
        START,
        "--outbox",
        str(tmp_path / "gw.outbox"),
    )
    try:
        assert agent.wait(timeout=300) == 0, (tmp_path / "agent.log").read_text()[-3000:]
    finally:
        if agent.poll() is None:
            agent.kill()

    def db_count() -> int:
        with stack.db() as conn:
            return int(
                conn.execute(
                    "SELECT count(*) FROM meter_readings "
                    "WHERE meter_id = ANY(%s) AND ts BETWEEN %s AND %s",
                    (list(feeder_of), lo, hi),
                ).fetchone()[0]
            )

    wait_until(lambda: db_count() >= len(expected), 180, f"{len(expected)} readings in the DB")
    time.sleep(2)
    assert db_count() == len(expected)

    with stack.db() as conn:
        rows = conn.execute(
            "SELECT meter_id, ts, import_kwh, export_kwh FROM meter_readings "
            "WHERE meter_id = ANY(%s) AND ts BETWEEN %s AND %s",
            (list(feeder_of), lo, hi),
        ).fetchall()
    assert {(m, ts) for m, ts, _, _ in rows} == set(expected)
    sums: dict[str, float] = defaultdict(float)
    for meter, ts, imp, exp in rows:
        assert (imp, exp) == (expected[(meter, ts)].import_kwh, expected[(meter, ts)].export_kwh)
        sums[feeder_of[meter]] += imp - exp
    truth_sums: dict[str, float] = defaultdict(float)
    for (meter, _), r in expected.items():
        truth_sums[feeder_of[meter]] += r.import_kwh - r.export_kwh
    assert sums == pytest.approx(truth_sums, rel=1e-9)

    # Window loads equal a direct SQL aggregation of the raw readings, leaving out only the
    # readings the aggregator recorded as arriving after their window had closed: once the
    # aggregator has handled every reading (the sink storing them says nothing of that).
    wait_for_drain(
        stack,
        {
            f"e2e-router-{tag}": ["meter.readings"],
            f"e2e-agg-{tag}": ["energy.district-readings"],
        },
    )
    late_records = stack.consume("energy.late-readings", count=10**9, timeout_s=20)
    late = {
        (r.meter_id, r.ts)
        for rec in late_records
        for r in MeterBatch.model_validate_json(rec.value).readings
        if lo <= r.ts <= hi
    }
    assert late and late <= set(expected)
    feeders = sorted({f["feeder_id"] for f in city.feeder_records()})
    sql_windows: dict[tuple[str, datetime], float] = defaultdict(float)
    for meter, ts, imp, exp in rows:
        if (meter, ts) in late:
            continue
        start = ts - timedelta(seconds=900)
        window = start - timedelta(seconds=start.timestamp() % 900)
        sql_windows[(feeder_of[meter], window)] += imp - exp

    def loads() -> dict[tuple[str, datetime], float]:
        with stack.db() as conn:
            return {
                (sid, ws): e
                for sid, ws, e in conn.execute(
                    "SELECT scope_id, window_start, energy_kwh FROM feeder_load "
                    "WHERE scope = 'feeder' AND scope_id = ANY(%s) "
                    "AND window_start BETWEEN %s AND %s",
                    (feeders, lo - timedelta(hours=1), hi),
                ).fetchall()
            }

    try:
        wait_until(lambda: set(loads()) >= set(sql_windows), 60, "every feeder window closed")
    finally:
        got = loads()
        missing = sorted(set(sql_windows) - set(got))
        extra = sorted(set(got) - set(sql_windows))
        print(
            f"windows: {len(got)} stored, {len(sql_windows)} expected, missing {missing[:5]}"
            f" (of {len(missing)}), extra {extra[:5]} (of {len(extra)})"
        )
    assert got == pytest.approx(dict(sql_windows), rel=1e-9, abs=1e-9)

    # Forecasts for every feeder and district, with monotone quantiles, stored by vintage.
    job = ForecastJob(stack.settings, ForecastConfig(history_days=7))
    records = job.run_once()
    for topic, key, value in records:
        stack.produce(topic, key, value)
    districts = {f["district_id"] for f in city.feeder_records()}
    forecast_scopes = {(r[1].decode()) for r in records if r[0] == "energy.forecasts"}
    assert forecast_scopes >= set(feeders) | districts

    def stored_forecasts() -> list[tuple[str, float, float, float]]:
        with stack.db() as conn:
            return conn.execute(
                "SELECT scope_id, p10, p50, p90 FROM energy_forecasts WHERE scope_id = ANY(%s)",
                (feeders,),
            ).fetchall()

    wait_until(
        lambda: {r[0] for r in stored_forecasts()} == set(feeders),
        60,
        "forecasts of every feeder in the DB",
    )
    points = stored_forecasts()
    assert len(points) == len(feeders) * job.config.horizon_steps
    assert all(p10 <= p50 <= p90 for _, p10, p50, p90 in points)


def test_gateway_killed_and_mqtt_broker_restarted_lose_nothing_double_nothing(
    stack: Stack, workers: dict[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """kill -9 of the gateway agent mid-run, then Mosquitto stopped and restarted mid-run:
    the DB ends with exactly the simulated readings, once each."""
    from citystream.stack import process
    from citystream.stack.supervisor import services, up

    start = "2026-05-04T00:00:00+07:00"  # its own time range: the meter ids repeat
    city = build_city(CityConfig(n_meters=METERS, seed=SEED))
    with stack.db() as conn:
        seed_reference(conn, city)
    sim = MeterSimulator(city, seed=SEED)
    t0 = datetime.fromisoformat(start)
    expected = {
        (r.meter_id, r.ts) for b in sim.run(t0, t0 + timedelta(hours=HOURS)) for r in to_readings(b)
    }
    lo, hi = min(ts for _, ts in expected), max(ts for _, ts in expected)

    def db_rows() -> list[tuple[str, datetime]]:
        with stack.db() as conn:
            return conn.execute(
                "SELECT meter_id, ts FROM meter_readings WHERE ts BETWEEN %s AND %s", (lo, hi)
            ).fetchall()

    agent_args = (
        "-m",
        "edge.meter",
        "--gateway-id",
        "gw-fault",
        "--sim",
        "--meters",
        str(METERS),
        "--seed",
        str(SEED),
        "--hours",
        str(HOURS),
        "--start",
        start,
        "--outbox",
        str(tmp_path / "gw.outbox"),
        "--batch-size",
        "200",
        "--speed",
        "4000",
    )  # ~0.9 s per simulated hour: the faults land mid-run
    log = tmp_path / "agent.log"
    agent = stack.spawn(log, *agent_args)
    try:
        wait_until(lambda: len(db_rows()) > 2_000, 120, "the first readings in the DB")
        agent.kill()
        agent.wait(timeout=30)
        killed_at = len(db_rows())
        agent = stack.spawn(log, *agent_args)

        mosquitto = next(s for s in services(stack.settings) if s.name == "mosquitto")
        wait_until(lambda: len(db_rows()) > killed_at + 2_000, 120, "progress after restart")
        process.stop(mosquitto.files(), mosquitto.stop_signal)
        time.sleep(3)  # the agent keeps reading into its outbox while the broker is down
        up(stack.settings, progress=lambda m: None)
        assert agent.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(timeout=30)
    assert killed_at < len(expected), "the kill must come mid-run"
    wait_until(lambda: len(db_rows()) >= len(expected), 180, "every reading in the DB")
    time.sleep(2)
    rows = db_rows()  # (meter_id, ts) is the primary key: duplicates collapse by design
    assert len(rows) == len(expected)
    assert set(rows) == expected
