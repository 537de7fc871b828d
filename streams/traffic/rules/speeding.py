"""Speeding: ground speed, measured over at least ``min_length_m``, above limit + tolerance.

The limit is the calibration's, per vehicle class where one is set (motorbikes and trucks
often have their own).  Speed is the straight-line distance over a window of at least
``min_length_m`` *and* half the track's own extent, divided by its duration: a camera's
ground positions jitter by a metre or more at range, so a short window would turn box
jitter into speed; half the track is long enough to average it out and short enough to
catch a vehicle that slows down at the end.  The track must reach ``min_track_m``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from schemas.messages import ViolationKind
from streams.traffic.calibration import Calibration
from streams.traffic.rules.common import NOT_VEHICLES, RuleViolation, score
from streams.traffic.tracks import MPS_TO_KMH, TrackHistory, window_speeds


@dataclass(frozen=True)
class SpeedingParams:
    tolerance_kmh: float = 5.0
    min_length_m: float = 10.0
    min_track_m: float = 15.0
    confident_margin_kmh: float = 10.0


def window_length_m(track: TrackHistory, min_length_m: float) -> float:
    """The measuring window: ``min_length_m``, or half the track's extent if longer."""
    extent = float(np.linalg.norm(track.xy.max(axis=0) - track.xy.min(axis=0)))
    return max(min_length_m, 0.5 * extent)


def measured_speed_kmh(track: TrackHistory, min_length_m: float = 10.0) -> tuple[float, int]:
    """The track's speed (km/h): the median over its measuring windows (the maximum of noisy
    estimates is biased upwards), and the start index of the window that measured it
    (-1: the track never spans one window)."""
    v = window_speeds(track.t, track.xy, window_length_m(track, min_length_m))
    ok = np.flatnonzero(~np.isnan(v))
    if len(ok) == 0:
        return 0.0, -1
    med = float(np.median(v[ok]))
    i = int(ok[np.argmin(np.abs(v[ok] - med))])
    return med * MPS_TO_KMH, i


def speeding(
    tracks: Iterable[TrackHistory],
    calibration: Calibration,
    params: SpeedingParams = SpeedingParams(),
) -> list[RuleViolation]:
    out: list[RuleViolation] = []
    for tr in tracks:
        if tr.vehicle_class in NOT_VEHICLES or len(tr) < 2:
            continue
        if tr.path_length_m < params.min_track_m:
            continue
        speed, i = measured_speed_kmh(tr, params.min_length_m)
        limit = calibration.speed_limit_for(tr.vehicle_class)
        threshold = limit + params.tolerance_kmh
        if i < 0 or speed <= threshold:
            continue
        pos = tr.xy[i]
        out.append(
            RuleViolation(
                kind=ViolationKind.speeding,
                camera_id=tr.camera_id,
                track_id=tr.track_id,
                vehicle_class=tr.vehicle_class,
                t=float(tr.t[i]),
                confidence=score(tr, 0, len(tr), (speed - threshold) / params.confident_margin_kmh),
                ground_xy=(float(pos[0]), float(pos[1])),
                details={
                    "speed_kmh": round(speed, 2),
                    "limit_kmh": limit,
                    "tolerance_kmh": params.tolerance_kmh,
                    "measured_over_m": round(window_length_m(tr, params.min_length_m), 1),
                },
            )
        )
    return out
