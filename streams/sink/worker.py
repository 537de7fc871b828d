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
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from citystream.db.copy_writer import BatchRejected, CopyWriter
from citystream.db.rows import rows_for, storable_types
from citystream.errors import SinkError
from citystream.settings import Settings
from schemas.codecs import dead_letter
from schemas.messages import MESSAGE_TYPES
from schemas.topics import TOPICS, Topic
from streams.consumer import ConsumerLoop
from streams.decode import decode_record

log = logging.getLogger(__name__)
STAGE = "db-sink"


def storable_topics() -> list[str]:
    """Registry topics whose messages have a table."""
    types = set(storable_types())
    return [
        t.name for t in TOPICS.values() if not t.internal and MESSAGE_TYPES.get(t.schema) in types
    ]


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


@dataclass
class _Buffered:
    topic: Topic
    key: bytes | None
    value: bytes
    partition: int
    offset: int
    table: str
    rows: list[Any]


class DbSink(ConsumerLoop):
    """Consumes result topics and writes them to TimescaleDB (see the module docstring)."""

    name = "sink"

    def __init__(self, settings: Settings, config: SinkConfig | None = None) -> None:
        self.config = config or SinkConfig(topics=tuple(storable_topics()))
        super().__init__(
            settings,
            self.config.topics,
            self.config.group_id,
            commit_every_s=self.config.max_delay_s,
            max_poll_records=5000,
        )
        r = self.registry
        self.rows_sent = r.counter("rows_sent_total", "Rows written", labels=("table",))
        self.rows_new = r.counter("rows_inserted_total", "Rows new to the DB", labels=("table",))
        self.flush_s = r.summary("flush_seconds", "Time to flush all tables")
        self.db_errors = r.counter("db_errors_total", "Failed flushes (retried)")
        self._writers: dict[str, CopyWriter] = {}
        self._buffer: list[_Buffered] = []
        self._buffered_rows = 0

    # -- per record -----------------------------------------------------------------------

    def handle(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> None:
        t = TOPICS[topic]
        message, dead = decode_record(
            t, value, stage=STAGE, key=key, partition=partition, offset=offset
        )
        if dead is not None:
            self.dead_letter(topic, key, dead)
            return
        spec, rows = rows_for(message)
        if spec.name not in self._writers:
            self._writers[spec.name] = CopyWriter(
                self.settings.db.dsn, spec, batch_size=min(self.config.batch_rows * 4, 1_000_000)
            )
        self._buffer.append(_Buffered(t, key, value or b"", partition, offset, spec.name, rows))
        self._buffered_rows += len(rows)
        if self._buffered_rows >= self.config.batch_rows:
            self.commit()

    # -- batches --------------------------------------------------------------------------

    def checkpoint(self, handled: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        """Write every buffered row (retrying until the DB takes them); then all handled
        offsets are safe."""
        if not self._buffer:
            return handled
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
                self.db_errors.inc()
                log.error(
                    "db write failed, retrying in %.1fs: %s", self.config.retry_backoff_s, exc
                )
                if self._stop.wait(self.config.retry_backoff_s):
                    raise
        self._buffer.clear()
        self._buffered_rows = 0
        self.flush_s.observe(time.monotonic() - started)
        return handled

    def _write(self, items: Iterable[_Buffered]) -> None:
        for item in items:
            self._writers[item.table].add_many(item.rows)
        for name, writer in self._writers.items():
            if writer.pending:
                result = writer.flush()
                self.rows_sent.labels(name).inc(result.sent)
                self.rows_new.labels(name).inc(result.inserted)

    def _write_one_by_one(self) -> None:
        for writer in self._writers.values():
            writer.discard()
        for item in self._buffer:
            try:
                self._write([item])
            except BatchRejected as exc:
                self._writers[item.table].discard()
                self.dead_letter(
                    item.topic.name,
                    item.key,
                    dead_letter(
                        source_topic=item.topic.name,
                        payload=item.value,
                        error=exc,
                        stage=STAGE,
                        key=item.key,
                        partition=item.partition,
                        offset=item.offset,
                    ),
                )

    def close(self) -> None:
        super().close()
        for w in self._writers.values():
            w.close()
