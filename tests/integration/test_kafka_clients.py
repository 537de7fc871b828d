"""Both Python Kafka clients CityStream uses work against the pinned broker.

kafka-python (edge agents, bridge) produces and consumes directly; a real
faust-streaming worker (aiokafka underneath; the stream processors) consumes,
decodes, forwards and dead-letters — including faust's own topic creation.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from citystream.kafka_topics import ensure_topics
from citystream.testing import Stack
from schemas.topics import DEAD_LETTER_CODEC, TOPICS
from tests.unit.factories import make_batch

pytestmark = pytest.mark.integration
PROBE = Path(__file__).with_name("faust_probe.py")


def test_kafka_python_roundtrip(stack: Stack) -> None:
    batch = make_batch("gw-kp-1")
    codec = TOPICS["meter.readings"].codec
    stack.produce("meter.readings", b"gw-kp-1", codec.encode(batch))
    records = stack.consume("meter.readings", count=1, where=lambda r: r.key == b"gw-kp-1")
    assert records and codec.decode(records[0].value) == batch


def test_faust_agent_consumes_forwards_and_dead_letters(stack: Stack, tmp_path: Path) -> None:
    # Topic auto-creation is off on our brokers: topics exist before workers start.
    ensure_topics(
        stack.settings.kafka.bootstrap,
        [("probe.in", 2, 3_600_000), ("probe.out", 1, 3_600_000), ("probe.dlq", 1, 3_600_000)],
    )
    log = (tmp_path / "faust.log").open("w")
    worker = subprocess.Popen(
        [sys.executable, str(PROBE), "worker", "-l", "info"],
        env=stack.env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).parents[2],
    )
    try:
        codec = TOPICS["meter.readings"].codec
        sent = [make_batch(f"gw-fp-{i}", n=2, seq=i) for i in range(20)]
        for b in sent:
            stack.produce("probe.in", b.gateway_id.encode(), codec.encode(b))
        stack.produce("probe.in", b"bad-1", b'{"v": 1, "meter_id": "x"')
        stack.produce("probe.in", b"bad-2", b"\x00\x01 not json")

        out = stack.consume("probe.out", count=20, timeout_s=120)
        dead = stack.consume("probe.dlq", count=2, timeout_s=30)
        assert worker.poll() is None, "faust worker died; see its log"
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        log.close()
    log_text = (tmp_path / "faust.log").read_text()
    got = sorted((codec.decode(r.value) for r in out), key=lambda b: b.gateway_id)
    assert got == sorted(sent, key=lambda b: b.gateway_id), log_text[-3000:]
    reasons = {r.key: DEAD_LETTER_CODEC.decode(r.value) for r in dead}
    assert set(reasons) == {b"bad-1", b"bad-2"}
    assert "Invalid JSON" in reasons[b"bad-1"].reason
    assert all(
        d.source_topic == "meter.readings" and d.stage == "faust-probe" for d in reasons.values()
    )
