"""Event-time tumbling windows of meter readings per feeder and per district.

Semantics, in one place:

* A reading belongs to the window that contains the **start of its metering interval**
  (``ts - interval_s``; ``ts`` is the end of the interval), so with 15-minute windows and
  15-minute meters the reading stamped 10:15 falls in the window [10:00, 10:15).
* The **watermark** is the latest interval start seen, minus ``allowed_lateness_s``.  It only
  moves forward, by readings or by :meth:`WindowAggregator.advance` (idle input).
* A window ``[s, e)`` **closes** when the watermark reaches ``e``; it is emitted once, as a
  :class:`~schemas.messages.FeederLoad` per feeder and per district with readings in it
  (``energy_kwh`` = import - export, ``avg_kw`` = energy / window hours, ``meters_reporting``
  = distinct meters, ``late_readings`` = readings accepted after their window's end had already
  been passed by the latest event time, i.e. late but within the allowance).
* A reading whose window has closed is **too late**: it is returned as :class:`LateReading`
  (nothing is dropped silently; the caller stores it and may correct the aggregate).
* **Duplicates** by ``(meter_id, ts)`` are returned as :class:`DuplicateReading` and not
  counted again.  Dedup keys are kept per window until the watermark is ``dedup_horizon_s``
  past the window's end, so memory is bounded by the open windows plus that horizon.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from schemas.messages import FeederLoad, LoadScope, MeterReading

__all__ = [
    "DuplicateReading",
    "LateReading",
    "WindowAggregator",
    "WindowEvent",
    "WindowStats",
]


@dataclass(frozen=True, slots=True)
class LateReading:
    """A reading whose window had already closed when it arrived."""

    reading: MeterReading
    feeder_id: str
    district_id: str
    window_start: datetime
    watermark: datetime


@dataclass(frozen=True, slots=True)
class DuplicateReading:
    """A second copy of ``(meter_id, ts)``; the first one counted."""

    reading: MeterReading


WindowEvent = FeederLoad | LateReading | DuplicateReading


@dataclass
class WindowStats:
    accepted: int = 0
    duplicates: int = 0
    late_accepted: int = 0
    too_late: int = 0
    windows_emitted: int = 0


@dataclass(slots=True)
class _Acc:
    energy: float = 0.0
    meters: set[str] = field(default_factory=set)
    late: int = 0


class WindowAggregator:
    """Tumbling event-time windows with watermark, allowed lateness and bounded dedup."""

    def __init__(
        self,
        *,
        window_s: int = 900,
        allowed_lateness_s: int = 3600,
        dedup_horizon_s: int | None = None,
    ) -> None:
        if window_s <= 0 or allowed_lateness_s < 0:
            raise ValueError("window_s must be > 0 and allowed_lateness_s >= 0")
        self.window_s = window_s
        self.allowed_lateness_s = allowed_lateness_s
        self.dedup_horizon_s = allowed_lateness_s if dedup_horizon_s is None else dedup_horizon_s
        self.stats = WindowStats()
        self._max_event: float | None = None
        self._closed_until: float | None = None  # windows with end <= this are closed
        # window start -> {(scope, id): accumulator}
        self._open: dict[float, dict[tuple[LoadScope, str], _Acc]] = {}
        # window start -> dedup keys (meter_id, ts)
        self._seen: dict[float, set[tuple[str, float]]] = {}

    # --- watermark -------------------------------------------------------------------------
    @property
    def watermark(self) -> datetime | None:
        wm = self._watermark()
        return None if wm is None else datetime.fromtimestamp(wm, UTC)

    @property
    def watermark_s(self) -> float | None:
        """:attr:`watermark` in epoch seconds (no datetime built: read per reading)."""
        return self._watermark()

    def _watermark(self) -> float | None:
        if self._max_event is None:
            return None
        return self._max_event - self.allowed_lateness_s

    def open_windows(self) -> int:
        return sum(len(v) for v in self._open.values())

    def dedup_keys(self) -> int:
        return sum(len(v) for v in self._seen.values())

    # --- input -----------------------------------------------------------------------------
    def add(self, reading: MeterReading, feeder_id: str, district_id: str) -> list[WindowEvent]:
        """Take one reading; return what it made final (closed windows) or what it is
        (a duplicate or a too-late reading)."""
        ts = reading.ts.timestamp()
        start = ts - reading.interval_s
        w = self.window_s
        ws = (start // w) * w
        key = (reading.meter_id, ts)
        seen = self._seen.get(ws)
        if seen is not None and key in seen:
            self.stats.duplicates += 1
            return [DuplicateReading(reading)]
        if self._closed_until is not None and ws + w <= self._closed_until:
            self.stats.too_late += 1
            if seen is not None:
                seen.add(key)
            wm = self._watermark()
            return [
                LateReading(
                    reading,
                    feeder_id,
                    district_id,
                    datetime.fromtimestamp(ws, UTC),
                    datetime.fromtimestamp(wm if wm is not None else ws, UTC),
                )
            ]
        if seen is None:
            seen = self._seen[ws] = set()
        seen.add(key)
        late = self._max_event is not None and self._max_event >= ws + w
        net = reading.import_kwh - reading.export_kwh
        bucket = self._open.get(ws)
        if bucket is None:
            bucket = self._open[ws] = {}
        for k in ((LoadScope.feeder, feeder_id), (LoadScope.district, district_id)):
            acc = bucket.get(k)
            if acc is None:
                acc = bucket[k] = _Acc()
            acc.energy += net
            acc.meters.add(reading.meter_id)
            if late:
                acc.late += 1
        self.stats.accepted += 1
        if late:
            self.stats.late_accepted += 1
        events: list[WindowEvent] = []
        if self._max_event is None or start > self._max_event:
            self._max_event = start
            events.extend(self._close())
        return events

    def advance(self, event_time: datetime) -> list[WindowEvent]:
        """Move the latest event time to ``event_time`` (e.g. processing time minus the expected
        delivery delay when meters are quiet); emits windows the new watermark closes."""
        t = event_time.timestamp()
        if self._max_event is None or t > self._max_event:
            self._max_event = t
        return self._close()

    def flush(self) -> list[WindowEvent]:
        """Close every open window (end of input); later readings for them count as too late."""
        if not self._open:
            return []
        last_end = max(self._open) + self.window_s
        return self._close(force_until=last_end)

    # --- closing ---------------------------------------------------------------------------
    def _close(self, force_until: float | None = None) -> list[WindowEvent]:
        wm = self._watermark() if force_until is None else force_until
        if wm is None:
            return []
        w = self.window_s
        closed_until = (wm // w) * w  # windows ending at or before this are closed
        if self._closed_until is None or closed_until > self._closed_until:
            self._closed_until = closed_until
        out: list[WindowEvent] = []
        for ws in sorted(s for s in self._open if s + w <= self._closed_until):
            bucket = self._open.pop(ws)
            start = datetime.fromtimestamp(ws, UTC)
            for (scope, sid), acc in sorted(bucket.items()):
                out.append(
                    FeederLoad(
                        scope=scope,
                        scope_id=sid,
                        window_start=start,
                        window_s=w,
                        energy_kwh=round(acc.energy, 6),
                        avg_kw=round(acc.energy / (w / 3600.0), 6),
                        meters_reporting=len(acc.meters),
                        late_readings=acc.late,
                    )
                )
                self.stats.windows_emitted += 1
        horizon = self._closed_until - self.dedup_horizon_s
        for ws in [s for s in self._seen if s + w <= horizon]:
            del self._seen[ws]
        return out
