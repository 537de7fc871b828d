"""Kafka helpers of the traffic worker that are not the main consumer group.

:class:`SignalFeed` reads *every* partition of ``signal.phases`` and ``signal.plans`` (small
topics) with manual assignment and no group: each traffic worker needs the signals of all
intersections its cameras watch, whichever partitions it was given.  Plans are read from the
beginning (the plan in force may be old), phases from ``lookback_s`` ago by broker timestamp,
so a restarted worker that replays tracks from its last commit has the signal states that
applied then.  :meth:`SignalFeed.catch_up` reads to the end before the worker starts.

:class:`Pacer` keeps the two inputs of a camera (its tracks and its frames, co-partitioned)
within a few seconds of event time of each other by holding back records of the one ahead,
so evidence frames are still in the ring when a track is judged.  A side waits only while
the other one has records not yet fetched, so neither can wait forever (a camera without
frames on Kafka simply gets no evidence frames).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from citystream.errors import SchemaError
from schemas.messages import SignalPhaseChange, SignalPlan
from schemas.topics import TOPICS
from streams.traffic.advice import PlanBook
from streams.traffic.signals import SignalTimeline

log = logging.getLogger(__name__)
PHASES = TOPICS["signal.phases"]
PLANS = TOPICS["signal.plans"]


class SignalFeed:
    """Signal timelines per intersection and the plans in force, kept up to date."""

    def __init__(self, bootstrap: str, lookback_s: float) -> None:
        self.bootstrap = bootstrap
        self.lookback_s = lookback_s
        self.consumer: Any = None
        self.bad = 0
        self.timelines: dict[str, SignalTimeline] = {}
        self.plans = PlanBook()
        self._tps: list[Any] = []

    def timeline(self, intersection_id: str) -> SignalTimeline:
        return self.timelines.setdefault(intersection_id, SignalTimeline())

    def apply(self, phases: list[SignalPhaseChange], plans: list[SignalPlan]) -> None:
        for c in phases:
            self.timeline(c.intersection_id).add(c.signal_group, c.changed_at.timestamp(), c.state)
        for p in plans:
            self.plans.add(p)

    def prune(self, latest: dict[str, float]) -> None:
        """Forget phase changes older than ``lookback_s`` before each intersection's
        latest event time (the state then in force is kept)."""
        for iid, t in latest.items():
            if iid in self.timelines:
                self.timelines[iid].prune(t - self.lookback_s)

    def connect(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        c = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            metadata_max_age_ms=30_000,
        )
        tps = {
            t: [TopicPartition(t, p) for p in sorted(c.partitions_for_topic(t) or ())]
            for t in (PHASES.name, PLANS.name)
        }
        for t, lst in tps.items():
            if not lst:
                log.warning("topic %s not on the broker; run `citystream up`", t)
        self._tps = tps[PHASES.name] + tps[PLANS.name]
        c.assign(self._tps)
        if tps[PLANS.name]:
            c.seek_to_beginning(*tps[PLANS.name])
        if tps[PHASES.name]:
            since_ms = int((time.time() - self.lookback_s) * 1000)
            found = c.offsets_for_times(dict.fromkeys(tps[PHASES.name], since_ms))
            for tp in tps[PHASES.name]:
                hit = found.get(tp)
                if hit is None:
                    c.seek_to_end(tp)
                else:
                    c.seek(tp, hit.offset)
        self.consumer = c

    def poll(self, timeout_ms: int = 0) -> tuple[list[SignalPhaseChange], list[SignalPlan]]:
        """New phase changes and plans, applied (undecodable records are counted in
        :attr:`bad` and skipped: the DB sink dead-letters them)."""
        phases: list[SignalPhaseChange] = []
        plans: list[SignalPlan] = []
        if self.consumer is None:
            return phases, plans
        for tp, msgs in self.consumer.poll(timeout_ms=timeout_ms).items():
            topic = TOPICS[tp.topic]
            for m in msgs:
                try:
                    msg = topic.codec.decode(m.value or b"")
                except SchemaError as exc:
                    self.bad += 1
                    log.debug("skipping bad %s record at %d: %s", tp.topic, m.offset, exc)
                    continue
                (phases if tp.topic == PHASES.name else plans).append(msg)
        self.apply(phases, plans)
        return phases, plans

    def catch_up(self, timeout_s: float = 60.0) -> tuple[list[SignalPhaseChange], list[SignalPlan]]:
        """Everything up to the end offsets as of now."""
        phases: list[SignalPhaseChange] = []
        plans: list[SignalPlan] = []
        if self.consumer is None or not self._tps:
            return phases, plans
        end = self.consumer.end_offsets(self._tps)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self.consumer.position(tp) >= end[tp] for tp in self._tps):
                break
            ph, pl = self.poll(timeout_ms=500)
            phases += ph
            plans += pl
        else:
            log.warning("signal feed: not caught up after %.0f s; going on", timeout_s)
        return phases, plans

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None


@dataclass(frozen=True)
class Held:
    """A record waiting for the other input of its camera to catch up."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes
    message: Any
    t: float


