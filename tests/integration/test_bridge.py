"""The MQTT -> Kafka bridge against the real Mosquitto and Kafka of the test stack.

The bridge runs as a subprocess (``python -m edge.bridge``) so it can be SIGKILLed.
Each test uses its own bridge client id (its own persistent session) and its own
gateway/meter ids, so tests sharing the session stack do not see each other's records.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from citystream.settings import Settings
from citystream.stack.private import free_port
from schemas import messages as m
from schemas.topics import DEAD_LETTER_CODEC

pytestmark = pytest.mark.integration

T0 = datetime(2026, 2, 1, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


class BridgeProcess:
    """``python -m edge.bridge`` with a fixed client id and a metrics port."""

    def __init__(
        self, settings: Settings, client_id: str, log_path: Path, *extra_args: str
    ) -> None:
        self.settings = settings
        self.extra_args = extra_args
        self.client_id = client_id
        self.log_path = log_path
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CITYSTREAM_")}
        env.update(
            CITYSTREAM_KAFKA__BOOTSTRAP_SERVERS=self.settings.kafka.bootstrap,
            CITYSTREAM_MQTT__HOST=self.settings.mqtt.host,
            CITYSTREAM_MQTT__PORT=str(self.settings.mqtt.port),
            CITYSTREAM_MQTT__EXTERNAL="true",
            CITYSTREAM_MQTT__SESSION_EXPIRY_S="120",
            CITYSTREAM_STATE_DIR=str(self.settings.state_dir),
        )
        if self.settings.mqtt.username:
            env["CITYSTREAM_MQTT__USERNAME"] = self.settings.mqtt.username
            env["CITYSTREAM_MQTT__PASSWORD"] = self.settings.mqtt.password or ""
        return env

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "edge.bridge",
                    "--client-id",
                    self.client_id,
                    "--metrics-port",
                    str(self.port),
                    "--progress-interval",
                    "1",
                    *self.extra_args,
                ],
                cwd=ROOT,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_for(lambda mt: mt.get("citystream_bridge_mqtt_subscribed") == 1, 60)

    def metrics(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def wait_for(self, cond: Callable[[dict[str, float]], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last: dict[str, float] = {}
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            try:
                last = self.metrics()
                if cond(last):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"bridge condition not met in {timeout_s}s: {last}\n{self.log()}")

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture
def bridge(stack: Any, tmp_path: Path) -> Iterator[BridgeProcess]:
    b = BridgeProcess(stack.settings, f"it-{uuid.uuid4().hex[:10]}", tmp_path / "bridge.log")
    b.start()
    yield b
    if b.proc is not None and b.proc.poll() is None:
        b.kill(signal.SIGTERM)


def collect(
    settings: Settings, topic: str, done: Callable[[list[Any]], bool], timeout_s: float = 60
) -> list[Any]:
    """All records of ``topic`` from the beginning until ``done(records)`` or the timeout."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not done(records):
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def batch_json(gateway: str, meters: list[str], seq: int) -> bytes:
    return (
        m.MeterBatch(
            gateway_id=gateway,
            batch_seq=seq,
            sent_at=T0,
            readings=[
                m.MeterReading(meter_id=mid, ts=T0 + timedelta(minutes=15 * seq), import_kwh=0.5)
                for mid in meters
            ],
        )
        .model_dump_json()
        .encode()
    )


def mqtt_client(settings: Settings, client_id: str) -> Any:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    if settings.mqtt.username:
        client.username_pw_set(settings.mqtt.username, settings.mqtt.password)
    client.connect(settings.mqtt.host, settings.mqtt.port)
    client.loop_start()
    return client


def test_batch_published_with_mosquitto_pub_lands_keyed_by_gateway(
    stack: Any, bridge: BridgeProcess
) -> None:
    tag = uuid.uuid4().hex[:8]
    gateway, meters = f"gw-{tag}", [f"m-{tag}-a", f"m-{tag}-b"]
    cmd = [
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
        batch_json(gateway, meters, 3).decode(),
    ]
    if stack.settings.mqtt.username:
        cmd += ["-u", stack.settings.mqtt.username, "-P", stack.settings.mqtt.password or ""]
    subprocess.run(cmd, check=True, timeout=30)

    def mine(recs: list[Any]) -> list[Any]:
        return [r for r in recs if r.key == gateway.encode()]

    records = mine(collect(stack.settings, "meter.readings", lambda rs: len(mine(rs)) >= 1))
    assert len(records) == 1
    batch = m.MeterBatch.model_validate_json(records[0].value)
    assert batch.gateway_id == gateway
    assert [r.meter_id for r in batch.readings] == meters
    assert all(r.ts == T0 + timedelta(minutes=45) for r in batch.readings)
    bridge.wait_for(lambda mt: mt["citystream_bridge_messages_acked_total"] >= 1, 10)


