"""Where the camera agent's frames go: the :class:`Publisher` port and its Kafka adapter."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from citystream.errors import CityStreamError

log = logging.getLogger("citystream.edge.camera")


class PublisherUnavailable(CityStreamError, ConnectionError):
    """The publisher cannot reach its brokers right now; the agent retries with backoff."""


Done = Callable[[BaseException | None], None]


class Publisher(Protocol):
    """Where encoded frames go.  ``send`` must not block for long; ``done`` is called once
    per frame (from any thread) with None on success or the error."""

    def connect(self) -> None: ...

    def send(self, key: bytes, value: bytes, timestamp_ms: int, done: Done) -> None: ...

    def flush(self, timeout_s: float) -> None: ...

    def close(self) -> None: ...


class KafkaFramePublisher:
    """kafka-python producer, ``acks=all``, idempotent; frames keyed by camera id."""

    def __init__(
        self,
        bootstrap: str,
        *,
        topic: str = "camera.frames",
        client_id: str = "citystream-camera",
        linger_ms: int = 5,
        max_block_ms: int = 5000,
        delivery_timeout_ms: int = 30_000,
        max_request_size: int = 8 * 1024 * 1024,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.client_id = client_id
        self.linger_ms = linger_ms
        self.max_block_ms = max_block_ms
        self.delivery_timeout_ms = delivery_timeout_ms
        self.max_request_size = max_request_size
        self._producer: Any = None
        self._connect_lock = threading.Lock()

    def connect(self) -> None:
        """Create the producer (once; thread-safe); :class:`PublisherUnavailable` if the
        brokers cannot be reached within 5 s."""
        with self._connect_lock:
            if self._producer is None:
                self._producer = self._create()

    def _create(self) -> Any:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        try:
            return KafkaProducer(
                bootstrap_servers=self.bootstrap.split(","),
                client_id=self.client_id,
                acks="all",
                enable_idempotence=True,
                linger_ms=self.linger_ms,
                batch_size=256 * 1024,
                max_request_size=self.max_request_size,
                max_block_ms=self.max_block_ms,
                delivery_timeout_ms=self.delivery_timeout_ms,
                request_timeout_ms=min(30_000, self.delivery_timeout_ms - self.linger_ms),
                # fail fast when the brokers are away: the agent retries with its own backoff
                # (and can stop meanwhile) instead of blocking in the constructor
                bootstrap_timeout_ms=5000,
                reconnect_backoff_max_ms=5000,
                metrics_enabled=False,
            )
        except (KafkaError, OSError) as exc:
            raise PublisherUnavailable(f"Kafka at {self.bootstrap} unreachable: {exc}") from exc

    def send(self, key: bytes, value: bytes, timestamp_ms: int, done: Done) -> None:
        if self._producer is None:
            raise PublisherUnavailable("not connected")
        future = self._producer.send(self.topic, key=key, value=value, timestamp_ms=timestamp_ms)
        future.add_callback(lambda _md: done(None))
        future.add_errback(done)

    def send_other(self, topic: str, key: bytes, value: bytes, done: Done) -> None:
        """A record for another topic on the same producer (thread-safe), e.g. a dead letter;
        connects first if needed (:class:`PublisherUnavailable` when Kafka is away)."""
        self.connect()
        future = self._producer.send(topic, key=key, value=value)
        future.add_callback(lambda _md: done(None))
        future.add_errback(done)

    def flush(self, timeout_s: float) -> None:
        if self._producer is not None:
            from kafka.errors import KafkaError

            try:
                self._producer.flush(timeout=timeout_s)
            except KafkaError as exc:
                log.warning("flush of %s did not complete: %s", self.topic, exc)

    def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout=5)