class Pacer:
    """Keeps each camera's tracks and frames within ``lead_s`` of event time of each other.

    A record of a camera that is ahead of the camera's other input is held (in arrival order,
    per camera and topic) while that input's partition still has records not yet fetched
    (before the other input has started: while it may still come, or while its earliest
    held record is earlier);
    :meth:`releasable` hands held records back once the other side caught up, has nothing
    more to fetch, or the queue exceeds ``max_held``.  Cameras are independent, so cameras
    sharing a partition cannot block each other.
    """

    def __init__(
        self,
        tracks_topic: str,
        frames_topic: str,
        lead_s: float = 2.0,
        max_held: Mapping[str, int] | None = None,
    ) -> None:
        self.topics = (tracks_topic, frames_topic)
        self.lead_s = lead_s
        self.max_held = dict(max_held or {tracks_topic: 5000, frames_topic: 300})
        self.time: dict[tuple[str, str], float] = {}
        self.fetched: dict[tuple[str, int], int] = {}  # next offset after the last fetched
        self.held: dict[tuple[str, str], deque[Held]] = {}

    def other(self, topic: str) -> str:
        return self.topics[1] if topic == self.topics[0] else self.topics[0]

    def fetch(self, topic: str, partition: int, offset: int) -> None:
        key = (topic, partition)
        self.fetched[key] = max(self.fetched.get(key, 0), offset + 1)

    def done(self, topic: str, camera: str, t: float) -> None:
        """A record of ``camera`` at ``t`` was processed."""
        if t > self.time.get((topic, camera), float("-inf")):
            self.time[(topic, camera)] = t

    def _ahead(
        self, topic: str, camera: str, partition: int, t: float, unread: Callable[[str, int], bool]
    ) -> bool:
        other = self.other(topic)
        ot = self.time.get((other, camera))
        if ot is None:
            # the other side has not started: wait for its earliest held record if it is
            # earlier (neither side runs ahead at a start: tracks far ahead of their frames
            # would be judged with no evidence frames), else while it may still come
            waiting = self.held.get((other, camera))
            if waiting:
                return t > waiting[0].t
            return unread(other, partition)
        return t - ot > self.lead_s and unread(other, partition)

    def should_hold(
        self, topic: str, camera: str, partition: int, t: float, unread: Callable[[str, int], bool]
    ) -> bool:
        return bool(self.held.get((topic, camera))) or self._ahead(
            topic, camera, partition, t, unread
        )

    def hold(self, topic: str, camera: str, record: Held) -> None:
        self.held.setdefault((topic, camera), deque()).append(record)

    def releasable(self, unread: Callable[[str, int], bool]) -> list[tuple[str, str, Held]]:
        out = []
        for (topic, camera), q in self.held.items():
            while q and (
                len(q) > self.max_held[topic]
                or not self._ahead(topic, camera, q[0].partition, q[0].t, unread)
            ):
                out.append((topic, camera, q.popleft()))
        self.held = {k: q for k, q in self.held.items() if q}
        return out

    def first_held(self) -> dict[tuple[str, int], int]:
        """(topic, partition) -> lowest held offset (commit no further)."""
        out: dict[tuple[str, int], int] = {}
        for (topic, _), q in self.held.items():
            for h in q:
                key = (topic, h.partition)
                out[key] = min(out.get(key, h.offset), h.offset)
        return out

    def drop_partition(self, partition: int) -> None:
        """The partition went to another worker: forget what is held from it."""
        for key, q in list(self.held.items()):
            kept = deque(h for h in q if h.partition != partition)
            if kept:
                self.held[key] = kept
            else:
                del self.held[key]
        for topic in self.topics:
            self.fetched.pop((topic, partition), None)
