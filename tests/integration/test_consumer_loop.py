"""ConsumerLoop against the real broker: partitions a rebalance gives away are forgotten.

A member that kept the handled offset of such a partition would commit it when the
partition came back, over what the other member committed meanwhile; one that forgot the
partitions it kept would never commit them.
"""

from __future__ import annotations

import threading
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer

from citystream.kafka_topics import ensure_topics
from citystream.testing import Stack
from streams.consumer import ConsumerLoop

pytestmark = pytest.mark.integration
TOPIC = "probe.rebalance"


class _Counting(ConsumerLoop):
    name = "probe-rebalance"

    def handle(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> None:
        return None


def _wait(cond: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_revoked_partitions_are_forgotten(stack: Stack) -> None:
    bootstrap = stack.settings.kafka.bootstrap
    ensure_topics(bootstrap, [(TOPIC, 2, 3_600_000)])
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for i in range(20):
        producer.send(TOPIC, value=b"x", partition=i % 2)
    producer.flush()
    producer.close()

    group = f"probe-rebalance-{time.time_ns()}"
    loop = _Counting(stack.settings, (TOPIC,), group, commit_every_s=3600.0)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    other = None
    try:
        _wait(lambda: set(loop._handled) == {(TOPIC, 0), (TOPIC, 1)}, 60, "both partitions")
        other = KafkaConsumer(
            TOPIC, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
        )
        _wait(lambda: other.poll(timeout_ms=200) is not None and other.assignment(), 90, "join")
        (taken,) = other.assignment()
        _wait(lambda: len(loop.consumer.assignment()) == 1, 60, "the rebalance in the loop")
        kept = {(tp.topic, tp.partition) for tp in loop.consumer.assignment()}
        assert (taken.topic, taken.partition) not in kept
        assert set(loop._handled) <= kept, loop._handled
        # the partition it kept keeps its offset (an eager rebalance revokes all, and the
        # consumer goes on from its position there: dropping it would never commit it)
        assert loop._handled == {key: 10 for key in kept}, loop._handled
    finally:
        if other is not None:
            other.close(autocommit=False)
        loop.stop()
        thread.join(timeout=30)
