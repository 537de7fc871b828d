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


def test_full_row_batch_is_written_before_the_delay(stack: Stack, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
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
