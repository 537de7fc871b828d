"""The composition root of the map: :func:`create_app` wires settings to services and routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from citymap import routes_common, routes_energy, routes_traffic
from citymap.auth import TokenBook
from citymap.db import Database
from citymap.deps import Services
from citymap.live import Hub, KafkaTail
from citymap.publish import PlanPublisher
from citystream.settings import Settings

log = logging.getLogger(__name__)
API = "/api/v1"


def static_dir() -> Path:
    return Path(__file__).resolve().parent / "static"


def _describe(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()))
        value = err.get("input")
        shown = f" (got {value!r})" if value is not None and not isinstance(value, dict) else ""
        parts.append(f"{where}: {err.get('msg')}{shown}")
    return "; ".join(parts)


def create_app(settings: Settings, *, live: bool = True) -> FastAPI:
    """The map's ASGI app. ``live=False`` skips the Kafka tail (tests of reads only)."""
    svc = Services(
        settings=settings,
        db=Database(settings.db.dsn, settings.citymap.db_pool_size),
        hub=Hub(settings.citymap.max_sse_clients),
        tokens=TokenBook(settings.citymap.tokens),
        publisher=PlanPublisher(settings.mqtt, settings.citymap.city),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await svc.db.open()
        if live:
            svc.tail = KafkaTail(settings.kafka.bootstrap, svc.hub.publish)
            svc.tail.start()
        try:
            yield
        finally:
            if svc.tail is not None:
                await svc.tail.stop()
            await svc.db.close()

    app = FastAPI(
        title="CityStream city map API",
        version="1",
        description="Traffic (intersections, violations, counts, signal plans) and energy "
        "(districts, feeders, loads, forecasts) of one city, with live updates by SSE. "
        "Send `Authorization: Bearer <token>`; roles: operator, utility, viewer.",
        lifespan=lifespan,
        openapi_url=f"{API}/openapi.json",
        docs_url=f"{API}/docs",
        redoc_url=None,
    )
    app.state.services = svc

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            status_code=422,
            content={"detail": _describe(exc), "errors": jsonable(exc.errors())},
        )

    app.include_router(routes_traffic.router, prefix=API)
    app.include_router(routes_energy.router, prefix=API)
    app.include_router(routes_common.router, prefix=API)

    static = static_dir()

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(static / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/map", include_in_schema=False)
    async def map_redirect() -> RedirectResponse:
        return RedirectResponse("/")

    app.mount("/static", StaticFiles(directory=static), name="static")
    return app


def jsonable(errors: object) -> object:
    from fastapi.encoders import jsonable_encoder

    return jsonable_encoder(errors, custom_encoder={Exception: str})
