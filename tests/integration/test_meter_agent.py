"""The meter gateway agent against a real Mosquitto: delivery, broker outage, kill -9.

(a) and (c) use the session stack's broker; (b) stops and restarts a broker, so it starts its
own private Mosquitto (never the shared one).
"""

from __future__ import annotations

import getpass
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from citystream.metrics import Registry
from citystream.settings import MqttSettings
from citystream.stack.mosquitto import mosquitto_bin
from citystream.stack.private import free_port
from citystream.stack.process import port_open
from citystream.testing import Stack
from edge.meter.agent import AgentConfig, MeterAgent
from edge.outbox import Outbox
from schemas.codecs import JsonCodec
from schemas.messages import MeterBatch, MeterReading
from schemas.topics import mqtt_route_for

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, tzinfo=UTC)
BATCH_CODEC = JsonCodec(MeterBatch)


def make_readings(n_meters: int, n_intervals: int) -> list[MeterReading]:
    """Interval-major, like a concentrator collects them."""
    return [
        MeterReading(
            meter_id=f"m{m:05d}",
            ts=T0 + timedelta(minutes=15 * (k + 1)),
            import_kwh=round(0.01 * (m % 97) + 0.001 * k, 4),
        )
        for k in range(n_intervals)
        for m in range(n_meters)
    ]


def key(r: MeterReading) -> tuple[str, datetime]:
    return (r.meter_id, r.ts)


@dataclass
class Collector:
    """A QoS 1 subscriber to every gateway's readings, checking each message like the bridge."""

    host: str
    port: int
    client_id: str = field(default_factory=lambda: f"test-sub-{uuid.uuid4().hex[:8]}")
    batches: list[MeterBatch] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    errors: list[str] = field(default_factory=list)
    subscribed: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Collector:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,  # persistent: the broker keeps our messages across its restart
            protocol=mqtt.MQTTv311,
        )
        c.on_connect = lambda cl, *a: cl.subscribe("city/+/meters/+/readings", qos=1)
        c.on_subscribe = lambda *a: self.subscribed.set()
        c.on_message = self._on_message
        c.reconnect_delay_set(0.1, 0.5)
        c.connect(self.host, self.port)
        c.loop_start()
        self.client = c
        assert self.subscribed.wait(10), "subscriber not subscribed"
        return self

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            route = mqtt_route_for(msg.topic)
            assert route is not None, f"no route for {msg.topic}"
            route.route(msg.topic, msg.payload)  # what the bridge does: topic id == gateway_id
            batch = BATCH_CODEC.decode(msg.payload)
        except Exception as exc:
            self.errors.append(repr(exc))
            return
        with self.lock:
            self.batches.append(batch)

    def readings(self) -> list[MeterReading]:
        with self.lock:
            return [r for b in self.batches for r in b.readings]

    def wait_for(self, want: set[tuple[str, datetime]], timeout: float = 60.0) -> set[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            missing = want - {key(r) for r in self.readings()}
            if not missing:
                return missing
            time.sleep(0.1)
        return want - {key(r) for r in self.readings()}

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def assert_in_order_per_meter(readings: list[MeterReading]) -> None:
    """First arrivals of each meter's readings come in increasing ts (resends may repeat)."""
    seen: set[tuple[str, datetime]] = set()
    last: dict[str, datetime] = {}
    for r in readings:
        if key(r) in seen:
            continue
        seen.add(key(r))
        assert r.meter_id not in last or r.ts > last[r.meter_id], f"out of order: {r}"
        last[r.meter_id] = r.ts


def run_agent_thread(agent: MeterAgent, source: Any) -> tuple[threading.Thread, list[int]]:
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(agent.run(source)), daemon=True)
    t.start()
    return t, result


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# --- (a) delivery --------------------------------------------------------------------------


