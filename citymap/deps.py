"""What every route needs: the process's services and the caller's identity."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fastapi import HTTPException, Query, Request, Response

from citymap.auth import Principal, Role, TokenBook, describe, token_from
from citymap.db import Database
from citymap.live import Hub, KafkaTail
from citymap.params import ParamError, check_buckets, parse_resolution, time_range
from citymap.publish import PlanPublisher
from citystream.settings import Settings


@dataclass
class Services:
    settings: Settings
    db: Database
    hub: Hub
    tokens: TokenBook
    publisher: PlanPublisher
    tail: KafkaTail | None = None


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def require(
    roles: frozenset[Role],
) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency: the caller, if their token is valid (401) and their role allowed (403)."""

    async def dep(
        request: Request,
        access_token: str | None = Query(
            None, description="Token, for clients that cannot send an Authorization header"
        ),
    ) -> Principal:
        token = token_from(request.headers.get("authorization"), access_token)
        if token is None:
            raise HTTPException(
                401,
                "no token: send 'Authorization: Bearer <token>' or ?access_token=<token>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        who = services(request).tokens.lookup(token)
        if who is None:
            raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})
        if who.role not in roles:
            raise HTTPException(
                403, f"role {who.role.value} may not do this (needs {describe(roles)})"
            )
        return who

    return dep


def bad(exc: ParamError) -> HTTPException:
    return HTTPException(400, str(exc))


def window(
    since: datetime | None,
    until: datetime | None,
    *,
    default: timedelta,
    max_span: timedelta = timedelta(days=93),
) -> tuple[datetime, datetime]:
    """A checked ``[since, until)`` (see :func:`citymap.params.time_range`); 400 when bad."""
    try:
        return time_range(since, until, default=default, max_span=max_span)
    except ParamError as exc:
        raise bad(exc) from exc


def bucketed(
    resolution: str,
    since: datetime | None,
    until: datetime | None,
    *,
    default: timedelta,
    max_span: timedelta = timedelta(days=93),
) -> tuple[datetime, datetime, timedelta]:
    """A checked time range and ``time_bucket`` resolution; 400 when bad."""
    start, end = window(since, until, default=default, max_span=max_span)
    try:
        res = parse_resolution(resolution)
        check_buckets(start, end, res)
    except ParamError as exc:
        raise bad(exc) from exc
    return start, end, res


async def must_exist(svc: Services, table: str, ident: str) -> None:
    from citymap import queries

    if not await queries.exists(svc.db, table, ident):
        raise HTTPException(404, f"no {table[:-1]} with id {ident!r}")


def _default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return str(value)


def ok(body: object) -> Response:
    """JSON straight from query rows (the route's ``response_model`` documents the shape;
    skipping its re-validation roughly halves the CPU per read)."""
    return Response(
        json.dumps(body, default=_default, separators=(",", ":")), media_type="application/json"
    )
