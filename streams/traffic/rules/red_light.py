"""Red-light running: the stop line crossed while the lane's signal group shows red.

Amber is the grace: crossing on amber is legal, and so is crossing within ``grace_s`` of red
onset (clock skew between controller and camera).  A vehicle must also be ``commit_m`` past
the line while still red: one that overshoots the line a little, waits, and goes on green
is not a violation.  A crossing faster than ``max_crossing_kmh`` between two frames, or much
faster than the vehicle went just before, or across a gap in the track, is a track glitch
(its id hopped from a vehicle before the line to one past it), not a vehicle;
and the vehicle must be driving along the lane (``max_heading_deg``): the ground point of a
car crossing the junction in front of the line wobbles by a metre or two, over the line and
back, as its box changes.

The offence is the vehicle's *front* crossing on red (and the whole of it going on past the
line while red).  A track's ground point is the bottom of its box, the side nearest the
camera: where the camera sees a lane's traffic from behind, that is the rear, and the front
is about the class's length (:data:`~.common.LENGTH_M`) ahead along the lane.  Judged by its
rear, a slow vehicle that entered on the last of amber (5 km/h: a car's rear crosses 3 s
after its front) would be taken for one that entered on red.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from schemas.messages import SignalState, ViolationKind
from streams.traffic.calibration import Calibration, Lane
from streams.traffic.geometry import segment_crossings
from streams.traffic.rules.common import LENGTH_M, NOT_VEHICLES, RuleViolation, score
from streams.traffic.signals import SignalTimeline
from streams.traffic.tracks import MPS_TO_KMH, TrackHistory


@dataclass(frozen=True)
class RedLightParams:
    grace_s: float = 0.3
    commit_m: float = 2.0
    confident_after_s: float = 2.0  # time into red at which the margin factor saturates
    #: a crossing step faster than this is a track glitch (an id hopping between vehicles)
    max_crossing_kmh: float = 150.0
    #: the vehicle drives along the lane: from ``heading_s`` before the crossing to the
    #: commit point its heading is within ``max_heading_deg`` of the lane's direction
    max_heading_deg: float = 45.0
    heading_s: float = 0.5
    #: a track that, between crossing and commit, has a gap longer than ``max_gap_s`` or a
    #: step ``max_jump_m`` longer than its speed before allows (a queued vehicle's id
    #: hopping to one in the junction) is no evidence of a crossing
    max_gap_s: float = 1.0
    max_jump_m: float = 2.0
    #: a lane's traffic is seen from behind where its direction is within 60 degrees of the
    #: direction in which the view recedes (at the stop line)
    rear_view_cos: float = 0.5


def red_light(
    tracks: Iterable[TrackHistory],
    calibration: Calibration,
    signals: SignalTimeline,
    params: RedLightParams = RedLightParams(),
) -> list[RuleViolation]:
    out: list[RuleViolation] = []
    lanes = [lane for lane in calibration.approach_lanes if lane.signal_group]
    rear_view = {lane.lane_id: _rear_view(lane, calibration, params) for lane in lanes}
    for tr in tracks:
        if tr.vehicle_class in NOT_VEHICLES or len(tr) < 2:
            continue
        for lane in lanes:
            assert lane.stop_line is not None and lane.signal_group is not None
            a, b = np.asarray(lane.stop_line[0]), np.asarray(lane.stop_line[1])
            lead = LENGTH_M.get(tr.vehicle_class, 0.0) if rear_view[lane.lane_id] else 0.0
            front = tr.xy + lead * lane.dir
            for i, f in segment_crossings(front, a, b):
                step = front[i + 1] - front[i]
                if float(step @ lane.dir) <= 0:
                    continue  # crossing backwards (wrong way): another rule's business
                t_cross = float(tr.t[i] + f * (tr.t[i + 1] - tr.t[i]))
                state = signals.since(lane.signal_group, t_cross)
                if state is None or state[0] is not SignalState.red:
                    continue
                into_red = t_cross - state[1]
                if into_red < params.grace_s:
                    continue
                past = (tr.xy[i + 1 :] - a) @ lane.dir  # the ground point: all of it past
                beyond = np.flatnonzero(past >= params.commit_m)
                if len(beyond) == 0:
                    continue  # not seen far enough past the line
                k = i + 1 + int(beyond[0])
                j = min(i, int(np.searchsorted(tr.t, t_cross - params.heading_s)))
                way = tr.xy[k] - tr.xy[j]
                if float(way @ lane.dir) < math.cos(math.radians(params.max_heading_deg)) * float(
                    np.linalg.norm(way)
                ):
                    continue  # cross traffic whose ground point wobbles over the line
                if signals.state_at(lane.signal_group, float(tr.t[k])) is not SignalState.red:
                    continue  # overshot on red, went on green
                dt = float(tr.t[i + 1] - tr.t[i])
                speed = float(np.linalg.norm(step) / dt * MPS_TO_KMH) if dt > 0 else math.inf
                if speed > params.max_crossing_kmh or _glitch(tr, i, k, params):
                    continue
                pos = front[i] + f * step
                out.append(
                    RuleViolation(
                        kind=ViolationKind.red_light,
                        camera_id=tr.camera_id,
                        track_id=tr.track_id,
                        vehicle_class=tr.vehicle_class,
                        t=t_cross,
                        confidence=score(tr, i - 5, k + 1, into_red / params.confident_after_s),
                        ground_xy=(float(pos[0]), float(pos[1])),
                        details={
                            "lane_id": lane.lane_id,
                            "signal_group": lane.signal_group,
                            "signal_state": "red",
                            "red_onset_t": round(state[1], 3),
                            "time_into_red_s": round(into_red, 3),
                            "crossing_speed_kmh": round(speed, 2),
                            # seen commit_m past the line (still red) at this time
                            "committed_t": round(float(tr.t[k]), 3),
                            # the front taken this far ahead of the ground point
                            "front_lead_m": lead,
                        },
                    )
                )
                break  # one per lane and track
    return out


def _glitch(tr: TrackHistory, i: int, k: int, params: RedLightParams) -> bool:
    """Whether a step of the track from point ``i`` to ``k`` (crossing to commit) spans a
    gap of more than ``max_gap_s`` or goes ``max_jump_m`` further than the speed of the
    second before it would take it: the id may have passed from a vehicle before the line
    to another one past it."""
    for m in range(i, k):
        dt = float(tr.t[m + 1] - tr.t[m])
        if dt > params.max_gap_s:
            return True
        went = float(np.linalg.norm(tr.xy[m + 1] - tr.xy[m]))
        if went > _speed_before(tr, m) / MPS_TO_KMH * dt + params.max_jump_m:
            return True
    return False


def _speed_before(tr: TrackHistory, i: int, span_s: float = 1.0) -> float:
    """Average speed (km/h) over the ``span_s`` up to point ``i`` (inf: nothing before)."""
    j = int(np.searchsorted(tr.t, tr.t[i] - span_s))
    if j >= i:
        return math.inf
    return float(np.linalg.norm(tr.xy[i] - tr.xy[j]) / (tr.t[i] - tr.t[j]) * MPS_TO_KMH)


def _rear_view(lane: Lane, calibration: Calibration, params: RedLightParams) -> bool:
    """Whether the camera sees the lane's traffic from behind at its stop line."""
    assert lane.stop_line is not None
    mid = (np.asarray(lane.stop_line[0]) + np.asarray(lane.stop_line[1])) / 2
    return float(lane.dir @ calibration.away_from_camera(mid)) >= params.rear_view_cos