def test_malformed_payloads_go_to_the_dlq_and_the_bridge_keeps_going(
    stack: Any, bridge: BridgeProcess
) -> None:
    tag = uuid.uuid4().hex[:8]
    gateway = f"gw-{tag}"
    topic = f"city/test/meters/{gateway}/readings"
    good = batch_json(gateway, [f"m-{tag}"], 1)
    wrong_type = json.loads(good)
    wrong_type["readings"][0]["import_kwh"] = "a lot"
    bad = {
        "truncated": (topic, good[:40]),
        "wrong_type": (topic, json.dumps(wrong_type).encode()),
        "id_mismatch": (f"city/test/meters/gw-other-{tag}/readings", good),
    }
    client = mqtt_client(stack.settings, f"pub-{tag}")
    try:
        for t, payload in bad.values():
            client.publish(t, payload, qos=1).wait_for_publish(10)
        client.publish(topic, good, qos=1).wait_for_publish(10)  # after the bad ones
    finally:
        client.loop_stop()
        client.disconnect()

    def mine(recs: list[Any]) -> list[Any]:
        return [r for r in recs if tag in r.key.decode()]

    letters_raw = mine(collect(stack.settings, "meter.readings.dlq", lambda rs: len(mine(rs)) >= 3))
    letters: dict[str, list[m.DeadLetter]] = {}
    for r in letters_raw:
        letters.setdefault(r.key.decode(), []).append(DEAD_LETTER_CODEC.decode(r.value))
    own = sorted(letters[topic], key=lambda d: d.payload_size)
    assert len(own) == 2
    assert base64.b64decode(own[0].payload_b64) == good[:40]
    assert "MeterBatch" in own[0].reason
    assert "readings.0.import_kwh" in own[1].reason
    (mismatch,) = letters[f"city/test/meters/gw-other-{tag}/readings"]
    assert "does not match" in mismatch.reason and mismatch.stage == "bridge"
    assert all(d.source_topic.startswith("city/test/meters/") for v in letters.values() for d in v)

    ok = [
        r
        for r in collect(
            stack.settings,
            "meter.readings",
            lambda rs: any(r.key == gateway.encode() for r in rs),
        )
        if r.key == gateway.encode()
    ]
    assert len(ok) == 1
    bridge.wait_for(
        lambda mt: (
            mt["citystream_bridge_messages_dead_lettered_total"] == 3
            and mt["citystream_bridge_messages_acked_total"] == 4
        ),
        15,
    )
    assert bridge.proc is not None and bridge.proc.poll() is None


