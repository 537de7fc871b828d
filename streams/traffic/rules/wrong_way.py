"""Wrong-way driving: inside a lane, net displacement against its direction.

Within each run of consecutive points inside a lane, the displacement projected on the
lane's direction must be <= -``min_distance_m`` and most steps must go against it; vehicles
cutting across a lane (turning, changing lanes) move sideways and do not fire.
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
class WrongWayParams:
    min_distance_m: float = 8.0
    min_against_share: float = 0.7


def wrong_way(
    tracks: Iterable[TrackHistory],
    calibration: Calibration,
    params: WrongWayParams = WrongWayParams(),
) -> list[RuleViolation]:
    out: list[RuleViolation] = []
    for tr in tracks:
        if tr.vehicle_class in NOT_VEHICLES or len(tr) < 3:
            continue
        for lane in calibration.lanes:
            inside = points_in_polygon(tr.xy, lane.poly)
            hit = None
            for s, e in runs(inside):
                if e - s < 3:
                    continue
                along = np.diff(tr.xy[s:e], axis=0) @ lane.dir
                net = float(along.sum())
                moving = along[np.abs(along) > 1e-3]
                share = float(np.mean(moving < 0)) if len(moving) else 0.0
                if net <= -params.min_distance_m and share >= params.min_against_share:
                    # the moment the vehicle has gone min_distance against the lane
                    k = s + 1 + int(np.flatnonzero(np.cumsum(along) <= -params.min_distance_m)[0])
                    hit = (s, e, k, -net)
                    break
            if hit is None:
                continue
            s, e, k, dist = hit
            pos = tr.xy[k]
            out.append(
                RuleViolation(
                    kind=ViolationKind.wrong_way,
                    camera_id=tr.camera_id,
                    track_id=tr.track_id,
                    vehicle_class=tr.vehicle_class,
                    t=float(tr.t[k]),
                    confidence=score(tr, s, e, dist / (2 * params.min_distance_m) - 0.5),
                    ground_xy=(float(pos[0]), float(pos[1])),
                    details={"lane_id": lane.lane_id, "against_m": round(dist, 2)},
                )
            )
            break  # one per track
    return out
