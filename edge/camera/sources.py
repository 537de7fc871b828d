"""Frame sources of the camera agent: OpenCV (file, RTSP/HTTP URL, device) and the simulator.

A source yields :class:`CapturedFrame` s from :meth:`FrameSource.read` until it returns None
(a file ended, a simulation's duration is over).  A *live* source (stream, device) is paced
by the device; a recorded one (file, simulator) is paced by the agent.  A live source that
fails raises :class:`SourceError`; the agent closes it and reopens it with backoff.

The simulator source steps an :class:`~simulators.intersection.sim.IntersectionSim`, renders
only the steps that are due at the target frame rate and hands every step's signal changes,
ground truth and applied plans to the caller with the next frame (:class:`SimFrame`), so
nothing of the simulation is lost when the agent later drops a frame under backpressure.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from citystream.errors import CityStreamError, ConfigError
from edge.camera.processing import FramePacer, Image

if TYPE_CHECKING:
    from schemas.messages import SignalPhaseChange, SignalPlan, VehicleHandoff
    from simulators.intersection.render import GroundTruthObject, Renderer
    from simulators.intersection.sim import IntersectionSim, SimStep

log = logging.getLogger("citystream.edge.camera")

SourceKind = Literal["file", "stream", "device", "sim"]
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


class SourceError(CityStreamError, RuntimeError):
    """A live source failed (cannot open, stopped delivering); the agent reconnects."""


@dataclass(frozen=True)
class CapturedFrame:
    """One frame from a source: BGR pixels, capture time, position on the source's clock."""

    image: Image
    media_t: float  # seconds on the source's own clock (file position, sim time, monotonic)
    captured_at: datetime | None = None  # None: the agent stamps the wall clock when it paces
    extras: Any = None  # source-specific (SimFrame for the simulator)


class FrameSource(Protocol):
    name: str
    kind: SourceKind
    live: bool  # paced by the device: the agent never sleeps for it
    rate_limited: bool  # yields frames at the target fps already: the agent drops none for rate

    def open(self) -> None: ...

    def read(self) -> CapturedFrame | None: ...

    def close(self) -> None: ...


def classify(uri: str) -> SourceKind:
    """``sim``, a device index (``0``), a URL (``rtsp://``, ``http://``...) or a file."""
    if uri == "sim":
        return "sim"
    if uri.isdigit():
        return "device"
    if _URL.match(uri) and not uri.startswith("file://"):
        return "stream"
    return "file"


