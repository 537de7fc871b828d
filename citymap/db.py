"""The map's database adapter: an async connection pool, reads as dicts, audited writes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, LiteralString

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from citymap.auth import Principal

Conn = psycopg.AsyncConnection[dict[str, Any]]


class Database:
    """A pool of autocommit connections; :meth:`transaction` for multi-statement writes."""

    def __init__(self, dsn: str, max_size: int = 8) -> None:
        self._pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            dsn,
            min_size=min(2, max_size),
            max_size=max_size,
            kwargs={"autocommit": True, "row_factory": dict_row},
            open=False,
            name="citymap",
        )

    async def open(self) -> None:
        await self._pool.open(wait=False)

    async def close(self) -> None:
        await self._pool.close()

    async def all(
        self, query: LiteralString, params: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

    async def one(
        self, query: LiteralString, params: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchone()

    async def ping(self) -> bool:
        try:
            return await self.one("SELECT 1 AS ok") is not None
        except psycopg.Error:
            return False

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        async with self._pool.connection() as conn, conn.transaction():
            yield conn


async def audit(
    conn: Conn, who: Principal, action: str, subject: str, details: dict[str, Any]
) -> None:
    """Record a write (inside the caller's transaction, so it is recorded iff it happened)."""
    await conn.execute(
        "INSERT INTO audit_log (actor, role, action, subject, details) "
        "VALUES (%s, %s, %s, %s, %s::jsonb)",
        (who.name, who.role.value, action, subject, json.dumps(details, default=str)),
    )