def test_sigkill_mid_stream_loses_nothing(stack: Any, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    n_batches, n_gateways, per_batch = 400, 4, 10
    # A long linger keeps many records in the producer's buffer when the kill comes: a
    # bridge that acked MQTT before Kafka would lose them (checked: this test then fails).
    b = BridgeProcess(
        stack.settings, f"it-kill-{tag}", tmp_path / "bridge.log", "--linger-ms", "300"
    )
    b.start()
    published = threading.Event()
    client = mqtt_client(stack.settings, f"pub-{tag}")
    expected: set[tuple[str, str]] = set()

    def publish() -> None:
        infos = []
        for seq in range(n_batches // n_gateways):
            for g in range(n_gateways):
                gw = f"gw-{tag}-{g}"
                meters = [f"m-{tag}-{g}-{i}" for i in range(per_batch)]
                infos.append(
                    client.publish(
                        f"city/test/meters/{gw}/readings", batch_json(gw, meters, seq), qos=1
                    )
                )
                ts = (T0 + timedelta(minutes=15 * seq)).isoformat()
                expected.update((mid, ts) for mid in meters)
            time.sleep(0.02)
        for info in infos:
            info.wait_for_publish(30)
        published.set()

    try:
        publisher = threading.Thread(target=publish)
        publisher.start()
        b.wait_for(lambda mt: mt["citystream_bridge_records_produced_total"] >= 300, 60)
        before = b.metrics()["citystream_bridge_records_produced_total"]
        assert b.kill(signal.SIGKILL) == -signal.SIGKILL
        assert before < n_batches * per_batch, "the kill must happen mid-stream"
        time.sleep(1.0)  # messages published now queue in Mosquitto for the session
        b.start()
        publisher.join(timeout=120)
        assert published.is_set()
        b.wait_for(
            lambda mt: (
                mt["citystream_bridge_messages_in_flight"] == 0
                and mt["citystream_bridge_messages_received_total"] > 0
            ),
            60,
        )
    finally:
        client.loop_stop()
        client.disconnect()
        if sys.exc_info()[0] is not None and b.proc is not None and b.proc.poll() is None:
            b.kill(signal.SIGKILL)  # the test failed above: leave no bridge behind

    prefix = f"gw-{tag}-".encode()

    def seen(recs: list[Any]) -> set[tuple[str, str]]:
        out = set()
        for r in recs:
            if r.key is not None and r.key.startswith(prefix):
                batch = m.MeterBatch.model_validate_json(r.value)
                out.update((x.meter_id, x.ts.isoformat()) for x in batch.readings)
        return out

    try:
        records = collect(stack.settings, "meter.readings", lambda rs: seen(rs) >= expected, 90)
    finally:
        code = b.kill(signal.SIGTERM)
    got = seen(records)
    assert len(expected) == n_batches * per_batch
    missing = expected - got
    assert not missing, f"{len(missing)} readings lost, e.g. {sorted(missing)[:3]}\n{b.log()}"
    assert code == 0, f"graceful stop failed\n{b.log()}"


def test_bridge_and_sink_killed_mid_stream_db_ends_exact(stack: Any, tmp_path: Path) -> None:
    """MQTT -> bridge -> Kafka -> DB sink -> TimescaleDB, with both workers SIGKILLed
    mid-stream and restarted: the table ends with exactly the published readings."""
    tag = uuid.uuid4().hex[:8]
    n_seq, n_gateways, per_batch = 60, 4, 25
    b = BridgeProcess(stack.settings, f"it-db-{tag}", tmp_path / "bridge.log")
    sink_log = tmp_path / "sink.log"
    sink_cmd = [
        sys.executable,
        "-m",
        "citystream.cli",
        "sink",
        "--topics",
        "meter.readings",
        "--group-id",
        f"it-sink-{tag}",
        "--max-delay",
        "0.3",
    ]

    def start_sink() -> subprocess.Popen[bytes]:
        with sink_log.open("ab") as log:
            return subprocess.Popen(
                sink_cmd, cwd=ROOT, env=stack.env(), stdout=log, stderr=subprocess.STDOUT
            )

    def db_count() -> int:
        with stack.db() as conn:
            row = conn.execute(
                "select count(*) from meter_readings where meter_id like %s", (f"m-{tag}-%",)
            ).fetchone()
            return int(row[0])

    expected = n_seq * n_gateways * per_batch
    b.start()
    sink = start_sink()
    client = mqtt_client(stack.settings, f"pub-db-{tag}")
    try:
        for seq in range(n_seq):
            for g in range(n_gateways):
                gw = f"gw-{tag}-{g}"
                meters = [f"m-{tag}-{g}-{i}" for i in range(per_batch)]
                client.publish(
                    f"city/test/meters/{gw}/readings", batch_json(gw, meters, seq), qos=1
                ).wait_for_publish(30)
            if seq == n_seq // 3:
                b.kill(signal.SIGKILL)
                b.start()
            if seq == 2 * n_seq // 3:
                sink.send_signal(signal.SIGKILL)
                sink.wait(timeout=30)
                sink = start_sink()
            time.sleep(0.05)
        deadline = time.monotonic() + 120
        while db_count() < expected and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        client.loop_stop()
        client.disconnect()
        b.kill(signal.SIGTERM)
        sink.send_signal(signal.SIGTERM)
        sink_code = sink.wait(timeout=60)

    with stack.db() as conn:
        total, distinct = conn.execute(
            "select count(*), count(distinct (meter_id, ts)) from meter_readings "
            "where meter_id like %s",
            (f"m-{tag}-%",),
        ).fetchone()
    assert total == expected, f"{expected - total} readings missing\n{sink_log.read_text()[-3000:]}"
    assert distinct == total
    assert sink_code == 0, sink_log.read_text()[-3000:]
