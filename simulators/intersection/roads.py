"""The simulator's SUMO road network as GeoJSON, placed on the map at the intersection.

The network's x/y are ground metres (x east, y north) around the junction at the origin
(see :mod:`simulators.intersection.network`); a local equirectangular projection around
the intersection's lon/lat turns them into WGS84, which is exact to centimetres over the
few hundred metres a junction spans.  Each edge becomes one LineString feature with its
lane count, speed limit and lane permissions, for the map's base layer.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

EARTH_RADIUS_M = 6_371_008.8


def to_lonlat(x: float, y: float, origin: tuple[float, float]) -> tuple[float, float]:
    """Ground metres east/north of ``origin`` (lon, lat) -> (lon, lat), 7 decimals (~1 cm)."""
    lon0, lat0 = origin
    lat = lat0 + math.degrees(y / EARTH_RADIUS_M)
    lon = lon0 + math.degrees(x / (EARTH_RADIUS_M * math.cos(math.radians(lat0))))
    return round(lon, 7), round(lat, 7)


def road_features(
    net_file: str | Path, intersection_id: str, origin: tuple[float, float]
) -> list[dict[str, Any]]:
    """One GeoJSON Feature per (non-internal) edge of the SUMO network ``net_file``."""
    import sumolib

    net = sumolib.net.readNet(str(net_file), withInternal=False)
    features = []
    for edge in sorted(net.getEdges(), key=lambda e: e.getID()):
        lanes = edge.getLanes()
        allowed = sorted({v for lane in lanes for v in (lane.getPermissions() or ())})
        features.append(
            {
                "type": "Feature",
                "id": f"{intersection_id}:{edge.getID()}",
                "geometry": {
                    "type": "LineString",
                    "coordinates": [list(to_lonlat(x, y, origin)) for x, y in edge.getShape()],
                },
                "properties": {
                    "intersection_id": intersection_id,
                    "edge": edge.getID(),
                    "lanes": len(lanes),
                    "speed_kmh": round(edge.getSpeed() * 3.6, 1),
                    "width_m": round(sum(lane.getWidth() for lane in lanes), 2),
                    "bus_lanes": sum(
                        1 for lane in lanes if set(lane.getPermissions() or ()) == {"bus"}
                    ),
                    "vehicle_classes": len(allowed),
                },
            }
        )
    return features


def upsert_road_segments(conn: Any, features: list[dict[str, Any]]) -> int:
    """Write ``features`` to ``road_segments`` (insert or replace by id) in one transaction;
    ``conn`` is a psycopg connection.  The intersection must exist.  Returns the count."""
    from psycopg.types.json import Jsonb

    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO road_segments (id, intersection_id, name, geometry, properties) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
            "intersection_id = EXCLUDED.intersection_id, name = EXCLUDED.name, "
            "geometry = EXCLUDED.geometry, properties = EXCLUDED.properties, updated_at = now()",
            [
                (
                    f["id"],
                    f["properties"].get("intersection_id"),
                    f["properties"].get("name", f["properties"].get("edge", "")),
                    Jsonb(f["geometry"]),
                    Jsonb(f["properties"]),
                )
                for f in features
            ],
        )
    return len(features)
