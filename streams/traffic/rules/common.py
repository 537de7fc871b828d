"""What every rule returns, and the helpers they share."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from schemas.messages import VehicleClass, Violation, ViolationKind
from streams.traffic.calibration import Calibration
from streams.traffic.signals import SignalTimeline
from streams.traffic.tracks import TrackHistory, to_datetime

#: Classes no vehicle rule applies to.
NOT_VEHICLES = frozenset({VehicleClass.person})

Details = dict[str, float | int | str]

#: Typical length of each class (m): where the camera sees a vehicle from behind, its front
#: is this far ahead of its ground point (the bottom of its box)
LENGTH_M: dict[VehicleClass, float] = {
    VehicleClass.motorbike: 2.0,
    VehicleClass.bicycle: 1.8,
    VehicleClass.car: 4.5,
    VehicleClass.truck: 8.0,
    VehicleClass.bus: 11.0,
}


@dataclass(frozen=True)
class RuleViolation:
    """A rule's finding, before evidence is attached (see :meth:`to_message`).

    ``settled``: more of the track cannot undo it (what the rule found on this part of a
    track stays true of the whole track), so it may be reported while the track is open.
    """

    kind: ViolationKind
    camera_id: str
    track_id: int
    vehicle_class: VehicleClass
    t: float
    confidence: float
    ground_xy: tuple[float, float]
    details: Details = field(default_factory=dict)
    settled: bool = True

    @property
    def occurred_at(self) -> datetime:
        return to_datetime(self.t)

    @property
    def violation_id(self) -> str:
        """Deterministic: the same finding always gets the same id (idempotent sinks)."""
        key = f"{self.kind}|{self.camera_id}|{self.track_id}|{round(self.t * 1000)}"
        return f"{self.kind}-{hashlib.sha256(key.encode()).hexdigest()[:20]}"

    def to_message(
        self, intersection_id: str, evidence_uri: str, evidence_sha256: str
    ) -> Violation:
        return Violation(
            violation_id=self.violation_id,
            kind=self.kind,
            camera_id=self.camera_id,
            intersection_id=intersection_id,
            track_id=self.track_id,
            vehicle_class=self.vehicle_class,
            occurred_at=self.occurred_at,
            confidence=self.confidence,
            evidence_uri=evidence_uri,
            evidence_sha256=evidence_sha256,
            details=dict(self.details),
        )


def score(track: TrackHistory, lo: int, hi: int, margin: float) -> float:
    """Confidence: mean detection confidence over ``[lo, hi)`` times a margin factor in
    [0.5, 1] (``margin`` 0 = at the threshold, 1 = well clear of it)."""
    seg = track.confidence[max(lo, 0) : max(hi, lo + 1)]
    det = float(np.mean(seg)) if len(seg) else float(np.mean(track.confidence))
    return round(float(np.clip(det * (0.5 + 0.5 * np.clip(margin, 0.0, 1.0)), 0.0, 1.0)), 4)


def evaluate_all(
    tracks: Iterable[TrackHistory], calibration: Calibration, signals: SignalTimeline
) -> list[RuleViolation]:
    """Every rule with default parameters, sorted by time then track."""
    from streams.traffic.rules.bus_lane import bus_lane
    from streams.traffic.rules.illegal_stop import illegal_stop
    from streams.traffic.rules.red_light import red_light
    from streams.traffic.rules.speeding import speeding
    from streams.traffic.rules.wrong_way import wrong_way

    ts = list(tracks)
    out = (
        red_light(ts, calibration, signals)
        + speeding(ts, calibration)
        + wrong_way(ts, calibration)
        + illegal_stop(ts, calibration)
        + bus_lane(ts, calibration)
    )
    return sorted(out, key=lambda v: (v.t, v.track_id, v.kind))
