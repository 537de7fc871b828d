"""Illegal stopping: staying put inside a no-stopping zone for longer than its limit.

"Put" means within ``stop_radius_m`` of where the stop began (position noise and creeping
do not reset the clock).  The violation time is the moment the dwell exceeded the limit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from schemas.messages import ViolationKind
from streams.traffic.calibration import Calibration
from streams.traffic.geometry import points_in_polygon, runs
from streams.traffic.rules.common import NOT_VEHICLES, RuleViolation, score
from streams.traffic.tracks import TrackHistory


@dataclass(frozen=True)
class IllegalStopParams:
    stop_radius_m: float = 2.0


def longest_dwell(t: np.ndarray, xy: np.ndarray, radius: float) -> tuple[float, int, int]:
    """Longest stay within ``radius`` of its first point: (seconds, start, end index)."""
    best = (0.0, 0, 0)
    i, n = 0, len(t)
    while i < n:
        d = np.linalg.norm(xy[i:] - xy[i], axis=1)
        out = np.flatnonzero(d > radius)
        j = i + (int(out[0]) if len(out) else n - i)  # first index outside
        dwell = float(t[j - 1] - t[i])
        if dwell > best[0]:
            best = (dwell, i, j - 1)
        i = j if j > i + 1 else i + 1
    return best


def illegal_stop(
    tracks: Iterable[TrackHistory],
    calibration: Calibration,
    params: IllegalStopParams = IllegalStopParams(),
) -> list[RuleViolation]:
    out: list[RuleViolation] = []
    zones = calibration.zones_of("no_stopping")
    for tr in tracks:
        if tr.vehicle_class in NOT_VEHICLES or len(tr) < 2:
            continue
        for zone in zones:
            if zone.exempt(tr.vehicle_class):
                continue
            inside = points_in_polygon(tr.xy, zone.poly)
            best = (0.0, 0, 0)
            for s, e in runs(inside):
                dwell, i, j = longest_dwell(tr.t[s:e], tr.xy[s:e], params.stop_radius_m)
                if dwell > best[0]:
                    best = (dwell, s + i, s + j)
            dwell, i, j = best
            if dwell <= zone.max_dwell_s:
                continue
            pos = tr.xy[i]
            out.append(
                RuleViolation(
                    kind=ViolationKind.illegal_stop,
                    camera_id=tr.camera_id,
                    track_id=tr.track_id,
                    vehicle_class=tr.vehicle_class,
                    t=float(tr.t[i] + zone.max_dwell_s),
                    confidence=score(tr, i, j + 1, dwell / zone.max_dwell_s - 1),
                    ground_xy=(float(pos[0]), float(pos[1])),
                    details={
                        "zone_id": zone.zone_id,
                        "dwell_s": round(dwell, 2),
                        "max_dwell_s": zone.max_dwell_s,
                        "stop_started_t": round(float(tr.t[i]), 3),
                    },
                )
            )
            break
    return out
