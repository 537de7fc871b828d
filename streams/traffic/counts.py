"""Per-lane counts by vehicle class, occupancy and queue length, in event-time windows.

Feed frames in time order (:meth:`LaneCounter.add_frame`); a window closes when a frame at or
after its end arrives, and its :class:`~schemas.messages.LaneCount` rows come back.

* **count**: a vehicle crossing the lane's stop line in its direction of travel, once per
  track (a box that jitters back over the line and forwards again is still one vehicle);
* **occupancy**: the share of frames in which a vehicle stands in the lane's detection zone
  (the ``zone_m`` metres upstream of the stop line, like an inductive loop);
* **queue_len**: vehicles in the lane upstream of the line moving slower than
  ``queue_speed_kmh`` in the window's last frame;
* **arrivals** / **arrivals_on_red**: vehicles crossing the lane's *arrival line*
  (``arrival_m`` upstream of the stop line, where a coordination detector would sit) in
  their direction of travel (once per track), and how many of them did so while the lane's
  signal group was
  red (needs the :class:`~streams.traffic.signals.SignalTimeline`; without one every arrival
  counts as not on red).  A high share on red means the platoons meet red lights: the
  offset between neighbouring signals is wrong;
* **discharge_s** / **discharged**: the seconds the lane had green while a queue stood in it
  (``queue_len`` >= 1 at the start of the frame interval), and the vehicles that crossed the
  stop line in those seconds: the lane's queue discharge, from which the advice measures its
  saturation flow (:func:`lane_flows`) instead of assuming one.  A shared through/left lane
  held up by permitted left turners discharges at a fraction of the rate of its neighbour.
  Needs the signal timeline; an interval longer than ``max_gap_s`` (a gap in the frames) is
  not counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from schemas.messages import LaneCount, SignalState, VehicleClass
from streams.traffic.calibration import Calibration, Lane
from streams.traffic.geometry import FloatArray, points_in_polygon, segment_crossings
from streams.traffic.signals import SignalTimeline
from streams.traffic.tracks import MPS_TO_KMH, to_datetime

#: a vehicle slower than this (km/h) upstream of its lane's stop line stands in its queue
QUEUE_SPEED_KMH = 5.0

COUNTED_CLASSES: tuple[VehicleClass, ...] = (
    VehicleClass.motorbike,
    VehicleClass.car,
    VehicleClass.bus,
    VehicleClass.truck,
    VehicleClass.bicycle,
)


@dataclass(frozen=True)
class Observation:
    """One vehicle in one frame, on the ground."""

    track_id: int
    vehicle_class: VehicleClass
    xy: tuple[float, float]
    speed_kmh: float | None = None


@dataclass
class _Window:
    start: float
    counts: dict[tuple[str, VehicleClass], int] = field(default_factory=dict)
    arrivals: dict[tuple[str, VehicleClass], int] = field(default_factory=dict)
    on_red: dict[tuple[str, VehicleClass], int] = field(default_factory=dict)
    occupied: dict[str, int] = field(default_factory=dict)
    frames: int = 0
    queue: dict[str, int] = field(default_factory=dict)
    discharged: dict[tuple[str, VehicleClass], int] = field(default_factory=dict)
    discharge_s: dict[str, float] = field(default_factory=dict)


class LaneCounter:
    """Windowed lane statistics of one camera (pure, no I/O)."""

    def __init__(
        self,
        calibration: Calibration,
        window_s: int = 60,
        zone_m: float = 5.0,
        queue_speed_kmh: float = QUEUE_SPEED_KMH,
        classes: Sequence[VehicleClass] = COUNTED_CLASSES,
        signals: SignalTimeline | None = None,
        arrival_m: float = 30.0,
        max_gap_s: float = 1.0,
    ) -> None:
        self.cal = calibration
        self.window_s = window_s
        self.zone_m = zone_m
        self.queue_speed_kmh = queue_speed_kmh
        self.signals = signals
        self.arrival_m = arrival_m
        self.max_gap_s = max_gap_s
        self.classes = tuple(classes)
        self.lanes: list[Lane] = calibration.approach_lanes
        self._last: dict[int, tuple[float, tuple[float, float]]] = {}
        self._counted: set[int] = set()  # tracks that crossed a stop line
        self._arrived: set[int] = set()  # tracks that crossed an arrival line
        self._win: _Window | None = None
        self._prev_t: float | None = None
        self._discharging: set[str] = set()  # lanes on green with a queue at the last frame

    def _window_start(self, t: float) -> float:
        return float(np.floor(t / self.window_s) * self.window_s)

    def add_frame(self, t: float, observations: Iterable[Observation]) -> list[LaneCount]:
        """Add one frame at epoch time ``t``; returns rows of any window it closed."""
        out: list[LaneCount] = []
        if self._win is not None and t >= self._win.start + self.window_s:
            out = self._emit(self._win)
            self._win = None
        if self._win is None:
            self._win = _Window(self._window_start(t))
        win = self._win
        win.frames += 1
        prev_t, self._prev_t = self._prev_t, t
        dt = t - prev_t if prev_t is not None else 0.0
        discharging, self._discharging = self._discharging, set()
        if not 0 < dt <= self.max_gap_s:
            discharging = set()
        for lane_id in discharging:  # the interval's part in this window
            win.discharge_s[lane_id] = win.discharge_s.get(lane_id, 0.0) + min(dt, t - win.start)
        obs = list(observations)
        if not obs:
            win.queue = {}
            return out
        xy = np.array([o.xy for o in obs], dtype=np.float64)
        speeds = np.array([self._speed(o, t) for o in obs])
        queue: dict[str, int] = {}
        for lane in self.lanes:
            assert lane.stop_line is not None
            a = np.asarray(lane.stop_line[0])
            inside = points_in_polygon(xy, lane.poly)
            upstream = -((xy - a) @ lane.dir)  # metres before the stop line
            in_zone = inside & (upstream >= 0) & (upstream <= self.zone_m)
            if in_zone.any():
                win.occupied[lane.lane_id] = win.occupied.get(lane.lane_id, 0) + 1
            queued = inside & (upstream >= 0) & (speeds < self.queue_speed_kmh)
            queue[lane.lane_id] = int(queued.sum())
            if queue[lane.lane_id] and self._green(lane, t):
                self._discharging.add(lane.lane_id)
        win.queue = queue
        for o in obs:
            prev = self._last.get(o.track_id)
            self._last[o.track_id] = (t, o.xy)
            if prev is None:
                continue
            step = np.array([prev[1], o.xy], dtype=np.float64)
            if o.track_id not in self._arrived:
                self._arrival(win, t, o, step)
            if o.track_id in self._counted:
                continue
            for lane in self.lanes:
                assert lane.stop_line is not None
                hits = segment_crossings(
                    step, np.asarray(lane.stop_line[0]), np.asarray(lane.stop_line[1])
                )
                if hits and float((step[1] - step[0]) @ lane.dir) > 0:
                    key = (lane.lane_id, o.vehicle_class)
                    win.counts[key] = win.counts.get(key, 0) + 1
                    if lane.lane_id in discharging:
                        win.discharged[key] = win.discharged.get(key, 0) + 1
                    self._counted.add(o.track_id)
                    break
        # forget tracks not seen for a while
        if len(self._last) > 4 * len(obs) + 100:
            self._last = {k: v for k, v in self._last.items() if t - v[0] < 10}
            self._counted = {k for k in self._counted if k in self._last}
            self._arrived = {k for k in self._arrived if k in self._last}
        return out

    def _arrival(self, win: _Window, t: float, o: Observation, step: FloatArray) -> None:
        """Count ``o`` if its last step crossed a lane's arrival line, forwards."""
        for lane in self.lanes:
            assert lane.stop_line is not None
            up = -((step - np.asarray(lane.stop_line[0])) @ lane.dir)  # metres before the line
            if not (up[0] > self.arrival_m >= up[1]):
                continue
            if not points_in_polygon(step[1:], lane.poly)[0]:
                continue
            key = (lane.lane_id, o.vehicle_class)
            win.arrivals[key] = win.arrivals.get(key, 0) + 1
            self._arrived.add(o.track_id)
            if self._state(lane, t) is SignalState.red:
                win.on_red[key] = win.on_red.get(key, 0) + 1
            return

    def _state(self, lane: Lane, t: float) -> SignalState | None:
        if self.signals is None or lane.signal_group is None:
            return None
        return self.signals.state_at(lane.signal_group, t)

    def _green(self, lane: Lane, t: float) -> bool:
        return self._state(lane, t) is SignalState.green

    def _speed(self, o: Observation, t: float) -> float:
        if o.speed_kmh is not None:
            return o.speed_kmh
        prev = self._last.get(o.track_id)
        if prev is None or t <= prev[0]:
            return float("inf")  # unknown: not counted as queued
        return float(
            np.hypot(o.xy[0] - prev[1][0], o.xy[1] - prev[1][1]) / (t - prev[0]) * MPS_TO_KMH
        )

    def flush(self) -> list[LaneCount]:
        """Close the open window (end of stream)."""
        out = self._emit(self._win) if self._win is not None else []
        self._win = None
        return out

    def _emit(self, win: _Window) -> list[LaneCount]:
        rows = []
        classes = list(self.classes) + sorted(
            {c for _, c in (*win.counts, *win.arrivals)} - set(self.classes), key=str
        )
        for lane in self.lanes:
            occ = win.occupied.get(lane.lane_id, 0) / max(win.frames, 1)
            for cls in classes:
                rows.append(
                    LaneCount(
                        intersection_id=self.cal.intersection_id,
                        camera_id=self.cal.camera_id,
                        lane_id=lane.lane_id,
                        movement=lane.movement,
                        vehicle_class=cls,
                        window_start=to_datetime(win.start),
                        window_s=self.window_s,
                        count=win.counts.get((lane.lane_id, cls), 0),
                        occupancy=round(occ, 4),
                        queue_len=win.queue.get(lane.lane_id, 0),
                        arrivals=win.arrivals.get((lane.lane_id, cls), 0),
                        arrivals_on_red=win.on_red.get((lane.lane_id, cls), 0),
                        discharged=win.discharged.get((lane.lane_id, cls), 0),
                        discharge_s=round(win.discharge_s.get(lane.lane_id, 0.0), 3),
                    )
                )
        return rows


