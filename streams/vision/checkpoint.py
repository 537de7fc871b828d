"""What the vision worker keeps on disk to survive restarts (like :mod:`streams.traffic.durable`).

* The tracker snapshot (:class:`SnapshotFile`): before every offset commit
  (:meth:`~streams.vision.stage.VisionStage.checkpoint`), once the track batches of every
  frame handled so far are acknowledged by Kafka, the worker writes one :class:`Snapshot`:
  the offsets it is about to commit and, per camera, its complete processing state
  (:class:`CameraSnapshot`: tracks with their Kalman filters, the id counter and base, the
  last frame time, the speed filters of live tracks, the health watchdog's conditions and the
  reference view it compares with).  The state is exactly the one after the last frame
  below those offsets, so a restarted worker that restores it and resumes at those offsets
  sends the same track batches (same ids for the same vehicles) as if it had never stopped.
  The file is written to a temporary name, synced and renamed over the old one: a crash
  leaves the old snapshot or the new one, never a mix.
* The watchdog's reference views (:class:`FileReferenceStore`): the latest per camera and
  calibration version, and the one before (a snapshot may still refer to it).

Snapshot format: JSON, ``{"v": 3, "kind": KIND, "written_at", "offsets": [[topic,
partition, offset]], "cameras": [...]}``; the float arrays of a tracker (means, covariances,
boxes, appearance descriptors) and the speed filters are base64 of little-endian float64,
exact and about half the size of decimal text.  The size is bounded by the live tracks, not
by time: about 1.2 KB per track, a few hundred bytes per camera.  (Version 1 kept speed
paths, version 2 no appearance; such a snapshot is refused like any unknown one.)

:meth:`SnapshotFile.load` returns None for a missing file and, after logging an error, for
an unreadable, corrupt or unknown one: the worker then starts without it (its new trackers
take ids above any id issued before, see :func:`~streams.vision.processor.id_base`).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streams.traffic.geometry import FloatArray
from streams.vision.health import CameraWatchdog, Condition, Hysteresis, Reference, ViewSample
from streams.vision.speed import STATE_SIZE
from streams.vision.tracking import TrackerState

log = logging.getLogger(__name__)
KIND = "citystream.vision.trackers"
VERSION = 3  # 3: trackers keep their appearance descriptors

Offsets = dict[tuple[str, int], int]  # (topic, partition) -> next offset to consume
INT32_MAX = 2_147_483_647  # track ids (with their base) fit the DB's integer column


# --- what is kept (pure) -----------------------------------------------------------------------


@dataclass(frozen=True)
class HealthSnapshot:
    """A camera watchdog's state but its images: per condition its hysteresis, since when
    too few features match, the last sample (alert details), and the reference view it
    compares with, by the time it was taken (the image is in the :class:`FileReferenceStore`).

    Not kept (images, 60 KB each): the previous sample, so the first sample after a restore
    measures no change (the frozen condition holds its state for it), and the recent samples
    whose median is the background the texture and shift checks look at, so those checks see
    a background of fewer samples for ``background_samples`` samples after a restore.  A raw
    condition that differs then is absorbed by the hysteresis (``*_after_s``) unless it sits
    exactly at a boundary: the conditions (and with them the ground positions withheld while
    the view is shifted) are the same as without the restart, save in that case."""

    conditions: Mapping[str, Hysteresis]
    reference_taken_at: float | None
    unmatched_since: float | None = None
    last: ViewSample | None = None

    def __post_init__(self) -> None:
        if set(self.conditions) != {str(c) for c in Condition}:
            raise ValueError(f"HealthSnapshot.conditions: {sorted(self.conditions)}")
        for c, times in self.conditions.items():
            if len(times) != 3 or not all(x is None or math.isfinite(x) for x in times):
                raise ValueError(f"HealthSnapshot.conditions[{c}]: {times}")

    @classmethod
    def of(cls, w: CameraWatchdog) -> HealthSnapshot:
        conditions, unmatched_since = w.state()
        ref = w.reference.taken_at if w.reference is not None else None
        return cls(conditions, ref, unmatched_since, w.last)

    def apply(self, w: CameraWatchdog) -> None:
        """Put this state into ``w`` (created with the reference view this refers to)."""
        w.restore(self.conditions, self.unmatched_since, self.last)


@dataclass(frozen=True, eq=False)
class CameraSnapshot:
    """One camera's processing state, as :meth:`VisionProcessor.snapshot` takes it.

    ``fingerprint`` is the camera row's (a different one at restore time means it was
    recalibrated meanwhile: the tracks are dropped, the ids go on); ``base`` the id base;
    ``last_t`` the event time of its last frame (earlier frames are stale);
    ``next_health_t`` its next watchdog sample; ``speeds`` the speed filter state
    (:meth:`SpeedFilter.state`) of each live track id (as sent, i.e. with the base); ``health`` the
    watchdog's (its shifted condition withholds ground positions)."""

    camera_id: str
    fingerprint: str
    base: int
    last_t: float
    next_health_t: float
    tracker: TrackerState
    speeds: Mapping[int, FloatArray]
    health: HealthSnapshot

    def __post_init__(self) -> None:
        if not 0 <= self.base < INT32_MAX:
            raise ValueError(f"CameraSnapshot.base {self.base} outside 0..{INT32_MAX - 1}")
        if not np.isfinite(self.last_t) or np.isnan(self.next_health_t):
            raise ValueError("CameraSnapshot needs a finite last_t")
        for tid, speed in self.speeds.items():
            if np.shape(speed) != (STATE_SIZE,):
                raise ValueError(f"CameraSnapshot.speeds[{tid}]: shape {np.shape(speed)}")
            if not np.isfinite(speed).all():
                raise ValueError(f"CameraSnapshot.speeds[{tid}] holds NaN or infinity")


