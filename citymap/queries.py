"""The SQL behind every read of the map. Functions take the :class:`Database` and plain
validated parameters and return rows as dicts."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from citymap.db import Database

# --- traffic ---------------------------------------------------------------------------------

_INTERSECTIONS = """
SELECT i.id, i.name, i.lon, i.lat, i.district_id, i.properties,
       (SELECT count(*) FROM cameras c WHERE c.intersection_id = i.id)::int AS cameras,
       COALESCE(f.vehicles, 0)::int AS vehicles,
       f.last_window,
       COALESCE(q.queue, 0)::int AS queue,
       (SELECT count(*) FROM violations v
         WHERE v.intersection_id = i.id AND v.review_state = 'pending'
           AND v.occurred_at >= %(since)s - interval '7 days')::int AS pending_violations,
       EXISTS (SELECT 1 FROM signal_plans p
         WHERE p.intersection_id = i.id AND p.kind = 'recommended'
           AND p.review_state IS NULL
           AND p.valid_from >= %(since)s - interval '7 days') AS has_recommendation
  FROM intersections i
  LEFT JOIN LATERAL (
      SELECT sum(t.count) AS vehicles, max(t.window_start) AS last_window
        FROM traffic_counts t
       WHERE t.intersection_id = i.id AND t.window_start >= %(since)s
         AND t.window_start < %(until)s) f ON true
  LEFT JOIN LATERAL (
      SELECT sum(t.queue_len) AS queue FROM traffic_counts t
       WHERE t.intersection_id = i.id AND t.window_start = f.last_window) q ON true
 WHERE (%(id)s::text IS NULL OR i.id = %(id)s)
 ORDER BY i.id
"""


async def intersections(
    db: Database, since: datetime, until: datetime, only: str | None = None
) -> list[dict[str, Any]]:
    rows = await db.all(_INTERSECTIONS, {"since": since, "until": until, "id": only})
    hours = (until - since).total_seconds() / 3600
    for r in rows:
        r["flow_vph"] = round(r["vehicles"] / hours, 1) if hours > 0 else 0.0
    return rows


async def cameras(db: Database, intersection_id: str | None) -> list[dict[str, Any]]:
    return await db.all(
        "SELECT id, intersection_id, lon, lat, heading_deg, mount_height_m, width, height, "
        "calibration_version FROM cameras "
        "WHERE (%(i)s::text IS NULL OR intersection_id = %(i)s) ORDER BY id",
        {"i": intersection_id},
    )


async def road_segments(db: Database, intersection_id: str | None) -> list[dict[str, Any]]:
    return await db.all(
        "SELECT id, geometry, properties FROM road_segments "
        "WHERE (%(i)s::text IS NULL OR intersection_id = %(i)s) ORDER BY id",
        {"i": intersection_id},
    )


async def exists(db: Database, table: str, ident: str) -> bool:
    queries = {
        "intersections": "SELECT 1 AS x FROM intersections WHERE id = %(id)s",
        "districts": "SELECT 1 AS x FROM districts WHERE id = %(id)s",
        "feeders": "SELECT 1 AS x FROM feeders WHERE id = %(id)s",
    }
    return await db.one(queries[table], {"id": ident}) is not None


_VIOLATION_COLS = """violation_id, occurred_at, kind, camera_id, intersection_id, track_id,
       vehicle_class, confidence, evidence_uri, evidence_sha256, details, review_state,
       reviewed_at, reviewed_by"""

_VIOLATIONS = (
    "SELECT "
    + _VIOLATION_COLS
    + """
  FROM violations
 WHERE occurred_at >= %(since)s AND occurred_at < %(until)s
   AND (%(kind)s::text IS NULL OR kind = %(kind)s)
   AND (%(intersection_id)s::text IS NULL OR intersection_id = %(intersection_id)s)
   AND (%(camera_id)s::text IS NULL OR camera_id = %(camera_id)s)
   AND (%(review_state)s::text IS NULL OR review_state = %(review_state)s)
 ORDER BY occurred_at DESC, violation_id
 LIMIT %(limit)s OFFSET %(offset)s
"""
)


async def violations(db: Database, **params: Any) -> list[dict[str, Any]]:
    return await db.all(_VIOLATIONS, params)


async def violation(db: Database, violation_id: str) -> dict[str, Any] | None:
    return await db.one(
        "SELECT " + _VIOLATION_COLS + " FROM violations WHERE violation_id = %(id)s "
        "ORDER BY occurred_at DESC LIMIT 1",
        {"id": violation_id},
    )


_COUNTS = """
SELECT time_bucket(%(res)s, window_start) AS bucket, {group} AS key,
       sum(count)::int AS vehicles, round(avg(occupancy)::numeric, 4)::float8 AS occupancy,
       max(queue_len)::int AS max_queue,
       sum(arrivals)::int AS arrivals, sum(arrivals_on_red)::int AS arrivals_on_red
  FROM traffic_counts
 WHERE intersection_id = %(id)s AND window_start >= %(since)s AND window_start < %(until)s
 GROUP BY bucket, key ORDER BY bucket, key
