"""The energy stream stages (thin adapters over the pure logic in this package).

``router``      meter.readings (gateway batches) → validate, place each meter →
                energy.district-readings keyed by district (so per-feeder and per-district
                window state is local to one worker when the app is scaled out);
                unknown meters → meter.readings.dlq with the reason.
``aggregator``  energy.district-readings → dedup, 15-minute event-time windows per feeder and
                district (→ energy.load) and per-meter anomaly detectors (→ energy.alerts).
                Offsets are committed only up to the first record of the oldest open window,
                so a restart rebuilds open windows by replaying them; nothing is lost.

Both are plain consumer loops (:class:`streams.consumer.ConsumerLoop`) rather than faust
agents: window state needs commit-after-close, which faust's auto-acking does not give.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from citystream.settings import Settings
from schemas.codecs import dead_letter
from schemas.messages import MeterBatch, MeterReading
from schemas.topics import TOPICS
from streams.consumer import ConsumerLoop
from streams.decode import decode_record
from streams.energy.anomalies import AnomalyDetector
from streams.energy.reference import Directory, MeterPlace, load_directory
from streams.energy.windows import DuplicateReading, LateReading, WindowAggregator

log = logging.getLogger(__name__)
READINGS = TOPICS["meter.readings"]
BY_DISTRICT = TOPICS["energy.district-readings"]
LOAD = TOPICS["energy.load"]
LATE = TOPICS["energy.late-readings"]
ALERTS = TOPICS["energy.alerts"]


class _EnergyStage(ConsumerLoop):
    """What both stages share: the meter directory (reloaded from the DB every ``reload_s``,
    and at most every ``unknown_reload_s`` when a reading's meter is not in it: a meter
    registered since the last load) and the dead letter for readings of meters it does not
    know."""

    reload_s: float = 60.0
    unknown_reload_s: float = 5.0

    def __init__(self, settings: Settings, topics: tuple[str, ...], group_id: str) -> None:
        super().__init__(settings, topics, group_id)
        self._directory: Directory | None = None
        self._loaded_at = 0.0
        self.unknown = self.registry.counter(
            "unknown_meter_readings_total", "Readings of meters not in the reference tables"
        )

    def directory(self, *, reload: bool = False) -> Directory:
        now = time.monotonic()
        if reload or self._directory is None or now - self._loaded_at >= self.reload_s:
            import psycopg

            try:
                self._directory = self.load_directory()
            except psycopg.Error as exc:
                if self._directory is None:
                    raise
                # The DB is away (restarting): keep routing with the directory we have.
                log.warning(
                    "%s: meter directory reload failed, keeping the last one: %s", self.name, exc
                )
            self._loaded_at = now
        return self._directory

    def load_directory(self) -> Directory:
        import psycopg

        with psycopg.connect(self.settings.db.dsn) as conn:
            return load_directory(conn)

    def places(self, readings: list[MeterReading]) -> list[MeterPlace | None]:
        """Each reading's meter place (None: not in the directory, even reloaded)."""
        directory = self.directory()
        found = [directory.place(r.meter_id) for r in readings]
        if None in found and time.monotonic() - self._loaded_at >= self.unknown_reload_s:
            directory = self.directory(reload=True)  # the meter may be new
            found = [directory.place(r.meter_id) for r in readings]
        return found

    def dead_letter_unknown(
        self,
        topic: str,
        key: bytes | None,
        batch: MeterBatch,
        unknown: list[MeterReading],
        partition: int,
        offset: int,
    ) -> None:
        """One dead letter per batch, holding exactly the unknown meters' readings."""
        self.unknown.inc(len(unknown))
        ids = sorted({r.meter_id for r in unknown})
        error = ValueError(
            f"{len(unknown)} readings of {len(ids)} meters not in the meters reference table: "
            f"{', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''}"
        )
        codec = TOPICS[topic].codec
        self.dead_letter(
            topic,
            key,
            dead_letter(
                source_topic=topic,
                payload=codec.encode(batch.model_copy(update={"readings": unknown})),
                error=error,
                stage=self.name,
                key=key,
                partition=partition,
                offset=offset,
            ),
        )


