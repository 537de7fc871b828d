"""Camera health watchdog: frozen, black, occluded or shifted views (pure, no I/O).

The vision worker hands one small greyscale frame per camera every
:attr:`HealthConfig.sample_every_s` (event time) to :meth:`CameraWatchdog.observe`.  Each
sample is measured against the previous sample and a *reference view* (the first healthy
view after the camera was (re)calibrated):

* **frozen**: the picture does not change at all between samples (mean absolute difference
  below ``frozen_diff`` grey levels; live sensors always have some noise and light changes);
* **black**: mean and spread of the luminance both very low (lens capped, power, IR failure);
* **occluded**: at least ``occluded_share`` of the cells that had structure in the reference
  lost most of it (blurred, covered, sprayed);
* **shifted**: ORB features matched against the reference give a similarity transform that
  moves the image corners by more than ``shift_share`` of the image diagonal, or too few
  features match for ``unmatched_after_s`` on end (a view turned away): the calibration
  (homography) no longer holds.  A shorter spell of too few matches is no evidence either
  way (traffic covering the scene's features): the state is held.

The texture and shift checks look at the **background** of the view, the per-pixel median
of the last ``background_samples`` samples, so moving vehicles neither hide the scene's
features nor lend theirs to the transform (a vehicle matched against itself once made a
queue of traffic look like a 7% shift).

A raw condition must hold for its ``*_after_s`` before one alert is raised, and be absent for
``clear_after_s`` before one recovery is sent (hysteresis: a flickering condition raises
one alert, not one per sample).  Black masks the other checks, occlusion masks the shift
check (their measurements mean nothing then).  To follow slow light changes (day to night),
the reference is refreshed every ``reference_refresh_s`` while the view is healthy and
verified aligned; the transform back to the original reference is kept, so a slow drift
still adds up to a shift.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas.messages import Alert, Severity

GrayImage = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float64]
WORK_WIDTH = 320  # pixels: features and texture are measured at this width


class Condition(StrEnum):
    frozen = "frozen"
    black = "black"
    occluded = "occluded"
    shifted = "shifted"


@dataclass(frozen=True)
class HealthConfig:
    sample_every_s: float = 1.0
    frozen_diff: float = 0.25
    frozen_after_s: float = 10.0
    black_mean: float = 12.0
    black_std: float = 6.0
    black_after_s: float = 5.0
    grid: int = 8
    texture_min: float = 1.5
    texture_ratio: float = 0.3
    occluded_share: float = 0.5
    occluded_after_s: float = 10.0
    shift_share: float = 0.02
    min_matches: int = 15
    shifted_after_s: float = 5.0
    unmatched_after_s: float = 30.0
    background_samples: int = 5
    clear_after_s: float = 10.0
    reference_refresh_s: float = 300.0

    def raise_after(self, c: Condition) -> float:
        return {
            Condition.frozen: self.frozen_after_s,
            Condition.black: self.black_after_s,
            Condition.occluded: self.occluded_after_s,
            Condition.shifted: self.shifted_after_s,
        }[c]


@dataclass(frozen=True)
class Reference:
    """A reference view: the work-size image and the affine map (2x3) from the original
    reference view to this one (identity for the original)."""

    image: GrayImage
    to_view: FloatArray = field(default_factory=lambda: np.eye(2, 3))
    taken_at: float = 0.0


@dataclass(frozen=True)
class ViewSample:
    """Measurements of one sampled frame (None: not measured)."""

    t: float
    mean: float
    std: float
    change: float | None = None
    lost_share: float | None = None
    shift_share: float | None = None
    matches: int | None = None


def to_work(gray: GrayImage) -> GrayImage:
    """The frame at :data:`WORK_WIDTH` (area-averaged), greyscale uint8."""
    import cv2

    img: Any = np.asarray(gray, dtype=np.uint8)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    h, w = img.shape[:2]
    if w > WORK_WIDTH:
        size = (WORK_WIDTH, max(1, round(h * WORK_WIDTH / w)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img, dtype=np.uint8)


def cell_texture(img: GrayImage, grid: int) -> FloatArray:
    """Mean absolute gradient per cell of a ``grid`` x ``grid`` split, after a blur that
    removes sensor noise (structure stays)."""
    import cv2

    small = cv2.GaussianBlur(img.astype(np.float32), (5, 5), 1.2)
    gx = np.abs(np.diff(small, axis=1))[:-1, :]
    gy = np.abs(np.diff(small, axis=0))[:, :-1]
    g = gx + gy
    h, w = g.shape
    ys = np.linspace(0, h, grid + 1).astype(int)
    xs = np.linspace(0, w, grid + 1).astype(int)
    out = np.zeros((grid, grid))
    for i in range(grid):
        for j in range(grid):
            cell = g[ys[i] : ys[i + 1], xs[j] : xs[j + 1]]
            out[i, j] = float(cell.mean()) if cell.size else 0.0
    return out


Features = tuple[Any, Any]  # ORB keypoints and descriptors


def orb_features(img: GrayImage, n: int = 400) -> Features:
    import cv2

    orb = cv2.ORB.create(nfeatures=n, edgeThreshold=15, patchSize=15, fastThreshold=12)
    kp, desc = orb.detectAndCompute(img, None)
    return kp, desc


def estimate_shift(ref: GrayImage | Features, cur: GrayImage) -> tuple[FloatArray | None, int]:
    """Similarity transform (2x3) mapping the reference (image or its :func:`orb_features`)
    onto ``cur`` and its RANSAC inlier count; (None, n) when it cannot be estimated."""
    import cv2

    kr, dr = ref if isinstance(ref, tuple) else orb_features(ref)
    kc, dc = orb_features(cur)
    if dr is None or dc is None or len(kr) < 4 or len(kc) < 4:
        return None, 0
    matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(dr, dc)
    if len(matches) < 4:
        return None, len(matches)
    src = np.array([kr[m.queryIdx].pt for m in matches], dtype=np.float32)
    dst = np.array([kc[m.trainIdx].pt for m in matches], dtype=np.float32)
    m, inliers = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=2.0, maxIters=2000, confidence=0.99
    )
    n = int(inliers.sum()) if inliers is not None else 0
    return (np.asarray(m, dtype=np.float64) if m is not None else None), n


def compose(a: FloatArray, b: FloatArray) -> FloatArray:
    """Affine ``a`` after ``b`` (both 2x3)."""
    a3 = np.vstack([a, [0.0, 0.0, 1.0]])
    b3 = np.vstack([b, [0.0, 0.0, 1.0]])
    out: FloatArray = (a3 @ b3)[:2]
    return out


def corner_shift_share(m: FloatArray, width: int, height: int) -> float:
    """Largest displacement of an image corner under ``m``, as a share of the diagonal."""
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float64)
    moved = corners @ m[:, :2].T + m[:, 2]
    return float(np.linalg.norm(moved - corners, axis=1).max() / np.hypot(width, height))


#: a condition's hysteresis: (on since, off since, raised at)
Hysteresis = tuple[float | None, float | None, float | None]


@dataclass
class _Hysteresis:
    on_since: float | None = None
    off_since: float | None = None
    raised_at: float | None = None

    @property
    def active(self) -> bool:
        return self.raised_at is not None


class CameraWatchdog:
    """The health state of one camera; feed samples in event-time order."""

    def __init__(
        self,
        camera_id: str,
        config: HealthConfig | None = None,
        reference: Reference | None = None,
    ) -> None:
        self.camera_id = camera_id
        self.config = config or HealthConfig()
        self.reference = reference
        #: increments whenever :attr:`reference` changes (the worker persists it then)
        self.reference_updates = 0
        self.last: ViewSample | None = None
        self._prev: GrayImage | None = None
        self._ref_texture: FloatArray | None = (
            cell_texture(reference.image, self.config.grid) if reference is not None else None
        )
        self._state = {c: _Hysteresis() for c in Condition}
        self._features: tuple[Reference, Features] | None = None
        self._recent: deque[GrayImage] = deque(maxlen=max(1, self.config.background_samples))
        self._unmatched_since: float | None = None

    @property
    def active(self) -> frozenset[Condition]:
        return frozenset(c for c, s in self._state.items() if s.active)

    @property
    def shifted(self) -> bool:
        """The view no longer matches the calibration: ground positions are not valid."""
        return self._state[Condition.shifted].active

    def state(self) -> tuple[dict[str, Hysteresis], float | None]:
        """Each condition's hysteresis by name, and since when too few features match:
        with :attr:`last`, what :meth:`restore` takes to go on after a restart."""
        conditions = {
            str(c): (h.on_since, h.off_since, h.raised_at) for c, h in self._state.items()
        }
        return conditions, self._unmatched_since

    def restore(
        self,
        conditions: Mapping[str, Hysteresis],
        unmatched_since: float | None,
        last: ViewSample | None,
    ) -> None:
        """Go on from :meth:`state` (``conditions`` must name every condition)."""
        for c, (on, off, raised) in conditions.items():
            h = self._state[Condition(c)]
            h.on_since, h.off_since, h.raised_at = on, off, raised
        self._unmatched_since = unmatched_since
        self.last = last

    # --- observation ---------------------------------------------------------------------
    def observe(self, t: float, gray: GrayImage) -> list[Alert]:
        cfg = self.config
        img = to_work(gray)
        mean, std = float(img.mean()), float(img.std())
        raw: dict[Condition, bool | None] = dict.fromkeys(Condition)
        change = None
        if self._prev is not None and self._prev.shape == img.shape:
            change = float(np.abs(img.astype(np.int16) - self._prev.astype(np.int16)).mean())
            raw[Condition.frozen] = change < cfg.frozen_diff
        self._prev = img
        raw[Condition.black] = mean < cfg.black_mean and std < cfg.black_std
        if raw[Condition.black]:
            raw[Condition.frozen] = None  # a dark sensor shows no change either
        lost = shift = None
        matches = None
        m = None
        if not raw[Condition.black]:
            img = self._background(img)
            texture = cell_texture(img, cfg.grid)
            if self.reference is None or self.reference.image.shape != img.shape:
                if (texture >= cfg.texture_min).mean() >= 0.1:
                    self._set_reference(Reference(img, taken_at=t), texture)
            elif self._ref_texture is not None:
                had = self._ref_texture >= cfg.texture_min
                if had.any():
                    gone = texture < cfg.texture_ratio * self._ref_texture
                    lost = float((gone & had).sum() / had.sum())
                    raw[Condition.occluded] = lost >= cfg.occluded_share
                if not raw[Condition.occluded]:
                    m, matches = estimate_shift(self._ref_features(), img)
                    if m is None or matches < cfg.min_matches:
                        m = None
                        if self._unmatched_since is None:
                            self._unmatched_since = t
                        if t - self._unmatched_since >= cfg.unmatched_after_s:
                            raw[Condition.shifted] = True
                    else:
                        self._unmatched_since = None
                        total = compose(m, self.reference.to_view)
                        h, w = img.shape
                        shift = corner_shift_share(total, w, h)
                        raw[Condition.shifted] = shift > cfg.shift_share
                if (
                    m is not None
                    and not any(raw.values())
                    and not self.active
                    and t - self.reference.taken_at >= cfg.reference_refresh_s
                ):
                    self._set_reference(
                        Reference(img, compose(m, self.reference.to_view), taken_at=t), texture
                    )
        self.last = ViewSample(t, mean, std, change, lost, shift, matches)
        alerts: list[Alert] = []
        for c in Condition:
            alerts += self._step(c, raw[c], t)
        return alerts

    def reset(
        self, t: float, reason: str = "camera recalibrated", reference: Reference | None = None
    ) -> list[Alert]:
        """The camera got a new calibration: a shifted or occluded condition ends (recovery
        alerts) and ``reference`` (None: the next healthy view) becomes the reference."""
        self.reference = reference
        self._ref_texture = (
            cell_texture(reference.image, self.config.grid) if reference is not None else None
        )
        self.reference_updates += 1
        alerts = []
        for c in (Condition.shifted, Condition.occluded):
            s = self._state[c]
            if s.active:
                alerts.append(self._recovered(c, t, reason))
            self._state[c] = _Hysteresis()
        return alerts

    def _background(self, img: GrayImage) -> GrayImage:
        """The per-pixel median of the recent samples (``img`` until there are three)."""
        if self._recent and self._recent[0].shape != img.shape:
            self._recent.clear()
        self._recent.append(img)
        if len(self._recent) < 3:
            return img
        background: GrayImage = np.median(np.stack(self._recent), axis=0).astype(np.uint8)
        return background

    def _ref_features(self) -> Features:
        assert self.reference is not None
        if self._features is None or self._features[0] is not self.reference:
            self._features = (self.reference, orb_features(self.reference.image))
        return self._features[1]

    def _set_reference(self, ref: Reference, texture: FloatArray) -> None:
        self.reference = ref
        self._ref_texture = texture
        self.reference_updates += 1

    # --- hysteresis ----------------------------------------------------------------------
    def _step(self, c: Condition, raw: bool | None, t: float) -> list[Alert]:
        s = self._state[c]
        if raw is None:  # not measurable now: hold the state
            return []
        if raw:
            s.off_since = None
            if s.on_since is None:
                s.on_since = t
            if not s.active and t - s.on_since >= self.config.raise_after(c):
                s.raised_at = t
                return [self._raised(c, t, s.on_since)]
        else:
            s.on_since = None
            if s.off_since is None:
                s.off_since = t
            if s.active and t - s.off_since >= self.config.clear_after_s:
                alert = self._recovered(c, t, "condition cleared")
                s.raised_at = None
                return [alert]
        return []

    # --- alerts --------------------------------------------------------------------------
    def _id(self, kind: str, t: float) -> str:
        key = f"{self.camera_id}|{kind}|{round(t * 1000)}"
        return f"camh-{hashlib.sha256(key.encode()).hexdigest()[:24]}"

    def _details(self) -> dict[str, float | int | str]:
        s = self.last
        if s is None:
            return {}
        out: dict[str, float | int | str] = {
            "mean_luma": round(s.mean, 2),
            "std_luma": round(s.std, 2),
        }
        for name in ("change", "lost_share", "shift_share", "matches"):
            v = getattr(s, name)
            if v is not None:
                out[name] = round(v, 4) if isinstance(v, float) else v
        return out

    def _raised(self, c: Condition, t: float, since: float) -> Alert:
        s = self.last
        assert s is not None
        text = {
            Condition.frozen: f"picture has not changed for {t - since:.0f} s (frozen feed)",
            Condition.black: f"picture is black (mean luminance {s.mean:.1f})",
            Condition.occluded: f"{(s.lost_share or 0) * 100:.0f}% of the view lost its "
            "detail (covered, blurred or blocked)",
            Condition.shifted: (
                f"view moved by {(s.shift_share or 0) * 100:.1f}% of the image diagonal"
                if s.shift_share is not None
                else f"view no longer matches its reference ({s.matches or 0} features match)"
            )
            + "; the calibration is not valid: ground positions and violations from this "
            "camera are suspended until it is recalibrated or the view returns",
        }[c]
        return Alert(
            alert_id=self._id(f"camera_{c}", t),
            kind=f"camera_{c}",
            severity=Severity.critical if c is Condition.shifted else Severity.warning,
            source="camera",
            subject_id=self.camera_id,
            raised_at=datetime.fromtimestamp(t, tz=UTC),
            message=f"camera {self.camera_id}: {text}",
            details={"condition": str(c), "since_t": round(since, 3), **self._details()},
        )

    def _recovered(self, c: Condition, t: float, reason: str) -> Alert:
        raised = self._state[c].raised_at
        return Alert(
            alert_id=self._id(f"camera_recovered_{c}", t),
            kind="camera_recovered",
            severity=Severity.info,
            source="camera",
            subject_id=self.camera_id,
            raised_at=datetime.fromtimestamp(t, tz=UTC),
            message=f"camera {self.camera_id}: {c} condition ended ({reason})",
            details={
                "condition": str(c),
                "reason": reason,
                "active_s": round(t - raised, 3) if raised is not None else 0.0,
                **self._details(),
            },
        )
