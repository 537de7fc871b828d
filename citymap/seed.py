"""A synthetic city for the map's tests, benchmark and an empty demo database.

:func:`seed` writes reference data (districts with GeoJSON polygons, feeders, intersections,
cameras) and ``days`` of results ending now (lane counts, violations, signal plans, feeder and
district loads, daily forecast vintages, alerts) with the project's idempotent
:class:`~citystream.db.copy_writer.CopyWriter`, so running it twice changes nothing.
Deterministic for a given ``seed`` and ``now``.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from citystream.db import rows, tables
from citystream.db.copy_writer import CopyWriter
from schemas import messages as m

#: Centre of the default city (Ho Chi Minh City, District 1).
LON0, LAT0 = 106.690, 10.770
CELL = 0.02  # degrees per district cell
MOVEMENTS = ("through", "left", "right")
APPROACHES = ("N", "S", "E", "W")


@dataclass(frozen=True)
class CitySize:
    cols: int = 3
    rows: int = 2
    feeders_per_district: int = 4
    intersections_per_district: int = 2
    days: int = 7
    count_window_s: int = 300
    violations_per_day: int = 300


def _daily_shape(t: datetime) -> float:
    h = t.hour + t.minute / 60 + 7  # local time (UTC+7)
    h %= 24
    return 0.55 + 0.30 * math.exp(-((h - 8) ** 2) / 6) + 0.45 * math.exp(-((h - 19) ** 2) / 8)


def _traffic_shape(t: datetime) -> float:
    h = (t.hour + t.minute / 60 + 7) % 24
    return 0.15 + math.exp(-((h - 7.5) ** 2) / 3) + 0.9 * math.exp(-((h - 17.5) ** 2) / 4)


def floor15(t: datetime) -> datetime:
    return t.replace(minute=t.minute - t.minute % 15, second=0, microsecond=0)


def reference(size: CitySize) -> dict[str, list[dict[str, Any]]]:
    districts, feeders, inters, cams = [], [], [], []
    names = [
        "Ben Nghe",
        "Da Kao",
        "Tan Dinh",
        "Ben Thanh",
        "Nguyen Thai Binh",
        "Cau Kho",
        "Co Giang",
        "Cau Ong Lanh",
        "Pham Ngu Lao",
    ]
    for r in range(size.rows):
        for c in range(size.cols):
            k = r * size.cols + c
            did = f"d{k + 1:02d}"
            x0, y0 = LON0 + c * CELL, LAT0 + r * CELL
            ring = [[x0, y0], [x0 + CELL, y0], [x0 + CELL, y0 + CELL], [x0, y0 + CELL], [x0, y0]]
            districts.append(
                {
                    "id": did,
                    "name": names[k % len(names)],
                    "boundary": {"type": "Polygon", "coordinates": [ring]},
                    "properties": {"kind": "residential" if k % 2 else "commercial"},
                }
            )
            for f in range(size.feeders_per_district):
                feeders.append(
                    {
                        "id": f"{did}-f{f + 1}",
                        "district_id": did,
                        "name": f"Feeder {did}-{f + 1}",
                        "rated_kw": 800.0 + 100 * f,
                        "lon": x0 + CELL * (0.2 + 0.6 * (f % 2)),
                        "lat": y0 + CELL * (0.2 + 0.6 * (f // 2)),
                    }
                )
            for i in range(size.intersections_per_district):
                iid = f"i{k + 1:02d}{i + 1}"
                lon, lat = x0 + CELL * (0.35 + 0.3 * i), y0 + CELL * (0.5 + 0.1 * (i % 2))
                inters.append(
                    {
                        "id": iid,
                        "name": f"Junction {names[k % len(names)]} {i + 1}",
                        "lon": lon,
                        "lat": lat,
                        "district_id": did,
                    }
                )
                cams.append(
                    {
                        "id": f"{iid}-cam1",
                        "intersection_id": iid,
                        "lon": lon,
                        "lat": lat,
                        "heading_deg": 0.0,
                        "width": 1280,
                        "height": 720,
                    }
                )
    return {"districts": districts, "feeders": feeders, "intersections": inters, "cameras": cams}


def _insert_reference(conn: psycopg.Connection[Any], ref: dict[str, list[dict[str, Any]]]) -> None:
    with conn.transaction():
        for d in ref["districts"]:
            conn.execute(
                "INSERT INTO districts (id, name, boundary, properties) VALUES (%s,%s,%s,%s) "
                "ON CONFLICT (id) DO NOTHING",
                (d["id"], d["name"], json.dumps(d["boundary"]), json.dumps(d["properties"])),
            )
        for f in ref["feeders"]:
            conn.execute(
                "INSERT INTO feeders (id, district_id, name, rated_kw, lon, lat) "
                "VALUES (%s,%s,%s,%s,%s,%s) ON CONFLICT (id) DO NOTHING",
                (f["id"], f["district_id"], f["name"], f["rated_kw"], f["lon"], f["lat"]),
            )
        for i in ref["intersections"]:
            conn.execute(
                "INSERT INTO intersections (id, name, lon, lat, district_id) "
                "VALUES (%s,%s,%s,%s,%s) ON CONFLICT (id) DO NOTHING",
                (i["id"], i["name"], i["lon"], i["lat"], i["district_id"]),
            )
        for c in ref["cameras"]:
            conn.execute(
                "INSERT INTO cameras (id, intersection_id, lon, lat, heading_deg, width, height) "
                "VALUES (%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (id) DO NOTHING",
                (
                    c["id"],
                    c["intersection_id"],
                    c["lon"],
                    c["lat"],
                    c["heading_deg"],
                    c["width"],
                    c["height"],
                ),
            )


def make_plan(
    intersection_id: str, plan_id: str, valid_from: datetime, ns_green: float, ew_green: float
) -> m.SignalPlan:
    phases = [
        m.PhaseTiming(
            name="NS",
            signal_groups=["N_through", "S_through"],
            green_s=ns_green,
            amber_s=3,
            all_red_s=2,
        ),
        m.PhaseTiming(
            name="EW",
            signal_groups=["E_through", "W_through"],
            green_s=ew_green,
            amber_s=3,
            all_red_s=2,
        ),
    ]
    return m.SignalPlan(
        intersection_id=intersection_id,
        plan_id=plan_id,
        cycle_s=ns_green + ew_green + 10,
        phases=phases,
        valid_from=valid_from,
    )


def make_violation(i: int, intersection_id: str, at: datetime, rnd: random.Random) -> m.Violation:
    kind = rnd.choice(list(m.ViolationKind))
    plate = f"51{rnd.choice('ABCDEFGH')}-{rnd.randint(10000, 99999)}"
    return m.Violation(
        violation_id=f"v-{intersection_id}-{i}",
        kind=kind,
        camera_id=f"{intersection_id}-cam1",
        intersection_id=intersection_id,
        track_id=i,
        vehicle_class=rnd.choice(
            [m.VehicleClass.car, m.VehicleClass.motorbike, m.VehicleClass.truck]
        ),
        occurred_at=at,
        confidence=round(rnd.uniform(0.6, 0.99), 3),
        evidence_uri=f"file:///var/lib/citystream/evidence/{intersection_id}/{i}.jpg",
        evidence_sha256=hashlib.sha256(f"{intersection_id}{i}".encode()).hexdigest(),
        details={"plate": plate, "speed_kmh": round(rnd.uniform(20, 80), 1)},
    )


def _insert_roads(conn: psycopg.Connection[Any], intersections: list[dict[str, Any]]) -> int:
    """The simulator's SUMO junction network placed at every intersection (base map)."""
    import tempfile

    from simulators.intersection.network import NetworkSpec, build_network
    from simulators.intersection.roads import road_features, upsert_road_segments

    with tempfile.TemporaryDirectory(prefix="citystream-net-") as tmp:
        net = build_network(NetworkSpec(), Path(tmp))
        return sum(
            upsert_road_segments(conn, road_features(net, i["id"], (i["lon"], i["lat"])))
            for i in intersections
        )


