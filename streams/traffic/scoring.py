"""Scoring the traffic pipeline against simulator ground truth (pure functions).

* violations: per kind, each detected violation is matched to at most one true one of the
  same kind (greedy, closest in time first): the same vehicle (its detected track associated
  with the true vehicle, below), at any time — a rule and the simulator may date the same
  offence differently (first metre against the traffic vs. the metre that proved it) — or,
  when the track is not associated, within ``tolerance_s`` -> precision and recall;
* counts: vehicles per lane over the run, measured vs true -> relative error per lane;
* saturation flow: per lane, PCU crossing the stop line while a queue stood on green per
  hour of such green, the camera's (``discharged`` / ``discharge_s`` of the lane counts)
  vs the simulator's stop-line detector -> relative error per lane;
* speed: detected tracks are associated with true vehicles by box overlap frame by frame
  (a detected track belongs to the true vehicle it overlaps most often), then the absolute
  speed error is averaged over every associated observation that carries a speed; split
  too into observations on that vehicle (the box overlaps it in that frame: a measuring
  error) and off it (the track had moved to another vehicle: a tracking error).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from streams.traffic.webster import SaturationFlow
from streams.vision.tracking import box_iou


@dataclass(frozen=True)
class Event:
    """A violation, true or detected: its kind, event time (epoch seconds) and the track
    (detected) or vehicle (true) it concerns."""

    kind: str
    t: float
    ref: str = ""
    track_id: int | None = None


@dataclass(frozen=True)
class KindScore:
    kind: str
    true: int
    detected: int
    matched: int

    @property
    def precision(self) -> float | None:
        return self.matched / self.detected if self.detected else None

    @property
    def recall(self) -> float | None:
        return self.matched / self.true if self.true else None


def match_violations(
    truth: Iterable[Event],
    detected: Iterable[Event],
    tolerance_s: float = 3.0,
    vehicle_of: Mapping[int, int] | None = None,
) -> dict[str, KindScore]:
    """Precision/recall per kind (every kind seen in either list); ``vehicle_of`` maps a
    detected track id to the true vehicle's (see :func:`associate_tracks`)."""
    vehicle_of = vehicle_of or {}

    def same(a: Event, b: Event) -> bool:
        v = vehicle_of.get(b.track_id) if b.track_id is not None else None
        if v is not None and a.track_id is not None:
            return v == a.track_id
        return abs(a.t - b.t) <= tolerance_s

    by_kind_t: dict[str, list[Event]] = defaultdict(list)
    by_kind_d: dict[str, list[Event]] = defaultdict(list)
    for e in truth:
        by_kind_t[e.kind].append(e)
    for e in detected:
        by_kind_d[e.kind].append(e)
    out = {}
    for kind in sorted(set(by_kind_t) | set(by_kind_d)):
        ts, ds = by_kind_t[kind], by_kind_d[kind]
        pairs = sorted(
            (abs(a.t - b.t), i, j) for i, a in enumerate(ts) for j, b in enumerate(ds) if same(a, b)
        )
        used_t: set[int] = set()
        used_d: set[int] = set()
        for _, i, j in pairs:
            if i not in used_t and j not in used_d:
                used_t.add(i)
                used_d.add(j)
        out[kind] = KindScore(kind, len(ts), len(ds), len(used_t))
    return out


@dataclass(frozen=True)
class LaneError:
    lane_id: str
    true: int
    measured: int

    @property
    def error(self) -> float | None:
        """Relative error |measured - true| / true (None when no vehicle was true)."""
        return abs(self.measured - self.true) / self.true if self.true else None


def count_errors(truth: Mapping[str, int], measured: Mapping[str, int]) -> list[LaneError]:
    return [
        LaneError(lane, int(truth.get(lane, 0)), int(measured.get(lane, 0)))
        for lane in sorted(set(truth) | set(measured))
    ]


@dataclass(frozen=True)
class Discharge:
    """A lane's queue discharge over a run: PCU and seconds of green with a queue."""

    pcu: float
    seconds: float


@dataclass(frozen=True)
class SaturationError:
    lane_id: str
    true: Discharge
    measured: Discharge
    #: the rates, where the advice would take one (:meth:`SaturationFlow.measured`)
    true_pcu_h: float | None
    measured_pcu_h: float | None

    @property
    def error(self) -> float | None:
        """Relative error of the measured rate (None unless both sides have a rate)."""
        t, m = self.true_pcu_h, self.measured_pcu_h
        return abs(m - t) / t if t and m is not None else None


def saturation_errors(
    truth: Mapping[str, Discharge],
    measured: Mapping[str, Discharge],
    rule: SaturationFlow | None = None,
) -> list[SaturationError]:
    rule = rule or SaturationFlow()
    none = Discharge(0.0, 0.0)
    out = []
    for lane in sorted(set(truth) | set(measured)):
        t, m = truth.get(lane, none), measured.get(lane, none)
        rates = rule.measured(t.pcu, t.seconds), rule.measured(m.pcu, m.seconds)
        out.append(SaturationError(lane, t, m, *rates))
    return out


@dataclass(frozen=True)
class Box:
    """One object in one frame: its id, pixel box and (optional) speed."""

    track_id: int
    xyxy: tuple[float, float, float, float]
    speed_kmh: float | None = None


def associate_tracks(
    frames: Iterable[tuple[Sequence[Box], Sequence[Box]]], min_iou: float = 0.3
) -> dict[int, int]:
    """Detected track id -> true track id, from ``(truth_boxes, detected_boxes)`` per frame:
    per frame the best-overlapping true box of each detected box (IoU >= ``min_iou``) gets a
    vote; a detected track belongs to its most voted true vehicle."""
    votes: dict[int, Counter[int]] = defaultdict(Counter)
    for truth, det in frames:
        if not truth or not det:
            continue
        iou = box_iou(
            np.array([d.xyxy for d in det], dtype=np.float64),
            np.array([t.xyxy for t in truth], dtype=np.float64),
        )
        best = iou.argmax(axis=1)
        for k, d in enumerate(det):
            if iou[k, best[k]] >= min_iou:
                votes[d.track_id][truth[best[k]].track_id] += 1
    return {d: c.most_common(1)[0][0] for d, c in votes.items()}


def speed_errors(
    frames: Iterable[tuple[Sequence[Box], Sequence[Box]]],
    mapping: Mapping[int, int],
    min_true_kmh: float = 5.0,
    on_vehicle: bool | None = None,
    min_iou: float = 0.3,
) -> list[float]:
    """|detected - true| km/h for every detected observation with a speed whose track maps to
    a true vehicle visible in the same frame moving at least ``min_true_kmh`` (the speed of a
    vehicle at rest is not what a speed check measures).

    ``on_vehicle`` True keeps only observations whose box overlaps that vehicle's box in
    the frame (IoU >= ``min_iou``): the error of measuring the vehicle under the box; False
    only the others, where the track had moved to another vehicle or to nothing (a tracking
    error, not a measuring one); None keeps both."""
    errors = []
    for truth, det in frames:
        true_box = {t.track_id: t for t in truth}
        for d in det:
            tid = mapping.get(d.track_id)
            t = true_box.get(tid) if tid is not None else None
            if d.speed_kmh is None or t is None or t.speed_kmh is None:
                continue
            if t.speed_kmh < min_true_kmh:
                continue
            if on_vehicle is not None:
                iou = box_iou(np.array([d.xyxy], dtype=np.float64), np.array([t.xyxy]))[0, 0]
                if (iou >= min_iou) != on_vehicle:
                    continue
            errors.append(abs(d.speed_kmh - t.speed_kmh))
    return errors
