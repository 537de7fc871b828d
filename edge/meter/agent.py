"""The meter gateway (data concentrator) agent: meters -> durable outbox -> MQTT QoS 1.

Threads and data path::

    source thread   iterate the meter source, encode each MeterReading once (JSON bytes)
                    -> bounded in-memory hand-off (a few chunks; blocks the source when full)
    main thread     hand-off -> Outbox.append (fsynced, in chunks)          [queued]
                    Outbox.peek_batch -> MeterBatch JSON -> publish QoS 1   [sent]
                    paho loop -> on_publish(mid) = PUBACK -> Outbox.ack     [acked]

A reading is acknowledged (deleted from the outbox) only in ``on_publish`` for the mid of the
batch that carried it, i.e. after the broker's PUBACK with a success reason code (MQTT 5, so a
broker that refuses a publish - e.g. by ACL - says so instead of silently dropping it).

Every connection uses a fresh paho client with a clean session: the outbox, not paho's memory,
is the source of truth.  After a disconnect the outbox is rewound and every unacked batch is
published again, oldest first, with its original ``batch_seq`` (``MeterBatch.batch_seq`` is the
outbox's persisted batch id, so it keeps increasing across restarts).  Duplicates are possible
(a PUBACK lost with the connection) and harmless: the database dedups on ``(meter_id, ts)``.
Reconnects back off exponentially with jitter, bounded by ``backoff_max_s``.

When the outbox is full, ``append`` raises and the agent holds the chunk and stops taking
readings from the source (backpressure) until acks make room; nothing is dropped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import random
import re
import threading
import time
from collections.abc import AsyncIterable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from citystream.metrics import Counter, Gauge, Registry
from citystream.settings import MqttSettings
from edge.outbox import Batch, Outbox, OutboxFullError
from schemas.messages import MeterReading

log = logging.getLogger("citystream.edge.meter")

_IDENT = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
TOPIC_TEMPLATE = "city/{city}/meters/{gateway_id}/readings"


@runtime_checkable
class ResumableSource(Protocol):
    """A source that can restart after its last durable position (e.g. a replay file).

    ``iter_from(cursor)`` yields ``(cursor_after, reading)``; the agent stores
    ``cursor_after`` in the outbox together with the reading, and passes it back on restart.
    """

    def iter_from(self, cursor: int | None) -> Iterator[tuple[int, MeterReading]]: ...


Source = Iterable[MeterReading] | AsyncIterable[MeterReading] | ResumableSource


@dataclass(frozen=True)
class AgentConfig:
    gateway_id: str
    city: str
    max_batch: int = 1000
    max_delay_s: float = 1.0
    max_inflight: int = 32
    append_chunk: int = 1000
    progress_interval_s: float = 10.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    drain_timeout_s: float = 10.0
    connack_timeout_s: float = 10.0
    keepalive_s: int = 30
    exit_when_drained: bool = True
    client_id: str | None = None

    def __post_init__(self) -> None:
        for name, value in (("gateway_id", self.gateway_id), ("city", self.city)):
            if not _IDENT.fullmatch(value):
                raise ValueError(
                    f"{name} {value!r} must be 1-64 of letters, digits and '_.:-' "
                    "(it is an MQTT topic level and a schema Ident)"
                )
        if not 1 <= self.max_batch <= 10_000:
            raise ValueError("max_batch must be within 1..10000 (MeterBatch limit)")
        if self.max_inflight < 1 or self.append_chunk < 1:
            raise ValueError("max_inflight and append_chunk must be >= 1")
        if self.max_delay_s < 0 or self.backoff_initial_s <= 0:
            raise ValueError("max_delay_s must be >= 0 and backoff_initial_s > 0")

    @property
    def topic(self) -> str:
        return TOPIC_TEMPLATE.format(city=self.city, gateway_id=self.gateway_id)


class Backoff:
    """Exponential backoff with "equal jitter": the n-th delay is uniform in
    ``[d/2, d]`` with ``d = min(maximum, initial * 2**n)``."""

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        self.initial, self.maximum = initial, max(maximum, initial)
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        d = min(self.maximum, self.initial * 2.0 ** min(self.attempt, 62))
        self.attempt += 1
        return self._rng.uniform(d / 2, d)

    def reset(self) -> None:
        self.attempt = 0


def batch_payload(gateway_id: str, batch_seq: int, sent_at: datetime, items: list[bytes]) -> bytes:
    """The MeterBatch JSON for already-encoded MeterReading JSON ``items`` (no re-encoding)."""
    head = json.dumps(
        {"v": 1, "gateway_id": gateway_id, "batch_seq": batch_seq, "sent_at": sent_at.isoformat()}
    )
    return head[:-1].encode() + b',"readings":[' + b",".join(items) + b"]}"


@dataclass
class AgentMetrics:
    registry: Registry
    queued: Counter = field(init=False)
    sent: Counter = field(init=False)
    acked: Counter = field(init=False)
    retried: Counter = field(init=False)
    dropped: Counter = field(init=False)
    rejected: Counter = field(init=False)
    batches_sent: Counter = field(init=False)
    batches_acked: Counter = field(init=False)
    connects: Counter = field(init=False)
    disconnects: Counter = field(init=False)
    backpressure_s: Counter = field(init=False)
    in_flight: Gauge = field(init=False)
    connected: Gauge = field(init=False)

    def __post_init__(self) -> None:
        r = self.registry
        self.queued = r.counter("readings_queued_total", "Readings stored in the outbox")
        self.sent = r.counter("readings_sent_total", "Readings published (incl. resends)")
        self.acked = r.counter("readings_acked_total", "Readings acknowledged by the broker")
        self.retried = r.counter("readings_retried_total", "Readings published again")
        self.dropped = r.counter("readings_dropped_total", "Readings lost (must stay 0)")
        self.rejected = r.counter("batches_rejected_total", "PUBACKs with a failure code")
        self.batches_sent = r.counter("batches_sent_total", "MeterBatch publishes")
        self.batches_acked = r.counter("batches_acked_total", "MeterBatch PUBACKs")
        self.connects = r.counter("mqtt_connects_total", "Successful MQTT connections")
        self.disconnects = r.counter("mqtt_disconnects_total", "Lost or failed connections")
        self.backpressure_s = r.counter(
            "backpressure_seconds_total", "Time the source was held back by a full outbox"
        )
        self.in_flight = r.gauge("in_flight_batches", "Published batches awaiting PUBACK")
        self.connected = r.gauge("mqtt_connected", "1 while connected to the broker")


class MeterAgent:
    """One gateway: ``run(source)`` until the source is drained (or :meth:`stop`)."""

    def __init__(
        self,
        config: AgentConfig,
        mqtt: MqttSettings,
        outbox: Outbox,
        registry: Registry | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.mqtt = mqtt
        self.outbox = outbox
        self.metrics = AgentMetrics(registry or Registry("citystream_edge_meter"))
        self._backoff = Backoff(config.backoff_initial_s, config.backoff_max_s, rng)
        self._stop = threading.Event()
        self._handoff: collections.deque[tuple[int | None, bytes]] = collections.deque()
        self._handoff_max = 4 * config.append_chunk
        self._reader_done = threading.Event()
        self._reader_error: BaseException | None = None
        self._held: list[tuple[int | None, bytes]] = []  # chunk waiting for outbox room
        self._full_since: float | None = None
        self._handoff_seen = -1
        self._handoff_seen_at = 0.0
        self._first_unbatched = float("-inf") if outbox.unbatched_count() else None
        # batches sealed before this process started were probably published already
        self._max_published = outbox.next_batch_id - 1
        self._client: Any = None
        self._connected = False
        self._conn_failed = False
        self._connect_started = 0.0
        self._next_attempt = 0.0
        self._inflight: dict[int, tuple[int, int]] = {}  # mid -> (batch_id, n readings)

    # --- public --------------------------------------------------------------------------

    def stop(self) -> None:
        """Graceful stop (signal-safe): stop reading, flush to the outbox, try to deliver for
        ``drain_timeout_s``, then return; whatever is unacked stays in the outbox."""
        self._stop.set()

    def run(self, source: Source) -> int:
        """Run until the source is exhausted and everything is acked (or until stopped).
        Returns 0, or 1 when the source failed."""
        reader = threading.Thread(
            target=self._read_source, args=(source,), name="meter-source", daemon=True
        )
        reader.start()
        last_progress = time.monotonic()
        last_acked = 0.0
        drain_deadline: float | None = None
        log.info(
            "gateway %s: publishing to %s on %s:%d; outbox %s holds %d readings",
            self.config.gateway_id,
            self.config.topic,
            self.mqtt.host,
            self.mqtt.port,
            self.outbox.path,
            self.outbox.pending_count(),
        )
        try:
            while True:
                now = time.monotonic()
                source_done = self._reader_done.is_set() and not self._handoff
                self._ingest(final=source_done or (self._stop.is_set() and not reader.is_alive()))
                self._network(now)
                if self._connected:
                    self._publish_ready(now, flush=source_done or self._stop.is_set())
                if self.config.progress_interval_s and (
                    now - last_progress >= self.config.progress_interval_s
                ):
                    rate = (self.metrics.acked.value - last_acked) / (now - last_progress)
                    self._progress(rate)
                    last_progress, last_acked = now, self.metrics.acked.value
                drained = source_done and not self._held and self.outbox.pending_count() == 0
                if drained and self.config.exit_when_drained:
                    break
                if self._stop.is_set():
                    if drain_deadline is None:
                        drain_deadline = now + self.config.drain_timeout_s
                    if drained or now >= drain_deadline:
                        break
        finally:
            self._stop.set()
            reader.join(timeout=2.0)  # a reading it already took still goes to the outbox
            self._ingest(final=True, force=True)
            self._close_client()
            self._progress(None)
        if self._reader_error is not None:
            log.error("meter source failed: %r", self._reader_error)
            return 1
        return 0

    # --- source side ---------------------------------------------------------------------

    def _read_source(self, source: Source) -> None:
        try:
            if isinstance(source, ResumableSource):
                self._consume(source.iter_from(self.outbox.source_cursor))
            elif isinstance(source, AsyncIterable):
                asyncio.run(self._consume_async(source))
            else:
                self._consume((None, r) for r in source)
        except BaseException as exc:  # reported by run()
            self._reader_error = exc
        finally:
            self._reader_done.set()

    def _put(self, cursor: int | None, reading: MeterReading) -> bool:
        payload = reading.model_dump_json().encode()
        while len(self._handoff) >= self._handoff_max:
            if self._stop.is_set():
                break
            time.sleep(0.002)
        self._handoff.append((cursor, payload))
        return not self._stop.is_set()

    def _consume(self, items: Iterable[tuple[int | None, MeterReading]]) -> None:
        for cursor, reading in items:
            if not self._put(cursor, reading):
                return

    async def _consume_async(self, source: AsyncIterable[MeterReading]) -> None:
        async for reading in source:
            if not self._put(None, reading):
                return

    def _ingest(self, *, final: bool = False, force: bool = False) -> None:
        """Move readings from the hand-off into the outbox, a chunk per fsync."""
        chunk_max = self.config.append_chunk
        while True:
            if not self._held:
                take = min(len(self._handoff), chunk_max)
                if take == 0 or (take < chunk_max and not final and not self._linger_over()):
                    return
                self._held = [self._handoff.popleft() for _ in range(take)]
            cursors = [c for c, _ in self._held if c is not None]
            try:
                self.outbox.append(
                    [p for _, p in self._held],
                    cursor=cursors[-1] if cursors else None,
                    force=force,
                )
            except OutboxFullError as exc:
                now = time.monotonic()
                if self._full_since is None:
                    self._full_since = now
                    log.warning("backpressure: %s; holding the meter source", exc)
                return
            if self._full_since is not None:
                held_s = time.monotonic() - self._full_since
                self.metrics.backpressure_s.inc(held_s)
                log.info("outbox has room again after %.1f s of backpressure", held_s)
                self._full_since = None
            self.metrics.queued.inc(len(self._held))
            if self._first_unbatched is None:
                self._first_unbatched = time.monotonic()
            self._held = []

    def _linger_over(self) -> bool:
        # a partial chunk is written when the source pauses (the hand-off stopped growing)
        n = len(self._handoff)
        if n != self._handoff_seen:
            self._handoff_seen = n
            self._handoff_seen_at = time.monotonic()
            return False
        return time.monotonic() - self._handoff_seen_at >= 0.02

    # --- MQTT side -----------------------------------------------------------------------

    def _network(self, now: float) -> None:
        client = self._client
        if client is None:
            if now >= self._next_attempt:
                self._connect(now)
            else:
                time.sleep(min(0.05, self._next_attempt - now))
            return
        import paho.mqtt.client as mqtt

        timeout = 0.0 if self._connected and self._has_work() else 0.01
        rc = client.loop(timeout=timeout)
        if rc != mqtt.MQTT_ERR_SUCCESS or self._conn_failed:
            self._lost(f"network: {mqtt.error_string(rc)}" if rc else "connection failed")
        elif not self._connected and now - self._connect_started > self.config.connack_timeout_s:
            self._lost("no CONNACK in time")

    def _has_work(self) -> bool:
        return bool(self._handoff) or (
            len(self._inflight) < self.config.max_inflight and self.outbox.pending_count() > 0
        )

    def _connect(self, now: float) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.config.client_id or f"citystream-meter-{self.config.gateway_id}",
            protocol=mqtt.MQTTv5,
        )
        if self.mqtt.username:
            client.username_pw_set(self.mqtt.username, self.mqtt.password)
        client.max_inflight_messages_set(self.config.max_inflight)
        client.connect_timeout = 5.0
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._conn_failed = False
        self._connected = False
        try:
            client.connect(
                self.mqtt.host, self.mqtt.port, keepalive=self.config.keepalive_s, clean_start=True
            )
        except OSError as exc:
            self._client = client
            self._lost(f"connect to {self.mqtt.host}:{self.mqtt.port} failed: {exc}")
            return
        self._client = client
        self._connect_started = now

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            log.warning("MQTT connect refused: %s", reason_code)
            self._conn_failed = True
            return
        self._connected = True
        self._backoff.reset()
        self.outbox.rewind()
        self.metrics.connects.inc()
        self.metrics.connected.set(1)
        log.info(
            "connected to %s:%d; %d readings pending in the outbox",
            self.mqtt.host,
            self.mqtt.port,
            self.outbox.pending_count(),
        )

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if client is self._client:
            self._conn_failed = True

    def _on_publish(
        self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        entry = self._inflight.pop(mid, None)
        self.metrics.in_flight.set(len(self._inflight))
        if entry is None:
            return
        batch_id, n = entry
        if reason_code.is_failure:
            # not stored by the broker: keep it in the outbox and resend after a reconnect
            self.metrics.rejected.inc()
            log.error(
                "broker refused batch %d (%d readings) on %s: %s; will retry",
                batch_id,
                n,
                self.config.topic,
                reason_code,
            )
            self._conn_failed = True
            return
        self.outbox.ack(batch_id)
        self.metrics.acked.inc(n)
        self.metrics.batches_acked.inc()

    def _lost(self, why: str) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.on_disconnect = client.on_publish = client.on_connect = None
            with contextlib.suppress(Exception):  # the socket may be gone already
                client.disconnect()
        was_connected = self._connected
        self._connected = False
        self._inflight.clear()
        self.metrics.in_flight.set(0)
        self.metrics.connected.set(0)
        self.metrics.disconnects.inc()
        self.outbox.rewind()
        delay = self._backoff.next()
        self._next_attempt = time.monotonic() + delay
        level = logging.WARNING if was_connected or self._backoff.attempt <= 1 else logging.INFO
        log.log(
            level,
            "MQTT %s; %d readings kept in the outbox; retry in %.1f s (attempt %d)",
            why,
            self.outbox.pending_count(),
            delay,
            self._backoff.attempt,
        )

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        with contextlib.suppress(Exception):  # closing anyway
            client.disconnect()
            client.loop(timeout=0.1)
        self._connected = False
        self.metrics.connected.set(0)

    def _publish_ready(self, now: float, *, flush: bool) -> None:
        import paho.mqtt.client as mqtt

        cfg = self.config
        while len(self._inflight) < cfg.max_inflight:
            seal = self.outbox.unbatched_count() >= cfg.max_batch or (
                self.outbox.unbatched_count() > 0
                and (
                    flush
                    or self._first_unbatched is None
                    or now - self._first_unbatched >= cfg.max_delay_s
                )
            )
            batch = self.outbox.peek_batch(cfg.max_batch, seal=seal)
            if batch is None:
                return
            if self.outbox.unbatched_count() == 0:
                self._first_unbatched = None
            payload = self._payload(batch)
            info = self._client.publish(cfg.topic, payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                self._lost(f"publish failed: {mqtt.error_string(info.rc)}")
                return
            n = len(batch.items)
            self._inflight[info.mid] = (batch.batch_id, n)
            self.metrics.in_flight.set(len(self._inflight))
            self.metrics.sent.inc(n)
            self.metrics.batches_sent.inc()
            if batch.batch_id <= self._max_published:
                self.metrics.retried.inc(n)
            else:
                self._max_published = batch.batch_id

    def _payload(self, batch: Batch) -> bytes:
        return batch_payload(self.config.gateway_id, batch.batch_id, datetime.now(UTC), batch.items)

    def _progress(self, rate: float | None) -> None:
        m, ob = self.metrics, self.outbox
        log.info(
            "%s gw=%s queued=%d sent=%d acked=%d retried=%d dropped=%d pending=%d "
            "(%.1f MiB, %.0f%% of bound) in_flight=%d connected=%s%s",
            "progress" if rate is not None else "final",
            self.config.gateway_id,
            m.queued.value,
            m.sent.value,
            m.acked.value,
            m.retried.value,
            m.dropped.value,
            ob.pending_count(),
            ob.size_bytes() / 2**20,
            100 * ob.fill_ratio,
            len(self._inflight),
            self._connected,
            f" rate={rate:.0f}/s" if rate is not None else "",
        )
