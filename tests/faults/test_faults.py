"""Fault suite: kill -9 one component at a random moment of a replayed run; nothing lost.

For each component in turn — the bridge, each energy worker, the DB sink, the gateway
agent, and the services themselves: Kafka, Mosquitto, PostgreSQL — a simulated city sends a
fixed span of readings through the real pipeline while the component is killed with
SIGKILL and started again (a worker at once; a service after a short outage, with the same
data dir and ports).  Workers that die because a broker or the DB vanished under them are
restarted, as a process supervisor (systemd, Kubernetes) would.  Afterwards
``meter_readings`` must hold exactly the expected rows (count and checksum over key and
values), none twice, and the bad messages injected during the run must be in the DLQ.  The
suite prints (tests/faults/conftest.py) a table: fault, moment, readings in flight at the
kill, lost, duplicated, replayed, worker restarts, recovery times.

The moments are drawn from a generator seeded per fault, so a failure can be re-run as it
happened.  The stack is the suite's own (tests/faults/conftest.py), on ports outside the
ephemeral range.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from citystream.stack.private import free_port
from citystream.testing import Stack
from schemas.topics import DEAD_LETTER_CODEC
from simulators.meters.block import to_readings
from simulators.meters.generator import MeterSimulator
from simulators.meters.seed import seed_reference
from simulators.meters.topology import CityConfig, build_city

pytestmark = pytest.mark.integration
METERS, SEED, HOURS = 200, 5, 12
WORKERS = ("bridge", "router", "aggregator", "sink")
SERVICES = ("kafka", "mosquitto", "postgres")
FAULTS = (*WORKERS, "gateway", *SERVICES)
HEADERS = (
    "fault",
    "moment s",
    "down s",
    "in flight",
    "lost",
    "duplicated",
    "replayed",
    "restarts",
    "rows again s",
    "drained s",
)
ROWS: list[tuple[object, ...]] = []
BAD_PAYLOADS = ('{"v": 1, "gateway_id": "', "garbage", '{"v": 2}')

Row = tuple[str, datetime, int, float, float]  # meter_id, ts, interval_s, import, export


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

    def tails(self, lines: int = 15) -> str:
        out = []
        for name in self.procs:
            text = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()
            out.append(f"--- {name}\n" + "\n".join(text[-lines:]))
        return "\n".join(out)

    def stop(self) -> None:
        for p in self.procs.values():
            p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="module")
def pipeline(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    city = build_city(CityConfig(n_meters=METERS, seed=SEED))
    with stack.db() as conn:
        seed_reference(conn, city)
    p = Pipeline(stack, tmp_path_factory.mktemp("faults"))
    yield p
    p.stop()


def checksum(rows: Sequence[Row]) -> str:
    """Order-independent digest of rows, key and values (floats by their exact repr)."""
    lines = sorted(f"{m}|{ts.timestamp():.0f}|{i}|{imp!r}|{exp!r}" for m, ts, i, imp, exp in rows)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def metric(port: int, suffix: str) -> float | None:
    """A counter ending in ``suffix`` from a worker's /metrics (None: not reachable)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if not line.startswith("#") and name.endswith(suffix):
            return float(value)
    return None


