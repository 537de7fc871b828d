"""Record Kafka topics into a capture file.

The recorder assigns itself every partition of the topics (no consumer group, nothing
committed, invisible to the pipeline's lag), starts at the beginning or at the end, and
appends each record with its key, value, headers, timestamp, partition and offset.  It
flushes the open block once a second, so a crash loses at most a second of records; a
clean stop (``stop`` event, SIGINT in the CLI) writes the index.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from citystream.capture.format import CapturedRecord, CaptureWriter
from citystream.errors import CityStreamError


@dataclass(frozen=True)
class RecordOptions:
    topics: tuple[str, ...]
    from_beginning: bool = False
    duration_s: float | None = None
    max_records: int | None = None
    stop_at_end: bool = False
    """Stop once every partition reached its end offset as of the start."""
    flush_interval_s: float = 1.0
    progress_interval_s: float = 2.0

    def __post_init__(self) -> None:
        if not self.topics:
            raise ValueError("name at least one topic")
        if self.max_records is not None and self.max_records < 1:
            raise ValueError("max_records must be >= 1")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError("duration_s must be > 0")


@dataclass
class RecordStats:
    records: int = 0
    bytes: int = 0
    elapsed_s: float = 0.0
    per_topic: dict[str, int] = field(default_factory=dict)
    reason: str = ""

    def line(self) -> str:
        rate = self.records / self.elapsed_s if self.elapsed_s > 0 else 0.0
        topics = ", ".join(f"{t}={n}" for t, n in sorted(self.per_topic.items()))
        return (
            f"record: {self.records} records, {self.bytes / 1e6:.1f} MB in {self.elapsed_s:.1f} s "
            f"({rate:.0f}/s){'; ' + topics if topics else ''}"
        )


def _consumer(bootstrap: str) -> Any:
    from kafka import KafkaConsumer

    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        client_id="citystream-recorder",
    )


def record(
    bootstrap: str,
    writer: CaptureWriter,
    options: RecordOptions,
    *,
    stop: threading.Event | None = None,
    progress: Callable[[str], None] | None = None,
) -> RecordStats:
    """Record until a stop condition; the caller closes ``writer`` (which writes the index)."""
    from kafka import TopicPartition

    stop = stop or threading.Event()
    consumer = _consumer(bootstrap)
    stats = RecordStats()
    try:
        tps: list[Any] = []
        for topic in options.topics:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                raise CityStreamError(f"topic {topic!r} does not exist on {bootstrap}")
            tps.extend(TopicPartition(topic, p) for p in sorted(parts))
        consumer.assign(tps)
        if options.from_beginning:
            consumer.seek_to_beginning(*tps)
        else:
            consumer.seek_to_end(*tps)
        ends: dict[Any, int] = consumer.end_offsets(tps) if options.stop_at_end else {}
        started = time.monotonic()
        last_flush = last_progress = started
        while True:
            now = time.monotonic()
            stats.elapsed_s = now - started
            if stop.is_set():
                stats.reason = "stopped"
                break
            if options.duration_s is not None and stats.elapsed_s >= options.duration_s:
                stats.reason = "duration reached"
                break
            if options.max_records is not None and stats.records >= options.max_records:
                stats.reason = "max records reached"
                break
            if options.stop_at_end and all(
                consumer.position(tp) >= end for tp, end in ends.items()
            ):
                stats.reason = "end of topics reached"
                break
            batch = consumer.poll(timeout_ms=200)
            for tp, msgs in batch.items():
                for m in msgs:
                    if options.max_records is not None and stats.records >= options.max_records:
                        break
                    writer.add(
                        CapturedRecord(
                            topic=tp.topic,
                            key=m.key,
                            value=m.value,
                            timestamp_ms=int(m.timestamp),
                            partition=tp.partition,
                            offset=int(m.offset),
                            headers=tuple((str(k), v) for k, v in (m.headers or [])),
                        )
                    )
                    stats.records += 1
                    stats.bytes += len(m.value or b"") + len(m.key or b"")
                    stats.per_topic[tp.topic] = stats.per_topic.get(tp.topic, 0) + 1
            if now - last_flush >= options.flush_interval_s:
                writer.flush()
                last_flush = now
            every = options.progress_interval_s
            if progress and every > 0 and now - last_progress >= every:
                progress(stats.line())
                last_progress = now
        stats.elapsed_s = time.monotonic() - started
    finally:
        consumer.close()
    return stats


def record_to_file(
    bootstrap: str,
    path: str,
    options: RecordOptions,
    *,
    stop: threading.Event | None = None,
    progress: Callable[[str], None] | None = None,
    compression: str = "zlib",
) -> RecordStats:
    """:func:`record` into a new capture at ``path``; the index is written however it ends."""
    meta = {
        "source": "kafka",
        "recorded_by": "citystream record",
        "topics": list(options.topics),
        "from_beginning": options.from_beginning,
    }
    with CaptureWriter(path, metadata=meta, compression=compression) as writer:
        return record(bootstrap, writer, options, stop=stop, progress=progress)


def topics_arg(values: Sequence[str]) -> tuple[str, ...]:
    """``--topics a b,c`` -> ``("a", "b", "c")``."""
    out: list[str] = []
    for v in values:
        out.extend(t for t in v.split(",") if t)
    return tuple(dict.fromkeys(out))
