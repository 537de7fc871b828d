"""Traffic endpoints: intersections, cameras, violations (+ review), counts, queues, plans."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path as FsPath
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlparse

import anyio
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response
from fastapi.responses import FileResponse

from citymap import models, queries
from citymap.auth import EVIDENCE, TRAFFIC_READ, TRAFFIC_WRITE, VIOLATIONS_READ, Principal
from citymap.db import audit
from citymap.deps import Services, bucketed, must_exist, ok, require, services, window
from citymap.live import Event
from citymap.redact import violation_for
from citystream.errors import SinkError
from schemas.messages import SignalPlan, ViolationKind

router = APIRouter(tags=["traffic"])

IdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="Identifier")]
IdQuery = Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
Svc = Annotated[Services, Depends(services)]
Since = Annotated[datetime | None, Query(description="Start, ISO 8601 with timezone")]
Until = Annotated[datetime | None, Query(description="End (exclusive), ISO 8601 with timezone")]
Limit = Annotated[int, Query(ge=1, le=500, description="Page size")]
Offset = Annotated[int, Query(ge=0, le=100_000)]

reader = require(TRAFFIC_READ)
violation_reader = require(VIOLATIONS_READ)
operator = require(TRAFFIC_WRITE)


@router.get("/intersections", response_model=list[models.Intersection])
async def list_intersections(
    svc: Svc,
    who: Annotated[Principal, Depends(reader)],
    window_min: Annotated[int, Query(ge=1, le=1440, description="Flow window, minutes")] = 15,
    at: Annotated[
        datetime | None, Query(description="End of the flow window (default now)")
    ] = None,
) -> Response:
    since, until = window(
        None, at, default=timedelta(minutes=window_min), max_span=timedelta(days=1)
    )
    return ok(await queries.intersections(svc.db, since, until))


@router.get("/intersections/{intersection_id}", response_model=models.Intersection)
async def get_intersection(
    svc: Svc, who: Annotated[Principal, Depends(reader)], intersection_id: IdPath
) -> Response:
    now = datetime.now(UTC)
    rows = await queries.intersections(svc.db, now - timedelta(minutes=15), now, intersection_id)
    if not rows:
        raise HTTPException(404, f"no intersection with id {intersection_id!r}")
    row = rows[0]
    row["camera_list"] = await queries.cameras(svc.db, intersection_id)
    return ok(row)


@router.get("/cameras", response_model=list[models.Camera])
async def list_cameras(
    svc: Svc, who: Annotated[Principal, Depends(reader)], intersection_id: IdQuery = None
) -> Response:
    return ok(await queries.cameras(svc.db, intersection_id))


@router.get(
    "/violations",
    response_model=models.Page[models.Violation],
    response_model_exclude_unset=True,
    responses={400: {"model": models.Problem}},
)
async def list_violations(
    svc: Svc,
    who: Annotated[Principal, Depends(violation_reader)],
    kind: ViolationKind | None = None,
    intersection_id: IdQuery = None,
    camera_id: IdQuery = None,
    review_state: Literal["pending", "confirmed", "rejected"] | None = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Response:
    """Newest first. Viewers get no plates, evidence URIs or hashes."""
    start, end = window(since, until, default=timedelta(days=7), max_span=timedelta(days=93))
    rows = await queries.violations(
        svc.db,
        since=start,
        until=end,
        kind=kind.value if kind else None,
        intersection_id=intersection_id,
        camera_id=camera_id,
        review_state=review_state,
        limit=limit + 1,
        offset=offset,
    )
    more = len(rows) > limit
    items = [violation_for(r, who.sees_evidence) for r in rows[:limit]]
    return ok(
        {
            "items": items,
            "limit": limit,
            "offset": offset,
            "next_offset": offset + limit if more else None,
        }
    )


@router.post(
    "/violations/{violation_id}/review",
    response_model=models.Violation,
    responses={404: {"model": models.Problem}, 409: {"model": models.Problem}},
)
async def review_violation(
    svc: Svc,
    who: Annotated[Principal, Depends(operator)],
    violation_id: IdPath,
    body: models.Review,
) -> dict[str, Any]:
    """Confirm or reject a pending violation (operator). Recorded in the audit log."""
    state = "confirmed" if body.decision == "confirm" else "rejected"
    async with svc.db.transaction() as conn:
        cur = await conn.execute(
            "UPDATE violations SET review_state = %s, reviewed_at = now(), reviewed_by = %s "
            "WHERE violation_id = %s AND review_state = 'pending' RETURNING violation_id",
            (state, who.name, violation_id),
        )
        if await cur.fetchone() is None:
            current = await queries.violation(svc.db, violation_id)
            if current is None:
                raise HTTPException(404, f"no violation with id {violation_id!r}")
            raise HTTPException(
                409,
                f"violation {violation_id} was already {current['review_state']} by "
                f"{current['reviewed_by']}",
            )
        await audit(conn, who, f"violation.{body.decision}", violation_id, {"note": body.note})
    row = await queries.violation(svc.db, violation_id)
    assert row is not None
    return row


def evidence_root(svc: Services) -> FsPath:
    """Where evidence is stored: the map's setting, else the traffic workers' directory."""
    s = svc.settings
    return (s.citymap.evidence_dir or s.traffic.evidence_dir or s.state_dir / "evidence").resolve()


@router.get(
    "/violations/{violation_id}/evidence",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}, "application/zip": {}}}},
)
async def violation_evidence(
    svc: Svc,
    who: Annotated[Principal, Depends(require(EVIDENCE))],
    violation_id: IdPath,
    part: Annotated[
        str,
        Query(
            pattern=r"^(bundle|crop\.jpg|frames/(before|after)_\d{2}\.jpg|trajectory\.json)$",
            description="Of an evidence bundle: the vehicle crop (default), a frame, the "
            "trajectory, or the whole bundle (zip, with its manifest of SHA-256s)",
        ),
    ] = "crop.jpg",
) -> Response:
    """The evidence of a violation (operators only), when stored under the evidence
    directory: a file URI, or a path relative to it (what the traffic workers record)."""
    row = await queries.violation(svc.db, violation_id)
    if row is None:
        raise HTTPException(404, f"no violation with id {violation_id!r}")
    root = evidence_root(svc)
    uri = urlparse(row["evidence_uri"])
    missing = HTTPException(404, f"evidence {row['evidence_uri']} is not stored on this server")
    if uri.scheme not in ("", "file"):
        raise missing
    path = (root / unquote(uri.path)).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise missing
    if path.suffix != ".zip":
        return FileResponse(path)
    if part == "bundle":
        return FileResponse(path, media_type="application/zip", filename=path.name)
    data = await anyio.to_thread.run_sync(_zip_member, path, part)
    if data is None:
        raise HTTPException(404, f"the evidence bundle of {violation_id!r} has no {part!r}")
    kind = "application/json" if part.endswith(".json") else "image/jpeg"
    return Response(data, media_type=kind)


def _zip_member(path: FsPath, name: str) -> bytes | None:
    import zipfile

    with zipfile.ZipFile(path) as zf:
        try:
            return zf.read(name)
        except KeyError:
            return None


@router.get(
    "/intersections/{intersection_id}/counts",
    response_model=list[models.CountBucket],
    responses={400: {"model": models.Problem}},
)
async def intersection_counts(
    svc: Svc,
    who: Annotated[Principal, Depends(reader)],
    intersection_id: IdPath,
    resolution: Annotated[str, Query(description="Bucket: 30s, 5m, 15m, 1h, 1d ...")] = "15m",
    by: Literal["movement", "lane", "vehicle_class", "all"] = "movement",
    since: Since = None,
    until: Until = None,
) -> Response:
    """Vehicles per bucket and movement/lane/class, mean occupancy, max queue (``time_bucket``)."""
    start, end, res = bucketed(
        resolution, since, until, default=timedelta(hours=24), max_span=timedelta(days=93)
    )
    await must_exist(svc, "intersections", intersection_id)
    return ok(await queries.counts(svc.db, intersection_id, start, end, res, by))


@router.get(
    "/intersections/{intersection_id}/queues",
    response_model=list[models.QueueBucket],
    responses={400: {"model": models.Problem}},
)
async def intersection_queues(
    svc: Svc,
    who: Annotated[Principal, Depends(reader)],
    intersection_id: IdPath,
    resolution: str = "15m",
    since: Since = None,
    until: Until = None,
) -> Response:
    """Queue length per lane (all classes), mean and max per bucket."""
    start, end, res = bucketed(
        resolution, since, until, default=timedelta(hours=24), max_span=timedelta(days=93)
    )
    await must_exist(svc, "intersections", intersection_id)
    return ok(await queries.queues(svc.db, intersection_id, start, end, res))


@router.get("/intersections/{intersection_id}/plans", response_model=models.Plans)
async def intersection_plans(
    svc: Svc,
    who: Annotated[Principal, Depends(reader)],
    intersection_id: IdPath,
    history: Annotated[int, Query(ge=0, le=500)] = 20,
) -> Response:
    """The plan in force, the latest undecided recommendation, and the history."""
    await must_exist(svc, "intersections", intersection_id)
    return ok(await queries.plans(svc.db, intersection_id, history))


async def _decide(
    svc: Services, who: Principal, intersection_id: str, plan_id: str
) -> dict[str, Any]:
    row = await queries.recommended_plan(svc.db, intersection_id, plan_id)
    if row is None:
        raise HTTPException(
            404, f"no recommended plan {plan_id!r} for intersection {intersection_id!r}"
        )
    if row["review_state"] is not None:
        raise HTTPException(
            409, f"plan {plan_id} was already {row['review_state']} by {row['reviewed_by']}"
        )
    return row


@router.post(
    "/intersections/{intersection_id}/plans/{plan_id}/approve",
    response_model=models.PlanApproved,
    responses={
        404: {"model": models.Problem},
        409: {"model": models.Problem},
        502: {"model": models.Problem},
    },
)
async def approve_plan(
    svc: Svc,
    who: Annotated[Principal, Depends(operator)],
    intersection_id: IdPath,
    plan_id: IdPath,
    body: models.Decision | None = None,
) -> dict[str, Any]:
    """Approve a recommended plan: publish it as a ``SignalPlan`` to
    ``city/{city}/signals/{intersection_id}/plan`` (MQTT QoS 1), record it as the plan in
    force and in the audit log. Nothing is recorded if the broker does not acknowledge."""
    row = await _decide(svc, who, intersection_id, plan_id)
    now = datetime.now(UTC).replace(microsecond=0)
    recommended = SignalPlan.model_validate(row["plan"])
    plan = recommended.model_copy(update={"valid_from": max(now, recommended.valid_from)})
    async with svc.db.transaction() as conn:
        cur = await conn.execute(
            "UPDATE signal_plans SET review_state = 'approved', reviewed_at = now(), "
            "reviewed_by = %s WHERE intersection_id = %s AND plan_id = %s "
            "AND kind = 'recommended' AND valid_from = %s AND review_state IS NULL "
            "RETURNING plan_id",
            (who.name, intersection_id, plan_id, row["valid_from"]),
        )
        if await cur.fetchone() is None:
            raise HTTPException(409, f"plan {plan_id} was decided meanwhile")
        await conn.execute(
            "INSERT INTO signal_plans (intersection_id, plan_id, kind, valid_from, cycle_s, "
            "offset_s, plan, reviewed_at, reviewed_by) "
            "VALUES (%s, %s, 'current', %s, %s, %s, %s::jsonb, now(), %s) ON CONFLICT DO NOTHING",
            (
                intersection_id,
                plan_id,
                plan.valid_from,
                plan.cycle_s,
                plan.offset_s,
                json.dumps(plan.model_dump(mode="json")),
                who.name,
            ),
        )
        try:
            topic = await anyio.to_thread.run_sync(svc.publisher.publish, plan)
        except SinkError as exc:
            raise HTTPException(502, f"plan not sent, nothing recorded: {exc}") from exc
        await audit(
            conn,
            who,
            "plan.approve",
            f"{intersection_id}/{plan_id}",
            {
                "mqtt_topic": topic,
                "valid_from": plan.valid_from.isoformat(),
                "note": body and body.note,
            },
        )
    svc.hub.publish(
        Event("plan", {"intersection_id": intersection_id, "plan_id": plan_id, "state": "approved"})
    )
    return {
        "intersection_id": intersection_id,
        "plan_id": plan_id,
        "mqtt_topic": topic,
        "valid_from": plan.valid_from,
    }


@router.post(
    "/intersections/{intersection_id}/plans/{plan_id}/reject",
    response_model=models.Plan,
    responses={404: {"model": models.Problem}, 409: {"model": models.Problem}},
)
async def reject_plan(
    svc: Svc,
    who: Annotated[Principal, Depends(operator)],
    intersection_id: IdPath,
    plan_id: IdPath,
    body: models.Decision | None = None,
) -> dict[str, Any]:
    """Reject a recommended plan (nothing is sent to the controller)."""
    row = await _decide(svc, who, intersection_id, plan_id)
    async with svc.db.transaction() as conn:
        await conn.execute(
            "UPDATE signal_plans SET review_state = 'rejected', reviewed_at = now(), "
            "reviewed_by = %s WHERE intersection_id = %s AND plan_id = %s "
            "AND kind = 'recommended' AND valid_from = %s",
            (who.name, intersection_id, plan_id, row["valid_from"]),
        )
        await audit(
            conn, who, "plan.reject", f"{intersection_id}/{plan_id}", {"note": body and body.note}
        )
    updated = await queries.recommended_plan(svc.db, intersection_id, plan_id)
    assert updated is not None
    return updated
