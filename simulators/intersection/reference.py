"""The simulated intersection and its camera in the reference tables (``intersections``,
``cameras``), with the calibration built from the simulator's geometry."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from citystream.errors import SinkError
from simulators.intersection.camera import VirtualCamera
from simulators.intersection.roads import road_features, upsert_road_segments
from streams.traffic.calibration import Calibration

log = logging.getLogger("citystream.sim.intersection")

M_PER_DEG_LAT = 111_320.0


@dataclass(frozen=True)
class Placement:
    """Where the intersection is on the map; the camera's offset comes from its geometry."""

    name: str = "Simulated junction"
    lon: float = 106.7009
    lat: float = 10.7769


def camera_row(camera: VirtualCamera, placement: Placement) -> dict[str, Any]:
    x, y, z = camera.position
    tx, ty, _ = camera.target
    m_per_deg_lon = M_PER_DEG_LAT * math.cos(math.radians(placement.lat))
    return {
        "lon": placement.lon + x / m_per_deg_lon,
        "lat": placement.lat + y / M_PER_DEG_LAT,
        "heading_deg": math.degrees(math.atan2(tx - x, ty - y)) % 360.0,
        "mount_height_m": z,
        "width": camera.width,
        "height": camera.height,
    }


def _content(calibration: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in calibration.items() if k != "calibration_version"}


def register_reference(
    dsn: str,
    calibration: Calibration,
    camera: VirtualCamera,
    placement: Placement,
    properties: dict[str, Any],
    wait_s: float = 30.0,
    net_file: Path | None = None,
) -> tuple[int, Calibration]:
    """Upsert the intersection and its camera (and, given the SUMO ``net_file``, its road
    segments for the map); the camera's ``calibration_version`` goes up by one when the
    calibration differs from the stored one.  Returns the version and the calibration as
    stored.  Retries a database that is not reachable for ``wait_s``."""
    import psycopg

    deadline = time.monotonic() + wait_s
    delay = 0.5
    while True:
        try:
            with psycopg.connect(dsn, connect_timeout=10) as conn:
                got = _register(conn, calibration, camera, placement, properties)
                if net_file is not None:
                    origin = (placement.lon, placement.lat)
                    features = road_features(net_file, calibration.intersection_id, origin)
                    upsert_road_segments(conn, features)
                return got
        except psycopg.OperationalError as exc:
            if time.monotonic() + delay > deadline:
                raise SinkError(f"cannot register the camera in the database: {exc}") from exc
            log.warning("database not reachable (%s); retry in %.1f s", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _register(
    conn: Any,
    cal: Calibration,
    camera: VirtualCamera,
    placement: Placement,
    properties: dict[str, Any],
) -> tuple[int, Calibration]:
    cam = camera_row(camera, placement)
    with conn.transaction():
        conn.execute(
            "INSERT INTO intersections (id, name, lon, lat, properties) VALUES (%s,%s,%s,%s,%s) "
            "ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, lon = EXCLUDED.lon, "
            "lat = EXCLUDED.lat, properties = intersections.properties || EXCLUDED.properties, "
            "updated_at = now()",
            (
                cal.intersection_id,
                placement.name,
                placement.lon,
                placement.lat,
                json.dumps(properties),
            ),
        )
        row = conn.execute(
            "SELECT calibration, calibration_version FROM cameras WHERE id = %s FOR UPDATE",
            (cal.camera_id,),
        ).fetchone()
        new = json.loads(cal.to_json())
        if row is not None and _content(row[0] or {}) == _content(new):
            version = int(row[1])
        else:
            version = (int(row[1]) if row is not None else 0) + 1
        stored = cal.model_copy(update={"calibration_version": str(version)})
        conn.execute(
            "INSERT INTO cameras (id, intersection_id, lon, lat, heading_deg, mount_height_m, "
            "width, height, calibration, calibration_version) "
            "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (id) DO UPDATE SET "
            "intersection_id = EXCLUDED.intersection_id, lon = EXCLUDED.lon, "
            "lat = EXCLUDED.lat, heading_deg = EXCLUDED.heading_deg, "
            "mount_height_m = EXCLUDED.mount_height_m, width = EXCLUDED.width, "
            "height = EXCLUDED.height, calibration = EXCLUDED.calibration, "
            "calibration_version = EXCLUDED.calibration_version, updated_at = now()",
            (
                cal.camera_id,
                cal.intersection_id,
                cam["lon"],
                cam["lat"],
                cam["heading_deg"],
                cam["mount_height_m"],
                cam["width"],
                cam["height"],
                stored.to_json(),
                version,
            ),
        )
    return version, stored
