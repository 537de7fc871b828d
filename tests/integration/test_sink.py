"""The DB sink writes when ``--batch-rows`` rows are buffered, not only on its timer."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from citystream.testing import Stack, wait_until
from schemas.messages import MeterBatch, MeterReading
from schemas.topics import TOPICS

pytestmark = pytest.mark.integration
READINGS = TOPICS["meter.readings"]


def batch(tag: str, seq: int, n: int) -> MeterBatch:
    t0 = datetime(2026, 3, 2, tzinfo=UTC) + timedelta(minutes=15 * (seq + 1))
    return MeterBatch(
        gateway_id=f"gw-{tag}",
        batch_seq=seq,
        sent_at=t0,
        readings=[
            MeterReading(meter_id=f"{tag}-{i:03d}", ts=t0, import_kwh=0.1 * i) for i in range(n)
        ],
    )


def start_group_at_end(stack: Stack, group: str, topic: str) -> None:
    """Commit ``group``'s offsets at the end of ``topic``: its first consumer reads only what
    is produced from now on (not the readings of earlier tests, whose rows would share the
    sink's buffer and leave part of this test's rows waiting for the timer)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(
        bootstrap_servers=stack.settings.kafka.bootstrap, group_id=group, enable_auto_commit=False
    )
    try:
        tps = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic)]
        c.assign(tps)
        c.seek_to_end(*tps)
        for tp in tps:
            c.position(tp)
        c.commit()
    finally:
        c.close(autocommit=False)


def test_full_row_batch_is_written_before_the_delay(stack: Stack, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    # readings already on the topic (as earlier tests leave): 30 of them in the sink's buffer
    # would make it write 110 rows at the third record and keep 40 of ours for the timer
    old = batch(f"old{tag}", 0, 30)
    stack.produce(READINGS.name, old.gateway_id.encode(), READINGS.codec.encode(old))
    start_group_at_end(stack, f"sink-rows-{tag}", READINGS.name)
    sink = stack.spawn(
        tmp_path / "sink.log",
        *("-m", "citystream.cli", "sink", "--topics", "meter.readings"),
        *("--group-id", f"sink-rows-{tag}", "--batch-rows", "100", "--max-delay", "600"),
    )

    def rows() -> int:
        with stack.db() as conn:
            got = conn.execute(
                "SELECT count(*) FROM meter_readings WHERE meter_id LIKE %s", (f"{tag}-%",)
            ).fetchone()
        return int(got[0]) if got else 0

    try:
        for seq in range(3):  # 3 records of 40 readings: the 3rd takes the buffer to 120 rows
            b = batch(tag, seq, 40)
            stack.produce(READINGS.name, b.gateway_id.encode(), READINGS.codec.encode(b))
        # with a 600 s timer only the row count can have triggered this write
        wait_until(lambda: rows() == 120, 60, "the 120 buffered rows in meter_readings")
    finally:
        sink.terminate()
        code = sink.wait(timeout=60)
    assert code == 0, (tmp_path / "sink.log").read_text()[-2000:]
    assert rows() == 120
