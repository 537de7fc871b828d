"""Speeding: ground speed, measured over at least ``min_length_m``, above limit + tolerance.

The limit is the calibration's, per vehicle class where one is set (motorbikes and trucks
often have their own).  Speed is the chord over a window of >= ``min_length_m`` divided by
its duration; the track must be at least ``min_track_m`` long.
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


def measured_speed_kmh(track: TrackHistory, min_length_m: float = 10.0) -> tuple[float, int]:
    """Highest windowed speed of the track (km/h) and the window's start index (-1: none)."""
    v = window_speeds(track.t, track.xy, min_length_m)
    if len(v) == 0 or np.all(np.isnan(v)):
        return 0.0, -1
    i = int(np.nanargmax(v))
    return float(v[i] * MPS_TO_KMH), i


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
                    "measured_over_m": params.min_length_m,
                },
            )
        )
    return out
