"""Frames of many cameras -> one detector batch -> per-camera tracks, ground positions, health.

The Kafka-free core of the vision worker (:mod:`streams.vision.stage` feeds it):

* one :meth:`Detector.detect_jpegs` call for the whole batch, whatever cameras it mixes;
* one :class:`~streams.vision.tracking.ByteTracker` per camera, so a camera's track ids
  depend only on its own frames, never on its batch-mates.  Ids are offset by a base,
  :func:`id_base` of the event time the tracker was created (ids fit the DB's 32-bit column),
  or of a later time given with the frame (``FrameWork.id_floor_t``) when an earlier worker
  may have tracked the camera and its state was not restored: see :func:`id_base`;
* :meth:`VisionProcessor.snapshot` / :meth:`VisionProcessor.restore`: a camera's complete
  state (tracker, id base, last frame time, the speed filters of its live tracks, the
  watchdog's conditions), so that a restarted worker sends what it would have sent without
  the restart (:mod:`streams.vision.checkpoint` stores it);
* ``ground_xy``: the bottom centre of the box through the camera's homography (pixels scaled
  from the frame's size to the calibration's ``image_size``); points at or above the horizon
  get none.  While the watchdog reports the view *shifted*, no ground positions are sent:
  the homography no longer holds, and rules must not judge with it;
* ``speed_kmh``: a Kalman filter over the track's ground positions
  (:mod:`streams.vision.speed`), once it has run ``SpeedConfig.min_age_s``; each position
  weighs by the ground metres a pixel spans there (:func:`pixel_spans`), and a box cut off
  by the frame's edge does not move the filter (its bottom edge is not the ground contact);
* one health sample per camera every ``HealthConfig.sample_every_s`` of event time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from schemas.codecs import Frame
from schemas.messages import Alert, BBox, TrackBatch, TrackObservation
from streams.traffic.calibration import Calibration
from streams.traffic.cameras import CameraChanges, CameraInfo
from streams.traffic.geometry import FloatArray
from streams.vision.checkpoint import INT32_MAX, CameraSnapshot, HealthSnapshot
from streams.vision.detections import Detections
from streams.vision.detector import DecodeFailure, Detector
from streams.vision.health import CameraWatchdog, GrayImage, HealthConfig, Reference
from streams.vision.speed import SpeedConfig, SpeedFilter
from streams.vision.tracking import ByteTracker, TrackerConfig

log = logging.getLogger(__name__)
_ID_BLOCK = 10_000  # ids per second of tracker creation time
_ID_PERIOD_S = 200_000  # creation times wrap after ~2.3 days (bases stay below 2e9)
_MAX_GROUND_M = 10_000.0
_EDGE_PX = 2.0  # a box this close to the frame's edge is cut off by it


class ReferenceStore(Protocol):
    """Where watchdog reference views survive restarts (per camera and calibration).

    ``load`` gives the latest; with ``taken_at``, the one taken then if it is still kept
    (the latest or the one before: what a snapshot of a second ago refers to), else None."""

    def load(
        self, camera_id: str, version: int, taken_at: float | None = None
    ) -> Reference | None: ...

    def save(self, camera_id: str, version: int, reference: Reference) -> None: ...


@dataclass(frozen=True)
class FrameWork:
    """One frame to process, with the camera it comes from.

    ``id_floor_t``: set when another worker (or this one before a restart) may have tracked
    the camera without leaving its state here; a tracker created for this frame then takes
    its ids from :func:`id_base` of this time (the wall clock then) if it is later than the
    frame's, so they lie above every id that worker can have issued."""

    frame: Frame
    camera: CameraInfo
    id_floor_t: float | None = None


@dataclass(frozen=True)
class FrameOutcome:
    """What became of one input frame: a track batch, a failure (dead letter) or stale
    (older than a frame already processed: a replay or a reordering), plus health alerts."""

    batch: TrackBatch | None = None
    failure: str | None = None
    stale: bool = False
    alerts: tuple[Alert, ...] = ()


def id_base(t: float) -> int:
    """Ids of a tracker created at time ``t`` are ``id_base(t) + 1, + 2, ...``.

    A tracker without a predecessor takes ``t`` from its first frame, so a replay from scratch
    gives the same ids.  A tracker that may have a predecessor whose state is lost (a restart
    without a usable snapshot, a partition taken over from another worker) takes the later
    of that and the wall clock at its creation: the predecessor was created at some event
    time ``t0`` before, and issued its ids while processing frames up to the wall clock of
    its end (camera clocks within a second or so of the workers'), so the new base lies
    ``_ID_BLOCK`` ids per second past the predecessor's; a camera confirms a few tracks a
    second, far from 10,000.  Bases repeat after ``_ID_PERIOD_S`` (about 2.3 days), long
    after the traffic worker forgot the earlier tracks."""
    return (int(t) % _ID_PERIOD_S) * _ID_BLOCK