@dataclass(frozen=True)
class SavedCamera:
    """A camera's state and the partition of ``camera.frames`` its frames come from."""

    partition: int
    state: CameraSnapshot


@dataclass(frozen=True)
class Snapshot:
    offsets: Offsets
    cameras: Mapping[str, SavedCamera] = field(default_factory=dict)
    written_at: float = 0.0


class SnapshotError(ValueError):
    """A snapshot file that cannot be used (corrupt, truncated, another format)."""


# --- encoding ----------------------------------------------------------------------------------
def _pack(a: FloatArray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f8").tobytes()).decode("ascii")


def _unpack(s: Any, shape: tuple[int, ...]) -> FloatArray:
    if not isinstance(s, str):
        raise SnapshotError(f"expected base64 text, got {type(s).__name__}")
    raw = base64.b64decode(s.encode("ascii"), validate=True)
    n = math.prod(shape)
    if len(raw) != 8 * n:
        raise SnapshotError(f"{len(raw)} bytes of floats where {n} floats belong")
    out: FloatArray = np.frombuffer(raw, dtype="<f8").astype(np.float64).reshape(shape)
    return out


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def encode_tracker(st: TrackerState) -> dict[str, Any]:
    n = len(st)
    return {
        "next_id": st.next_id,
        "frame_count": st.frame_count,
        "n": n,
        "ids": st.track_ids.tolist(),
        "states": st.states.tolist(),
        "hits": st.hits.tolist(),
        "missed": st.missed.tolist(),
        "confidence": _pack(st.confidence),
        "means": _pack(st.means),
        "covariances": _pack(st.covariances),
        "boxes": _pack(st.last_boxes),
        "votes": [[[c, v] for c, v in votes] for votes in st.class_votes],
        "appearance_dim": int(st.appearances.shape[1]),
        "appearances": _pack(st.appearances),
    }


def decode_tracker(d: Mapping[str, Any]) -> TrackerState:
    n = int(d["n"])
    if n < 0:
        raise SnapshotError(f"negative track count {n}")
    return TrackerState(
        next_id=int(d["next_id"]),
        frame_count=int(d["frame_count"]),
        track_ids=np.array(d["ids"], dtype=np.int64).reshape(-1),
        states=np.array(d["states"], dtype=np.int64).reshape(-1),
        hits=np.array(d["hits"], dtype=np.int64).reshape(-1),
        missed=np.array(d["missed"], dtype=np.int64).reshape(-1),
        confidence=_unpack(d["confidence"], (n,)),
        means=_unpack(d["means"], (n, 8)),
        covariances=_unpack(d["covariances"], (n, 8, 8)),
        last_boxes=_unpack(d["boxes"], (n, 4)),
        class_votes=tuple(
            tuple((int(c), float(v)) for c, v in votes) for votes in _list(d["votes"])
        ),
        appearances=_unpack(
            d["appearances"], (n, dim) if (dim := int(d["appearance_dim"])) else (0, 0)
        ),
    )


def _list(x: Any) -> list[Any]:
    if not isinstance(x, list):
        raise SnapshotError(f"expected a list, got {type(x).__name__}")
    return x


def encode_health(h: HealthSnapshot) -> dict[str, Any]:
    return {
        "conditions": {c: list(times) for c, times in sorted(h.conditions.items())},
        "reference_taken_at": h.reference_taken_at,
        "unmatched_since": h.unmatched_since,
        "last": None if h.last is None else dataclasses.asdict(h.last),
    }


def _opt(x: Any) -> float | None:
    return None if x is None else float(x)


def decode_health(d: Mapping[str, Any]) -> HealthSnapshot:
    last = d["last"]
    conditions = {}
    for c, times in dict(d["conditions"]).items():
        on, off, raised = _list(times)
        conditions[str(c)] = (_opt(on), _opt(off), _opt(raised))
    return HealthSnapshot(
        conditions,
        _opt(d["reference_taken_at"]),
        _opt(d["unmatched_since"]),
        None if last is None else ViewSample(**dict(last)),
    )


def encode_camera(partition: int, cam: CameraSnapshot) -> dict[str, Any]:
    return {
        "camera_id": cam.camera_id,
        "partition": partition,
        "fingerprint": cam.fingerprint,
        "base": cam.base,
        "last_t": cam.last_t,
        "next_health_t": _finite_or_none(cam.next_health_t),
        "tracker": encode_tracker(cam.tracker),
        "speeds": [[tid, _pack(s)] for tid, s in cam.speeds.items()],
        "health": encode_health(cam.health),
    }


def decode_camera(d: Mapping[str, Any]) -> SavedCamera:
    health = d["next_health_t"]
    speeds: dict[int, FloatArray] = {}
    for tid, packed in _list(d["speeds"]):
        speeds[int(tid)] = _unpack(packed, (STATE_SIZE,))
    cam = CameraSnapshot(
        camera_id=str(d["camera_id"]),
        fingerprint=str(d["fingerprint"]),
        base=int(d["base"]),
        last_t=float(d["last_t"]),
        next_health_t=-math.inf if health is None else float(health),
        tracker=decode_tracker(d["tracker"]),
        speeds=speeds,
        health=decode_health(d["health"]),
    )
    return SavedCamera(int(d["partition"]), cam)


def encode(snapshot: Snapshot) -> bytes:
    doc = {
        "v": VERSION,
        "kind": KIND,
        "written_at": snapshot.written_at,
        "offsets": [[t, p, o] for (t, p), o in sorted(snapshot.offsets.items())],
        "cameras": [
            encode_camera(c.partition, c.state) for _, c in sorted(snapshot.cameras.items())
        ],
    }
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def decode(data: bytes) -> Snapshot:
    """The snapshot in ``data``; raises :class:`SnapshotError` for anything else."""
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            raise SnapshotError("not a vision tracker snapshot")
        if doc.get("v") != VERSION:
            raise SnapshotError(f"snapshot version {doc.get('v')!r}, this worker reads {VERSION}")
        offsets: Offsets = {}
        for topic, partition, offset in _list(doc["offsets"]):
            if int(offset) < 0:
                raise SnapshotError(f"negative offset {offset} of {topic}[{partition}]")
            offsets[(str(topic), int(partition))] = int(offset)
        cameras = {}
        for c in _list(doc["cameras"]):
            saved = decode_camera(c)
            cameras[saved.state.camera_id] = saved
        return Snapshot(offsets, cameras, float(doc["written_at"]))
    except SnapshotError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
        # json, base64 (binascii.Error is a ValueError), shapes, validation, missing fields
        raise SnapshotError(f"{type(exc).__name__}: {exc}") from exc


# --- the file ----------------------------------------------------------------------------------
class SnapshotFile:
    """One snapshot per consumer group under the worker's state directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last_size = 0

    def load(self) -> Snapshot | None:
        """The last snapshot saved; None if there is none or it cannot be used (logged)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error(
                "cannot read the tracker snapshot %s (%s): trackers start afresh", self.path, exc
            )
            return None
        try:
            return decode(data)
        except SnapshotError as exc:
            log.error(
                "ignoring the tracker snapshot %s: %s; trackers start afresh (new ids above "
                "any issued before)",
                self.path,
                exc,
            )
            return None

    def save(self, offsets: Offsets, cameras: Sequence[tuple[int, CameraSnapshot]]) -> Snapshot:
        """Write atomically (temporary file, fsync, rename); raises OSError."""
        snap = Snapshot(
            dict(offsets), {c.camera_id: SavedCamera(p, c) for p, c in cameras}, time.time()
        )
        data = encode(snap)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
        self.last_size = len(data)
        return snap


# --- reference views of the health watchdog ---------------------------------------------------
class FileReferenceStore:
    """Watchdog reference views as ``<root>/<camera_id>.v<version>.npz`` (small greyscale),
    and the one before as ``.prev.npz`` (a tracker snapshot may refer to it)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, camera_id: str, version: int, suffix: str = "") -> Path:
        return self.root / f"{camera_id}.v{version}{suffix}.npz"

    def load(self, camera_id: str, version: int, taken_at: float | None = None) -> Reference | None:
        if taken_at is None:
            return self._read(self._path(camera_id, version))
        for suffix in ("", ".prev"):
            ref = self._read(self._path(camera_id, version, suffix))
            if ref is not None and ref.taken_at == taken_at:
                return ref
        return None

    @staticmethod
    def _read(path: Path) -> Reference | None:
        try:
            with np.load(path) as data:
                return Reference(
                    np.asarray(data["image"], dtype=np.uint8),
                    np.asarray(data["to_view"], dtype=np.float64).reshape(2, 3),
                    float(data["taken_at"]),
                )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable reference view %s: %s", path, exc)
            return None

    def save(self, camera_id: str, version: int, reference: Reference) -> None:
        path = self._path(camera_id, version)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(
                tmp, image=reference.image, to_view=reference.to_view, taken_at=reference.taken_at
            )
            if path.exists():
                path.replace(self._path(camera_id, version, ".prev"))
            tmp.replace(path)
        except OSError as exc:  # the watchdog works without it; a restart re-learns the view
            log.warning("cannot save the reference view of %s: %s", camera_id, exc)
