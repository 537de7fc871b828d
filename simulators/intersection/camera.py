"""A pinhole camera on a pole: projection of the ground and of 3-D vehicle boxes.

World frame = ground frame of the simulator (x east, y north, z up, metres).  The
image->ground homography of the calibration file comes from the same matrices, so the
calibration is exact for points on the ground plane.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class VirtualCamera:
    position: tuple[float, float, float] = (13.0, -72.0, 14.0)
    target: tuple[float, float, float] = (0.0, -22.0, 0.0)
    width: int = 1280
    height: int = 720
    hfov_deg: float = 66.0
    near_m: float = 1.0

    @cached_property
    def K(self) -> FloatArray:
        f = self.width / 2 / np.tan(np.radians(self.hfov_deg) / 2)
        return np.array([[f, 0, self.width / 2], [0, f, self.height / 2], [0, 0, 1.0]])

    @cached_property
    def R(self) -> FloatArray:
        c = np.asarray(self.position, dtype=np.float64)
        fwd = np.asarray(self.target, dtype=np.float64) - c
        fwd /= np.linalg.norm(fwd)
        right = np.cross(fwd, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        down = np.cross(fwd, right)
        return np.stack([right, down, fwd])

    @cached_property
    def t(self) -> FloatArray:
        out: FloatArray = -self.R @ np.asarray(self.position, dtype=np.float64)
        return out

    @cached_property
    def ground_to_image(self) -> FloatArray:
        h = np.asarray(self.K @ np.column_stack([self.R[:, 0], self.R[:, 1], self.t]))
        out: FloatArray = (h / h[2, 2]).astype(np.float64)
        return out

    @cached_property
    def image_to_ground(self) -> FloatArray:
        h = np.asarray(np.linalg.inv(self.ground_to_image))
        out: FloatArray = (h / h[2, 2]).astype(np.float64)
        return out

    def depth(self, pts: FloatArray) -> FloatArray:
        """Distance along the optical axis of world points (N, 3)."""
        out: FloatArray = pts @ self.R[2] + self.t[2]
        return out

    def project(self, pts: FloatArray) -> tuple[FloatArray, FloatArray]:
        """World points (N, 3) -> pixels (N, 2) and depth (N,)."""
        cam = pts @ self.R.T + self.t
        z = cam[:, 2]
        uv = (cam @ self.K.T)[:, :2] / np.maximum(z, 1e-6)[:, None]
        return uv, z

    def clip_ground_polygon(self, poly: FloatArray) -> FloatArray:
        """Clip a ground polygon (N, 2) to the half-plane in front of the camera."""
        pts = [np.asarray(p, dtype=np.float64) for p in poly]
        if not pts:
            return np.zeros((0, 2))
        r, t = self.R[2], self.t[2]

        def d(p: FloatArray) -> float:
            return float(r[0] * p[0] + r[1] * p[1] + t - self.near_m)

        out: list[FloatArray] = []
        for i, cur in enumerate(pts):
            prev = pts[i - 1]
            dc, dp = d(cur), d(prev)
            if dc >= 0:
                if dp < 0:
                    out.append(prev + (cur - prev) * dp / (dp - dc))
                out.append(cur)
            elif dp >= 0:
                out.append(prev + (cur - prev) * dp / (dp - dc))
        return np.array(out).reshape(-1, 2)

    def ground_to_pixels(self, pts: FloatArray) -> FloatArray:
        p = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        uv, _ = self.project(np.column_stack([p, np.zeros(len(p))]))
        return uv