"""
_COUNT_GROUPS = {
    "movement": _COUNTS.replace("{group}", "movement"),
    "lane": _COUNTS.replace("{group}", "lane_id"),
    "vehicle_class": _COUNTS.replace("{group}", "vehicle_class"),
    "all": _COUNTS.replace("{group}", "'all'::text"),
}

_QUEUES = """
SELECT time_bucket(%(res)s, window_start) AS bucket, lane_id,
       round(avg(lane_queue)::numeric, 2)::float8 AS avg_queue, max(lane_queue)::int AS max_queue
  FROM (SELECT window_start, lane_id, sum(queue_len) AS lane_queue FROM traffic_counts
         WHERE intersection_id = %(id)s AND window_start >= %(since)s
           AND window_start < %(until)s
         GROUP BY window_start, lane_id) per_window
 GROUP BY bucket, lane_id ORDER BY bucket, lane_id
"""


async def counts(
    db: Database, ident: str, since: datetime, until: datetime, res: timedelta, by: str
) -> list[dict[str, Any]]:
    q = _COUNT_GROUPS[by]
    return await db.all(q, {"id": ident, "since": since, "until": until, "res": res})


async def queues(
    db: Database, ident: str, since: datetime, until: datetime, res: timedelta
) -> list[dict[str, Any]]:
    return await db.all(_QUEUES, {"id": ident, "since": since, "until": until, "res": res})


_PLAN_COLS = """intersection_id, plan_id, kind, valid_from, cycle_s, offset_s, plan, issued_at,
       basis_start, basis_end, current_plan_id, predicted_delay_current_s,
       predicted_delay_recommended_s, method, review_state, reviewed_at, reviewed_by"""


async def plans(db: Database, ident: str, history: int) -> dict[str, Any]:
    current = await db.one(
        "SELECT " + _PLAN_COLS + " FROM signal_plans WHERE intersection_id = %(id)s "
        "AND kind = 'current' AND valid_from <= now() ORDER BY valid_from DESC LIMIT 1",
        {"id": ident},
    )
    recommended = await db.one(
        "SELECT " + _PLAN_COLS + " FROM signal_plans WHERE intersection_id = %(id)s "
        "AND kind = 'recommended' AND review_state IS NULL "
        "ORDER BY COALESCE(issued_at, valid_from) DESC LIMIT 1",
        {"id": ident},
    )
    hist = await db.all(
        "SELECT " + _PLAN_COLS + " FROM signal_plans WHERE intersection_id = %(id)s "
        "ORDER BY valid_from DESC, kind LIMIT %(n)s",
        {"id": ident, "n": history},
    )
    return {"current": current, "recommended": recommended, "history": hist}


async def recommended_plan(db: Database, ident: str, plan_id: str) -> dict[str, Any] | None:
    return await db.one(
        "SELECT " + _PLAN_COLS + " FROM signal_plans WHERE intersection_id = %(id)s "
        "AND plan_id = %(plan)s AND kind = 'recommended' ORDER BY valid_from DESC LIMIT 1",
        {"id": ident, "plan": plan_id},
    )


# --- energy ----------------------------------------------------------------------------------

_DISTRICTS = """
SELECT d.id, d.name, d.boundary, d.properties,
       (SELECT COALESCE(sum(f.rated_kw), 0) FROM feeders f WHERE f.district_id = d.id)
           AS rated_kw,
       l.window_start, l.avg_kw, fc.p10, fc.p50, fc.p90
  FROM districts d
  LEFT JOIN LATERAL (
      SELECT window_start, avg_kw FROM feeder_load
       WHERE scope = 'district' AND scope_id = d.id AND window_start >= %(since)s
       ORDER BY window_start DESC LIMIT 1) l ON true
  LEFT JOIN LATERAL (
      SELECT p10, p50, p90 FROM energy_forecasts
       WHERE scope = 'district' AND scope_id = d.id AND target = l.window_start
         AND issued_at <= l.window_start
       ORDER BY issued_at DESC LIMIT 1) fc ON true
 ORDER BY d.id
"""


async def districts(db: Database, since: datetime) -> list[dict[str, Any]]:
    return await db.all(_DISTRICTS, {"since": since})


_FEEDERS = """
SELECT f.id, f.district_id, f.name, f.rated_kw, f.lon, f.lat, l.window_start, l.avg_kw
  FROM feeders f
  LEFT JOIN LATERAL (
      SELECT window_start, avg_kw FROM feeder_load
       WHERE scope = 'feeder' AND scope_id = f.id AND window_start >= %(since)s
       ORDER BY window_start DESC LIMIT 1) l ON true
 WHERE (%(district)s::text IS NULL OR f.district_id = %(district)s)
 ORDER BY f.id
