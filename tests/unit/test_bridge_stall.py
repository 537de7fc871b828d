"""The bridge's stall watchdog bookkeeping, and the stack's port check (pure, no services)."""

from __future__ import annotations

import socket

import pytest

from citystream.stack import process
from citystream.testing import ephemeral_range, stable_port
from edge.bridge.acks import AckTracker, OutstandingSends, StallWatch
from edge.bridge.app import BridgeConfig


def test_each_send_completes_once_even_across_a_producer_replacement() -> None:
    tracker = AckTracker()
    sends = OutstandingSends()
    p = tracker.add(mid=1, qos=1, records=2, received_at=0.0)
    a = sends.add(p, ("meter.readings", b"k", b"a"))
    b = sends.add(p, ("meter.readings", b"k", b"b"))
    assert sends.take(*a) is not None  # acked by the old producer
    assert sends.take(*a) is None  # a second answer for the same send counts nothing
    stranded = sends.replace()  # the old producer stalled on b
    assert [record for _, record in stranded] == [("meter.readings", b"k", b"b")]
    assert sends.take(*b) is None  # its late answer is ignored: b is re-sent
    again = sends.add(*stranded[0])
    assert again[1] == b[1] + 1
    item = sends.take(*again)
    assert item is not None and item[0] is p
    assert len(sends) == 0


def test_replace_keeps_send_order() -> None:
    sends = OutstandingSends()
    p = AckTracker().add(mid=1, qos=1, records=3, received_at=0.0)
    for v in (b"1", b"2", b"3"):
        sends.add(p, ("t", b"k", v))
    assert [r[2] for _, r in sends.replace()] == [b"1", b"2", b"3"]


def test_stall_is_counted_only_while_busy() -> None:
    watch = StallWatch(timeout_s=10.0, last_progress=0.0)
    assert not watch.stalled(100.0, busy=False)  # idle for long: no stall, clock reset
    assert not watch.stalled(109.0, busy=True)
    assert watch.stalled(110.0, busy=True)
    watch.progress(111.0)
    assert not watch.stalled(120.0, busy=True)
    assert watch.stalled(121.0, busy=True)
    assert not StallWatch(timeout_s=0.0).stalled(1e9, busy=True)  # 0: watchdog off


def test_a_socket_connected_to_itself_is_not_a_service() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.connect(s.getsockname())  # TCP simultaneous open with itself
        assert process.self_connected(s)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            assert not process.self_connected(client)
        assert process.port_open("127.0.0.1", port)


def test_stable_ports_lie_below_the_ephemeral_range() -> None:
    low, _ = ephemeral_range()
    ports = {stable_port() for _ in range(20)}
    assert all(1024 <= p < low for p in ports)


@pytest.mark.parametrize(
    ("stall_timeout_s", "linger_ms", "ok"),
    [(30.0, 5, True), (0.0, 5000, True), (0.5, 5, False), (2.0, 1500, False), (3.0, 1500, True)],
)
def test_stall_timeout_must_outlast_batching(
    stall_timeout_s: float, linger_ms: int, ok: bool
) -> None:
    if ok:
        config = BridgeConfig(stall_timeout_s=stall_timeout_s, linger_ms=linger_ms)
        assert config.stall_timeout_s == stall_timeout_s
    else:
        with pytest.raises(ValueError, match="stall_timeout_s"):
            BridgeConfig(stall_timeout_s=stall_timeout_s, linger_ms=linger_ms)
