"""A camera's calibration: ground geometry of the intersection and the image<->ground map.

Everything is in ground coordinates (metres, x east, y north) except the homography, which
maps image pixels to ground metres.  Files are JSON (:meth:`Calibration.load`)::

    {"camera_id": "cam-1", "intersection_id": "int-1", "calibration_version": "2026-01-05a",
     "image_size": [1280, 720], "homography": [[...], [...], [...]],
     "speed_limit_kmh": 50, "class_speed_limits_kmh": {"truck": 40},
     "lanes": [{"lane_id": "S_in_1", "approach": "S", "movement": "through",
                "signal_group": "S_through", "direction": [0, 1],
                "polygon": [[x, y], ...], "stop_line": [[x1, y1], [x2, y2]]}],
     "zones": [{"zone_id": "E_nostop", "kind": "no_stopping", "polygon": [...],
                "max_dwell_s": 30}]}
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from citystream.errors import ConfigError
from schemas.messages import Ident, VehicleClass
from streams.traffic.geometry import FloatArray, as_points

Point = tuple[float, float]
Movement = Literal["through", "left", "right", "u_turn"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Lane(_Frozen):
    """A lane on the ground: its area, travel direction, movement and signal group.

    Approach lanes carry a ``stop_line`` (two ground points across the lane) and the
    ``signal_group`` that controls it; exit lanes carry neither.
    """

    lane_id: Ident
    approach: str = Field("", max_length=16, description="Arm of the intersection, e.g. 'N'")
    movement: Movement = "through"
    signal_group: Ident | None = None
    direction: Point = Field(description="Travel direction (normalised on load)")
    polygon: list[Point] = Field(min_length=3)
    stop_line: tuple[Point, Point] | None = None

    @field_validator("direction")
    @classmethod
    def _unit(cls, v: Point) -> Point:
        n = float(np.hypot(*v))
        if n == 0:
            raise ValueError("direction must not be the zero vector")
        return (v[0] / n, v[1] / n)

    @cached_property
    def poly(self) -> FloatArray:
        return as_points(self.polygon)

    @cached_property
    def dir(self) -> FloatArray:
        return np.asarray(self.direction, dtype=np.float64)


class Zone(_Frozen):
    """A regulated area: ``no_stopping`` (dwell limit), ``bus_lane`` (allowed classes) or
    ``speed`` (the section where speeds are measured for enforcement: where the camera sees
    vehicles whole and large enough; without one, the whole track counts)."""

    zone_id: Ident
    kind: Literal["no_stopping", "bus_lane", "speed"]
    polygon: list[Point] = Field(min_length=3)
    allowed_classes: list[VehicleClass] = Field(
        default_factory=list,
        description="Classes exempt from the zone's rule (bus_lane: defaults to bus)",
    )
    max_dwell_s: float = Field(30.0, gt=0, le=3600, description="no_stopping: longest stop")

    @cached_property
    def poly(self) -> FloatArray:
        return as_points(self.polygon)

    def exempt(self, vehicle_class: VehicleClass) -> bool:
        allowed = self.allowed_classes or ([VehicleClass.bus] if self.kind == "bus_lane" else [])
        return vehicle_class in allowed


class ViewTransformer:
    """Image pixels <-> ground metres through a plane homography (image -> ground)."""

    def __init__(self, homography: FloatArray) -> None:
        h = np.asarray(homography, dtype=np.float64).reshape(3, 3)
        if not np.isfinite(h).all() or abs(np.linalg.det(h)) < 1e-12:
            raise ConfigError("homography must be a finite, invertible 3x3 matrix")
        self.image_to_ground = h / h[2, 2] if h[2, 2] != 0 else h
        self.ground_to_image = np.linalg.inv(self.image_to_ground)

    @classmethod
    def from_points(cls, image_pts: FloatArray, ground_pts: FloatArray) -> ViewTransformer:
        """Fit the homography to >= 4 point pairs (least-squares DLT)."""
        src, dst = as_points(image_pts), as_points(ground_pts)
        if len(src) < 4 or len(src) != len(dst):
            raise ConfigError("need at least 4 matching image/ground point pairs")
        rows = []
        for (x, y), (u, v) in zip(src, dst, strict=True):
            rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y, -u])
            rows.append([0, 0, 0, x, y, 1, -v * x, -v * y, -v])
        _, _, vt = np.linalg.svd(np.asarray(rows))
        return cls(vt[-1].reshape(3, 3))

    @staticmethod
    def _apply(m: FloatArray, pts: object) -> FloatArray:
        p = as_points(pts)
        hom = np.concatenate([p, np.ones((len(p), 1))], axis=1) @ m.T
        out: FloatArray = hom[:, :2] / hom[:, 2:3]
        return out

    def to_ground(self, image_pts: object) -> FloatArray:
        return self._apply(self.image_to_ground, image_pts)

    def to_image(self, ground_pts: object) -> FloatArray:
        return self._apply(self.ground_to_image, ground_pts)


class Calibration(_Frozen):
    """Everything the rules need to know about one camera's view."""

    camera_id: Ident
    intersection_id: Ident
    calibration_version: str = Field(min_length=1, max_length=64)
    image_size: tuple[int, int]
    homography: list[list[float]] = Field(description="3x3, image pixels -> ground metres")
    speed_limit_kmh: float = Field(gt=0, le=200)
    class_speed_limits_kmh: dict[VehicleClass, float] = Field(default_factory=dict)
    lanes: list[Lane] = Field(default_factory=list)
    zones: list[Zone] = Field(default_factory=list)

    @field_validator("homography")
    @classmethod
    def _three_by_three(cls, v: list[list[float]]) -> list[list[float]]:
        if len(v) != 3 or any(len(r) != 3 for r in v):
            raise ValueError("homography must be 3x3")
        ViewTransformer(np.asarray(v))
        return v

    @cached_property
    def view(self) -> ViewTransformer:
        return ViewTransformer(np.asarray(self.homography))

    def away_from_camera(self, xy: object) -> FloatArray:
        """Unit ground direction at ``xy`` in which the view recedes (up the image).  A box's
        bottom edge is the side of a vehicle nearest the camera, so the ground point of a
        vehicle moving this way is its rear, of one moving against it its front."""
        p = as_points(xy)[:1]
        u, v = self.view.to_image(p)[0]
        far: FloatArray = self.view.to_ground([[u, v - 10.0]])[0] - p[0]
        n = float(np.hypot(*far))
        return far / n if n > 0 else far

    def speed_limit_for(self, vehicle_class: VehicleClass) -> float:
        return self.class_speed_limits_kmh.get(vehicle_class, self.speed_limit_kmh)

    def lane(self, lane_id: str) -> Lane:
        for lane in self.lanes:
            if lane.lane_id == lane_id:
                return lane
        raise KeyError(lane_id)

    @property
    def approach_lanes(self) -> list[Lane]:
        return [lane for lane in self.lanes if lane.stop_line is not None]

    def zones_of(self, kind: str) -> list[Zone]:
        return [z for z in self.zones if z.kind == kind]

    # --- files ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"invalid calibration: {exc}") from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> Calibration:
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise ConfigError(f"invalid calibration: {exc}") from exc

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read calibration file {path}: {exc}") from exc
        return cls.from_json(text)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): the same calibration always gives the same bytes."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())