class VideoSource:
    """Frames of ``cv2.VideoCapture``: a video file, an RTSP/HTTP URL or a device index.

    Files: the frame index over the file's fps is the source clock; at the end the source
    returns None, or starts again with ``loop``.  Streams and devices: a failure to open or
    to read raises :class:`SourceError` (the agent reconnects); ``read_timeout_s`` bounds how
    long FFmpeg may block on a dead stream.
    """

    def __init__(self, uri: str, *, loop: bool = False, read_timeout_s: float = 10.0) -> None:
        kind = classify(uri)
        if kind == "sim":
            raise ConfigError("use SimulatorSource for the simulator")
        self.uri = uri
        self.kind: SourceKind = kind
        self.name = f"{kind} {_redact(uri)}"
        self.live = kind != "file"
        self.rate_limited = False
        self.loop = loop
        self.read_timeout_s = read_timeout_s
        self.native_fps = 0.0
        self.frames_read = 0
        self._cap: Any = None
        self._index = 0
        self._t0 = 0.0
        if kind == "file":
            path = Path(uri.removeprefix("file://"))
            if not path.is_file():
                raise ConfigError(f"no such video file: {path}")
            self._path: str | int = str(path)
        elif kind == "device":
            self._path = int(uri)
        else:
            self._path = uri

    def open(self) -> None:
        import cv2

        self.close()
        params: list[int] = []
        if self.kind == "stream":
            ms = int(self.read_timeout_s * 1000)
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        cap = cv2.VideoCapture(self._path, cv2.CAP_ANY, params)
        if not cap.isOpened():
            cap.release()
            msg = f"cannot open {self.name}"
            if self.kind == "file":
                raise ConfigError(f"{msg}: not a video OpenCV can decode")
            raise SourceError(msg)
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.native_fps = fps if 0 < fps < 1000 else 25.0
        self._cap = cap
        self._index = 0
        self._t0 = time.monotonic()

    def read(self) -> CapturedFrame | None:
        if self._cap is None:
            self.open()
        ok, img = self._cap.read()
        if not ok or img is None:
            if self.kind == "file":
                if self.loop and self._index > 0:
                    log.info("%s ended after %d frames; looping", self.name, self._index)
                    self.open()
                    ok, img = self._cap.read()
                if not ok or img is None:
                    return None
            else:
                raise SourceError(f"{self.name} stopped delivering frames")
        if img.ndim == 2:
            import cv2

            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        self.frames_read += 1
        if self.kind == "file":
            t = self._index / self.native_fps
            self._index += 1
            return CapturedFrame(np.ascontiguousarray(img, dtype=np.uint8), t)
        self._index += 1
        return CapturedFrame(
            np.ascontiguousarray(img, dtype=np.uint8),
            time.monotonic() - self._t0,
            datetime.now(UTC),
        )

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _redact(uri: str) -> str:
    """A URL without its password (``rtsp://user:secret@cam`` -> ``rtsp://user:***@cam``)."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", uri)


# --- the simulator ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanSwitch:
    """A signal plan the simulator installed, with the average delay under the one before."""

    plan: SignalPlan
    previous_plan_id: str
    sim_time: float
    at: datetime
    delay_before_s: float
    vehicles_before: int


@dataclass(frozen=True)
class SimFrame:
    """What happened in the simulation since the previous frame, delivered with this one."""

    steps: list[SimStep]  # every simulation step since the previous frame, this one last
    objects: list[GroundTruthObject]  # what the camera sees in this frame
    phase_changes: list[SignalPhaseChange]
    plan_switches: list[PlanSwitch] = field(default_factory=list)
    #: vehicles handed over by a neighbouring junction, admitted before these steps
    #: (a repeated handover is not)
    admitted: list[VehicleHandoff] = field(default_factory=list)

    @property
    def step(self) -> SimStep:
        return self.steps[-1]


class SimulatorSource:
    """Rendered frames of an intersection simulation at ``fps`` (frames on simulated time).

    ``warmup_s`` simulated seconds run at :meth:`open` without a frame (the junction fills
    up; see :meth:`IntersectionSim.warm_up`): the first frame comes from the step after
    them, and ``media_t`` counts from the end of the warm-up.  ``duration_s`` (after the
    warm-up) None runs forever.  :meth:`request_plan` and :meth:`request_admission` may be
    called from any thread; the plan is installed, and the vehicle handed over by a
    neighbouring junction enters, before the next simulation step (libsumo stays on the
    thread that calls :meth:`read`).
    """

    kind: SourceKind = "sim"
    live = False
    rate_limited = True

    def __init__(
        self,
        sim: IntersectionSim,
        renderer: Renderer,
        *,
        fps: float,
        duration_s: float | None = None,
        warmup_s: float = 0.0,
    ) -> None:
        step_s = sim.config.step_s
        if fps * step_s > 1.0 + 1e-9:
            raise ConfigError(
                f"the simulator steps every {step_s:g} s: at most {1 / step_s:g} fps, got {fps:g}"
            )
        if not 0 <= warmup_s <= 86_400:
            raise ConfigError(f"warm-up must be within [0, 86400] s, got {warmup_s:g}")
        self.warmup_s = warmup_s
        #: the last warm-up step (None without a warm-up or before :meth:`open`)
        self.sim = sim
        self.renderer = renderer
        self.fps = fps
        self.duration_s = duration_s
        self.name = f"simulator {sim.config.intersection_id} (seed {sim.config.seed})"
        self._pacer = FramePacer(fps, speed=0)
        self._plans: list[SignalPlan] = []
        self._arrivals: list[VehicleHandoff] = []
        self._lock = threading.Lock()
        self._plan_started = 0.0
        self._opened = False
        #: (average delay s, vehicles) under the plan in force when the source was closed
        self.final_delay: tuple[float, int] | None = None

    def open(self) -> None:
        if not self._opened:
            self.sim.start()
            self._opened = True
            if self.warmup_s > 0:
                self.sim.warm_up(self.warmup_s)

    def request_plan(self, plan: SignalPlan) -> None:
        with self._lock:
            self._plans.append(plan)

    def request_admission(self, handoff: VehicleHandoff) -> None:
        """A vehicle from a neighbouring junction, to enter before the next step."""
        with self._lock:
            self._arrivals.append(handoff)

    def _admit_pending(self) -> list[VehicleHandoff]:
        with self._lock:
            arrivals, self._arrivals = self._arrivals, []
        return [
            h
            for h in arrivals
            if self.sim.admit(h.vehicle_ref, h.arm, h.vehicle_class, h.speed_mps)
        ]

    def _apply_pending(self) -> list[PlanSwitch]:
        with self._lock:
            plans, self._plans = self._plans, []
        out = []
        for plan in plans:
            now = self.sim.sim_time
            delay, n = self.sim.average_delay_s(self._plan_started)
            previous = self.sim.plan.plan_id
            self.sim.apply_plan(plan)
            self._plan_started = now
            at = datetime.fromtimestamp(self.sim.epoch(now), UTC)
            out.append(PlanSwitch(plan, previous, now, at, round(delay, 2), n))
        return out

    def delay_under_current_plan(self) -> tuple[float, int]:
        """Average delay (s) and vehicles counted since the current plan was installed."""
        return self.sim.average_delay_s(self._plan_started)

    def read(self) -> CapturedFrame | None:
        self.open()
        switches = self._apply_pending()
        admitted = self._admit_pending()
        steps: list[SimStep] = []
        changes: list[SignalPhaseChange] = []
        step_s = self.sim.config.step_s
        end = None if self.duration_s is None else self.warmup_s + self.duration_s
        while True:
            if end is not None and self.sim.sim_time + step_s / 2 > end:
                if not steps:
                    return None
                break  # the last steps still get a frame: their changes must not be lost
            step = self.sim.step()
            steps.append(step)
            changes.extend(step.phase_changes)
            if self._pacer.keep(step.sim_time):
                break
        step = steps[-1]
        img, objects = self.renderer.render(step)
        at = datetime.fromtimestamp(step.t, UTC)
        media_t = step.sim_time - self.warmup_s
        return CapturedFrame(
            img, media_t, at, SimFrame(steps, objects, changes, switches, admitted)
        )

    def close(self) -> None:
        if self._opened:
            self.final_delay = self.delay_under_current_plan()
            self.sim.close()
            self._opened = False