"""


async def feeders(db: Database, district_id: str | None, since: datetime) -> list[dict[str, Any]]:
    return await db.all(_FEEDERS, {"district": district_id, "since": since})


_LOADS = """
SELECT time_bucket(%(res)s, window_start) AS bucket,
       avg(avg_kw)::float8 AS avg_kw, max(avg_kw)::float8 AS max_kw,
       sum(energy_kwh)::float8 AS energy_kwh, min(meters_reporting)::int AS min_meters
  FROM feeder_load
 WHERE scope = %(scope)s AND scope_id = %(id)s
   AND window_start >= %(since)s AND window_start < %(until)s
 GROUP BY bucket ORDER BY bucket
"""


async def loads(
    db: Database, scope: str, ident: str, since: datetime, until: datetime, res: timedelta
) -> list[dict[str, Any]]:
    return await db.all(
        _LOADS, {"scope": scope, "id": ident, "since": since, "until": until, "res": res}
    )


async def vintages(db: Database, scope: str, ident: str, limit: int) -> list[dict[str, Any]]:
    return await db.all(
        "SELECT issued_at, model, count(*)::int AS points, min(target) AS first_target, "
        "max(target) AS last_target FROM energy_forecasts "
        "WHERE scope = %(scope)s AND scope_id = %(id)s "
        "GROUP BY issued_at, model ORDER BY issued_at DESC, model LIMIT %(n)s",
        {"scope": scope, "id": ident, "n": limit},
    )


async def forecast(
    db: Database, scope: str, ident: str, vintage: datetime | None, model: str | None
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The points of one vintage (the latest at or before ``vintage``; latest if None)."""
    head = await db.one(
        "SELECT issued_at, model FROM energy_forecasts "
        "WHERE scope = %(scope)s AND scope_id = %(id)s "
        "AND (%(model)s::text IS NULL OR model = %(model)s) "
        "AND (%(v)s::timestamptz IS NULL OR issued_at <= %(v)s) "
        "ORDER BY issued_at DESC LIMIT 1",
        {"scope": scope, "id": ident, "model": model, "v": vintage},
    )
    if head is None:
        return None, []
    points = await db.all(
        "SELECT target, p10, p50, p90 FROM energy_forecasts WHERE scope = %(scope)s "
        "AND scope_id = %(id)s AND model = %(model)s AND issued_at = %(v)s ORDER BY target",
        {"scope": scope, "id": ident, "model": head["model"], "v": head["issued_at"]},
    )
    return head, points


_ACCURACY = """
WITH fc AS (
    SELECT DISTINCT ON (target) target, p10, p50, p90
      FROM energy_forecasts
     WHERE scope = %(scope)s AND scope_id = %(id)s
       AND target >= %(since)s AND target < %(until)s
       AND issued_at <= target - %(lead)s
     ORDER BY target, issued_at DESC)
SELECT count(*)::int AS n,
       avg(abs(l.avg_kw - fc.p50))::float8 AS mae_kw,
       (100 * avg(abs(l.avg_kw - fc.p50) / NULLIF(abs(l.avg_kw), 0)))::float8 AS mape_pct,
       (100 * avg(CASE WHEN l.avg_kw BETWEEN fc.p10 AND fc.p90 THEN 1.0 ELSE 0.0 END))::float8
           AS coverage_p10_p90_pct,
       avg(fc.p50 - l.avg_kw)::float8 AS bias_kw
  FROM fc JOIN feeder_load l
    ON l.scope = %(scope)s AND l.scope_id = %(id)s AND l.window_start = fc.target
"""


async def accuracy(
    db: Database, scope: str, ident: str, since: datetime, until: datetime, lead: timedelta
) -> dict[str, Any]:
    row = await db.one(
        _ACCURACY,
        {"scope": scope, "id": ident, "since": since, "until": until, "lead": lead},
    )
    assert row is not None
    return row


# --- alerts and audit -------------------------------------------------------------------------

_ALERTS = """
SELECT alert_id, raised_at, kind, severity, source, subject_id, message, details,
       acknowledged_at, acknowledged_by
  FROM events
 WHERE raised_at >= %(since)s AND raised_at < %(until)s
   AND (%(source)s::text IS NULL OR source = %(source)s)
   AND (%(severity)s::text IS NULL OR severity = %(severity)s)
   AND (%(subject_id)s::text IS NULL OR subject_id = %(subject_id)s)
   AND (%(acknowledged)s::bool IS NULL
        OR (acknowledged_at IS NOT NULL) = %(acknowledged)s)
 ORDER BY raised_at DESC, alert_id
 LIMIT %(limit)s OFFSET %(offset)s
"""


async def alerts(db: Database, **params: Any) -> list[dict[str, Any]]:
    return await db.all(_ALERTS, params)


async def audit_entries(db: Database, limit: int, offset: int) -> list[dict[str, Any]]:
    return await db.all(
        "SELECT id, at, actor, role, action, subject, details FROM audit_log "
        "ORDER BY at DESC, id DESC LIMIT %(limit)s OFFSET %(offset)s",
        {"limit": limit, "offset": offset},
    )
