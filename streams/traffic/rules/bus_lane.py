"""Bus-lane intrusion: a vehicle of a class the lane does not allow, inside it for at least
``min_distance_m`` of travel or ``min_time_s`` of time in one continuous stay.

A car cutting across the bus lane to turn (a few metres, a second or two) does not fire;
one driving along it or queueing in it does.
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
class BusLaneParams:
    min_distance_m: float = 15.0
    min_time_s: float = 10.0


def bus_lane(
    tracks: Iterable[TrackHistory],
    calibration: Calibration,
    params: BusLaneParams = BusLaneParams(),
) -> list[RuleViolation]:
    out: list[RuleViolation] = []
    zones = calibration.zones_of("bus_lane")
    for tr in tracks:
        if tr.vehicle_class in NOT_VEHICLES or len(tr) < 2:
            continue
        for zone in zones:
            if zone.exempt(tr.vehicle_class):
                continue
            inside = points_in_polygon(tr.xy, zone.poly)
            found = None
            for s, e in runs(inside):
                if e - s < 2:
                    continue
                steps = np.linalg.norm(np.diff(tr.xy[s:e], axis=0), axis=1)
                dist = np.concatenate([[0.0], np.cumsum(steps)])
                elapsed = tr.t[s:e] - tr.t[s]
                over = np.flatnonzero(
                    (dist >= params.min_distance_m) | (elapsed >= params.min_time_s)
                )
                if len(over):
                    found = (s, e, s + int(over[0]), float(dist[-1]), float(elapsed[-1]))
                    break
            if found is None:
                continue
            s, e, k, dist_m, time_s = found
            margin = max(dist_m / params.min_distance_m, time_s / params.min_time_s) - 1
            pos = tr.xy[k]
            out.append(
                RuleViolation(
                    kind=ViolationKind.bus_lane,
                    camera_id=tr.camera_id,
                    track_id=tr.track_id,
                    vehicle_class=tr.vehicle_class,
                    t=float(tr.t[k]),
                    confidence=score(tr, s, e, margin),
                    ground_xy=(float(pos[0]), float(pos[1])),
                    details={
                        "zone_id": zone.zone_id,
                        "distance_m": round(dist_m, 2),
                        "time_s": round(time_s, 2),
                    },
                )
            )
            break
    return out
