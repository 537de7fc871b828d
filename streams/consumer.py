"""A plain Kafka consumer loop with exact, at-least-once offset control.

Stages that keep state across records (windows) or write to external systems (the DB)
must not commit an offset before the effect of every record up to it is durable.  A
:class:`ConsumerLoop` polls, hands each record to ``handle``, and every ``commit_every_s``
asks the stage to make its effects durable (``checkpoint``) and which offsets are safe;
only then does it flush the producer and commit.  A crash replays from the last commit,
and natural keys downstream turn the replay into a no-op.

A broker restart does not end the loop: a commit that fails with a retriable error (broker
or coordinator unreachable, timeout) is skipped and counted, the loop keeps polling, and the
next commit covers those offsets too; a commit refused because the group rebalanced is
skipped the same way (the next poll rejoins, and records consumed again collapse on their
natural keys).  Only what cannot be retried (sends that failed) ends it, for the supervisor
to restart it.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from typing import Any

from kafka import ConsumerRebalanceListener
from kafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)

from citystream.errors import SinkError
from citystream.metrics import Registry
from citystream.settings import Settings
from schemas.messages import DeadLetter
from schemas.topics import DEAD_LETTER_CODEC, TOPICS

log = logging.getLogger(__name__)


#: Commit refusals after the group rebalanced: not fatal (see :meth:`ConsumerLoop.commit`).
_REBALANCE_ERRORS = (
    CommitFailedError,
    IllegalGenerationError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)

#: Upper bound of the clients' reconnect back-off (kafka-python's default, 30 s, keeps a
#: worker idle for up to that long after the broker is back).
RECONNECT_BACKOFF_MAX_MS = 1000
#: Seconds of commits refused by a rebalance after which the consumer is replaced.
REJOIN_S = 30.0


class _ForgetRevoked(ConsumerRebalanceListener):  # type: ignore[misc]
    """Drops the handled offsets of partitions a rebalance gave to another member: were one
    assigned back later, its stale offset would be committed over what that member committed
    meanwhile (backwards: records again; forwards, if it had not got as far: records
    skipped).  Partitions that stay ours keep theirs: an eager rebalance revokes them all,
    and the consumer goes on from its positions in those it gets back."""

    def __init__(self, handled: dict[tuple[str, int], int]) -> None:
        self.handled = handled

    def on_partitions_revoked(self, revoked: Any) -> None:
        return None

    def on_partitions_assigned(self, assigned: Any) -> None:
        kept = {(tp.topic, tp.partition) for tp in assigned}
        for key in [k for k in self.handled if k not in kept]:
            del self.handled[key]


class ConsumerLoop(ABC):
    """Subclasses implement :meth:`handle` and may override :meth:`checkpoint`."""

    #: Name used in logs and metric prefixes.
    name = "consumer"

    def __init__(
        self,
        settings: Settings,
        topics: tuple[str, ...],
        group_id: str,
        *,
        commit_every_s: float = 1.0,
        max_poll_records: int = 2000,
        progress_every_s: float = 10.0,
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.group_id = group_id
        self.commit_every_s = commit_every_s
        self.max_poll_records = max_poll_records
        self.progress_every_s = progress_every_s
        self.registry = Registry(prefix=f"citystream_{self.name.replace('-', '_')}")
        self.records = self.registry.counter("records_total", "Records consumed", ("topic",))
        self.dead = self.registry.counter("dead_letters_total", "Records dead-lettered", ("topic",))
        self.commits = self.registry.counter("commits_total", "Offset commits")
        self.commit_errors = self.registry.counter(
            "commit_errors_total", "Offset commits skipped on a retriable error (retried)"
        )
        self.rejoins = self.registry.counter(
            "rejoins_total", "Consumers replaced after a group rebalance that never completed"
        )
        self._failing_since: float | None = None
        self._stop = threading.Event()
        self.consumer: Any = None
        self.producer: Any = None
        # highest offset + 1 handled per (topic, partition)
        self._handled: dict[tuple[str, int], int] = {}
        self._sent: list[Any] = []  # futures of sends since the last commit

    # -- to implement ---------------------------------------------------------------------

    @abstractmethod
    def handle(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> None:
        """Process one record (send results with :meth:`send`)."""

    def checkpoint(self, handled: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        """Make effects durable; return the offsets that are safe to commit (default: all
        handled ones).  Called before every commit, and at shutdown."""
        return handled

    def on_idle(self) -> None:
        """Called after each poll (e.g. to advance watermarks on idle input)."""
        return None

    # -- helpers --------------------------------------------------------------------------

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        self._sent.append(self.producer.send(topic, key=key, value=value))

    def dead_letter(self, topic: str, key: bytes | None, letter: DeadLetter) -> None:
        self.dead.labels(topic).inc()
        self.send(
            TOPICS[topic].dlq if topic in TOPICS else f"{topic}.dlq",
            key,
            DEAD_LETTER_CODEC.encode(letter),
        )

    def stop(self) -> None:
        self._stop.set()

    # -- loop -----------------------------------------------------------------------------

    def connect(self) -> None:
        from kafka import KafkaProducer

        self.consumer = self._new_consumer()
        self.producer = KafkaProducer(
            bootstrap_servers=self.settings.kafka.bootstrap,
            acks="all",
            linger_ms=5,
            batch_size=256 * 1024,
            reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
        )

    def _new_consumer(self) -> Any:
        from kafka import KafkaConsumer

        bootstrap = self.settings.kafka.bootstrap
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.max_poll_records,
            metadata_max_age_ms=30_000,
            reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
            session_timeout_ms=self.settings.kafka.session_timeout_ms,
            heartbeat_interval_ms=self.settings.kafka.session_timeout_ms // 3,
        )
        # Subscribe only once the topics' metadata is known: a group joined before that is
        # assigned nothing for those topics until the next metadata refresh.
        missing = [t for t in self.topics if not consumer.partitions_for_topic(t)]
        if missing:
            log.warning(
                "%s: topics not (yet) on the broker: %s; run `citystream up` to create them",
                self.name,
                ", ".join(missing),
            )
        consumer.subscribe(list(self.topics), listener=_ForgetRevoked(self._handled))
        return consumer

    def _rejoin(self) -> None:
        """A new consumer in the group: it resumes from the last committed offsets (what was
        handled since is handled again and collapses on the natural keys)."""
        self.consumer.close(autocommit=False)
        self._handled.clear()
        self.consumer = self._new_consumer()
        self.rejoins.inc()

    def run(self) -> None:
        if self.consumer is None:
            self.connect()
        log.info("%s: %s (group %s)", self.name, ", ".join(self.topics), self.group_id)
        last_commit = last_progress = time.monotonic()
        seen_at_progress = 0.0
        try:
            while not self._stop.is_set():
                for tp, msgs in self.consumer.poll(timeout_ms=200).items():
                    for msg in msgs:
                        self.records.labels(tp.topic).inc()
                        self.handle(tp.topic, tp.partition, msg.offset, msg.key, msg.value)
                        self._handled[(tp.topic, tp.partition)] = msg.offset + 1
                self.on_idle()
                now = time.monotonic()
                if now - last_commit >= self.commit_every_s:
                    self.commit()
                    last_commit = now
                if now - last_progress >= self.progress_every_s:
                    total = self.records.total
                    log.info(
                        "%s: %.0f records/s, %d records, %d dead letters, %d commits",
                        self.name,
                        (total - seen_at_progress) / (now - last_progress),
                        total,
                        self.dead.total,
                        self.commits.value,
                    )
                    seen_at_progress, last_progress = total, now
            self.commit()
        finally:
            self.close()

    def commit(self) -> None:
        from kafka import TopicPartition
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        safe = self.checkpoint(dict(self._handled))
        self.producer.flush()
        failed = [f for f in self._sent if f.failed()]
        if failed:
            # Never commit past a record whose output did not reach Kafka: stop, and let the
            # restart replay from the last commit.
            raise SinkError(f"{self.name}: {len(failed)} sends failed, e.g. {failed[0].exception}")
        self._sent.clear()
        # After a rebalance, partitions handed to another member are not ours to commit.
        assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        safe = {k: v for k, v in safe.items() if k in assigned}
        if safe:
            try:
                self.consumer.commit(
                    {
                        TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                        for (t, p), o in safe.items()
                    }
                )
            except KafkaError as exc:
                if not (exc.retriable or isinstance(exc, _REBALANCE_ERRORS)):
                    raise
                # The effects are durable already.  Retriable: the offsets go with the next
                # commit.  A rebalance (e.g. a member missed heartbeats on a busy machine):
                # the next poll rejoins and resumes from the last commit; what is consumed
                # twice collapses on the natural keys downstream and in the stages' dedup.
                self.commit_errors.inc()
                now = time.monotonic()
                self._failing_since = self._failing_since or now
                if isinstance(exc, _REBALANCE_ERRORS) and now - self._failing_since > REJOIN_S:
                    # seen here: a join that never completes; a fresh member does complete it
                    log.error("%s: rebalance stuck for %.0f s; rejoining", self.name, REJOIN_S)
                    self._failing_since = None
                    self._rejoin()
                    return
                log.warning("%s: offset commit failed (%s); retrying", self.name, exc)
                return
            self._failing_since = None
            self.commits.inc()

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close(autocommit=False)
        if self.producer is not None:
            self.producer.close()