#: Passenger-car units by class (Vietnamese practice, TCVN 13592: motorbike 0.3).
PCU: dict[VehicleClass, float] = {
    VehicleClass.motorbike: 0.3,
    VehicleClass.car: 1.0,
    VehicleClass.bus: 2.5,
    VehicleClass.truck: 2.0,
    VehicleClass.bicycle: 0.2,
    VehicleClass.person: 0.0,
}


@dataclass(frozen=True)
class LaneFlow:
    """One signalled lane over the span its counts cover: flow, and its queue discharge."""

    signal_group: str
    flow_pcu_h: float
    discharged_pcu: float
    discharge_s: float


def lane_flows(
    counts: Iterable[LaneCount], calibration: Calibration, pcu: dict[VehicleClass, float] = PCU
) -> dict[str, LaneFlow]:
    """Flow (PCU per hour over the span the counts cover) and queue discharge of each lane
    of the camera that has a signal group."""
    group_of = {ln.lane_id: ln.signal_group for ln in calibration.approach_lanes}
    total: dict[str, float] = {}
    discharged: dict[str, float] = {}
    discharge_s: dict[tuple[str, float], float] = {}  # one value per lane and window
    windows: set[tuple[float, int]] = set()
    for c in counts:
        ws = c.window_start.timestamp()
        windows.add((ws, c.window_s))
        if not group_of.get(c.lane_id):
            continue
        w = pcu.get(c.vehicle_class, 1.0)
        total[c.lane_id] = total.get(c.lane_id, 0.0) + c.count * w
        discharged[c.lane_id] = discharged.get(c.lane_id, 0.0) + c.discharged * w
        discharge_s[(c.lane_id, ws)] = c.discharge_s
    span_s = sum(w for _, w in windows)
    if span_s == 0:
        return {}
    return {
        lane: LaneFlow(
            str(group_of[lane]),
            q * 3600.0 / span_s,
            discharged[lane],
            sum(v for (ln, _), v in discharge_s.items() if ln == lane),
        )
        for lane, q in sorted(total.items())
    }
