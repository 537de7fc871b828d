"""Plane geometry on ground coordinates (metres), vectorised with numpy."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


def as_points(points: object) -> FloatArray:
    """``points`` as a float (N, 2) array."""
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


def points_in_polygon(points: FloatArray, polygon: FloatArray) -> BoolArray:
    """Which of ``points`` (N, 2) lie inside ``polygon`` (M, 2) (even-odd rule)."""
    pts = as_points(points)
    poly = as_points(polygon)
    x, y = pts[:, 0:1], pts[:, 1:2]
    x1, y1 = poly[:, 0], poly[:, 1]
    nxt = np.concatenate((poly[1:], poly[:1]))  # each vertex's successor (np.roll, cheaper)
    x2, y2 = nxt[:, 0], nxt[:, 1]
    straddles = (y1 > y) != (y2 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
    hits = straddles & (x < x_cross)
    inside: BoolArray = (hits.sum(axis=1) % 2) == 1
    return inside


def segment_crossings(path: FloatArray, a: FloatArray, b: FloatArray) -> list[tuple[int, float]]:
    """Where the polyline ``path`` (N, 2) crosses the segment a-b.

    Returns ``(i, f)`` pairs: step ``path[i] -> path[i + 1]`` crosses at fraction ``f``.
    A step that ends exactly on the line counts; one that starts on it does not, so a track
    that stops on the line is counted once.
    """
    p = as_points(path)
    if len(p) < 2:
        return []
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    p0, p1 = p[:-1], p[1:]
    r = p1 - p0
    s = b - a
    denom = r[:, 0] * s[1] - r[:, 1] * s[0]
    qp = a - p0
    with np.errstate(divide="ignore", invalid="ignore"):
        f = (qp[:, 0] * s[1] - qp[:, 1] * s[0]) / denom
        u = (qp[:, 0] * r[:, 1] - qp[:, 1] * r[:, 0]) / denom
    ok = (denom != 0) & (f > 0) & (f <= 1) & (u >= 0) & (u <= 1)
    return [(int(i), float(f[i])) for i in np.flatnonzero(ok)]


def polyline_to_polygon(line: FloatArray, width: float) -> FloatArray:
    """A band of ``width`` around the polyline (for lanes given as centre lines)."""
    pts = as_points(line)
    d = np.gradient(pts, axis=0)
    n = np.stack([-d[:, 1], d[:, 0]], axis=1)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    left = pts + n * width / 2
    right = pts - n * width / 2
    out: FloatArray = np.concatenate([left, right[::-1]])
    return out


def runs(mask: BoolArray) -> list[tuple[int, int]]:
    """``[start, stop)`` index ranges of consecutive True values."""
    m = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    edges = np.flatnonzero(np.diff(m.astype(np.int8)))
    return [(int(s), int(e)) for s, e in zip(edges[::2], edges[1::2], strict=True)]
