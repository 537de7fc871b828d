"""Play a capture back into Kafka or MQTT, paced by event time or as fast as possible.

Records go out in file order (which keeps the order per partition).  With pacing, the
record with timestamp ``ts`` is sent at ``start + (ts - first_ts) / speed`` of wall time;
a record whose slot has passed (time going backwards across partitions, or a slow
target) is sent at once, and :attr:`ReplayStats.max_behind_s` says how far behind the
schedule the replay fell.

Targets are small adapters with ``send`` / ``flush`` / ``close``:

* :class:`KafkaTarget`: the same topic (or ``topic_map[topic]``), key, value and headers;
  partition chosen by key like the original producers (or the recorded one with
  ``keep_partitions``); Kafka timestamp ``now`` (default) or the ``original`` one.
* :class:`MqttTarget`: each record becomes the MQTT message a device would have sent on
  the registry's route for the topic, e.g. a ``meter.readings`` batch is published to
  ``city/{city}/meters/{gateway_id}/readings`` at QoS 1, so it goes through the bridge.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from citystream.capture.format import CapturedRecord, CaptureReader
from citystream.errors import CityStreamError, SinkError
from citystream.metrics import Registry


class Target(Protocol):
    name: str

    def send(self, record: CapturedRecord) -> int:
        """Send one record; returns the bytes sent."""
        ...

    def flush(self) -> None:
        """Block until everything sent is acknowledged; raise :class:`SinkError` on loss."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ReplayOptions:
    speed: float = 1.0
    as_fast_as_possible: bool = False
    loop: bool = False
    max_loops: int | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    topics: tuple[str, ...] | None = None
    progress_interval_s: float = 2.0

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise ValueError("speed must be > 0")
        if self.max_loops is not None and self.max_loops < 1:
            raise ValueError("max_loops must be >= 1")


@dataclass
class ReplayStats:
    records: int = 0
    bytes: int = 0
    loops: int = 0
    elapsed_s: float = 0.0
    max_behind_s: float = 0.0
    first_ts: int | None = None
    last_ts: int | None = None
    per_topic: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        rate = self.records / self.elapsed_s if self.elapsed_s > 0 else 0.0
        at = (
            datetime.fromtimestamp(self.last_ts / 1000, UTC).isoformat(timespec="seconds")
            if self.last_ts is not None
            else "-"
        )
        return (
            f"replay: {self.records} records, {self.bytes / 1e6:.1f} MB in "
            f"{self.elapsed_s:.1f} s ({rate:.0f}/s), event time {at}, "
            f"max behind {self.max_behind_s:.2f} s, loop {self.loops + 1}"
        )


class ReplayMetrics:
    """``citystream_replay_*`` counters for ``/metrics``."""

    def __init__(self) -> None:
        r = self.registry = Registry(prefix="citystream_replay")
        self.records = r.counter("records_total", "Records replayed", labels=("topic",))
        self.bytes = r.counter("bytes_total", "Key and value bytes replayed")
        self.behind = r.gauge("behind_seconds", "How far the replay is behind its schedule")
        self.event_time = r.gauge("event_time_seconds", "Timestamp of the last replayed record")
        self.loops = r.counter("loops_total", "Completed passes over the capture")


