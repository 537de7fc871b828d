"""Record and replay against the real stack: byte-for-byte, SIGINT, lag, MQTT via the bridge."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from citystream.capture import CaptureReader, read_capture
from citystream.capture.lag import DrainTimeout
from citystream.kafka_topics import ensure_topics
from citystream.stack.private import free_port
from citystream.testing import (
    Stack,
    capture_path,
    consumer_lag,
    replay_capture,
    wait_for_drain,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 6


def fresh_topics(stack: Stack, *names: str) -> None:
    ensure_topics(stack.settings.kafka.bootstrap, [(n, PARTITIONS, 3_600_000) for n in names])


def produce_mix(stack: Stack, topic: str, n: int) -> None:
    """Keyed and keyless records, binary values (a few 300 kB 'frames'), headers, tombstones."""
    from kafka import KafkaProducer

    rng = random.Random(5)
    producer = KafkaProducer(
        bootstrap_servers=stack.settings.kafka.bootstrap, acks="all", max_request_size=4 << 20
    )
    try:
        for i in range(n):
            key = None if i % 9 == 0 else f"cam-{i % 13}".encode()
            if i % 50 == 0:
                value: bytes | None = b"\xff\xd8" + rng.randbytes(300_000) + b"\xff\xd9"
            elif i % 31 == 0 and key is not None:
                value = None
            else:
                value = rng.randbytes(rng.randrange(0, 2000))
            headers = [("seq", str(i).encode()), ("bin", bytes([i % 256, 0]))] if i % 3 else []
            producer.send(topic, key=key, value=value, headers=headers)
        producer.flush()
    finally:
        producer.close()


def consume_all(stack: Stack, topic: str, n: int, timeout_s: float = 60) -> list[Any]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=stack.settings.kafka.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=16 << 20,
    )
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < n and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                out.extend(batch)
    finally:
        consumer.close()
    return out


def per_partition(records: list[Any]) -> dict[int, list[tuple[Any, ...]]]:
    """partition -> [(key, value, headers)] in offset order."""
    out: dict[int, list[tuple[Any, ...]]] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        headers = tuple((k, v) for k, v in (r.headers or []))
        out.setdefault(r.partition, []).append((r.key, r.value, headers))
    return out


def cli(module: str, stack: Stack, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", f"citystream.capture.{module}", *args],
        cwd=ROOT,
        env=stack.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_record_then_replay_is_byte_for_byte(stack: Stack, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    src, dst = f"it.replay.src.{tag}", f"it.replay.dst.{tag}"
    fresh_topics(stack, src, dst)
    n = 400
    produce_mix(stack, src, n)
    source = consume_all(stack, src, n)
    assert len(source) == n

    # record from the beginning until SIGINT; the index must still be written
    cap = tmp_path / "mix.cap"
    rec = cli("record_cli", stack, "--topics", src, "--out", str(cap), "--from-beginning")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if cap.exists() and cap.stat().st_size > 1000:
            with CaptureReader(cap) as partial:  # readable while being written
                if sum(b.n_records for b in partial.blocks) >= n:
                    break
        time.sleep(0.3)
    rec.send_signal(signal.SIGINT)
    out, _ = rec.communicate(timeout=30)
    assert rec.returncode == 0, out.decode()
    assert b"records" in out
    with CaptureReader(cap) as reader:
        assert reader.complete and not reader.damage
        captured = list(reader)
    assert len(captured) == n
    assert per_partition(source) == per_partition(captured)
    assert {(r.partition, r.offset, r.timestamp) for r in source} == {
        (c.partition, c.offset, c.timestamp_ms) for c in captured
    }

    # replay into another topic, keeping partitions: identical per partition, in order
    play = cli(
        "replay_cli",
        stack,
        str(cap),
        "--topic-map",
        f"{src}={dst}",
        "--keep-partitions",
        "--timestamps",
        "original",
        "--as-fast-as-possible",
    )
    out, _ = play.communicate(timeout=120)
    assert play.returncode == 0, out.decode()
    replayed = consume_all(stack, dst, n)
    assert len(replayed) == n
    assert per_partition(replayed) == per_partition(source)
    assert sorted(r.timestamp for r in replayed) == sorted(r.timestamp for r in source)


def test_replay_paced_and_wait_for_drain(stack: Stack, tmp_path: Path) -> None:
    from kafka import KafkaConsumer

    tag = uuid.uuid4().hex[:8]
    dst, group = f"it.replay.paced.{tag}", f"it-drain-{tag}"
    fresh_topics(stack, dst)
    t0 = int(time.time() * 1000)
    cap = tmp_path / "paced.cap"
    from citystream.capture import write_capture

    # 30 records spread over 30 s of event time; at speed 20 the replay takes ~1.5 s
    write_capture(cap, [("x", f"k{i}".encode(), b"v%d" % i, t0 + i * 1000) for i in range(30)])
    started = time.monotonic()
    stats = replay_capture(stack, cap, speed=20, topic_map={"x": dst})
    took = time.monotonic() - started
    assert stats.records == 30 and 1.3 <= took < 10, took

    # a group that has read nothing has lag 30; draining fails fast, then succeeds
    lag = consumer_lag(stack, {group: [dst]})
    assert sum(lag[group].values()) == 30
    with pytest.raises(DrainTimeout, match=dst):
        wait_for_drain(stack, {group: [dst]}, timeout_s=1, settle_s=0)
    consumer = KafkaConsumer(
        dst,
        bootstrap_servers=stack.settings.kafka.bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    try:
        got = 0
        deadline = time.monotonic() + 30
        while got < 30 and time.monotonic() < deadline:
            got += sum(len(b) for b in consumer.poll(timeout_ms=500).values())
        consumer.commit()
    finally:
        consumer.close()
    assert got == 30
    lags = wait_for_drain(stack, [group], timeout_s=30, settle_s=0.5)
    assert sum(lags[group].values()) == 0


def test_meters_capture_through_mqtt_and_the_bridge(stack: Stack, tmp_path: Path) -> None:
    """Two hours of the shipped day, published as gateways would, arrive via the bridge."""
    path = capture_path("meters_day.cap")
    with CaptureReader(path) as reader:
        start = min(b.min_ts for b in reader.blocks)
    end = start + 2 * 3_600_000
    expected = read_capture(path, start_ms=start, end_ms=end)
    assert 50 < len(expected) < 500

    port = free_port()
    env = {k: v for k, v in stack.env().items() if not k.startswith("CITYSTREAM_MQTT__")}
    env.update(
        CITYSTREAM_MQTT__PORT=str(stack.settings.mqtt.port),
        CITYSTREAM_MQTT__EXTERNAL="true",
        CITYSTREAM_MQTT__SESSION_EXPIRY_S="120",
    )
    log = (tmp_path / "bridge.log").open("wb")
    bridge = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge.bridge",
            "--client-id",
            f"it-replay-{uuid.uuid4().hex[:8]}",
            "--metrics-port",
            str(port),
            "--progress-interval",
            "1",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        import urllib.request

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    if "citystream_bridge_mqtt_subscribed 1" in r.read().decode().splitlines():
                        break
            except OSError:
                pass
            assert bridge.poll() is None, (tmp_path / "bridge.log").read_text()
            time.sleep(0.2)
        stats = replay_capture(stack, path, target="mqtt", start_ms=start, end_ms=end, city="it")
        assert stats.records == len(expected)
        want = {(r.key, r.value) for r in expected}
        got = stack.consume(
            "meter.readings",
            count=len(want),
            timeout_s=60,
            where=lambda r: (r.key, r.value) in want,
        )
        # the bridge re-encodes canonically; the capture already holds the canonical bytes
        assert {(r.key, r.value) for r in got} == want
    finally:
        bridge.send_signal(signal.SIGTERM)
        bridge.wait(timeout=60)
        log.close()
