"""Pytest plugin: the real local stack, started once per test session.

Enable it in a ``conftest.py`` with ``pytest_plugins = ["citystream.testing"]``; then::

    @pytest.mark.integration
    def test_reading_lands(stack):
        stack.produce("meter.readings", b"m1", payload)
        records = stack.consume("meter.readings", count=1)

The stack runs Kafka, Mosquitto and PostgreSQL+TimescaleDB on free loopback ports
with its state in a fresh temporary directory, so it never clashes with a demo stack
and leaves nothing behind.  Topics are created and migrations applied before the
first test runs.
"""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from citystream.settings import DbSettings, KafkaSettings, MqttSettings, Settings
from citystream.stack.private import child_env, private_settings


def stack_settings(state_dir: Path) -> Settings:
    """Settings of a private stack under ``state_dir`` on free ports."""
    return private_settings(state_dir)


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range of ports given to client sockets (``ip_local_port_range``)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def stable_port(rng: random.Random | None = None) -> int:
    """A free loopback port *below* the kernel's ephemeral range.

    :func:`free_port` hands out an ephemeral port: fine for a service that stays up, but
    while a service on such a port is down (killed in a fault test) a client socket may be
    given that very port, or a reconnecting client may connect to itself on it, and the
    restarted service then cannot bind it.  No client socket ever gets a port outside the
    ephemeral range, so a service killed and restarted on this one gets it back."""
    rng = rng or random.Random()
    low = min(ephemeral_range()[0], 32768)
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {max(1024, low - 12000)}..{low - 1}")


def restartable_stack_settings(state_dir: Path) -> Settings:
    """Like :func:`stack_settings`, on :func:`stable_port` s: for tests that kill and
    restart the services (``Stack.kill_service`` / ``Stack.restart_service``)."""
    return Settings(
        state_dir=state_dir,
        kafka=KafkaSettings(port=stable_port(), controller_port=stable_port()),
        mqtt=MqttSettings(port=stable_port()),
        db=DbSettings(port=stable_port()),
    )


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


@dataclass
class Stack:
    """A running local stack and small helpers to talk to it in tests."""

    settings: Settings

    def env(self) -> dict[str, str]:
        """Environment for a child process using this stack (see ``child_env``)."""
        return child_env(self.settings)

    def produce(self, topic: str, key: bytes | None, value: bytes) -> None:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=self.settings.kafka.bootstrap, acks="all")
        try:
            producer.send(topic, key=key, value=value).get(timeout=30)
        finally:
            producer.close()

    def consume(
        self,
        topic: str,
        count: int,
        timeout_s: float = 30.0,
        from_beginning: bool = True,
        where: Callable[[Record], bool] | None = None,
    ) -> list[Record]:
        """At least ``count`` records of ``topic`` that satisfy ``where`` (all by default).

        Returns fewer if ``timeout_s`` runs out, so the caller's assertion says what's missing.
        """
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(
            bootstrap_servers=self.settings.kafka.bootstrap,
            group_id=f"test-{uuid.uuid4().hex}",
            auto_offset_reset="earliest" if from_beginning else "latest",
            enable_auto_commit=False,
        )
        # Subscribe once the topic's metadata is known, else the group may be assigned nothing.
        if not consumer.partitions_for_topic(topic):
            consumer.close()
            raise AssertionError(f"topic {topic!r} does not exist on the test broker")
        consumer.subscribe([topic])
        out: list[Record] = []
        deadline = time.monotonic() + timeout_s
        try:
            while len(out) < count and time.monotonic() < deadline:
                for tp, msgs in consumer.poll(timeout_ms=500).items():
                    records = (
                        Record(tp.topic, tp.partition, m.offset, m.key, m.value, list(m.headers))
                        for m in msgs
                    )
                    out.extend(r for r in records if where is None or where(r))
        finally:
            consumer.close()
        return out

    def spawn(self, log: Path, *args: str) -> subprocess.Popen[bytes]:
        """``python *args`` in the repo root with this stack's environment, output to ``log``."""
        with log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, *args],
                cwd=Path(__file__).resolve().parents[1],
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def db(self) -> Any:
        """A new autocommit psycopg connection to the stack's database (close it yourself)."""
        import psycopg

        return psycopg.connect(self.settings.db.dsn, autocommit=True)

    def read_topic(self, topic: str, where: Callable[[Record], bool] | None = None) -> list[Record]:
        """Every record of ``topic`` (that satisfies ``where``) up to its current end, read
        without a consumer group: exactly what the topic holds now, no waiting for more."""
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(
            bootstrap_servers=self.settings.kafka.bootstrap, enable_auto_commit=False
        )
        try:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                raise AssertionError(f"topic {topic!r} does not exist on the test broker")
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            end = consumer.end_offsets(tps)
            out: list[Record] = []
            deadline = time.monotonic() + 60.0
            while any(consumer.position(tp) < end[tp] for tp in tps):
                if time.monotonic() > deadline:
                    raise AssertionError(f"reading {topic!r} to its end took over 60 s")
                for tp, msgs in consumer.poll(timeout_ms=500).items():
                    for m in msgs:
                        if m.offset >= end[tp]:
                            continue
                        hdrs = list(m.headers)
                        r = Record(tp.topic, tp.partition, m.offset, m.key, m.value, hdrs)
                        if where is None or where(r):
                            out.append(r)
            return out
        finally:
            consumer.close()

    def kill_service(self, name: str) -> int:
        """``kill -9`` the stack's ``kafka``, ``mosquitto`` or ``postgres`` (see
        :func:`citystream.stack.supervisor.kill`); returns the pid."""
        from citystream.stack.supervisor import kill

        return kill(self.settings, name)

    def restart_service(self, name: str) -> float:
        """Start a killed service again, same data and ports, and wait until it answers;
        returns the seconds it took (see :func:`citystream.stack.supervisor.restart`)."""
        from citystream.stack.supervisor import restart

        t0 = time.monotonic()
        restart(self.settings, name, progress=lambda msg: print(f"[stack] {msg}", flush=True))
        return time.monotonic() - t0


