"""Evidence bundles: everything needed to judge a violation later, tamper-evident.

A bundle is a zip archive with fixed entry order (sorted names), fixed timestamps and
permissions and no compression (the frames are JPEG already), so the same evidence always
gives the same bytes and the same SHA-256.  The SHA-256 goes into the violation's DB row;
:func:`verify_bundle` re-hashes the file and checks every entry against ``manifest.json``.

Entries::

    manifest.json        violation, signal state, calibration/model versions, confidence,
                         SHA-256 of every other entry
    trajectory.json      the track: times, ground positions, image boxes
    calibration.json     the calibration in force (canonical JSON)
    frames/before_NN.jpg frames/after_NN.jpg   frames around the violation
    crop.jpg             the vehicle, cut from the frame nearest the violation
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.traffic.calibration import Calibration
from streams.traffic.rules.common import RuleViolation
from streams.traffic.tracks import TrackHistory

_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
BUNDLE_FORMAT = "citystream-evidence/1"


@dataclass(frozen=True)
class TimedFrame:
    t: float
    jpeg: bytes


class FrameRing:
    """JPEG frames of one camera, for evidence: from ``seconds`` before the moment evidence
    may still be wanted for (:meth:`trim`: the camera's tracks' event time) on.  Frames that
    run ahead of their tracks (a vision worker catching up, a backlog read frames first) are
    kept until the tracks come, up to ``max_s`` of frames in all."""

    def __init__(self, seconds: float = 10.0, max_s: float = 120.0) -> None:
        self.seconds = seconds
        self.max_s = max(max_s, seconds)
        self._frames: deque[TimedFrame] = deque()

    def add(self, t: float, jpeg: bytes) -> None:
        self._frames.append(TimedFrame(t, jpeg))
        while self._frames and t - self._frames[0].t > self.max_s:
            self._frames.popleft()

    def trim(self, now: float) -> None:
        """Forget the frames more than ``seconds`` before ``now``."""
        while self._frames and now - self._frames[0].t > self.seconds:
            self._frames.popleft()

    def around(
        self, t: float, n_before: int = 3, n_after: int = 3
    ) -> tuple[list[TimedFrame], list[TimedFrame]]:
        before = [f for f in self._frames if f.t <= t][-n_before:] if n_before else []
        after = [f for f in self._frames if f.t > t][:n_after]
        return before, after


def crop_jpeg(jpeg: bytes, box: Sequence[float], pad: float = 0.15, quality: int = 90) -> bytes:
    """Cut ``box`` (x1, y1, x2, y2 px, padded by ``pad`` of its size) out of a JPEG."""
    import cv2  # lazy: the rules and counters do not need OpenCV
    import numpy as np

    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("cannot decode JPEG for the evidence crop")
    h, w = img.shape[:2]
    x1, y1, x2, y2 = box
    px, py = (x2 - x1) * pad, (y2 - y1) * pad
    c = img[
        max(int(y1 - py), 0) : min(int(y2 + py) + 1, h),
        max(int(x1 - px), 0) : min(int(x2 + px) + 1, w),
    ]
    if c.size == 0:
        raise ValueError(f"crop box {tuple(box)} lies outside the {w}x{h} frame")
    ok, buf = cv2.imencode(".jpg", c, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("cannot encode the evidence crop")
    return bytes(buf)


@dataclass(frozen=True)
class Evidence:
    violation: RuleViolation
    track: TrackHistory
    calibration: Calibration
    model_version: str
    frames_before: Sequence[TimedFrame] = ()
    frames_after: Sequence[TimedFrame] = ()
    crop: bytes | None = None
    signal: dict[str, Any] = field(default_factory=dict)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def build_bundle(ev: Evidence) -> bytes:
    """The deterministic zip archive of the evidence."""
    v = ev.violation
    tr = ev.track
    entries: dict[str, bytes] = {
        "calibration.json": ev.calibration.to_json().encode(),
        "trajectory.json": _json(
            {
                "camera_id": tr.camera_id,
                "track_id": tr.track_id,
                "vehicle_class": str(tr.vehicle_class),
                "t": [round(float(x), 4) for x in tr.t],
                "xy": [[round(float(a), 3), round(float(b), 3)] for a, b in tr.xy],
                "bbox": [[round(float(c), 1) for c in b] for b in tr.bbox],
                "confidence": [round(float(c), 4) for c in tr.confidence],
            }
        ),
    }
    for i, f in enumerate(ev.frames_before):
        entries[f"frames/before_{i:02d}.jpg"] = f.jpeg
    for i, f in enumerate(ev.frames_after):
        entries[f"frames/after_{i:02d}.jpg"] = f.jpeg
    if ev.crop is not None:
        entries["crop.jpg"] = ev.crop
    manifest = {
        "format": BUNDLE_FORMAT,
        "violation_id": v.violation_id,
        "kind": str(v.kind),
        "camera_id": v.camera_id,
        "intersection_id": ev.calibration.intersection_id,
        "track_id": v.track_id,
        "vehicle_class": str(v.vehicle_class),
        "occurred_at": v.occurred_at.isoformat(),
        "t": round(v.t, 4),
        "ground_xy": [round(v.ground_xy[0], 3), round(v.ground_xy[1], 3)],
        "confidence": v.confidence,
        "details": v.details,
        "signal": ev.signal,
        "calibration_version": ev.calibration.calibration_version,
        "model_version": ev.model_version,
        "frame_times": {
            "before": [round(f.t, 4) for f in ev.frames_before],
            "after": [round(f.t, 4) for f in ev.frames_after],
        },
        "entries": {name: _sha(data) for name, data in sorted(entries.items())},
    }
    entries["manifest.json"] = _json(manifest)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.create_system = 3
            zf.writestr(info, entries[name])
    return buf.getvalue()


@dataclass(frozen=True)
class StoredEvidence:
    uri: str
    path: Path
    sha256: str


def store_bundle(root: str | Path, ev: Evidence) -> StoredEvidence:
    """Write the bundle under ``root/<camera_id>/<violation_id>.zip`` (atomically) and
    return its relative URI and SHA-256."""
    data = build_bundle(ev)
    rel = Path(ev.violation.camera_id) / f"{ev.violation.violation_id}.zip"
    path = Path(root) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".zip.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return StoredEvidence(uri=rel.as_posix(), path=path, sha256=_sha(data))


def verify_bundle(path: str | Path, sha256: str) -> bool:
    """True when the file hashes to ``sha256`` and every entry matches the manifest."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return False
    if _sha(data) != sha256:
        return False
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            manifest = json.loads(zf.read("manifest.json"))
            names = sorted(n for n in zf.namelist() if n != "manifest.json")
            if names != sorted(manifest["entries"]):
                return False
            return all(_sha(zf.read(n)) == manifest["entries"][n] for n in names)
    except (zipfile.BadZipFile, KeyError, ValueError):
        return False
