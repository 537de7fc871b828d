"""Speeding: ground speed, measured over at least ``min_length_m``, above limit + tolerance.

The limit is the calibration's, per vehicle class where one is set (motorbikes and trucks
often have their own).  Speed over a window is the straight-line distance between its ends
(at least ``min_length_m`` apart) over the elapsed time; a camera's ground positions jitter
by a metre or more at range, so the per-window speeds are smoothed by a running median over
``smooth_windows`` consecutive windows before the highest is taken: a short burst of box
jitter cannot make a speeder, a vehicle that speeds for a second or more (after waiting at a
red light, say) still is one.  The track must reach ``min_track_m``.

Where the calibration has ``speed`` zones (the enforcement section), only the part of the
track inside them is measured: far away a box is a few pixels and clipped boxes at the image
edge do not show where the vehicle is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from schemas.messages import ViolationKind
from streams.traffic.calibration import Calibration
from streams.traffic.geometry import points_in_polygon
from streams.traffic.rules.common import NOT_VEHICLES, RuleViolation, score
from streams.traffic.tracks import MPS_TO_KMH, TrackHistory, window_speeds


@dataclass(frozen=True)
class SpeedingParams:
    tolerance_kmh: float = 5.0
    min_length_m: float = 20.0
    smooth_windows: int = 9
    min_track_m: float = 15.0
    confident_margin_kmh: float = 10.0


def measured_speed_kmh(
    track: TrackHistory,
    min_length_m: float = 20.0,
    smooth_windows: int = 9,
    within: npt.NDArray[np.bool_] | None = None,
) -> tuple[float, int, int]:
    """The track's speed (km/h): the highest running median (over ``smooth_windows``
    consecutive windows, or all of them if fewer) of its windowed speeds, the start index of
    the window at the middle of that run (-1: the track never spans one window), and how
    many windows the median took.  ``within``: only these points are measured (the
    enforcement section)."""
    idx = np.arange(len(track)) if within is None else np.flatnonzero(within)
    v = window_speeds(track.t[idx], track.xy[idx], min_length_m)
    good = ~np.isnan(v)
    if not good.any():
        return 0.0, -1, 0
    vv, ok = v[good], idx[good]
    k = max(1, min(smooth_windows, len(vv)))
    runs = np.lib.stride_tricks.sliding_window_view(vv, k)
    smooth = np.median(runs, axis=1)
    j = int(np.argmax(smooth))
    return float(smooth[j] * MPS_TO_KMH), int(ok[j + k // 2]), k


def speeding(
    tracks: Iterable[TrackHistory],
    calibration: Calibration,
    params: SpeedingParams = SpeedingParams(),
) -> list[RuleViolation]:
    out: list[RuleViolation] = []
    zones = calibration.zones_of("speed")
    for tr in tracks:
        if tr.vehicle_class in NOT_VEHICLES or len(tr) < 2:
            continue
        if tr.path_length_m < params.min_track_m:
            continue
        within = None
        if zones:
            within = np.zeros(len(tr), dtype=bool)
            for zone in zones:
                within |= points_in_polygon(tr.xy, zone.poly)
        speed, i, k = measured_speed_kmh(tr, params.min_length_m, params.smooth_windows, within)
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
                # a median of fewer windows may not survive more: it stands once the
                # vehicle has left the enforcement section (its last 3 points outside)
                settled=k >= params.smooth_windows
                or (within is not None and len(tr) >= 3 and not within[-3:].any()),
            )
        )
    return out