def wait_until(cond: Callable[[], object], timeout_s: float, what: str) -> float:
    """Poll ``cond`` every 0.5 s until truthy; returns the seconds waited, or raises
    AssertionError naming ``what``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if cond():
            return time.monotonic() - t0
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def start_stack(settings: Settings) -> Stack:
    from citystream.db.migrate import migrate
    from citystream.kafka_topics import ensure_topics
    from citystream.stack.supervisor import up

    up(settings, progress=lambda msg: print(f"[stack] {msg}", flush=True))
    ensure_topics(settings.kafka.bootstrap)
    migrate(settings.db.dsn)
    return Stack(settings)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The real stack (Kafka, Mosquitto, TimescaleDB), shared by the whole session."""
    from citystream.stack.supervisor import down

    settings = stack_settings(tmp_path_factory.mktemp("citystream-stack"))
    try:
        yield start_stack(settings)
    finally:
        down(settings)


# --- captures: replay into the stack, wait for the pipeline to drain (issue 6) -------------------

#: The small captures the project's own tests use (``tests/captures/``, see its ``regenerate.py``).
CAPTURES_DIR = Path(__file__).resolve().parents[1] / "tests" / "captures"


def capture_path(name: str) -> Path:
    """A shipped capture by file name, e.g. ``capture_path("meters_day.cap")``."""
    path = CAPTURES_DIR / name
    if not path.exists():
        have = ", ".join(sorted(p.name for p in CAPTURES_DIR.glob("*.cap")))
        raise FileNotFoundError(f"no capture {name!r} in {CAPTURES_DIR}; have: {have}")
    return path


def replay_capture(
    stack: Stack,
    path: str | Path,
    *,
    target: str = "kafka",
    speed: float | None = None,
    topic_map: dict[str, str] | None = None,
    topics: tuple[str, ...] | None = None,
    start_ms: int | None = None,
    end_ms: int | None = None,
    keep_partitions: bool = False,
    timestamps: str = "now",
    city: str = "hcm",
) -> Any:
    """Play the capture at ``path`` into the stack's Kafka (default) or MQTT (``target="mqtt"``:
    through the bridge, which the test must run).  ``speed=None`` sends as fast as acked;
    returns :class:`citystream.capture.replayer.ReplayStats` once everything is acknowledged."""
    from citystream.capture.format import CaptureReader
    from citystream.capture.replayer import KafkaTarget, MqttTarget, ReplayOptions, Target, replay

    sink: Target
    if target == "kafka":
        sink = KafkaTarget(
            stack.settings.kafka.bootstrap,
            topic_map=topic_map,
            keep_partitions=keep_partitions,
            timestamps=timestamps,
        )
    elif target == "mqtt":
        m = stack.settings.mqtt
        sink = MqttTarget(m.host, m.port, city=city, username=m.username, password=m.password)
    else:
        raise ValueError(f"target must be 'kafka' or 'mqtt', got {target!r}")
    options = ReplayOptions(
        speed=speed or 1.0,
        as_fast_as_possible=speed is None,
        start_ms=start_ms,
        end_ms=end_ms,
        topics=topics,
        progress_interval_s=0,
    )
    try:
        with CaptureReader(path) as reader:
            return replay(reader, sink, options)
    finally:
        sink.close()


def wait_for_drain(
    stack: Stack,
    groups: Any,
    *,
    timeout_s: float = 120.0,
    settle_s: float = 2.0,
) -> dict[str, dict[tuple[str, int], int]]:
    """Wait until the consumer ``groups`` have committed everything and stayed so for
    ``settle_s``.  ``groups``: names, or ``{group: [topics]}`` when a group may not have
    committed yet.  Raises :class:`citystream.capture.lag.DrainTimeout` naming the lag."""
    from citystream.capture.lag import wait_for_drain as _wait

    return _wait(stack.settings.kafka.bootstrap, groups, timeout_s=timeout_s, settle_s=settle_s)


def consumer_lag(stack: Stack, groups: Any) -> dict[str, dict[tuple[str, int], int]]:
    """Current lag of ``groups`` per ``(topic, partition)`` (see :func:`wait_for_drain`)."""
    from kafka.admin import KafkaAdminClient

    from citystream.capture.lag import consumer_lag as _lag

    admin = KafkaAdminClient(bootstrap_servers=stack.settings.kafka.bootstrap)
    try:
        return _lag(admin, groups)
    finally:
        admin.close()
