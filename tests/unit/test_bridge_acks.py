"""PUBACK release order of the bridge's in-flight tracker."""

from __future__ import annotations

import threading

from edge.bridge.acks import AckTracker


def test_acks_are_released_in_receive_order() -> None:
    t = AckTracker()
    a = t.add(1, 1, records=2, received_at=0.0)
    b = t.add(2, 1, records=1, received_at=0.0)
    c = t.add(3, 1, records=1, received_at=0.0)
    assert t.done(b) == []  # b finished but a is still in flight
    assert t.done(a) == []  # one of a's two records
    assert t.done(c) == []
    assert [p.mid for p in t.done(a)] == [1, 2, 3]
    assert len(t) == 0


def test_message_without_records_is_released_at_once() -> None:
    t = AckTracker()
    p = t.add(7, 1, records=0, received_at=0.0)
    assert t.done(p, 0) == [p]


def test_generation_marks_messages_of_an_older_connection() -> None:
    t = AckTracker()
    t.new_generation()
    old = t.add(1, 1, records=1, received_at=0.0)
    t.new_generation()
    new = t.add(1, 1, records=1, received_at=0.0)
    released = t.done(old) + t.done(new)
    assert [t.is_current(p) for p in released] == [False, True]


def test_concurrent_completion_releases_each_message_exactly_once() -> None:
    t = AckTracker()
    pendings = [t.add(i, 1, records=4, received_at=0.0) for i in range(500)]
    released: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for p in pendings:
            out = t.done(p)
            with lock:
                released.extend(x.mid for x in out)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(released) == list(range(500))
    assert t.unfinished == 0 and len(t) == 0
