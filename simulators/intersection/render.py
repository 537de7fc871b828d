"""Frames of the virtual camera, drawn with OpenCV, with per-frame ground truth.

The static scene (road, lane markings, stop lines, bus lane, no-stopping zone) is drawn
once; each frame adds signal heads and vehicles as projected 3-D boxes (far to near), then
lighting and sensor noise.  Ground truth per vehicle: image box, track id, class, ground
position and speed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
import sumolib

from schemas.messages import SignalState, VehicleClass
from simulators.intersection.camera import VirtualCamera
from simulators.intersection.sim import SimStep, VehicleState
from streams.traffic.calibration import Calibration

Image = npt.NDArray[np.uint8]
_BODY = {
    VehicleClass.motorbike: [(40, 40, 200), (30, 30, 30), (200, 80, 20), (20, 140, 220)],
    VehicleClass.car: [(200, 200, 200), (60, 60, 180), (160, 60, 40), (30, 30, 30), (40, 150, 40)],
    VehicleClass.bus: [(20, 180, 230), (40, 120, 30)],
    VehicleClass.truck: [(80, 80, 120), (30, 100, 160), (150, 150, 150)],
}
_SIGNAL = {
    SignalState.green: (60, 220, 60),
    SignalState.amber: (0, 190, 255),
    SignalState.red: (40, 40, 230),
    SignalState.off: (50, 50, 50),
}


@dataclass(frozen=True)
class GroundTruthObject:
    track_id: int
    vehicle_class: VehicleClass
    bbox: tuple[float, float, float, float]
    ground_xy: tuple[float, float]
    speed_kmh: float
    violator: str | None


@dataclass(frozen=True)
class RenderConfig:
    noise_sigma: float = 4.0
    lighting: str = "day"  # day | dusk | night
    jpeg_quality: int = 85
    seed: int = 0


class Renderer:
    def __init__(
        self,
        camera: VirtualCamera,
        net_file: str,
        calibration: Calibration,
        config: RenderConfig | None = None,
    ) -> None:
        self.cam = camera
        self.cfg = config or RenderConfig()
        self.cal = calibration
        self.rng = np.random.default_rng(self.cfg.seed)
        self.background = self._draw_background(net_file)
        h, w = camera.height, camera.width
        noise = self.rng.normal(0, self.cfg.noise_sigma, (h * 2, w, 3))
        self._noise_pos = np.clip(noise, 0, 255).astype(np.uint8)
        self._noise_neg = np.clip(-noise, 0, 255).astype(np.uint8)
        self._heads = self._signal_heads()

    # --- static scene ----------------------------------------------------------------------
    def _poly(self, img: Image, ground: npt.NDArray[np.float64], color: tuple[int, ...]) -> None:
        clipped = self.cam.clip_ground_polygon(ground)
        if len(clipped) >= 3:
            px = np.round(self.cam.ground_to_pixels(clipped)).astype(np.int32)
            cv2.fillPoly(img, [px], color, lineType=cv2.LINE_AA)

    def _line(self, img: Image, a: object, b: object, color: tuple[int, ...], width: int) -> None:
        seg = self.cam.clip_ground_polygon(np.array([a, b, b], dtype=np.float64))
        if len(seg) >= 2:
            px = np.round(self.cam.ground_to_pixels(seg)).astype(np.int32)
            cv2.polylines(img, [px[:2]], False, color, width, lineType=cv2.LINE_AA)

    def _draw_background(self, net_file: str) -> Image:
        h, w = self.cam.height, self.cam.width
        img = np.zeros((h, w, 3), np.uint8)
        img[:] = (70, 110, 80)  # verge
        horizon = self.cam.ground_to_pixels(np.array([[0.0, 2000.0]]))[0, 1]
        if 0 < horizon < h:
            img[: int(horizon)] = (200, 170, 140)  # sky
        net = sumolib.net.readNet(net_file, withInternal=True)
        for node in net.getNodes():
            shape = node.getShape()
            if len(shape) >= 3:
                self._poly(img, np.array(shape)[:, :2], (85, 85, 85))
        for edge in net.getEdges(withInternal=False):
            for lane in edge.getLanes():
                from streams.traffic.geometry import polyline_to_polygon

                poly = polyline_to_polygon(np.array(lane.getShape()), lane.getWidth())
                self._poly(img, poly, (90, 90, 90))
        for zone in self.cal.zones:
            color = (60, 60, 150) if zone.kind == "bus_lane" else (40, 170, 200)
            if zone.kind == "bus_lane":
                self._poly(img, zone.poly, color)
            else:
                p = zone.poly
                for k in range(4):
                    self._line(img, p[k], p[(k + 1) % 4], color, 2)
                self._line(img, p[0], p[2], color, 2)
                self._line(img, p[1], p[3], color, 2)
        for edge in net.getEdges(withInternal=False):
            lanes = edge.getLanes()
            for lane in lanes[1:]:  # dashed lines between lanes
                shape = np.array(lane.getShape())
                n = np.array([shape[-1][1] - shape[0][1], -(shape[-1][0] - shape[0][0])])
                n = n / np.linalg.norm(n) * lane.getWidth() / 2
                a, b = shape[0] + n, shape[-1] + n
                length = np.linalg.norm(b - a)
                for s in np.arange(0, length, 6.0):
                    self._line(
                        img,
                        a + (b - a) * s / length,
                        a + (b - a) * min(s + 3, length) / length,
                        (230, 230, 230),
                        1,
                    )
        for lane in self.cal.approach_lanes:
            if lane.stop_line is not None:
                self._line(img, lane.stop_line[0], lane.stop_line[1], (250, 250, 250), 3)
        self._line(img, (0.0, -150.0), (0.0, -10.4), (0, 200, 255), 2)  # centre line
        return img

    def _signal_heads(self) -> list[tuple[str, tuple[int, int]]]:
        heads = []
        for lane in self.cal.approach_lanes:
            if lane.stop_line is None or lane.signal_group is None:
                continue
            a = np.mean(np.array(lane.stop_line), axis=0) + lane.dir * 14
            uv, z = self.cam.project(np.array([[a[0], a[1], 5.5]]))
            if z[0] > 1 and 0 <= uv[0, 0] < self.cam.width and 0 <= uv[0, 1] < self.cam.height:
                heads.append((lane.signal_group, (int(uv[0, 0]), int(uv[0, 1]))))
        return heads

    # --- per frame ---------------------------------------------------------------------------
    def box_corners(self, v: VehicleState) -> npt.NDArray[np.float64]:
        hx, hy = v.heading
        cx, cy = v.center
        fx, fy = hx * v.length_m / 2, hy * v.length_m / 2
        sx, sy = -hy * v.width_m / 2, hx * v.width_m / 2
        base = np.array(
            [
                [cx + fx + sx, cy + fy + sy],
                [cx + fx - sx, cy + fy - sy],
                [cx - fx - sx, cy - fy - sy],
                [cx - fx + sx, cy - fy + sy],
            ]
        )
        return np.vstack(
            [np.column_stack([base, np.zeros(4)]), np.column_stack([base, np.full(4, v.height_m)])]
        )

    def render(self, step: SimStep) -> tuple[Image, list[GroundTruthObject]]:
        img = self.background.copy()
        h, w = img.shape[:2]
        for group, (u, v) in self._heads:
            state = step.signals.get(group, SignalState.off)
            cv2.rectangle(img, (u - 5, v - 14), (u + 5, v + 14), (20, 20, 20), -1)
            for k, s in enumerate((SignalState.red, SignalState.amber, SignalState.green)):
                color = _SIGNAL[s] if state is s else (45, 45, 45)
                cv2.circle(img, (u, v - 9 + 9 * k), 4, color, -1, cv2.LINE_AA)
        items = []
        for veh in step.vehicles:
            corners = self.box_corners(veh)
            uv, z = self.cam.project(corners)
            if np.any(z < self.cam.near_m):
                continue
            x1, y1 = uv.min(axis=0)
            x2, y2 = uv.max(axis=0)
            if x2 < 0 or y2 < 0 or x1 >= w or y1 >= h:
                continue
            items.append((float(z.mean()), veh, uv))
        truth = []
        for _, veh, uv in sorted(items, key=lambda it: -it[0]):
            palette = _BODY.get(veh.vehicle_class, _BODY[VehicleClass.car])
            body = palette[veh.track_id % len(palette)]
            pts = np.round(uv).astype(np.int32)
            hull = cv2.convexHull(pts)
            cv2.fillConvexPoly(img, hull, body, cv2.LINE_AA)
            top = pts[4:8]
            shade = tuple(int(min(255, c * 1.3 + 20)) for c in body)
            if veh.vehicle_class is VehicleClass.motorbike:
                # rider: a dark head above the centre
                cx, cy = top.mean(axis=0).astype(int)
                r = max(2, int((hull[:, 0, 0].max() - hull[:, 0, 0].min()) * 0.25))
                cv2.circle(img, (int(cx), int(cy)), r, (20, 20, 20), -1, cv2.LINE_AA)
            else:
                cv2.fillConvexPoly(img, cv2.convexHull(top), shade, cv2.LINE_AA)
                if veh.vehicle_class is VehicleClass.car:
                    inner = (top * 0.6 + top.mean(axis=0) * 0.4).astype(np.int32)
                    cv2.fillConvexPoly(img, cv2.convexHull(inner), (40, 40, 40), cv2.LINE_AA)
            cv2.polylines(img, [hull], True, (20, 20, 20), 1, cv2.LINE_AA)
            x1, y1 = np.clip(uv.min(axis=0), 0, [w - 1, h - 1])
            x2, y2 = np.clip(uv.max(axis=0), 0, [w - 1, h - 1])
            truth.append(
                GroundTruthObject(
                    veh.track_id,
                    veh.vehicle_class,
                    (
                        round(float(x1), 1),
                        round(float(y1), 1),
                        round(float(x2), 1),
                        round(float(y2), 1),
                    ),
                    (round(veh.center[0], 3), round(veh.center[1], 3)),
                    round(veh.speed_mps * 3.6, 2),
                    veh.violator,
                )
            )
        img = self._lighting(img, step.sim_time)
        return img, sorted(truth, key=lambda g: g.track_id)

    def _lighting(self, img: Image, sim_time: float) -> Image:
        base = {"day": (1.0, 0), "dusk": (0.65, -10), "night": (0.35, -20)}[self.cfg.lighting]
        gain = base[0] * (1.0 + 0.05 * np.sin(sim_time / 7.0))  # clouds, auto-exposure
        out = cv2.convertScaleAbs(img, alpha=gain, beta=base[1])
        if self.cfg.noise_sigma > 0:
            h = img.shape[0]
            off = int(self.rng.integers(0, h))
            out = cv2.add(out, self._noise_pos[off : off + h])
            out = cv2.subtract(out, self._noise_neg[off : off + h])
        return np.asarray(out, dtype=np.uint8)

    def encode(self, img: Image) -> bytes:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, self.cfg.jpeg_quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        return bytes(buf)