def test_agent_delivers_every_reading_in_order(stack: Stack, tmp_path: Path) -> None:
    mqtt = stack.settings.mqtt
    sub = Collector(mqtt.host, mqtt.port).start()
    readings = make_readings(n_meters=500, n_intervals=40)  # 20,000
    reg = Registry("t")
    outbox = Outbox(tmp_path / "gw-a.outbox", registry=reg)
    agent = MeterAgent(
        AgentConfig(gateway_id="gw-a", city="testcity", max_batch=700, progress_interval_s=0),
        mqtt,
        outbox,
        reg,
    )
    try:
        assert agent.run(iter(readings)) == 0
        assert sub.wait_for({key(r) for r in readings}, timeout=30) == set()
    finally:
        sub.stop()
        outbox.close()
    got = sub.readings()
    assert not sub.errors
    assert got == readings  # stable connection: exactly once, in source order
    seqs = [b.batch_seq for b in sub.batches]
    assert seqs == list(range(len(seqs)))
    assert max(len(b.readings) for b in sub.batches) == 700
    assert {b.gateway_id for b in sub.batches} == {"gw-a"}
    m = agent.metrics
    assert (m.queued.value, m.sent.value, m.acked.value) == (20_000, 20_000, 20_000)
    assert m.dropped.value == 0 and m.retried.value == 0
    assert reg.get("outbox_pending").value == 0


def test_partial_batch_goes_out_after_max_delay(stack: Stack, tmp_path: Path) -> None:
    mqtt = stack.settings.mqtt
    sub = Collector(mqtt.host, mqtt.port).start()
    readings = make_readings(n_meters=3, n_intervals=1)
    gate = threading.Event()

    def slow_source() -> Iterator[MeterReading]:
        yield from readings
        gate.wait(20)  # the source stays open: only max_delay can flush the batch

    outbox = Outbox(tmp_path / "gw-d.outbox")
    agent = MeterAgent(
        AgentConfig(
            gateway_id="gw-d",
            city="testcity",
            max_batch=1000,
            max_delay_s=0.3,
            progress_interval_s=0,
        ),
        mqtt,
        outbox,
    )
    t, result = run_agent_thread(agent, slow_source())
    try:
        assert sub.wait_for({key(r) for r in readings}, timeout=5) == set()
    finally:
        gate.set()
        t.join(20)
        sub.stop()
        outbox.close()
    assert result == [0]


# --- (b) broker outage ---------------------------------------------------------------------


