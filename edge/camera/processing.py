"""Pure frame handling of the camera agent: resize, privacy blur, JPEG, pacing, drop-oldest.

Nothing here talks to a broker or a device; everything is testable with numpy arrays.

* :func:`resize_to_width` scales a frame to a target width, keeping its aspect ratio;
* :func:`blur_regions` blurs polygons (pixel coordinates of the *output* frame) and leaves
  every pixel outside them untouched;
* :class:`FramePacer` keeps a target frame rate (drops frames that come too early on the
  source's own clock) and, for recorded sources, says how long to wait so frames leave at
  real time or time-warped (``speed``);
* :class:`DropOldestQueue` is the bounded hand-off between the capture and publisher threads:
  when it is full the *oldest* frame goes, because for video freshness beats completeness.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Sequence
from typing import Generic, TypeVar

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
Point = tuple[int, int]
Polygon = tuple[Point, ...]
T = TypeVar("T")


# --- geometry of the output frame ----------------------------------------------------------


def parse_polygon(text: str) -> Polygon:
    """``"x1,y1 x2,y2 x3,y3 ..."`` (pixels of the output frame) -> polygon; >= 3 points."""
    points: list[Point] = []
    for part in text.split():
        xy = part.split(",")
        if len(xy) != 2:
            raise ValueError(f"blur polygon point {part!r} is not 'x,y' (in {text!r})")
        try:
            x, y = int(float(xy[0])), int(float(xy[1]))
        except ValueError:
            raise ValueError(f"blur polygon point {part!r} is not numeric (in {text!r})") from None
        if x < 0 or y < 0:
            raise ValueError(f"blur polygon point {part!r} is negative (in {text!r})")
        points.append((x, y))
    if len(points) < 3:
        raise ValueError(f"a blur polygon needs at least 3 points 'x,y', got {text!r}")
    return tuple(points)


def output_size(width: int, height: int, target_width: int) -> tuple[int, int]:
    """(w, h) of a ``width`` x ``height`` frame scaled to ``target_width`` (0: unchanged),
    keeping the aspect ratio; the height is rounded to an even number (encoders like it)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    if target_width < 0:
        raise ValueError(f"target width must be >= 0, got {target_width}")
    if target_width in (0, width):
        return width, height
    h = max(2, 2 * round(height * target_width / width / 2))
    return target_width, h


def resize_to_width(img: Image, target_width: int) -> Image:
    """``img`` scaled to ``target_width`` keeping its aspect ratio (area filter downwards)."""
    h, w = img.shape[:2]
    ow, oh = output_size(w, h, target_width)
    if (ow, oh) == (w, h):
        return img
    interp = cv2.INTER_AREA if ow < w else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(img, (ow, oh), interpolation=interp), dtype=np.uint8)


