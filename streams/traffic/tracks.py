"""Track histories on the ground plane: what the rules and the counters read.

A :class:`TrackHistory` is one vehicle's path: times (UTC epoch seconds), ground positions
(metres), detection confidences and image boxes.  :class:`TrackStore` builds them from
``TrackBatch`` messages of one camera and forgets tracks not seen for a while.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from schemas.messages import TrackBatch, VehicleClass
from streams.traffic.geometry import FloatArray, as_points

MPS_TO_KMH = 3.6


def to_datetime(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=UTC)


@dataclass(frozen=True, eq=False)
class TrackHistory:
    """One tracked vehicle: ``t`` (N,) epoch seconds ascending, ``xy`` (N, 2) metres."""

    camera_id: str
    track_id: int
    vehicle_class: VehicleClass
    t: FloatArray
    xy: FloatArray
    confidence: FloatArray
    bbox: FloatArray = field(default_factory=lambda: np.zeros((0, 4)))
    #: since when the tracker's class vote has been ``vehicle_class`` (-inf: always)
    class_since: float = -math.inf

    def __post_init__(self) -> None:
        t = np.asarray(self.t, dtype=np.float64).reshape(-1)
        xy = as_points(self.xy)
        conf = np.asarray(self.confidence, dtype=np.float64).reshape(-1)
        if not len(t) == len(xy) == len(conf):
            raise ValueError("TrackHistory arrays differ in length")
        if len(t) > 1 and np.any(np.diff(t) <= 0):
            raise ValueError("TrackHistory times must be strictly increasing")
        object.__setattr__(self, "t", t)
        object.__setattr__(self, "xy", xy)
        object.__setattr__(self, "confidence", conf)
        object.__setattr__(self, "bbox", np.asarray(self.bbox, dtype=np.float64).reshape(-1, 4))

    @classmethod
    def from_points(
        cls,
        points: Sequence[tuple[float, float, float]],
        vehicle_class: VehicleClass = VehicleClass.car,
        *,
        track_id: int = 1,
        camera_id: str = "cam-1",
        confidence: float = 0.9,
    ) -> TrackHistory:
        """From ``(t, x, y)`` tuples; handy in tests and for simulator ground truth."""
        arr = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return cls(
            camera_id, track_id, vehicle_class, arr[:, 0], arr[:, 1:], np.full(len(arr), confidence)
        )

    def __len__(self) -> int:
        return len(self.t)

    @property
    def duration_s(self) -> float:
        return float(self.t[-1] - self.t[0]) if len(self.t) else 0.0

    @property
    def path_length_m(self) -> float:
        return float(np.linalg.norm(np.diff(self.xy, axis=0), axis=1).sum())

    def at(self, t: float) -> FloatArray:
        """Interpolated ground position at time ``t`` (clamped to the track's span)."""
        out: FloatArray = np.array(
            [np.interp(t, self.t, self.xy[:, 0]), np.interp(t, self.t, self.xy[:, 1])]
        )
        return out


def window_speeds(t: FloatArray, xy: FloatArray, min_length_m: float) -> FloatArray:
    """Speeds (m/s) over windows that start at each point and end at the first point at least
    ``min_length_m`` away in a straight line.

    The chord between the window's ends over the elapsed time: the position noise of the two
    ends is all that enters, a fraction of the window's length (the path length along a
    noisy track grows with the jitter, so it must not decide where a window ends).  Points
    whose window never reaches the length give NaN.
    """
    n = len(t)
    out = np.full(n, np.nan)
    if n < 2:
        return out
    step = np.linalg.norm(np.diff(xy, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(step)])
    # the chord is never longer than the path: search from where the path reaches the length
    start = np.searchsorted(arc, arc + min_length_m, side="left")
    for i in np.flatnonzero(start < n):  # one vectorised scan per start point, no inner loop
        far = np.hypot(*(xy[start[i] :] - xy[i]).T) >= min_length_m
        k = int(np.argmax(far))
        if far[k]:
            j = int(start[i]) + k
            dt = float(t[j] - t[i])
            if dt > 0:
                out[i] = float(np.hypot(*(xy[j] - xy[i]))) / dt
    return out


def instant_speed_kmh(track: TrackHistory, window_s: float = 1.0) -> float | None:
    """Speed at the last point, over the last ``window_s`` seconds (None if too short)."""
    if len(track) < 2:
        return None
    k = int(np.searchsorted(track.t, track.t[-1] - window_s, side="right")) - 1
    k = max(0, min(k, len(track) - 2))
    dt = track.t[-1] - track.t[k]
    if dt <= 0:
        return None
    return float(np.linalg.norm(track.xy[-1] - track.xy[k]) / dt * MPS_TO_KMH)


@dataclass
class _Acc:
    vehicle_class: VehicleClass
    class_since: float
    t: list[float] = field(default_factory=list)
    xy: list[tuple[float, float]] = field(default_factory=list)
    conf: list[float] = field(default_factory=list)
    bbox: list[tuple[float, float, float, float]] = field(default_factory=list)


class TrackStore:
    """Track histories of one camera, built from ``TrackBatch`` messages in time order.

    Observations without a ground position are skipped.  :meth:`expire` returns (and
    forgets) the tracks last seen more than ``idle_s`` before the given time; :meth:`cut`
    drops the older part of a track that is still open (see ``track_max_age_s``).
    """

    def __init__(self, camera_id: str, max_points: int = 3000) -> None:
        self.camera_id = camera_id
        self.max_points = max_points
        self._acc: dict[int, _Acc] = {}

    def add(self, batch: TrackBatch) -> None:
        t = batch.captured_at.timestamp()
        for obs in batch.tracks:
            if obs.ground_xy is None:
                continue
            acc = self._acc.get(obs.track_id)
            if acc is None:
                acc = self._acc[obs.track_id] = _Acc(obs.vehicle_class, t)
            if acc.t and t <= acc.t[-1]:
                continue  # duplicate or out-of-order frame
            if obs.vehicle_class != acc.vehicle_class:
                acc.vehicle_class, acc.class_since = obs.vehicle_class, t  # the latest vote
            acc.t.append(t)
            acc.xy.append(obs.ground_xy)
            acc.conf.append(obs.confidence)
            b = obs.bbox
            acc.bbox.append((b.x1, b.y1, b.x2, b.y2))
            if len(acc.t) > self.max_points:
                for lst in (acc.t, acc.xy, acc.conf, acc.bbox):
                    del lst[0]

    def _history(self, track_id: int, acc: _Acc) -> TrackHistory:
        return TrackHistory(
            self.camera_id,
            track_id,
            acc.vehicle_class,
            np.array(acc.t),
            np.array(acc.xy),
            np.array(acc.conf),
            np.array(acc.bbox),
            acc.class_since,
        )

    def histories(self) -> list[TrackHistory]:
        return [self._history(k, a) for k, a in sorted(self._acc.items())]

    def lengths(self) -> dict[int, int]:
        """Points held of each track."""
        return {k: len(a.t) for k, a in self._acc.items() if a.t}

    def history(self, track_id: int) -> TrackHistory | None:
        acc = self._acc.get(track_id)
        return self._history(track_id, acc) if acc is not None and acc.t else None

    def expire(self, now: float, idle_s: float = 5.0) -> list[TrackHistory]:
        gone = [k for k, a in self._acc.items() if a.t and now - a.t[-1] > idle_s]
        out = [self._history(k, self._acc[k]) for k in sorted(gone)]
        for k in gone:
            del self._acc[k]
        return out

    def cut(self, track_id: int, keep_from: float) -> tuple[float, float] | None:
        """Forget the track's points before ``keep_from`` (its last point is always kept);
        returns (time of the last point dropped, time of the first point kept), or None
        when nothing was dropped."""
        acc = self._acc.get(track_id)
        if acc is None or not acc.t:
            return None
        k = min(bisect_left(acc.t, keep_from), len(acc.t) - 1)
        if k == 0:
            return None
        dropped = acc.t[k - 1]
        for lst in (acc.t, acc.xy, acc.conf, acc.bbox):
            del lst[:k]
        return dropped, acc.t[0]


def histories_from_batches(batches: Iterable[TrackBatch]) -> list[TrackHistory]:
    """All track histories of a sequence of batches (one or many cameras)."""
    stores: dict[str, TrackStore] = {}
    for b in sorted(batches, key=lambda b: (b.camera_id, b.captured_at)):
        stores.setdefault(b.camera_id, TrackStore(b.camera_id)).add(b)
    return [h for _, s in sorted(stores.items()) for h in s.histories()]
