"""Wrong-way driving: inside a lane, a stretch driven against its direction.

Within each run of consecutive points inside a lane, the longest stretch over which the
position along the lane's direction falls (from its highest point so far to the lowest
after it) must reach ``min_distance_m``, and most steps of that stretch must go against the
lane.  A track that turns back later still fires: a U-turn, or (seen in the simulator) a
wrong-way rider whose track id the tracker handed to an oncoming vehicle where they met, so
that the whole run's net displacement was 3 m.  Vehicles cutting across a lane (turning,
changing lanes) move sideways, and a stopped vehicle's jitter has no majority of steps
against the lane: neither fires; nor does a stretch with a step faster than
``max_speed_mps``, or across a gap longer than ``max_gap_s`` (a track id jumping back to the
vehicle behind in a queue).
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
    #: no step of the stretch faster than this: a track id handed back to the vehicle behind
    #: in a queue jumps metres against the lane in one frame, a vehicle does not
    max_speed_mps: float = 30.0
    #: no step of the stretch across a gap in the track longer than this: a track lost and
    #: found metres further back may have passed to the vehicle behind
    max_gap_s: float = 1.0


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
                at = np.concatenate([[0.0], np.cumsum(along)])  # at points s, s + 1, ...
                drop = np.maximum.accumulate(at) - at
                end = int(np.argmax(drop))
                dist = float(drop[end])
                if dist < params.min_distance_m:
                    continue
                top = int(np.argmax(at[: end + 1]))  # where the stretch against it starts
                steps = along[top:end]
                moving = steps[np.abs(steps) > 1e-3]
                share = float(np.mean(moving < 0)) if len(moving) else 0.0
                dt = np.diff(tr.t[s + top : s + end + 1])
                fastest = float(np.max(np.abs(steps) / np.maximum(dt, 1e-6)))
                if (
                    share >= params.min_against_share
                    and fastest <= params.max_speed_mps
                    and float(np.max(dt)) <= params.max_gap_s
                ):
                    # the moment the vehicle has gone min_distance against the lane
                    gone = at[top : end + 1] <= at[top] - params.min_distance_m
                    k = s + top + int(np.flatnonzero(gone)[0])
                    hit = (s, e, k, dist)
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
