"""Helpers for the map's tests and benchmark: a scratch database and a server in a thread."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql

from citystream.settings import CitymapSettings, DbSettings, Settings, TokenGrant
from citystream.stack.private import free_port

#: Tokens used by tests and the benchmark (never in production settings).
TEST_TOKENS = {
    "operator": "op-" + "o" * 29,
    "utility": "ut-" + "u" * 29,
    "viewer": "vw-" + "v" * 29,
}


def test_grants() -> tuple[TokenGrant, ...]:
    return tuple(
        TokenGrant(token=tok, role=role, name=f"test-{role}") for role, tok in TEST_TOKENS.items()
    )


@contextlib.contextmanager
def scratch_database(db: DbSettings) -> Iterator[DbSettings]:
    """A fresh, migrated database next to ``db``'s; dropped afterwards."""
    from citystream.db.migrate import migrate

    name = f"cs_map_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(db.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    scratch = db.model_copy(update={"name": name})
    try:
        migrate(scratch.dsn)
        yield scratch
    finally:
        with psycopg.connect(db.dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def map_settings(base: Settings, db: DbSettings, **citymap: Any) -> Settings:
    cm = CitymapSettings(port=free_port(), tokens=test_grants(), **citymap)
    return base.model_copy(update={"db": db, "citymap": cm})


class MapServer:
    """``create_app(settings)`` served by uvicorn on a daemon thread (loopback)."""

    def __init__(self, settings: Settings, live: bool = True) -> None:
        import uvicorn

        from citymap.app import create_app

        self.settings = settings
        self.app = create_app(settings, live=live)
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=settings.citymap.port,
            log_level="warning",
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="citymap-test", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.citymap.port}"

    def start(self, wait_live: bool = True, timeout_s: float = 30) -> MapServer:
        import httpx

        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                h = httpx.get(self.url + "/api/v1/healthz", timeout=2).json()
                if h["db"] and (h["live"] or not wait_live):
                    return self
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"map server at {self.url} not ready in {timeout_s} s")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
