"""Raw-data retention: drop hypertable chunks older than each table's retention.

The Apache-2 edition of TimescaleDB has no ``add_retention_policy``; this module does the
same with ``drop_chunks``: :func:`drop_old_chunks` once, :class:`RetentionScheduler` every N
minutes in a daemon thread.  Chunks are dropped whole, so a chunk is removed only once its
*newest* possible row is older than the cut-off (up to one chunk interval of extra data is
kept).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from citystream.db.tables import TABLES
from citystream.errors import SinkError
from citystream.settings import Settings

log = logging.getLogger(__name__)


def default_retention(settings: Settings) -> dict[str, timedelta]:
    """Every hypertable kept for ``settings.db.retention_days``."""
    keep = timedelta(days=settings.db.retention_days)
    return dict.fromkeys(TABLES, keep)


def drop_old_chunks(
    conn: psycopg.Connection[Any],
    retention: Mapping[str, timedelta],
    *,
    now: datetime | None = None,
) -> dict[str, list[str]]:
    """Drop, per table, the chunks whose data is all older than ``now - retention[table]``.

    Returns the dropped chunk names by table.  Each table is handled in its own
    transaction; the connection must not be inside a transaction.
    """
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    dropped: dict[str, list[str]] = {}
    for table, keep in retention.items():
        if keep <= timedelta(0):
            raise ValueError(f"retention of {table} must be positive, got {keep}")
        cutoff = now - keep
        with conn.transaction():
            rows = conn.execute(
                "SELECT drop_chunks(%s::regclass, older_than => %s::timestamptz)",
                (table, cutoff),
            ).fetchall()
        dropped[table] = [str(r[0]) for r in rows]
        if dropped[table]:
            log.info(
                "retention: dropped %d chunk(s) of %s older than %s: %s",
                len(dropped[table]),
                table,
                cutoff.isoformat(),
                ", ".join(dropped[table]),
            )
    return dropped


class RetentionScheduler:
    """Runs :func:`drop_old_chunks` now and then every ``interval_s`` in a daemon thread.

    Each run opens a short-lived connection, so database restarts do not matter; a failed
    run is logged and retried at the next interval.  ``stop()`` ends the thread promptly.
    """

    def __init__(
        self,
        dsn: str,
        retention: Mapping[str, timedelta],
        *,
        interval_s: float = 900.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.dsn = dsn
        self.retention = dict(retention)
        self.interval_s = interval_s
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0
        self.last_dropped: dict[str, list[str]] = {}
        self.last_error: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, interval_s: float = 900.0) -> RetentionScheduler:
        return cls(settings.db.dsn, default_retention(settings), interval_s=interval_s)

    def run_once(self) -> dict[str, list[str]]:
        """One pass; raises :class:`SinkError` if the database cannot be reached."""
        try:
            with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
                dropped = drop_old_chunks(conn, self.retention, now=self._clock())
        except psycopg.Error as exc:
            raise SinkError(f"retention run failed: {exc}") from exc
        self.runs += 1
        self.last_dropped = dropped
        total = sum(len(v) for v in dropped.values())
        log.info("retention: run %d dropped %d chunk(s)", self.runs, total)
        return dropped

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
                self.last_error = None
            except Exception as exc:  # keep the thread alive; the next run retries
                self.last_error = str(exc)
                log.warning("retention: %s", exc)
            self._stop.wait(self.interval_s)