def ground_positions(
    cal: Calibration, frame_w: int, frame_h: int, points_px: FloatArray
) -> list[tuple[float, float] | None]:
    """Ground metres of image points (N, 2) of a ``frame_w`` x ``frame_h`` frame."""
    if len(points_px) == 0:
        return []
    sx, sy = cal.image_size[0] / frame_w, cal.image_size[1] / frame_h
    h = cal.view.image_to_ground
    p = np.asarray(points_px, dtype=np.float64).reshape(-1, 2) * [sx, sy]
    hom = np.concatenate([p, np.ones((len(p), 1))], axis=1) @ h.T
    # the sign of w of a point surely on the ground: the bottom centre of the image
    ref_w = float(h[2] @ [cal.image_size[0] / 2, cal.image_size[1], 1.0])
    out: list[tuple[float, float] | None] = []
    for x, y, w in hom:
        if w * ref_w <= 0 or abs(w) < 1e-12:
            out.append(None)  # at or beyond the horizon
            continue
        gx, gy = x / w, y / w
        if not (np.isfinite(gx) and np.isfinite(gy)) or max(abs(gx), abs(gy)) > _MAX_GROUND_M:
            out.append(None)
        else:
            out.append((round(float(gx), 3), round(float(gy), 3)))
    return out


def pixel_spans(cal: Calibration, frame_w: int, frame_h: int, points_px: FloatArray) -> FloatArray:
    """Ground metres that one pixel of a ``frame_w`` x ``frame_h`` frame spans at each image
    point (N, 2): the longer of a step right and a step down (``_MAX_GROUND_M`` at or beyond
    the horizon)."""
    pts = np.asarray(points_px, dtype=np.float64).reshape(-1, 2)
    if len(pts) == 0:
        return np.zeros(0)
    sx, sy = cal.image_size[0] / frame_w, cal.image_size[1] / frame_h
    base = pts * [sx, sy]
    with np.errstate(divide="ignore", invalid="ignore"):
        g0, gu, gv = (cal.view.to_ground(base + step) for step in ([0, 0], [sx, 0], [0, sy]))
        span = np.maximum(np.hypot(*(gu - g0).T), np.hypot(*(gv - g0).T))
    return np.where(np.isfinite(span), span, _MAX_GROUND_M)


def reduced_gray_flag(width: int) -> int:
    """cv2 imread flag decoding a frame of ``width`` at the largest power-of-two reduction
    that keeps it at least 320 pixels wide (JPEG DCT scaling: cheap)."""
    import cv2

    for factor, flag in (
        (8, cv2.IMREAD_REDUCED_GRAYSCALE_8),
        (4, cv2.IMREAD_REDUCED_GRAYSCALE_4),
        (2, cv2.IMREAD_REDUCED_GRAYSCALE_2),
    ):
        if width // factor >= 320:
            return int(flag)
    return int(cv2.IMREAD_GRAYSCALE)


def decode_gray(jpeg: bytes, width: int) -> GrayImage | None:
    import cv2

    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), reduced_gray_flag(width))
    return None if img is None else np.asarray(img, dtype=np.uint8)


@dataclass
class _Camera:
    info: CameraInfo
    tracker: ByteTracker
    base: int
    watchdog: CameraWatchdog
    last_t: float = float("-inf")
    next_health_t: float = float("-inf")
    saved_reference: int = 0
    speeds: dict[int, SpeedFilter] = field(default_factory=dict)


