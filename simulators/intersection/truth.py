"""Ground truth of a running intersection simulation, as JSON Lines (one object per line).

Every line has a ``kind``:

* ``meta``: scenario, camera, frame size, event-time start and the camera's calibration;
* ``frame``: per rendered frame (``seq`` as on ``camera.frames``, ``captured_at``) the objects
  the camera sees: ``track_id``, ``class``, ``bbox`` [x1, y1, x2, y2] in output pixels,
  ``ground_xy`` (metres), ``speed_kmh`` and ``violator`` (the violation it was injected for);
* ``violation``: a violation observed in the simulation (``injected`` or not);
* ``phase``: a signal group changed colour (the same change published as a controller would);
* ``lane_count``: vehicles that crossed an approach lane's stop line, per lane, class and
  event-time minute (``window_start`` aligned to the epoch, like ``streams.traffic.counts``);
  only non-zero counts are written, so a missing row means zero;
* ``discharge``: per approach lane, at the end of the run, what its stop-line detector
  (:class:`~simulators.intersection.sim.StopLineDetector`) measured from the first frame on:
  PCU over the line, and the queue discharge (PCU crossing while a queue stood on green,
  and those seconds), the truth of the camera's ``discharged`` / ``discharge_s``;
* ``plan_applied``: a signal plan was installed, with the average delay (SUMO time loss, s)
  of the vehicles that departed and arrived under the plan before it;
* ``delay``: the average delay under the plan in force at the end of the run.

Writers are plain files; :class:`TruthWriter` can write the same lines to several (``--truth``
and the sidecar of ``--capture``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from schemas.messages import SignalPhaseChange, VehicleClass
from simulators.intersection.render import GroundTruthObject
from simulators.intersection.sim import Crossing, SimStep, StopLineDetector, TruthViolation


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class LaneMinuteCounts:
    """Stop-line crossings (:attr:`SimStep.crossings`) per approach lane, vehicle class and
    ``window_s`` window.  Feed every step in order; :meth:`add_step` returns the rows of
    windows that closed.
    """

    def __init__(self, window_s: int = 60) -> None:
        if window_s < 1:
            raise ValueError("window_s must be >= 1")
        self.window_s = window_s
        self._window: float | None = None
        self._counts: dict[tuple[str, VehicleClass], int] = {}

    def _start(self, t: float) -> float:
        return math.floor(t / self.window_s) * self.window_s

    def add_step(self, t: float, crossings: Iterable[Crossing]) -> list[dict[str, Any]]:
        """The crossings of the step at epoch ``t``."""
        out: list[dict[str, Any]] = []
        start = self._start(t)
        if self._window is None:
            self._window = start
        elif start > self._window:
            out = self.flush()
            self._window = start
        for c in crossings:
            key = (c.lane_id, c.vehicle_class)
            self._counts[key] = self._counts.get(key, 0) + 1
        return out

    def flush(self, *, partial: bool = False) -> list[dict[str, Any]]:
        """Rows of the open window (non-zero counts), which is then reset; ``partial`` marks
        a window the run ended in."""
        if self._window is None:
            return []
        rows = [
            {
                "kind": "lane_count",
                "lane_id": lane,
                "approach": lane.split("_", 1)[0],
                "vehicle_class": str(cls),
                "window_start": _iso(self._window),
                "window_s": self.window_s,
                "count": n,
                **({"partial": True} if partial else {}),
            }
            for (lane, cls), n in sorted(self._counts.items())
        ]
        self._counts = {}
        return rows


def discharge_records(
    now: Mapping[str, StopLineDetector], start: Mapping[str, StopLineDetector]
) -> list[dict[str, Any]]:
    """What each lane's detector measured between ``start`` (copies) and ``now``."""
    out = []
    for lane, d in sorted(now.items()):
        s = start.get(lane, StopLineDetector(d.signal_groups))
        out.append(
            {
                "kind": "discharge",
                "lane_id": lane,
                "pcu": round(d.pcu - s.pcu, 3),
                "discharged_pcu": round(d.discharged_pcu - s.discharged_pcu, 3),
                "discharge_s": round(d.discharge_s - s.discharge_s, 3),
            }
        )
    return out


def frame_record(
    seq: int, captured_at: datetime, objects: Sequence[GroundTruthObject]
) -> dict[str, Any]:
    return {
        "kind": "frame",
        "seq": seq,
        "captured_at": captured_at.isoformat(),
        "objects": [
            {
                "track_id": o.track_id,
                "class": str(o.vehicle_class),
                "bbox": list(o.bbox),
                "ground_xy": list(o.ground_xy),
                "speed_kmh": o.speed_kmh,
                "violator": o.violator,
            }
            for o in objects
        ],
    }


def violation_record(v: TruthViolation) -> dict[str, Any]:
    return {
        "kind": "violation",
        "violation": v.kind,
        "vehicle_id": v.vehicle_id,
        "track_id": v.track_id,
        "vehicle_class": str(v.vehicle_class),
        "occurred_at": _iso(v.t),
        "injected": v.injected,
        "details": dict(v.details),
    }


def phase_record(change: SignalPhaseChange) -> dict[str, Any]:
    return {"kind": "phase", **change.model_dump(mode="json")}


class TruthWriter:
    """Appends truth lines to one or more files; :meth:`close` flushes the open window."""

    def __init__(self, paths: Sequence[Path], window_s: int = 60) -> None:
        self.paths = list(dict.fromkeys(Path(p) for p in paths))
        self._files: list[IO[str]] = []
        for p in self.paths:
            p.parent.mkdir(parents=True, exist_ok=True)
            self._files.append(p.open("w"))
        self.counts = LaneMinuteCounts(window_s)
        self.lines = 0
        self._violations = 0

    def write(self, obj: Mapping[str, Any]) -> None:
        line = json.dumps(obj, sort_keys=True, default=_default) + "\n"
        for f in self._files:
            f.write(line)
        self.lines += 1

    def write_many(self, objs: Iterable[Mapping[str, Any]]) -> None:
        for obj in objs:
            self.write(obj)

    def steps(self, steps: Iterable[SimStep], truth: Sequence[TruthViolation]) -> None:
        """Lane counts of every step, and the violations observed since the last call."""
        for step in steps:
            self.write_many(self.counts.add_step(step.t, step.crossings))
        for v in truth[self._violations :]:
            self.write(violation_record(v))
        self._violations = len(truth)

    def flush(self) -> None:
        for f in self._files:
            f.flush()

    def close(self) -> None:
        self.write_many(self.counts.flush(partial=True))
        for f in self._files:
            f.close()
        self._files = []
