"""In-flight MQTT messages and the order their acknowledgements are released in.

A message is *done* when Kafka acknowledged every record written for it.  MQTT 3.1.1
(section 4.6) asks a client to send PUBACKs in the order the PUBLISH packets arrived,
so :meth:`AckTracker.done` releases finished messages only from the head of the
receive-ordered queue.  Kafka writes are not held back by this, only the PUBACKs.

Each message remembers the MQTT connection *generation* it arrived on: after a
reconnect, the broker redelivers unacknowledged messages, so an ack for a message of an
older connection must not be sent (its packet id may name another message now).

:class:`OutstandingSends` and :class:`StallWatch` are the bookkeeping of the bridge's
stall watchdog: which records the producer still owes an answer for, and when it has owed
them too long.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from schemas.topics import KafkaRecord


@dataclass(eq=False)
class Pending:
    """One received MQTT message waiting for its Kafka records to be acknowledged."""

    mid: int
    qos: int
    generation: int
    remaining: int
    received_at: float
    dead_lettered: bool = False
    finished: bool = field(default=False, init=False)


class AckTracker:
    """Thread-safe, receive-ordered set of in-flight messages."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Pending] = deque()
        self.generation = 0

    def new_generation(self) -> int:
        """Start a new MQTT connection: acks of older messages will be skipped."""
        with self._lock:
            self.generation += 1
            return self.generation

    def add(
        self, mid: int, qos: int, records: int, received_at: float, dead_lettered: bool = False
    ) -> Pending:
        """Track a message that will be done after ``records`` Kafka acks (0: done now)."""
        if records < 0:
            raise ValueError("records must be >= 0")
        with self._lock:
            pending = Pending(mid, qos, self.generation, records, received_at, dead_lettered)
            self._queue.append(pending)
            return pending

    def done(self, pending: Pending, records: int = 1) -> list[Pending]:
        """``records`` of ``pending`` were acknowledged by Kafka; returns the messages that
        may be acknowledged now, in receive order (possibly empty)."""
        with self._lock:
            pending.remaining = max(0, pending.remaining - records)
            if pending.remaining == 0:
                pending.finished = True
            released: list[Pending] = []
            while self._queue and self._queue[0].finished:
                released.append(self._queue.popleft())
            return released

    def is_current(self, pending: Pending) -> bool:
        return pending.generation == self.generation

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def unfinished(self) -> int:
        with self._lock:
            return sum(1 for p in self._queue if not p.finished)


class OutstandingSends:
    """Kafka sends not yet acknowledged or failed, by send id, per producer generation.

    Every record handed to the producer is :meth:`add` ed and completes through exactly one
    :meth:`take` (its ack or its failure).  When a stalled producer is replaced,
    :meth:`replace` hands back every outstanding send, in send order, for re-sending, and
    starts a new generation: a late callback of the old producer then takes nothing, so each
    message's record count goes down once per record, through the re-send."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sends: dict[int, tuple[Pending, KafkaRecord]] = {}
        self._next_id = 0
        self.generation = 0

    def add(self, pending: Pending, record: KafkaRecord) -> tuple[int, int]:
        """Track one send; returns ``(send id, generation)`` for its callbacks."""
        with self._lock:
            sid = self._next_id
            self._next_id += 1
            self._sends[sid] = (pending, record)
            return sid, self.generation

    def take(self, sid: int, generation: int) -> tuple[Pending, KafkaRecord] | None:
        """The send ``sid`` made in ``generation``, removed; None when it was taken already
        or belongs to a replaced producer."""
        with self._lock:
            if generation != self.generation:
                return None
            return self._sends.pop(sid, None)

    def replace(self) -> list[tuple[Pending, KafkaRecord]]:
        """Start a new generation; returns the old one's outstanding sends, oldest first."""
        with self._lock:
            stranded = list(self._sends.values())
            self._sends.clear()
            self.generation += 1
            return stranded

    def __len__(self) -> int:
        return len(self._sends)


@dataclass
class StallWatch:
    """Says when work has been outstanding with no progress for ``timeout_s`` (0: never)."""

    timeout_s: float
    last_progress: float = 0.0

    def progress(self, now: float) -> None:
        self.last_progress = now

    def stalled(self, now: float, busy: bool) -> bool:
        """``busy``: something is waiting for the producer.  While idle the clock stays
        reset, so a stall is counted from the first send after a quiet spell."""
        if not busy or not self.timeout_s:
            self.last_progress = now
            return False
        return now - self.last_progress >= self.timeout_s
