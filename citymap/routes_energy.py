"""Energy endpoints: districts (GeoJSON), feeders, loads, forecasts by vintage, accuracy, CSV."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response

from citymap import models, queries
from citymap.auth import ENERGY_READ, Principal
from citymap.deps import Services, bucketed, ok, require, services

router = APIRouter(tags=["energy"])

Svc = Annotated[Services, Depends(services)]
Scope = Annotated[Literal["district", "feeder"], Query(description="district or feeder")]
ScopeId = Annotated[str, Query(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="Its id")]
reader = require(ENERGY_READ)
Reader = Annotated[Principal, Depends(reader)]


def _status(actual: float | None, p10: float | None, p50: float | None, p90: float | None) -> str:
    if actual is None:
        return "no_data"
    if p50 is None or p10 is None or p90 is None:
        return "no_forecast"
    if actual > p90:
        return "above"
    if actual < p10:
        return "below"
    return "as_forecast"


async def _scope_exists(svc: Services, scope: str, ident: str) -> None:
    table = "districts" if scope == "district" else "feeders"
    if not await queries.exists(svc.db, table, ident):
        raise HTTPException(404, f"no {scope} with id {ident!r}")


@router.get("/districts")
async def districts_geojson(svc: Svc, who: Reader) -> Response:
    """GeoJSON FeatureCollection of districts with the latest load against its forecast:
    ``properties.status`` is ``above`` (> P90), ``below`` (< P10), ``as_forecast``,
    ``no_forecast`` or ``no_data``; ``ratio`` = actual / P50; ``utilisation`` = actual / rated."""
    rows = await queries.districts(svc.db, datetime.now(UTC) - timedelta(hours=6))
    features = []
    for r in rows:
        actual = r["avg_kw"]
        props = {
            "id": r["id"],
            "name": r["name"],
            **(r["properties"] or {}),
            "rated_kw": r["rated_kw"],
            "window_start": r["window_start"],
            "avg_kw": actual,
            "p10": r["p10"],
            "p50": r["p50"],
            "p90": r["p90"],
            "ratio": round(actual / r["p50"], 3) if actual is not None and r["p50"] else None,
            "utilisation": round(actual / r["rated_kw"], 3)
            if actual is not None and r["rated_kw"]
            else None,
            "status": _status(actual, r["p10"], r["p50"], r["p90"]),
        }
        features.append(
            {"type": "Feature", "id": r["id"], "geometry": r["boundary"], "properties": props}
        )
    return ok({"type": "FeatureCollection", "features": features})


@router.get("/feeders", response_model=list[models.Feeder])
async def list_feeders(
    svc: Svc,
    who: Reader,
    district_id: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")] = None,
) -> Response:
    rows = await queries.feeders(svc.db, district_id, datetime.now(UTC) - timedelta(hours=6))
    for r in rows:
        r["utilisation"] = (
            round(r["avg_kw"] / r["rated_kw"], 3) if r["avg_kw"] is not None else None
        )
    return ok(rows)


@router.get(
    "/loads", response_model=list[models.LoadBucket], responses={400: {"model": models.Problem}}
)
async def loads(
    svc: Svc,
    who: Reader,
    scope: Scope,
    scope_id: ScopeId,
    resolution: str = "15m",
    since: datetime | None = None,
    until: datetime | None = None,
) -> Response:
    """Measured load per bucket (``time_bucket`` of the 15-min windows); default last 7 days."""
    start, end, res = bucketed(
        resolution, since, until, default=timedelta(days=7), max_span=timedelta(days=400)
    )
    await _scope_exists(svc, scope, scope_id)
    return ok(await queries.loads(svc.db, scope, scope_id, start, end, res))


@router.get("/forecasts/vintages", response_model=list[models.Vintage])
async def forecast_vintages(
    svc: Svc,
    who: Reader,
    scope: Scope,
    scope_id: ScopeId,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> Response:
    """The forecasts issued for a district/feeder, newest first."""
    await _scope_exists(svc, scope, scope_id)
    return ok(await queries.vintages(svc.db, scope, scope_id, limit))


@router.get(
    "/forecasts", response_model=models.ForecastOut, responses={400: {"model": models.Problem}}
)
async def forecast(
    svc: Svc,
    who: Reader,
    scope: Scope,
    scope_id: ScopeId,
    vintage: Annotated[
        datetime | None,
        Query(
            description="Issue time: the latest forecast issued at or before it (default: latest)"
        ),
    ] = None,
    model: Annotated[str | None, Query(max_length=128)] = None,
) -> Response:
    if vintage is not None and vintage.tzinfo is None:
        raise HTTPException(400, f"vintage={vintage.isoformat()} has no timezone: add Z or +07:00")
    await _scope_exists(svc, scope, scope_id)
    head, points = await queries.forecast(svc.db, scope, scope_id, vintage, model)
    return ok(
        {
            "scope": scope,
            "scope_id": scope_id,
            "issued_at": head and head["issued_at"],
            "model": head and head["model"],
            "points": points,
        }
    )


@router.get("/forecasts/accuracy", response_model=models.Accuracy)
async def forecast_accuracy(
    svc: Svc,
    who: Reader,
    scope: Scope,
    scope_id: ScopeId,
    days: Annotated[int, Query(ge=1, le=90)] = 7,
    lead_h: Annotated[float, Query(ge=0, le=168, description="Forecast issued >= this early")] = 0,
) -> Response:
    """As-issued accuracy over the last ``days``: for each 15-min target the latest forecast
    issued at least ``lead_h`` before it, against the measured load (MAE, MAPE, P10-P90
    coverage, bias)."""
    await _scope_exists(svc, scope, scope_id)
    until = datetime.now(UTC)
    since = until - timedelta(days=days)
    row = await queries.accuracy(svc.db, scope, scope_id, since, until, timedelta(hours=lead_h))
    return ok({**row, "since": since, "until": until, "lead_h": lead_h})


@router.get(
    "/loads.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "CSV"}},
)
async def loads_csv(
    svc: Svc,
    who: Reader,
    scope: Scope,
    scope_id: ScopeId,
    days: Annotated[int, Query(ge=1, le=90)] = 7,
    horizon_h: Annotated[int, Query(ge=0, le=168)] = 48,
) -> Response:
    """Last ``days`` of measured load (15-min) and the latest forecast's next ``horizon_h``."""
    await _scope_exists(svc, scope, scope_id)
    now = datetime.now(UTC)
    actual = await queries.loads(
        svc.db, scope, scope_id, now - timedelta(days=days), now, timedelta(minutes=15)
    )
    head, points = await queries.forecast(svc.db, scope, scope_id, None, None)
    horizon_end = now + timedelta(hours=horizon_h)
    by_time: dict[datetime, list[Any]] = {}
    for a in actual:
        by_time[a["bucket"]] = [a["avg_kw"], None, None, None]
    for p in points:
        if p["target"] <= horizon_end and p["target"] >= now - timedelta(days=days):
            row = by_time.setdefault(p["target"], [None, None, None, None])
            row[1:] = [p["p10"], p["p50"], p["p90"]]
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["time_utc", "actual_kw", "forecast_p10_kw", "forecast_p50_kw", "forecast_p90_kw"])
    for t in sorted(by_time):
        w.writerow([t.isoformat(), *("" if v is None else round(v, 3) for v in by_time[t])])
    issued = head["issued_at"].strftime("%Y%m%dT%H%MZ") if head else "none"
    name = f"{scope}-{scope_id}-load-{issued}.csv"
    return Response(
        out.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
