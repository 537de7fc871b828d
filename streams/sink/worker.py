"""The DB sink: result topics -> TimescaleDB, at least once, idempotent.

A plain kafka-python consumer loop (no faust: this stage keeps no state and a direct
loop gives us exact control of offset commits).  For each poll it decodes every record
with its topic's codec (bad ones -> ``<topic>.dlq`` with the reason), buffers rows per
table in :class:`~citystream.db.copy_writer.CopyWriter` s, and when a batch is full or
``max_delay_s`` has passed it flushes every writer, waits for the DLQ sends, and only
then commits the consumed offsets.  A crash before the commit replays the batch, which
the writers' ``ON CONFLICT DO NOTHING`` on natural keys turns into a no-op.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from citystream.db.copy_writer import BatchRejected, CopyWriter
from citystream.db.rows import rows_for, storable_types
from citystream.errors import SinkError
from citystream.metrics import Registry
from citystream.settings import Settings
from schemas.codecs import dead_letter
from schemas.messages import MESSAGE_TYPES
from schemas.topics import DEAD_LETTER_CODEC, TOPICS, Topic
from streams.decode import decode_record

log = logging.getLogger(__name__)
STAGE = "db-sink"


def storable_topics() -> list[str]:
    """Registry topics whose messages have a table."""
    types = set(storable_types())
    return [t.name for t in TOPICS.values() if MESSAGE_TYPES.get(t.schema) in types]


@dataclass(frozen=True)
class SinkConfig:
    topics: tuple[str, ...] = ()
    group_id: str = "citystream-db-sink"
    batch_rows: int = 20_000
    max_delay_s: float = 1.0
    retry_backoff_s: float = 2.0

    def __post_init__(self) -> None:
        unknown = [t for t in self.topics if t not in TOPICS]
        if unknown:
            raise ValueError(f"unknown topics {unknown}; registered: {sorted(TOPICS)}")
        if self.batch_rows < 1 or self.max_delay_s <= 0:
            raise ValueError("batch_rows must be >= 1 and max_delay_s > 0")


class SinkMetrics:
    def __init__(self) -> None:
        self.registry = Registry(prefix="citystream_sink")
        r = self.registry
        self.records = r.counter("records_total", "Kafka records consumed", labels=("topic",))
        self.dead = r.counter("dead_letters_total", "Records sent to a DLQ", labels=("topic",))
        self.rows_sent = r.counter("rows_sent_total", "Rows written", labels=("table",))
        self.rows_new = r.counter("rows_inserted_total", "Rows new to the DB", labels=("table",))
        self.flush_s = r.summary("flush_seconds", "Time to flush all tables and commit")
        self.db_errors = r.counter("db_errors_total", "Failed flushes (retried)")
        self.commits = r.counter("commits_total", "Offset commits after a durable flush")


@dataclass
class _Buffered:
    topic: Topic
    key: bytes | None
    value: bytes
    partition: int
    offset: int
    table: str
    rows: list[Any]


class DbSink:
    """Consumes result topics and writes them to TimescaleDB (see the module docstring)."""

    def __init__(self, settings: Settings, config: SinkConfig | None = None) -> None:
        self.settings = settings
        self.config = config or SinkConfig(topics=tuple(storable_topics()))
        self.metrics = SinkMetrics()
        self._stop = threading.Event()
        self._writers: dict[str, CopyWriter] = {}
        self._buffer: list[_Buffered] = []
        self._consumer: Any = None
        self._producer: Any = None

    # -- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        bootstrap = self.settings.kafka.bootstrap
        self._consumer = KafkaConsumer(
            *self.config.topics,
            bootstrap_servers=bootstrap,
            group_id=self.config.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=5000,
        )
        self._producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        log.info("db sink: %s -> %s", ", ".join(self.config.topics), self.settings.db.name)
        last_flush = time.monotonic()
        try:
            while not self._stop.is_set():
                polled = self._consumer.poll(timeout_ms=200)
                for tp, msgs in polled.items():
                    for msg in msgs:
                        self._take(TOPICS[tp.topic], msg)
                due = time.monotonic() - last_flush >= self.config.max_delay_s
                if self._buffer and (len(self._buffer) >= self.config.batch_rows or due):
                    self._flush_and_commit()
                    last_flush = time.monotonic()
                elif due:
                    last_flush = time.monotonic()
            if self._buffer:
                self._flush_and_commit()
        finally:
            self._consumer.close(autocommit=False)
            self._producer.close()
            for w in self._writers.values():
                w.close()

    # -- per record -----------------------------------------------------------------------

    def _take(self, topic: Topic, msg: Any) -> None:
        self.metrics.records.labels(topic.name).inc()
        message, dead = decode_record(
            topic, msg.value, stage=STAGE, key=msg.key, partition=msg.partition, offset=msg.offset
        )
        if dead is not None:
            self._dead_letter(topic, msg.key, DEAD_LETTER_CODEC.encode(dead))
            return
        spec, rows = rows_for(message)
        if spec.name not in self._writers:
            self._writers[spec.name] = CopyWriter(
                self.settings.db.dsn, spec, batch_size=min(self.config.batch_rows * 4, 1_000_000)
            )
        self._buffer.append(
            _Buffered(topic, msg.key, msg.value, msg.partition, msg.offset, spec.name, rows)
        )

    def _dead_letter(self, topic: Topic, key: bytes | None, payload: bytes) -> None:
        self.metrics.dead.labels(topic.name).inc()
        self._producer.send(topic.dlq, key=key, value=payload)

    # -- batches --------------------------------------------------------------------------

    def _flush_and_commit(self) -> None:
        """Write every buffered row, then commit offsets; retries until the DB takes it."""
        started = time.monotonic()
        while True:
            try:
                self._write(self._buffer)
                break
            except BatchRejected as exc:
                log.warning("db refused a batch (%s); isolating the bad records", exc)
                self._write_one_by_one()
                break
            except SinkError as exc:
                self.metrics.db_errors.inc()
                log.error(
                    "db write failed, retrying in %.1fs: %s", self.config.retry_backoff_s, exc
                )
                if self._stop.wait(self.config.retry_backoff_s):
                    raise
        self._producer.flush()
        self._consumer.commit()
        self.metrics.commits.inc()
        self._buffer.clear()
        self.metrics.flush_s.observe(time.monotonic() - started)

    def _write(self, items: Iterable[_Buffered]) -> None:
        for item in items:
            self._writers[item.table].add_many(item.rows)
        for name, writer in self._writers.items():
            if writer.pending:
                result = writer.flush()
                self.metrics.rows_sent.labels(name).inc(result.sent)
                self.metrics.rows_new.labels(name).inc(result.inserted)

    def _write_one_by_one(self) -> None:
        for writer in self._writers.values():
            writer.discard()
        for item in self._buffer:
            try:
                self._write([item])
            except BatchRejected as exc:
                self._writers[item.table].discard()
                dead = dead_letter(
                    source_topic=item.topic.name,
                    payload=item.value,
                    error=exc,
                    stage=STAGE,
                    key=item.key,
                    partition=item.partition,
                    offset=item.offset,
                )
                self._dead_letter(item.topic, item.key, DEAD_LETTER_CODEC.encode(dead))
