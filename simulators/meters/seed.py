"""Write a simulated city's topology into the reference tables (idempotent upserts)."""

from __future__ import annotations

import json
from typing import Any

from simulators.meters.topology import City


def seed_reference(conn: Any, city: City) -> dict[str, int]:
    """Upsert districts, feeders and meters of ``city``; returns rows written per table.

    ``conn`` is a psycopg connection; the caller commits (or uses autocommit)."""
    plain = city.to_plain(include_meters=False)
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO districts (id, name, boundary, properties) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, boundary = EXCLUDED.boundary, "
            "properties = EXCLUDED.properties, updated_at = now()",
            [
                (
                    d["district_id"],
                    d["name"],
                    json.dumps(d["geojson"]),
                    json.dumps({"kind": d["kind"]}),
                )
                for d in plain["districts"]
            ],
        )
        cur.executemany(
            "INSERT INTO feeders (id, district_id, name, rated_kw, lon, lat) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
            "district_id = EXCLUDED.district_id, rated_kw = EXCLUDED.rated_kw, "
            "lon = EXCLUDED.lon, lat = EXCLUDED.lat, updated_at = now()",
            [
                (
                    f["feeder_id"],
                    f["district_id"],
                    f["feeder_id"],
                    f["rated_kw"],
                    f["lon"],
                    f["lat"],
                )
                for f in plain["feeders"]
            ],
        )
        rows = [
            (
                m["meter_id"],
                m["feeder_id"],
                m["archetype"],
                m["has_solar"],
                m.get("lon"),
                m.get("lat"),
                json.dumps({"gateway_id": m["gateway_id"], "pv_kwp": m["pv_kwp"]}),
            )
            for m in city.meter_records()
        ]
        cur.executemany(
            "INSERT INTO meters (id, feeder_id, archetype, has_solar, lon, lat, properties) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
            "feeder_id = EXCLUDED.feeder_id, archetype = EXCLUDED.archetype, "
            "has_solar = EXCLUDED.has_solar, properties = EXCLUDED.properties, updated_at = now()",
            rows,
        )
    return {
        "districts": len(plain["districts"]),
        "feeders": len(plain["feeders"]),
        "meters": len(rows),
    }
