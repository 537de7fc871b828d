"""Live updates: one Kafka tail per process, fanned out to every open SSE connection.

:class:`Hub` keeps one bounded queue per client; a client that cannot keep up loses its
oldest events (counted in ``dropped``), never slows the others.  :class:`KafkaTail` reads
the result topics from their end (no consumer group: every map process sees everything)
and hands each decoded record to the hub as an :class:`Event`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from citymap.auth import Principal, Role
from citymap.redact import violation_for
from citystream.errors import SchemaError
from schemas.topics import TOPICS

log = logging.getLogger(__name__)

#: Kafka topic -> SSE event name.
LIVE_TOPICS: dict[str, str] = {
    "traffic.violations": "violation",
    "traffic.alerts": "alert",
    "energy.alerts": "alert",
    "energy.load": "load",
    "traffic.counts": "count",
}
CLIENT_QUEUE = 1000
HEARTBEAT_S = 15.0


@dataclass(frozen=True)
class Event:
    """A live update: its SSE name, the message as JSON-ready dict and when we got it."""

    name: str
    data: dict[str, Any]
    received_at: float = field(default_factory=time.time)


def visible(event: Event, who: Principal) -> dict[str, Any] | None:
    """The event's data as ``who`` may see it, or None when the role must not see it."""
    if event.name == "violation":
        if who.role == Role.utility:
            return None
        return violation_for(event.data, who.sees_evidence)
    return event.data


def sse_frame(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, default=str)}\n\n".encode()


class Hub:
    """Fan-out of events to subscribers' bounded queues."""

    def __init__(self, max_clients: int) -> None:
        self.max_clients = max_clients
        self._queues: set[asyncio.Queue[Event]] = set()
        self.published = 0
        self.dropped = 0

    @property
    def clients(self) -> int:
        return len(self._queues)

    def publish(self, event: Event) -> None:
        self.published += 1
        for q in self._queues:
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
                self.dropped += 1
            q.put_nowait(event)

    def subscribe(self) -> asyncio.Queue[Event]:
        if len(self._queues) >= self.max_clients:
            raise OverflowError(f"{len(self._queues)} live clients: the limit is reached")
        q: asyncio.Queue[Event] = asyncio.Queue(CLIENT_QUEUE)
        self._queues.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[Event]) -> None:
        self._queues.discard(q)

    async def stream(
        self, who: Principal, q: asyncio.Queue[Event], heartbeat_s: float = HEARTBEAT_S
    ) -> AsyncIterator[bytes]:
        """SSE bytes for one client until it goes away; always unsubscribes."""
        try:
            yield b"retry: 2000\n" + sse_frame("hello", {"role": who.role.value, "name": who.name})
            while True:
                try:
                    event = await asyncio.wait_for(q.get(), heartbeat_s)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                data = visible(event, who)
                if data is not None:
                    yield sse_frame(event.name, data)
        finally:
            self.unsubscribe(q)


def decode_record(topic: str, value: bytes) -> Event | None:
    """A Kafka record of a live topic as an event; None (logged) if it does not decode."""
    name = LIVE_TOPICS.get(topic)
    if name is None:
        return None
    try:
        message = TOPICS[topic].codec.decode(value)
    except SchemaError as exc:
        log.warning("live tail: undecodable record on %s: %s", topic, exc)
        return None
    data: dict[str, Any] = message.model_dump(mode="json")
    data.pop("v", None)
    return Event(name, data)


class KafkaTail:
    """Reads :data:`LIVE_TOPICS` from their end and publishes to ``sink``; reconnects forever."""

    def __init__(
        self, bootstrap: str, sink: Callable[[Event], None], topics: tuple[str, ...] = ()
    ) -> None:
        self.bootstrap = bootstrap
        self.sink = sink
        self.topics = topics or tuple(LIVE_TOPICS)
        self.ready = asyncio.Event()
        self.records = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="citymap-kafka-tail")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        backoff = 1.0
        while True:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="latest",
                fetch_max_wait_ms=100,
            )
            try:
                await consumer.start()
                parts: list[TopicPartition] = []
                for t in self.topics:
                    for p in consumer.partitions_for_topic(t) or await _partitions(consumer, t):
                        parts.append(TopicPartition(t, p))
                consumer.assign(parts)
                await consumer.seek_to_end(*parts)
                for tp in parts:  # resolve positions now, so nothing after `ready` is missed
                    await consumer.position(tp)
                self.ready.set()
                backoff = 1.0
                log.info("live tail on %d partitions of %s", len(parts), ", ".join(self.topics))
                async for record in consumer:
                    self.records += 1
                    if record.value is None:
                        continue
                    event = decode_record(record.topic, record.value)
                    if event is not None:
                        self.sink(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker down, topic missing: retry
                self.ready.clear()
                log.warning("live tail: %s; retrying in %.0f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()


async def _partitions(consumer: Any, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    parts = consumer.partitions_for_topic(topic)
    if not parts:
        raise LookupError(f"topic {topic} has no partitions (does it exist?)")
    return set(parts)