def seed(
    dsn: str, size: CitySize | None = None, now: datetime | None = None, seed: int = 7
) -> dict[str, int]:
    """Write the synthetic city; returns rows sent per table."""
    size = size or CitySize()
    rnd = random.Random(seed)
    end = floor15(now or datetime.now(UTC))
    start = end - timedelta(days=size.days)
    ref = reference(size)
    sent: dict[str, int] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        _insert_reference(conn, ref)
        sent["road_segments"] = _insert_roads(conn, ref["intersections"])

        with CopyWriter(conn, tables.TRAFFIC_COUNTS) as w:
            n = 0
            steps = int((end - start).total_seconds() // size.count_window_s)
            for inter in ref["intersections"]:
                base = rnd.uniform(0.6, 1.4)
                for s in range(steps):
                    t = start + timedelta(seconds=s * size.count_window_s)
                    load = base * _traffic_shape(t)
                    for ap in APPROACHES[:2]:
                        for mv in MOVEMENTS:
                            share = {"through": 1.0, "left": 0.3, "right": 0.4}[mv]
                            cnt = max(0, int(rnd.gauss(12 * load * share, 2)))
                            w.add(
                                rows.lane_count_row(
                                    m.LaneCount(
                                        intersection_id=inter["id"],
                                        camera_id=f"{inter['id']}-cam1",
                                        lane_id=f"{ap}{mv[0]}",
                                        movement=mv,
                                        vehicle_class=m.VehicleClass.car,
                                        window_start=t,
                                        window_s=size.count_window_s,
                                        count=cnt,
                                        occupancy=min(1.0, round(0.05 + 0.4 * load * share, 3)),
                                        queue_len=max(0, int(rnd.gauss(4 * load * share, 1))),
                                        arrivals=cnt,
                                        arrivals_on_red=int(cnt * (0.25 + 0.2 * load) * share),
                                    )
                                )
                            )
                            n += 1
            sent["traffic_counts"] = n

        with CopyWriter(conn, tables.VIOLATIONS) as w:
            n = size.violations_per_day * size.days
            for i in range(n):
                inter = ref["intersections"][i % len(ref["intersections"])]
                at = start + timedelta(seconds=rnd.uniform(0, (end - start).total_seconds()))
                w.add(rows.violation_row(make_violation(i, inter["id"], at, rnd)))
            sent["violations"] = n

        with CopyWriter(conn, tables.SIGNAL_PLANS) as w:
            for inter in ref["intersections"]:
                cur = make_plan(inter["id"], "plan-a", start, 40, 30)
                w.add(rows.signal_plan_row(cur))
                rec = m.SignalRecommendation(
                    intersection_id=inter["id"],
                    issued_at=end - timedelta(minutes=5),
                    basis_start=end - timedelta(hours=1),
                    basis_end=end,
                    current_plan_id="plan-a",
                    recommended=make_plan(inter["id"], "plan-b", end, 46, 24),
                    predicted_delay_current_s=38.5,
                    predicted_delay_recommended_s=31.2,
                )
                w.add(rows.signal_recommendation_row(rec))
            sent["signal_plans"] = 2 * len(ref["intersections"])

        with (
            CopyWriter(conn, tables.FEEDER_LOAD) as w,
            CopyWriter(conn, tables.ENERGY_FORECASTS) as fw,
        ):
            n = nf = 0
            scopes = [("feeder", f["id"], f["rated_kw"] * 0.55) for f in ref["feeders"]]
            by_d: dict[str, float] = {}
            for f in ref["feeders"]:
                by_d[f["district_id"]] = by_d.get(f["district_id"], 0) + f["rated_kw"] * 0.55
            scopes += [("district", d, kw) for d, kw in by_d.items()]
            steps = size.days * 96
            for scope, sid, mean_kw in scopes:
                for s in range(steps):
                    t = start + timedelta(minutes=15 * s)
                    kw = mean_kw * _daily_shape(t) * rnd.uniform(0.93, 1.07)
                    w.add(
                        rows.feeder_load_row(
                            m.FeederLoad(
                                scope=m.LoadScope(scope),
                                scope_id=sid,
                                window_start=t,
                                energy_kwh=round(kw / 4, 4),
                                avg_kw=round(kw, 3),
                                meters_reporting=120,
                            )
                        )
                    )
                    n += 1
                for day in range(size.days + 1):
                    issued = (start + timedelta(days=day)).replace(hour=17, minute=0)  # 00:00 +07
                    if issued > end:
                        continue
                    pts = []
                    for h in range(192):
                        tt = issued + timedelta(minutes=15 * (h + 1))
                        p50 = mean_kw * _daily_shape(tt)
                        pts.append(
                            m.ForecastPoint(
                                target=tt,
                                p10=round(p50 * 0.9, 3),
                                p50=round(p50, 3),
                                p90=round(p50 * 1.1, 3),
                            )
                        )
                    for r in rows.forecast_rows(
                        m.Forecast(
                            scope=m.LoadScope(scope),
                            scope_id=sid,
                            issued_at=issued,
                            model="lgbm-quantile",
                            points=pts,
                        )
                    ):
                        fw.add(r)
                        nf += 1
            sent["feeder_load"], sent["energy_forecasts"] = n, nf

        with CopyWriter(conn, tables.EVENTS) as w:
            n = 0
            for i in range(10 * size.days):
                at = start + timedelta(hours=rnd.uniform(0, size.days * 24))
                if i % 2:
                    f = rnd.choice(ref["feeders"])
                    a = m.Alert(
                        alert_id=f"a-{i}",
                        kind="peak_load",
                        severity=m.Severity.warning,
                        source="energy",
                        subject_id=f["id"],
                        raised_at=at,
                        message=f"{f['id']} above 90% of rated capacity",
                    )
                else:
                    it = rnd.choice(ref["intersections"])
                    a = m.Alert(
                        alert_id=f"a-{i}",
                        kind="camera_offline",
                        severity=m.Severity.critical,
                        source="camera",
                        subject_id=f"{it['id']}-cam1",
                        raised_at=at,
                        message=f"camera {it['id']}-cam1 sent no frames for 60 s",
                    )
                w.add(rows.alert_row(a))
                n += 1
            sent["events"] = n
    return sent


def main() -> None:
    import argparse

    from citystream.settings import load_settings

    p = argparse.ArgumentParser(description="Seed a synthetic city into the configured database")
    p.add_argument("--days", type=int, default=7)
    args = p.parse_args()
    print(seed(load_settings().db.dsn, CitySize(days=args.days)))


if __name__ == "__main__":
    main()