def publish_bad(stack: Stack, topic: str, deadline_s: float = 60.0) -> None:
    """The bad payloads, at QoS 1 (retried while the broker is not back yet)."""
    for payload in BAD_PAYLOADS:
        give_up = time.monotonic() + deadline_s
        while True:
            res = subprocess.run(
                ["mosquitto_pub", "-h", stack.settings.mqtt.host, "-p",
                 str(stack.settings.mqtt.port), "-q", "1", "-t", topic, "-m", payload],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            if res.returncode == 0:
                break
            assert time.monotonic() < give_up, f"mosquitto_pub failed: {res.stderr}"
            time.sleep(0.5)


@pytest.mark.parametrize("fault", FAULTS)
def test_kill_minus_nine_loses_nothing(
    fault: str, stack: Stack, pipeline: Pipeline, tmp_path: Path
) -> None:
    index = FAULTS.index(fault)
    rng = random.Random(index)
    start = datetime(2026, 6, 1 + index, tzinfo=UTC)
    city = build_city(CityConfig(n_meters=METERS, seed=SEED))
    sim = MeterSimulator(city, seed=SEED)
    sent: list[Row] = [
        (r.meter_id, r.ts, r.interval_s, r.import_kwh, r.export_kwh)
        for b in sim.run(start, start + timedelta(hours=HOURS))
        for r in to_readings(b)
    ]
    # the simulated meters repeat some readings, as real ones do: the DB keeps one of each
    expected = sorted(set(sent))
    lo, hi = min(r[1] for r in expected), max(r[1] for r in expected)

    def stored_count() -> int:
        try:
            with stack.db() as conn:
                n: int = conn.execute(
                    "SELECT count(*) FROM meter_readings WHERE ts BETWEEN %s AND %s", (lo, hi)
                ).fetchone()[0]
                return n
        except Exception:  # the DB itself may be the fault being recovered from
            return -1

    gateway = f"gw-fault-{fault}"
    agent_port = free_port()
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
        "--metrics-port",
        str(agent_port),
    )  # ~14 s of sending
    log = tmp_path / "agent.log"
    agent = stack.spawn(log, *agent_args)
    moment = rng.uniform(3.0, 8.0)
    down_s = rng.uniform(2.0, 5.0) if fault in SERVICES else 0.0
    restarts_before = pipeline.restarts
    try:
        time.sleep(moment)
        at_kill = stored_count()
        published = metric(agent_port, "readings_sent_total")
        assert published is not None, log.read_text()[-3000:]
        in_flight = int(published) - at_kill
        killed_at = time.monotonic()
        if fault == "gateway":
            agent.kill()
            agent.wait(timeout=30)
            agent = stack.spawn(log, *agent_args)
        elif fault in SERVICES:
            stack.kill_service(fault)
            time.sleep(down_s)
            stack.restart_service(fault)
        else:
            pipeline.kill(fault)
        count_back = stored_count()
        rows_again: float | None = None
        publish_bad(stack, f"city/test/meters/{gateway}/readings")
        deadline = time.monotonic() + 180  # within the 300 s per-test timeout
        while time.monotonic() < deadline:
            n = stored_count()
            if rows_again is None and n > max(count_back, at_kill):
                rows_again = time.monotonic() - killed_at
            if n >= len(expected):
                break
            pipeline.revive()
            time.sleep(0.5)
        drained = time.monotonic() - killed_at
        assert agent.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(timeout=30)
    with stack.db() as conn:
        rows: list[Row] = conn.execute(
            "SELECT meter_id, ts, interval_s, import_kwh, export_kwh FROM meter_readings "
            "WHERE ts BETWEEN %s AND %s",
            (lo, hi),
        ).fetchall()
    keys = {(m, ts) for m, ts, *_ in rows}
    lost = len({(m, ts) for m, ts, *_ in expected} - keys)
    duplicated = len(rows) - len(keys)
    in_kafka = [
        (r["meter_id"], r["ts"])
        for rec in stack.read_topic("meter.readings", where=lambda r: r.key == gateway.encode())
        for r in json.loads(rec.value)["readings"]
    ]
    ROWS.append(
        (
            fault,
            round(moment, 1),
            round(down_s, 1),
            max(in_flight, 0),
            lost,
            duplicated,
            len(in_kafka) - len(sent),  # copies beyond what the gateway had to send
            pipeline.restarts - restarts_before,
            round(rows_again, 1) if rows_again is not None else "-",
            round(drained, 1),
        )
    )
    assert at_kill < len(expected), "the kill must come mid-run"
    assert lost == 0, pipeline.tails()
    assert duplicated == 0
    assert len(rows) == len(expected)
    assert checksum(rows) == checksum(expected), "stored values differ from those sent"

    topic = f"city/test/meters/{gateway}/readings".encode()
    letters = stack.consume(
        "meter.readings.dlq", count=3, timeout_s=60, where=lambda r: r.key == topic
    )
    payloads = {base64.b64decode(DEAD_LETTER_CODEC.decode(r.value).payload_b64) for r in letters}
    assert payloads == {p.encode() for p in BAD_PAYLOADS}
    pipeline.revive()