class Pacer:
    """Wall-clock slot of each event time, time-warped by ``speed``."""

    def __init__(self, speed: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.speed = speed
        self.clock = clock
        self._base: tuple[int, float] | None = None

    def reset(self) -> None:
        self._base = None

    def delay(self, ts_ms: int) -> float:
        """Seconds to wait before sending the record stamped ``ts_ms`` (negative: late)."""
        now = self.clock()
        if self._base is None:
            self._base = (ts_ms, now)
            return 0.0
        ts0, w0 = self._base
        return w0 + (ts_ms - ts0) / 1000.0 / self.speed - now


def replay(
    source: CaptureReader | Iterable[CapturedRecord],
    target: Target,
    options: ReplayOptions,
    *,
    stop: threading.Event | None = None,
    progress: Callable[[str], None] | None = None,
    metrics: ReplayMetrics | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> ReplayStats:
    """Send the capture's records to ``target``; returns when done (or ``stop`` is set).

    ``source`` may be a plain iterable (played once, ``loop`` ignored).
    """
    stop = stop or threading.Event()
    metrics = metrics or ReplayMetrics()
    stats = ReplayStats()
    pacer = Pacer(options.speed, clock)
    started = last_progress = clock()

    def passes() -> Iterable[Iterable[CapturedRecord]]:
        if not isinstance(source, CaptureReader):
            yield source
            return
        while True:
            yield source.records(
                start_ms=options.start_ms, end_ms=options.end_ms, topics=options.topics
            )
            if not options.loop:
                return

    for records in passes():
        pacer.reset()
        for rec in records:
            if stop.is_set():
                break
            if not options.as_fast_as_possible:
                wait = pacer.delay(rec.timestamp_ms)
                if wait > 0:
                    if stop.wait(wait):
                        break
                else:
                    stats.max_behind_s = max(stats.max_behind_s, -wait)
                    metrics.behind.set(-wait)
            n = target.send(rec)
            stats.records += 1
            stats.bytes += n
            stats.per_topic[rec.topic] = stats.per_topic.get(rec.topic, 0) + 1
            stats.first_ts = rec.timestamp_ms if stats.first_ts is None else stats.first_ts
            stats.last_ts = rec.timestamp_ms
            metrics.records.labels(rec.topic).inc()
            metrics.bytes.inc(n)
            metrics.event_time.set(rec.timestamp_ms / 1000.0)
            now = clock()
            every = options.progress_interval_s
            if progress and every > 0 and now - last_progress >= every:
                stats.elapsed_s = now - started
                progress(stats.line())
                last_progress = now
        if stop.is_set():
            break
        stats.loops += 1
        metrics.loops.inc()
        if options.max_loops is not None and stats.loops >= options.max_loops:
            break
        if isinstance(source, CaptureReader) and stats.records == 0:
            break  # nothing in range: looping would spin
    target.flush()
    stats.elapsed_s = clock() - started
    return stats


# --- targets ---------------------------------------------------------------------------------


class KafkaTarget:
    """Produce records to Kafka (acks=all, idempotent: order per partition is kept)."""

    name = "kafka"

    def __init__(
        self,
        bootstrap: str,
        *,
        topic_map: Mapping[str, str] | None = None,
        keep_partitions: bool = False,
        timestamps: str = "now",
        linger_ms: int = 5,
    ) -> None:
        from kafka import KafkaProducer

        if timestamps not in ("now", "original"):
            raise ValueError("timestamps must be 'now' or 'original'")
        self.topic_map = dict(topic_map or {})
        self.keep_partitions = keep_partitions
        self.timestamps = timestamps
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=linger_ms,
            max_request_size=16 * 1024 * 1024,
            client_id="citystream-replay",
        )
        self._errors: list[BaseException] = []

    def send(self, record: CapturedRecord) -> int:
        if self._errors:
            raise SinkError(f"Kafka refused replayed records: {self._errors[0]}")
        topic = self.topic_map.get(record.topic, record.topic)
        partition = record.partition if self.keep_partitions and record.partition >= 0 else None
        fut = self._producer.send(
            topic,
            value=record.value,
            key=record.key,
            headers=[(k, v) for k, v in record.headers] or None,
            partition=partition,
            timestamp_ms=record.timestamp_ms if self.timestamps == "original" else None,
        )
        fut.add_errback(self._errors.append)
        return len(record.value or b"") + len(record.key or b"")

    def flush(self) -> None:
        self._producer.flush(timeout=60)
        if self._errors:
            raise SinkError(f"{len(self._errors)} replayed records failed: {self._errors[0]}")

    def close(self) -> None:
        self._producer.close(timeout=10)


def mqtt_topic_for(record: CapturedRecord, city: str) -> str:
    """The MQTT topic a device publishes ``record`` on (the registry route of its topic)."""
    from schemas.topics import MQTT_ROUTES

    route = next((r for r in MQTT_ROUTES if r.kafka_topic == record.topic), None)
    if route is None:
        have = ", ".join(sorted({r.kafka_topic for r in MQTT_ROUTES}))
        raise CityStreamError(f"no MQTT route feeds {record.topic!r}; MQTT can replay: {have}")
    device = record.key.decode("utf-8", "replace") if record.key else None
    if not device:
        try:
            device = str(json.loads(record.value or b"")[route.id_field])
        except (ValueError, KeyError, TypeError):
            raise CityStreamError(
                f"record at offset {record.offset} of {record.topic} has no key and no "
                f"{route.id_field} in its payload"
            ) from None
    levels = route.pattern.split("/")
    wild = [i for i, lvl in enumerate(levels) if lvl == "+" and i != route.id_level]
    if len(wild) != 1:
        raise CityStreamError(f"cannot fill MQTT pattern {route.pattern!r}")
    levels[wild[0]] = city
    levels[route.id_level] = device
    return "/".join(levels)


class MqttTarget:
    """Publish records as devices would (QoS 1), at most ``max_pending`` un-acked."""

    name = "mqtt"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        city: str = "hcm",
        username: str | None = None,
        password: str | None = None,
        client_id: str = "",
        max_pending: int = 1000,
        connect_timeout_s: float = 10.0,
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.city = city
        self.max_pending = max_pending
        self._pending: deque[Any] = deque()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"citystream-replay-{int(time.time() * 1000) % 10**9}",
            protocol=mqtt.MQTTv5,
        )
        if username:
            self._client.username_pw_set(username, password)
        self._client.max_inflight_messages_set(min(max_pending, 65535))
        connected = threading.Event()
        self._client.on_connect = lambda *a: connected.set()
        try:
            self._client.connect(host, port, keepalive=30, clean_start=True)
        except OSError as exc:
            raise SinkError(f"cannot connect to MQTT {host}:{port}: {exc}") from exc
        self._client.loop_start()
        if not connected.wait(connect_timeout_s):
            self.close()
            raise SinkError(f"no CONNACK from MQTT {host}:{port} in {connect_timeout_s} s")

    def send(self, record: CapturedRecord) -> int:
        payload = record.value or b""
        info = self._client.publish(mqtt_topic_for(record, self.city), payload, qos=1)
        self._pending.append(info)
        while len(self._pending) > self.max_pending:
            self._wait(self._pending.popleft())
        return len(payload)

    @staticmethod
    def _wait(info: Any, timeout_s: float = 60.0) -> None:
        try:
            info.wait_for_publish(timeout=timeout_s)
        except (RuntimeError, ValueError) as exc:
            raise SinkError(f"MQTT publish failed: {exc}") from exc
        if not info.is_published():
            raise SinkError(f"MQTT publish not acknowledged in {timeout_s} s")

    def flush(self) -> None:
        while self._pending:
            self._wait(self._pending.popleft())

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def parse_time(text: str, base_ms: int | None = None) -> int:
    """``--from``/``--to``: ISO 8601 (naive means UTC), epoch milliseconds, or ``+90m`` /
    ``+2h`` / ``+1d`` / ``+30s`` after the capture's first timestamp ``base_ms``."""
    text = text.strip()
    if text.startswith("+"):
        if base_ms is None:
            raise ValueError("a relative time needs the capture's start")
        units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
        unit = text[-1]
        if unit not in units:
            raise ValueError(f"relative time {text!r}: end with s, m, h or d")
        return base_ms + int(float(text[1:-1]) * units[unit] * 1000)
    if text.lstrip("-").isdigit():
        return int(text)
    ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return int(ts.timestamp() * 1000)