class Router(_EnergyStage):
    name = "energy-router"

    def __init__(self, settings: Settings, group_id: str = "citystream-energy-router") -> None:
        super().__init__(settings, (READINGS.name,), group_id)
        self.routed = self.registry.counter("readings_routed_total", "Readings routed")

    def handle(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> None:
        batch, dead = decode_record(
            READINGS, value, stage=self.name, key=key, partition=partition, offset=offset
        )
        if dead is not None:
            self.dead_letter(READINGS.name, key, dead)
            return
        assert isinstance(batch, MeterBatch)
        by_district: dict[str, list[MeterReading]] = defaultdict(list)
        unknown: list[MeterReading] = []
        for reading, place in zip(batch.readings, self.places(batch.readings), strict=True):
            if place is None:
                unknown.append(reading)
            else:
                by_district[place.district_id].append(reading)
        if unknown:
            self.dead_letter_unknown(READINGS.name, key, batch, unknown, partition, offset)
        if len(by_district) == 1 and not unknown and value is not None:
            # The usual case, a concentrator's meters all in one district: the validated
            # batch goes on as it came, without re-encoding it.
            (district_id,) = by_district
            self.send(BY_DISTRICT.name, district_id.encode(), value)
            self.routed.inc(len(batch.readings))
            return
        for district_id, readings in by_district.items():
            part = batch.model_copy(update={"readings": readings})
            self.send(BY_DISTRICT.name, district_id.encode(), BY_DISTRICT.codec.encode(part))
            self.routed.inc(len(readings))


@dataclass
class _PartitionWindows:
    """Window state of one input partition.  Districts are keyed to partitions, so each
    partition's scopes are disjoint and each has its own watermark: a partition read ahead
    of another never makes the other's readings late."""

    windows: WindowAggregator
    #: window start (epoch s) -> first offset of this partition with a reading in it
    first_offset: dict[float, int] = field(default_factory=dict)


class Aggregator(_EnergyStage):
    name = "energy-aggregator"

    def __init__(
        self,
        settings: Settings,
        group_id: str = "citystream-energy-aggregator",
        *,
        window_s: int = 900,
        allowed_lateness_s: int = 3600,
        idle_advance_s: float = 10.0,
    ) -> None:
        super().__init__(settings, (BY_DISTRICT.name,), group_id)
        self.detector = AnomalyDetector(has_solar=lambda m: self.directory().has_solar(m))
        self.window_s = window_s
        self.allowed_lateness_s = allowed_lateness_s
        self.idle_advance_s = idle_advance_s
        self._last_input = time.monotonic()
        self._parts: dict[tuple[str, int], _PartitionWindows] = {}
        r = self.registry
        self.loads = r.counter("window_loads_total", "FeederLoad records emitted", ("scope",))
        self.late = r.counter(
            "late_readings_total",
            "Readings past the allowed lateness (kept raw in the DB, not in window totals)",
        )
        self.duplicates = r.counter("duplicate_readings_total", "Readings seen before")
        self.alerts = r.counter("alerts_total", "Anomaly alerts", ("kind",))
        self.open_windows = r.gauge("open_windows", "Open (scope, window) accumulators")

    def _part(self, tp: tuple[str, int]) -> _PartitionWindows:
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = _PartitionWindows(
                WindowAggregator(window_s=self.window_s, allowed_lateness_s=self.allowed_lateness_s)
            )
        return part

    def handle(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> None:
        self._last_input = time.monotonic()
        batch, dead = decode_record(
            BY_DISTRICT, value, stage=self.name, key=key, partition=partition, offset=offset
        )
        if dead is not None:
            self.dead_letter(BY_DISTRICT.name, key, dead)
            return
        assert isinstance(batch, MeterBatch)
        part = self._part((topic, partition))
        unknown: list[MeterReading] = []
        too_late: list[MeterReading] = []
        for reading, place in zip(batch.readings, self.places(batch.readings), strict=True):
            if place is None:  # removed from the directory since routing
                unknown.append(reading)
                continue
            start = reading.ts.timestamp() - reading.interval_s
            part.first_offset.setdefault(start - start % self.window_s, offset)
            too_late.extend(
                self._emit(part, part.windows.add(reading, place.feeder_id, place.district_id))
            )
            for finding in self.detector.observe(reading):
                self.alerts.labels(finding.kind.value).inc()
                alert = finding.to_alert()
                self.send(ALERTS.name, ALERTS.key_of(alert), ALERTS.codec.encode(alert))
        if too_late:
            late = batch.model_copy(update={"readings": too_late})
            self.send(LATE.name, key, LATE.codec.encode(late))
        if unknown:  # removed from the directory since routing
            self.dead_letter_unknown(BY_DISTRICT.name, key, batch, unknown, partition, offset)

    def _emit(self, part: _PartitionWindows, events: list[Any]) -> list[MeterReading]:
        """Publish closed windows; return the too-late readings (recorded by the caller)."""
        too_late = []
        for event in events:
            if isinstance(event, LateReading):
                self.late.inc()
                too_late.append(event.reading)
            elif isinstance(event, DuplicateReading):
                self.duplicates.inc()
            else:
                self.loads.labels(event.scope.value).inc()
                self.send(LOAD.name, LOAD.key_of(event), LOAD.codec.encode(event))
        # Closed windows no longer hold back commits (a window closes when the watermark
        # reaches its end; too-late readings never reopen it).  Windows close only where
        # events come out, so the common case (a reading simply added) skips this.
        watermark = part.windows.watermark_s if events else None
        if watermark is not None:
            limit = watermark - self.window_s
            for w in [w for w in part.first_offset if w <= limit]:
                del part.first_offset[w]
        return too_late

    def on_idle(self) -> None:
        """After ``idle_advance_s`` without input, event time is taken to be wall-clock now:
        in live operation no reading can be older than the watermark allows anyway, and a
        finished replay gets its last windows closed."""
        if time.monotonic() - self._last_input >= self.idle_advance_s:
            now = datetime.now(UTC)
            for part in self._parts.values():
                if part.first_offset:
                    self._emit(part, part.windows.advance(now))
        self.open_windows.set(sum(p.windows.open_windows() for p in self._parts.values()))

    def checkpoint(self, handled: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        """Commit up to the first record of each partition's oldest open window: a restart
        replays from there and rebuilds the open windows."""
        safe = dict(handled)
        for tp, part in self._parts.items():
            if part.first_offset and tp in safe:
                safe[tp] = min(safe[tp], *part.first_offset.values())
        return safe