class VisionProcessor:
    """Per-camera trackers, ground projection, speeds and watchdogs behind one detector."""

    def __init__(
        self,
        detector: Detector,
        *,
        tracker: TrackerConfig | None = None,
        health: HealthConfig | None = None,
        speed: SpeedConfig | None = None,
        references: ReferenceStore | None = None,
    ) -> None:
        self.detector = detector
        self.tracker_config = tracker or TrackerConfig()
        self.health = health or HealthConfig()
        self.speed = speed or SpeedConfig()
        self.references = references
        self._cams: dict[str, _Camera] = {}

    @property
    def cameras(self) -> list[str]:
        return sorted(self._cams)

    def watchdog(self, camera_id: str) -> CameraWatchdog | None:
        cam = self._cams.get(camera_id)
        return cam.watchdog if cam else None

    # --- camera lifecycle ----------------------------------------------------------------
    def _new_camera(self, info: CameraInfo, t: float, floor_t: float | None = None) -> _Camera:
        ref = self.references.load(info.camera_id, info.version) if self.references else None
        base_t = t if floor_t is None else max(t, floor_t)
        if base_t != t:
            log.info(
                "camera %s: new tracker after a possible predecessor: ids from %d",
                info.camera_id,
                id_base(base_t) + 1,
            )
        return _Camera(
            info,
            ByteTracker(self.tracker_config),
            id_base(base_t),
            CameraWatchdog(info.camera_id, self.health, ref),
        )

    def snapshot(self, camera_ids: Iterable[str] | None = None) -> list[CameraSnapshot]:
        """The state of ``camera_ids`` (default: all cameras), to :meth:`restore` later."""
        out = []
        for cid in sorted(self._cams if camera_ids is None else camera_ids):
            cam = self._cams.get(cid)
            if cam is None:
                continue
            out.append(
                CameraSnapshot(
                    camera_id=cid,
                    fingerprint=cam.info.fingerprint,
                    base=cam.base,
                    last_t=cam.last_t,
                    next_health_t=cam.next_health_t,
                    tracker=cam.tracker.state(),
                    speeds={tid: f.state() for tid, f in sorted(cam.speeds.items())},
                    health=HealthSnapshot.of(cam.watchdog),
                )
            )
        return out

    def restore(self, snap: CameraSnapshot, info: CameraInfo) -> None:
        """Go on with ``snap`` for camera ``info`` (replacing any state of it).  A camera
        recalibrated since keeps its ids but not its tracks, as :meth:`apply_changes` does."""
        tracker = ByteTracker.from_state(snap.tracker, self.tracker_config)
        same = info.fingerprint == snap.fingerprint
        watchdog = self._watchdog(info, snap.health if same else None)
        cam = _Camera(
            info,
            tracker,
            snap.base,
            watchdog,
            last_t=snap.last_t,
            next_health_t=snap.next_health_t,
            saved_reference=watchdog.reference_updates,
            speeds={tid: SpeedFilter.from_state(self.speed, s) for tid, s in snap.speeds.items()},
        )
        if not same:
            log.info("camera %s: recalibrated while stopped: tracks reset", info.camera_id)
            tracker.reset()
            cam.speeds.clear()
        self._cams[info.camera_id] = cam

    def _watchdog(self, info: CameraInfo, health: HealthSnapshot | None) -> CameraWatchdog:
        """The watchdog of a restored camera: as snapshot (``health``), or a new one."""
        store, cid = self.references, info.camera_id
        ref = store.load(cid, info.version) if store is not None else None
        if health is not None:
            want = health.reference_taken_at
            if want is None:
                ref = None  # it had none yet: it takes the next healthy view, as it would have
            elif ref is None or ref.taken_at != want:
                at = store.load(cid, info.version, taken_at=want) if store is not None else None
                if at is None:
                    log.warning(
                        "camera %s: the reference view of the snapshot (taken at %.3f) is "
                        "gone; using the latest",
                        cid,
                        want,
                    )
                ref = at if at is not None else ref
        watchdog = CameraWatchdog(cid, self.health, ref)
        if health is not None:
            health.apply(watchdog)
        return watchdog

    def forget(self, camera_id: str) -> None:
        """Drop a camera's state (e.g. its partition went to another worker)."""
        self._cams.pop(camera_id, None)

    def _sync(self, cam: _Camera, info: CameraInfo) -> list[Alert]:
        """Follow a changed camera row: a new calibration resets tracks and the watchdog's
        reference (ids keep increasing)."""
        if info.fingerprint == cam.info.fingerprint:
            return []
        cam.info = info
        log.info(
            "camera %s: new calibration (version %d): tracks reset", info.camera_id, info.version
        )
        cam.tracker.reset()
        cam.speeds.clear()
        t = cam.last_t if np.isfinite(cam.last_t) else 0.0
        ref = self.references.load(info.camera_id, info.version) if self.references else None
        alerts = cam.watchdog.reset(t, f"camera recalibrated (version {info.version})", ref)
        cam.saved_reference = cam.watchdog.reference_updates
        return alerts

    def apply_changes(
        self, changes: CameraChanges, cameras: Mapping[str, CameraInfo]
    ) -> list[Alert]:
        """Directory changes: removed cameras are forgotten, moved ones reset."""
        alerts: list[Alert] = []
        for cid in changes.removed:
            self._cams.pop(cid, None)
        for cid in changes.moved:
            cam = self._cams.get(cid)
            if cam is not None and cid in cameras:
                alerts += self._sync(cam, cameras[cid])
        return alerts

    # --- frames --------------------------------------------------------------------------
    def process(self, work: Sequence[FrameWork]) -> list[FrameOutcome]:
        """Detect, track and check every frame; one outcome per input, in order."""
        accepted: list[int] = []
        last: dict[str, float] = {}
        for i, w in enumerate(work):
            h = w.frame.header
            t = h.captured_at.timestamp()
            cam = self._cams.get(h.camera_id)
            prev = last.get(h.camera_id, cam.last_t if cam else float("-inf"))
            if t > prev:
                accepted.append(i)
                last[h.camera_id] = t
        results = self.detector.detect_jpegs([work[i].frame.jpeg for i in accepted])
        if len(results) != len(accepted):
            raise RuntimeError(
                f"detector returned {len(results)} results for {len(accepted)} frames"
            )
        outcomes = [FrameOutcome(stale=True) for _ in work]
        for i, result in zip(accepted, results, strict=True):
            outcomes[i] = self._one(work[i], result)
        return outcomes

    def _one(self, w: FrameWork, result: Detections | DecodeFailure) -> FrameOutcome:
        h = w.frame.header
        t = h.captured_at.timestamp()
        if isinstance(result, DecodeFailure):
            return FrameOutcome(failure=f"frame {h.camera_id}#{h.seq}: {result.reason}")
        cam = self._cams.get(h.camera_id)
        alerts: list[Alert] = []
        if cam is None:
            cam = self._cams[h.camera_id] = self._new_camera(w.camera, t, w.id_floor_t)
        else:
            alerts += self._sync(cam, w.camera)
        cam.last_t = t
        if t >= cam.next_health_t:
            cam.next_health_t = t + self.health.sample_every_s
            gray = decode_gray(w.frame.jpeg, h.width)
            if gray is not None:
                alerts += cam.watchdog.observe(t, gray)
            self._save_reference(cam)
        tracked = cam.tracker.update(result)
        batch = TrackBatch(
            camera_id=h.camera_id,
            frame_seq=h.seq,
            captured_at=h.captured_at,
            model_version=self.detector.model_version,
            tracks=self._observations(cam, tracked, t, h.width, h.height),
        )
        if cam.speeds:  # only live tracks can be seen again: the filters stay few (snapshots)
            live = {(cam.base + i) % INT32_MAX for i in cam.tracker.live_ids}
            if not live.issuperset(cam.speeds):
                cam.speeds = {k: f for k, f in cam.speeds.items() if k in live}
        return FrameOutcome(batch=batch, alerts=tuple(alerts))

    def _observations(
        self, cam: _Camera, tracked: Detections, t: float, width: int, height: int
    ) -> list[TrackObservation]:
        classes = self.detector.classes
        cal = cam.info.calibration
        if cal is not None and not cam.watchdog.shifted:
            ground = ground_positions(cal, width, height, tracked.bottom_center)
            spans = pixel_spans(cal, width, height, tracked.bottom_center)
        else:
            ground = [None] * len(tracked)
            spans = np.full(len(tracked), _MAX_GROUND_M)
        # a box cut off by the frame's edge has no ground contact in view: no speed update
        x1s, x2s, y2s = tracked.xyxy[:, 0], tracked.xyxy[:, 2], tracked.xyxy[:, 3]
        clipped = (x1s <= _EDGE_PX) | (x2s >= width - _EDGE_PX) | (y2s >= height - _EDGE_PX)
        out = []
        for k in range(len(tracked)):
            cid = int(tracked.class_id[k])
            if not 0 <= cid < len(classes):
                continue
            tid = (cam.base + int(tracked.tracker_id[k])) % INT32_MAX
            x1, y1, x2, y2 = (round(float(v), 1) for v in tracked.xyxy[k])
            out.append(
                TrackObservation(
                    track_id=tid,
                    vehicle_class=classes[cid],
                    confidence=round(min(max(float(tracked.confidence[k]), 0.0), 1.0), 4),
                    bbox=BBox(x1=x1, y1=y1, x2=x2, y2=y2),
                    ground_xy=ground[k],
                    speed_kmh=self._speed(
                        cam, tid, t, ground[k], float(spans[k]), bool(clipped[k])
                    ),
                )
            )
        return out

    def _speed(
        self,
        cam: _Camera,
        tid: int,
        t: float,
        xy: tuple[float, float] | None,
        span_m: float,
        clipped: bool,
    ) -> float | None:
        if xy is None:
            return None
        noise = self.speed.noise_m(span_m)
        f = cam.speeds.get(tid)
        if f is None:
            f = cam.speeds[tid] = SpeedFilter(self.speed, t, *xy, noise_m=noise)
            return f.speed_kmh
        return f.speed_kmh if clipped else f.update(t, *xy, noise_m=noise)

    def _save_reference(self, cam: _Camera) -> None:
        ref = cam.watchdog.reference
        if self.references is None or cam.watchdog.reference_updates == cam.saved_reference:
            return
        cam.saved_reference = cam.watchdog.reference_updates
        if ref is not None:
            self.references.save(cam.info.camera_id, cam.info.version, ref)