def blur_regions(img: Image, polygons: Sequence[Polygon], kernel: int = 41) -> Image:
    """A copy of ``img`` with each polygon's area strongly blurred (pixelated, then a Gaussian
    blur), pixels outside every polygon unchanged.  Parts outside the image are ignored."""
    if not polygons:
        return img
    if kernel < 3:
        raise ValueError("blur kernel must be >= 3")
    k = kernel | 1  # odd
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    for poly in polygons:
        cv2.fillPoly(mask, [np.asarray(poly, dtype=np.int32)], 255)
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return img
    # blur only the bounding box of the regions (plus a margin), not the whole frame
    m = k
    y0, y1 = max(0, int(ys.min()) - m), min(h, int(ys.max()) + m + 1)
    x0, x1 = max(0, int(xs.min()) - m), min(w, int(xs.max()) + m + 1)
    roi = img[y0:y1, x0:x1]
    rh, rw = roi.shape[:2]
    cell = max(2, k // 4)
    small = cv2.resize(roi, (max(1, rw // cell), max(1, rh // cell)), interpolation=cv2.INTER_AREA)
    pix = cv2.resize(small, (rw, rh), interpolation=cv2.INTER_NEAREST)
    blurred = cv2.GaussianBlur(pix, (k, k), 0)
    out = img.copy()
    sub = mask[y0:y1, x0:x1] > 0
    out[y0:y1, x0:x1][sub] = blurred[sub]
    return out


def encode_jpeg(img: Image, quality: int) -> bytes:
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be within 1..100, got {quality}")
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"JPEG encoding failed for a frame of shape {img.shape}")
    return bytes(buf)


# --- pacing ---------------------------------------------------------------------------------


class FramePacer:
    """Target frame rate and real-time pacing, on the source's own clock (``media_t``, s).

    :meth:`keep` decimates: a frame is kept when it is due (one per ``1 / fps`` seconds of
    source time); a gap (or a jump back, e.g. a looped file) resynchronises instead of
    bursting.  :meth:`wait_s` says how long to sleep before handing a kept frame on so that
    source time advances ``speed`` times as fast as wall time (``speed`` 0: no waiting).
    When the consumer falls more than ``max_lag_s`` behind, the schedule is re-anchored
    (counted in :attr:`reanchors`) rather than rushing to catch up.
    """

    def __init__(self, fps: float, speed: float = 1.0, max_lag_s: float = 1.0) -> None:
        if not 0 < fps <= 1000:
            raise ValueError(f"fps must be within (0, 1000], got {fps}")
        if speed < 0:
            raise ValueError(f"speed must be >= 0 (0: as fast as possible), got {speed}")
        self.fps = fps
        self.period = 1.0 / fps
        self.speed = speed
        self.max_lag_s = max_lag_s
        self.reanchors = 0
        self.behind_s = 0.0  # how late the last frame was against its slot
        self._next_due: float | None = None
        self._last: float | None = None
        self._anchor: tuple[float, float] | None = None  # (media_t, wall monotonic)
        self._eps = self.period * 1e-3

    def keep(self, media_t: float) -> bool:
        """Whether the frame at ``media_t`` is due at the target rate."""
        last, self._last = self._last, media_t
        if self._next_due is None or last is None or media_t < last:
            if last is not None and media_t < last:
                self._anchor = None  # a new timeline: re-anchor the wall clock too
            self._next_due = media_t + self.period
            return True
        if media_t < self._next_due - self._eps:
            return False
        self._next_due += self.period
        if self._next_due <= media_t:  # after a gap: one frame now, then the normal rhythm
            self._next_due = media_t + self.period
        return True

    def wait_s(self, media_t: float, now: float | None = None) -> float:
        """Seconds to wait (>= 0) until the frame at ``media_t`` is due on the wall clock."""
        if self.speed == 0:
            return 0.0
        now = time.monotonic() if now is None else now
        if self._anchor is None:
            self._anchor = (media_t, now)
            return 0.0
        m0, w0 = self._anchor
        delay = w0 + (media_t - m0) / self.speed - now
        self.behind_s = max(0.0, -delay)
        if delay < -self.max_lag_s:
            self._anchor = (media_t, now)
            self.reanchors += 1
            return 0.0
        return max(0.0, delay)


# --- the hand-off between capture and publisher --------------------------------------------


class DropOldestQueue(Generic[T]):
    """A bounded FIFO that never blocks the producer: a put on a full queue evicts the oldest
    item and returns it (so the caller can count the drop).  Thread-safe."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("queue size must be >= 1")
        self.maxsize = maxsize
        self._items: collections.deque[T] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item: T) -> T | None:
        """Append ``item``; returns the evicted oldest item when the queue was full."""
        with self._cond:
            if self._closed:
                raise RuntimeError("put on a closed queue")
            dropped = self._items.popleft() if len(self._items) >= self.maxsize else None
            self._items.append(item)
            self._cond.notify()
            return dropped

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest item; None when ``timeout`` passed or the queue is closed and empty."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None

    def close(self) -> None:
        """No more puts; getters drain what is left, then get None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def clear(self) -> list[T]:
        with self._cond:
            items = list(self._items)
            self._items.clear()
            return items

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._items)
