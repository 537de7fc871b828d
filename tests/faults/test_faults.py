"""Fault suite: kill -9 one component at a random moment of a replayed run; nothing lost.

For each component in turn — the bridge, each energy worker, the DB sink, the gateway
agent — a simulated city sends a fixed span of readings through the
real pipeline while the component is killed with SIGKILL and restarted.  Workers that die
because a broker or the DB vanished under them are restarted, as a process supervisor
(systemd, Kubernetes) would.  Afterwards the database must hold exactly the expected
readings, and the bad messages injected during the run must be in the DLQ.  The suite
prints (tests/faults/conftest.py) a table: fault, moment, readings not yet stored at the
kill, lost, worker restarts, recovery time.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from citystream.testing import Stack
from schemas.topics import DEAD_LETTER_CODEC
from simulators.meters.block import to_readings
from simulators.meters.generator import MeterSimulator
from simulators.meters.seed import seed_reference
from simulators.meters.topology import CityConfig, build_city

pytestmark = pytest.mark.integration
METERS, SEED, HOURS = 200, 5, 12
WORKERS = ("bridge", "router", "aggregator", "sink")
#: Broker and DB kill -9 (Kafka, Mosquitto, PostgreSQL) are not in the suite yet: after a
#: Kafka kill -9 the bridge's kafka-python producer was seen stuck for minutes (see issue 6).
FAULTS = (*WORKERS, "gateway")
ROWS: list[tuple[object, ...]] = []


class Pipeline:
    """The pipeline's workers as subprocesses, restartable after a crash."""

    def __init__(self, stack: Stack, logs: Path) -> None:
        self.stack, self.logs, self.tag = stack, logs, uuid.uuid4().hex[:8]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts = 0
        for name in WORKERS:
            self.start(name)

    def args(self, name: str) -> tuple[str, ...]:
        cli = ("-m", "citystream.cli")
        return {
            "bridge": ("-m", "edge.bridge", "--client-id", f"faults-{self.tag}"),
            "router": (*cli, "energy", "stage", "router", "--group-id", f"f-router-{self.tag}"),
            "aggregator": (
                *cli,
                "energy",
                "stage",
                "aggregator",
                "--group-id",
                f"f-agg-{self.tag}",
                "--idle-advance",
                "3",
            ),
            "sink": (
                *cli,
                "sink",
                "--topics",
                "meter.readings",
                "--group-id",
                f"f-sink-{self.tag}",
                "--max-delay",
                "0.5",
            ),
        }[name]

    def start(self, name: str) -> None:
        self.procs[name] = self.stack.spawn(self.logs / f"{name}.log", *self.args(name))

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait(timeout=30)
        self.start(name)

    def revive(self) -> None:
        """Restart workers that exited (e.g. their Kafka sends failed while it was down)."""
        for name, p in list(self.procs.items()):
            if p.poll() is not None:
                self.restarts += 1
                self.start(name)

    def stop(self) -> None:
        for p in self.procs.values():
            p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="module")
def pipeline(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Pipeline]:
    city = build_city(CityConfig(n_meters=METERS, seed=SEED))
    with stack.db() as conn:
        seed_reference(conn, city)
    p = Pipeline(stack, tmp_path_factory.mktemp("faults"))
    yield p
    p.stop()


@pytest.mark.parametrize("fault", FAULTS)
def test_kill_minus_nine_loses_nothing(
    fault: str, stack: Stack, pipeline: Pipeline, tmp_path: Path
) -> None:
    index = FAULTS.index(fault)
    start = datetime(2026, 6, 1 + index, tzinfo=UTC)
    city = build_city(CityConfig(n_meters=METERS, seed=SEED))
    sim = MeterSimulator(city, seed=SEED)
    expected = {
        (r.meter_id, r.ts)
        for b in sim.run(start, start + timedelta(hours=HOURS))
        for r in to_readings(b)
    }
    lo, hi = min(ts for _, ts in expected), max(ts for _, ts in expected)

    def stored() -> list[Any]:
        try:
            with stack.db() as conn:
                return conn.execute(
                    "SELECT meter_id, ts FROM meter_readings WHERE ts BETWEEN %s AND %s", (lo, hi)
                ).fetchall()
        except Exception:  # the DB itself may be the fault being recovered from
            return []

    gateway = f"gw-fault-{fault}"
    agent_args = (
        "-m",
        "edge.meter",
        "--gateway-id",
        gateway,
        "--sim",
        "--meters",
        str(METERS),
        "--seed",
        str(SEED),
        "--hours",
        str(HOURS),
        "--start",
        start.isoformat(),
        "--outbox",
        str(tmp_path / "gw.outbox"),
        "--batch-size",
        "100",
        "--speed",
        "3000",
    )  # ~14 s of sending
    log = tmp_path / "agent.log"
    agent = stack.spawn(log, *agent_args)
    moment = random.Random(index).uniform(3.0, 8.0)
    restarts_before = pipeline.restarts
    try:
        time.sleep(moment)
        not_stored = len(expected) - len(stored())
        if fault == "gateway":
            agent.kill()
            agent.wait(timeout=30)
            agent = stack.spawn(log, *agent_args)
        else:
            pipeline.kill(fault)
        restarted_at = time.monotonic()
        for payload in ('{"v": 1, "gateway_id": "', "garbage", '{"v": 2}'):  # into the DLQ
            subprocess.run(
                [
                    "mosquitto_pub",
                    "-h",
                    stack.settings.mqtt.host,
                    "-p",
                    str(stack.settings.mqtt.port),
                    "-q",
                    "1",
                    "-t",
                    f"city/test/meters/{gateway}/readings",
                    "-m",
                    payload,
                ],
                check=True,
                timeout=30,
            )
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and len(stored()) < len(expected):
            pipeline.revive()
            time.sleep(1)
        recovery = time.monotonic() - restarted_at
        assert agent.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if agent.poll() is None:
            agent.kill()
    rows = set(stored())  # (meter_id, ts) is the primary key: replays collapse there
    lost = len(expected - rows)
    ROWS.append(
        (
            fault,
            round(moment, 1),
            not_stored,
            lost,
            pipeline.restarts - restarts_before,
            round(recovery, 1),
        )
    )
    assert lost == 0 and rows == expected

    topic = f"city/test/meters/{gateway}/readings".encode()
    letters = stack.consume(
        "meter.readings.dlq", count=3, timeout_s=60, where=lambda r: r.key == topic
    )
    assert len({DEAD_LETTER_CODEC.decode(r.value).payload_b64 for r in letters}) == 3
    pipeline.revive()
