"""Who am I, alerts (+ acknowledge), the audit log, live updates (SSE), health."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response
from fastapi.responses import StreamingResponse

from citymap import models, queries
from citymap.auth import ACK_BY_SOURCE, ALL, AUDIT_READ, Principal, Role, describe
from citymap.db import audit
from citymap.deps import Services, ok, require, services, window

router = APIRouter()
Svc = Annotated[Services, Depends(services)]
anyone = require(ALL)

_MAY = {
    Role.operator: [
        "traffic",
        "evidence",
        "review_violations",
        "approve_plans",
        "energy",
        "alerts",
        "ack_traffic_alerts",
        "audit",
    ],
    Role.utility: ["traffic", "energy", "alerts", "ack_energy_alerts", "audit"],
    Role.viewer: ["traffic", "violations_redacted", "energy", "alerts"],
}


@router.get("/me", response_model=models.Me, tags=["auth"])
async def me(svc: Svc, who: Annotated[Principal, Depends(anyone)]) -> Response:
    return ok(
        {
            "name": who.name,
            "role": who.role.value,
            "city": svc.settings.citymap.city,
            "may": _MAY[who.role],
        }
    )


@router.get(
    "/alerts",
    response_model=models.Page[models.Alert],
    tags=["alerts"],
    responses={400: {"model": models.Problem}},
)
async def list_alerts(
    svc: Svc,
    who: Annotated[Principal, Depends(anyone)],
    source: Literal["energy", "traffic", "camera", "platform"] | None = None,
    severity: Literal["info", "warning", "critical"] | None = None,
    subject_id: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")] = None,
    acknowledged: bool | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> Response:
    start, end = window(since, until, default=timedelta(days=7), max_span=timedelta(days=93))
    rows = await queries.alerts(
        svc.db,
        since=start,
        until=end,
        source=source,
        severity=severity,
        subject_id=subject_id,
        acknowledged=acknowledged,
        limit=limit + 1,
        offset=offset,
    )
    more = len(rows) > limit
    return ok(
        {
            "items": rows[:limit],
            "limit": limit,
            "offset": offset,
            "next_offset": offset + limit if more else None,
        }
    )


@router.post(
    "/alerts/{alert_id}/ack",
    response_model=models.Alert,
    tags=["alerts"],
    responses={403: {"model": models.Problem}, 404: {"model": models.Problem}},
)
async def acknowledge_alert(
    svc: Svc,
    who: Annotated[Principal, Depends(require(frozenset({Role.operator, Role.utility})))],
    alert_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")],
) -> dict[str, Any]:
    """Acknowledge an alert: operators for traffic/camera, utility for energy alerts."""
    async with svc.db.transaction() as conn:
        cur = await conn.execute(
            "SELECT source, acknowledged_at, raised_at FROM events WHERE alert_id = %s "
            "ORDER BY raised_at DESC LIMIT 1 FOR UPDATE",
            (alert_id,),
        )
        row = await cur.fetchone()
        if row is None:
            raise HTTPException(404, f"no alert with id {alert_id!r}")
        may = ACK_BY_SOURCE[row["source"]]
        if who.role not in may:
            raise HTTPException(
                403, f"{row['source']} alerts are acknowledged by {describe(may)}, not {who.role}"
            )
        if row["acknowledged_at"] is None:
            await conn.execute(
                "UPDATE events SET acknowledged_at = now(), acknowledged_by = %s "
                "WHERE alert_id = %s AND raised_at = %s",
                (who.name, alert_id, row["raised_at"]),
            )
            await audit(conn, who, "alert.ack", alert_id, {"source": row["source"]})
        cur = await conn.execute(
            "SELECT alert_id, raised_at, kind, severity, source, subject_id, message, details, "
            "acknowledged_at, acknowledged_by FROM events WHERE alert_id = %s AND raised_at = %s",
            (alert_id, row["raised_at"]),
        )
        out = await cur.fetchone()
    assert out is not None
    return out


@router.get("/audit", response_model=models.Page[models.AuditEntry], tags=["auth"])
async def audit_log(
    svc: Svc,
    who: Annotated[Principal, Depends(require(AUDIT_READ))],
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> Response:
    """Every write made through the API: who, what, when."""
    rows = await queries.audit_entries(svc.db, limit + 1, offset)
    more = len(rows) > limit
    return ok(
        {
            "items": rows[:limit],
            "limit": limit,
            "offset": offset,
            "next_offset": offset + limit if more else None,
        }
    )


@router.get("/roads", tags=["map"])
async def roads(
    svc: Svc,
    who: Annotated[Principal, Depends(anyone)],
    intersection_id: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")] = None,
) -> Response:
    """The road network (GeoJSON FeatureCollection of LineStrings): the map's base layer,
    exported from the simulator's SUMO network or loaded from a city's own GeoJSON."""
    rows = await queries.road_segments(svc.db, intersection_id)
    features = [
        {"type": "Feature", "id": r["id"], "geometry": r["geometry"], "properties": r["properties"]}
        for r in rows
    ]
    return ok({"type": "FeatureCollection", "features": features})


@router.get(
    "/live",
    tags=["live"],
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, 503: {"model": models.Problem}},
)
async def live(svc: Svc, who: Annotated[Principal, Depends(anyone)]) -> StreamingResponse:
    """Server-Sent Events: ``violation``, ``alert``, ``load``, ``count`` and ``plan`` events as
    they arrive on Kafka (violations redacted for viewers, hidden from utility)."""
    try:
        q = svc.hub.subscribe()
    except OverflowError as exc:
        raise HTTPException(503, str(exc)) from exc
    return StreamingResponse(
        svc.hub.stream(who, q),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/healthz", tags=["health"])
async def healthz(svc: Svc) -> dict[str, Any]:
    """No token needed. ``live`` says whether the Kafka tail is reading."""
    tail = svc.tail
    return {
        "db": await svc.db.ping(),
        "live": bool(tail and tail.ready.is_set()),
        "live_clients": svc.hub.clients,
        "live_events": svc.hub.published,
    }