class PrivateBroker:
    """A throwaway Mosquitto with persistence on a free port, stoppable at will."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        home.mkdir(parents=True, exist_ok=True)
        self.conf = home / "mosquitto.conf"
        self.conf.write_text(
            f"user {getpass.getuser()}\n"  # root would drop to 'mosquitto' and not write here
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {home}/\nautosave_interval 1\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.home / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen(
            [mosquitto_bin(), "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
        )
        wait_until(lambda: port_open("127.0.0.1", self.port), 10, "private mosquitto")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    broker = PrivateBroker(tmp_path / "mosquitto")
    try:
        yield broker
    finally:
        broker.stop()


def paced(readings: list[MeterReading], per_s: float) -> Iterator[MeterReading]:
    t0 = time.monotonic()
    for i, r in enumerate(readings):
        ahead = i / per_s - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
        yield r


def test_broker_outage_loses_nothing(private_broker: PrivateBroker, tmp_path: Path) -> None:
    broker = private_broker
    mqtt = MqttSettings(port=broker.port)
    readings = make_readings(n_meters=100, n_intervals=80)  # 8,000 over ~4 s
    reg = Registry("t")
    outbox = Outbox(tmp_path / "gw-b.outbox", registry=reg)
    agent = MeterAgent(
        AgentConfig(
            gateway_id="gw-b",
            city="testcity",
            max_batch=200,
            max_delay_s=0.1,
            backoff_initial_s=0.05,
            backoff_max_s=0.5,
            progress_interval_s=0,
        ),
        mqtt,
        outbox,
        reg,
    )
    # the subscriber's persistent session exists before any publish and survives restarts
    broker.start()
    sub = Collector("127.0.0.1", broker.port).start()
    broker.stop()
    # 1. the broker is down when the agent starts: it queues to the outbox
    t, result = run_agent_thread(agent, paced(readings, 2000))
    try:
        wait_until(lambda: agent.metrics.queued.value >= 1000, 10, "queueing while down")
        assert agent.metrics.acked.value == 0 and outbox.pending_count() >= 1000
        assert agent.metrics.disconnects.value >= 1  # it did try
        # 2. broker up: the backlog drains
        broker.start()
        wait_until(lambda: agent.metrics.acked.value >= 3000, 20, "acks after broker start")
        # 3. broker stopped mid-stream, for a while
        broker.stop()
        acked_at_stop = agent.metrics.acked.value
        queued_at_stop = agent.metrics.queued.value
        time.sleep(1.5)
        assert agent.metrics.queued.value > queued_at_stop, "agent must keep queueing"
        assert agent.metrics.acked.value == acked_at_stop, "no acks without a broker"
        assert outbox.pending_count() > 0
        # 4. broker back: everything arrives
        broker.start()
        t.join(60)
        assert result == [0]
        assert sub.wait_for({key(r) for r in readings}, timeout=30) == set()
    finally:
        agent.stop()
        t.join(10)
        sub.stop()
        outbox.close()
    assert not sub.errors
    assert_in_order_per_meter(sub.readings())
    m = agent.metrics
    assert m.acked.value >= len(readings) and m.queued.value == len(readings)
    assert m.dropped.value == 0
    assert m.connects.value >= 2
    assert reg.get("outbox_pending").value == 0
    seqs = [b.batch_seq for b in sub.batches]
    assert seqs == sorted(seqs)  # resends keep their batch_seq; order per gateway kept


# --- (c) kill -9 ---------------------------------------------------------------------------


def test_sigkill_mid_stream_then_restart_delivers_everything(stack: Stack, tmp_path: Path) -> None:
    mqtt = stack.settings.mqtt
    readings = make_readings(n_meters=200, n_intervals=50)  # 10,000 at 2,500/s: ~4 s
    replay = tmp_path / "readings.jsonl"
    replay.write_text("".join(r.model_dump_json() + "\n" for r in readings))
    outbox_path = tmp_path / "gw-c.outbox"
    cmd = [
        sys.executable,
        "-m",
        "edge.meter",
        "--gateway-id",
        "gw-c",
        "--city",
        "testcity",
        "--replay",
        str(replay),
        "--rate",
        "2500",
        "--outbox",
        str(outbox_path),
        "--batch-size",
        "250",
        "--max-delay",
        "0.2",
        "--progress-interval",
        "1",
    ]
    env = {**stack.env(), "PYTHONPATH": os.getcwd()}
    sub = Collector(mqtt.host, mqtt.port).start()
    log1 = (tmp_path / "run1.log").open("wb")
    first = subprocess.Popen(cmd, env=env, stdout=log1, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: len(sub.readings()) >= 3000, 30, "first run to publish")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        got_first = len(sub.readings())
        assert got_first < len(readings), "killed too late to test anything"
        with Outbox(outbox_path) as ob:  # what the killed agent left behind
            cursor = ob.source_cursor
            assert cursor is not None and cursor >= got_first
        second = subprocess.run(cmd, env=env, capture_output=True, timeout=120)
        assert second.returncode == 0, second.stdout.decode()[-3000:]
        assert sub.wait_for({key(r) for r in readings}, timeout=30) == set()
    finally:
        if first.poll() is None:
            first.kill()
        sub.stop()
    assert not sub.errors
    got = sub.readings()
    assert_in_order_per_meter(got)
    assert {key(r) for r in got} == {key(r) for r in readings}
    dups = len(got) - len(readings)
    assert 0 <= dups <= 32 * 250, f"{dups} duplicates: more than the in-flight window"
    # batch_seq is persisted: ids continue across the restart without gaps, and a resent
    # batch carries exactly the readings it had before (a reset would reuse ids for others)
    by_seq: dict[int, list[MeterReading]] = {}
    for b in sub.batches:
        assert by_seq.setdefault(b.batch_seq, b.readings) == b.readings, b.batch_seq
    assert sorted(by_seq) == list(range(len(by_seq)))
    assert b"dropped=0" in second.stderr + second.stdout
    with Outbox(outbox_path) as ob:
        assert ob.pending_count() == 0
