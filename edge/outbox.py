"""A durable, bounded outbox: local disk first, removed only once the broker acknowledged.

Storage is one SQLite file in WAL mode with ``synchronous=FULL``: every commit fsyncs the
write-ahead log, so what :meth:`Outbox.append` returned from survives ``kill -9`` *and* a
power cut (``NORMAL`` in WAL mode would survive a process crash but may lose the last
commits on power loss).  SQLite was chosen over a hand-written segment log because batch
formation and acknowledgement are then single transactions with crash recovery done by
SQLite; the cost is one fsync per ``append`` call, so callers append in chunks (a few
hundred items per call gives > 100k items/s, see ``bench/outbox.py``).

Model::

    entries   seq (monotonic, never reused) -> payload bytes
    batches   batch_id (= per-outbox batch sequence, never reused) -> entry range [first, last]
    meta      next_batch_id, batched_upto (highest entry seq already assigned to a batch)

* :meth:`append` adds entries (all or none; durable on return).
* :meth:`peek_batch` hands out the oldest unacknowledged batch not yet handed out since the
  last :meth:`rewind`; when none is left it seals the next ``max_items`` unbatched entries into
  a new batch with the next ``batch_id``, durably, so a batch keeps its id and its items across
  restarts and resends.
* :meth:`ack` deletes a batch and its entries (idempotent).
* :meth:`rewind` (on reconnect) makes every unacknowledged batch come out again, oldest first.
  Opening the file starts rewound, so after a crash unacked entries are resent in order.

The outbox is bounded by entries and payload bytes.  At ``warn_ratio`` of either bound it
logs a WARNING (again each time it re-crosses) and sets the ``near_full`` gauge; at the bound
:meth:`append` raises :class:`OutboxFullError` and stores nothing: backpressure for the
producer, never a silent drop.  All methods are thread-safe.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from citystream.errors import CityStreamError
from citystream.metrics import Gauge, Registry

log = logging.getLogger("citystream.edge.outbox")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    batch_id  INTEGER PRIMARY KEY,
    first_seq INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('next_batch_id', 0), ('batched_upto', 0);
"""


class OutboxFullError(CityStreamError, BufferError):
    """The outbox is at its size bound; nothing was stored.  Retry after acks drain it."""


@dataclass(frozen=True)
class Batch:
    """A sealed group of entries with its stable, increasing id."""

    batch_id: int
    items: list[bytes]
    first_seq: int
    last_seq: int

    @property
    def nbytes(self) -> int:
        return sum(len(i) for i in self.items)


class Outbox:
    """See the module docstring.  ``registry`` (optional) receives the outbox gauges."""

    def __init__(
        self,
        path: Path | str,
        *,
        max_entries: int = 2_000_000,
        max_bytes: int = 1 << 30,
        warn_ratio: float = 0.8,
        registry: Registry | None = None,
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be >= 1")
        if not 0.0 < warn_ratio <= 1.0:
            raise ValueError(f"warn_ratio must be in (0, 1], got {warn_ratio}")
        self.path = Path(path)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.warn_ratio = warn_ratio
        self._lock = threading.RLock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        mode = self._db.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            raise OSError(f"outbox {self.path}: cannot use WAL mode (got {mode!r})")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._count, self._bytes = self._db.execute(
            "SELECT count(*), coalesce(sum(length(payload)), 0) FROM entries"
        ).fetchone()
        self._next_batch_id = self._meta("next_batch_id")
        self._batched_upto = self._meta("batched_upto")
        self._unbatched = self._db.execute(
            "SELECT count(*) FROM entries WHERE seq > ?", (self._batched_upto,)
        ).fetchone()[0]
        row = self._db.execute("SELECT value FROM meta WHERE key = 'source_cursor'").fetchone()
        self._source_cursor: int | None = None if row is None else int(row[0])
        self._cursor = -1  # highest batch_id handed out since the last rewind
        self._near_full = False
        self._closed = False
        self._g_pending: Gauge | None = None
        self._g_bytes: Gauge | None = None
        self._g_fill: Gauge | None = None
        self._g_near: Gauge | None = None
        if registry is not None:
            self._g_pending = registry.gauge("outbox_pending", "Entries in the outbox (unacked)")
            self._g_bytes = registry.gauge("outbox_bytes", "Payload bytes in the outbox")
            self._g_fill = registry.gauge(
                "outbox_fill_ratio", "Outbox use relative to its bound (max of entries, bytes)"
            )
            self._g_near = registry.gauge(
                "outbox_near_full", "1 while the outbox is at or above its warning level"
            )
        self._update_level()

    # --- public API ----------------------------------------------------------------------

    def append(
        self, items: Sequence[bytes], *, cursor: int | None = None, force: bool = False
    ) -> None:
        """Store ``items`` in order; durable (fsynced) when this returns.

        ``cursor`` (optional) is the producer's source position after these items, stored in
        the same transaction, so a resumable source restarts exactly after the last durable
        item (see :attr:`source_cursor`).  Raises :class:`OutboxFullError` when the items do
        not all fit (nothing is stored then); ``force`` ignores the bound (only for the last
        flush of readings already taken from the meters at shutdown: better over the bound
        than lost).
        """
        if not items and cursor is None:
            return
        n = len(items)
        nbytes = sum(len(i) for i in items)
        with self._lock:
            self._check_open()
            over = self._count + n > self.max_entries or self._bytes + nbytes > self.max_bytes
            if over and not force:
                raise OutboxFullError(
                    f"outbox {self.path} is full: {self._count}/{self.max_entries} entries, "
                    f"{self._bytes}/{self.max_bytes} bytes; cannot take {n} more items "
                    f"({nbytes} bytes) until the broker acknowledges pending batches"
                )
            with self._tx():
                self._db.executemany(
                    "INSERT INTO entries (payload) VALUES (?)", ((i,) for i in items)
                )
                if cursor is not None:
                    self._db.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('source_cursor', ?)",
                        (cursor,),
                    )
            if cursor is not None:
                self._source_cursor = cursor
            self._count += n
            self._bytes += nbytes
            self._unbatched += n
            self._update_level()

    def peek_batch(self, max_items: int, *, seal: bool = True) -> Batch | None:
        """The next batch to send: the oldest unacked batch not handed out since the last
        :meth:`rewind`, else (with ``seal``) a newly sealed batch of up to ``max_items``
        unbatched entries; ``None`` when there is nothing to send.  A sealed batch keeps its id
        and items for good."""
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        with self._lock:
            self._check_open()
            row = self._db.execute(
                "SELECT batch_id, first_seq, last_seq FROM batches WHERE batch_id > ? "
                "ORDER BY batch_id LIMIT 1",
                (self._cursor,),
            ).fetchone()
            if row is None and seal:
                row = self._seal(max_items)
            if row is None:
                return None
            batch_id, first, last = row
            items = [
                bytes(p)
                for (p,) in self._db.execute(
                    "SELECT payload FROM entries WHERE seq BETWEEN ? AND ? ORDER BY seq",
                    (first, last),
                )
            ]
            self._cursor = batch_id
            return Batch(batch_id, items, first, last)

    def ack(self, batch_id: int) -> int:
        """Remove batch ``batch_id`` and its entries; returns how many entries were removed
        (0 when it was already acked: acks are idempotent)."""
        with self._lock:
            self._check_open()
            row = self._db.execute(
                "SELECT first_seq, last_seq FROM batches WHERE batch_id = ?", (batch_id,)
            ).fetchone()
            if row is None:
                return 0
            first, last = row
            n, nbytes = self._db.execute(
                "SELECT count(*), coalesce(sum(length(payload)), 0) FROM entries "
                "WHERE seq BETWEEN ? AND ?",
                (first, last),
            ).fetchone()
            with self._tx():
                self._db.execute("DELETE FROM entries WHERE seq BETWEEN ? AND ?", (first, last))
                self._db.execute("DELETE FROM batches WHERE batch_id = ?", (batch_id,))
            self._count -= n
            self._bytes -= nbytes
            self._update_level()
            return int(n)

    def rewind(self) -> None:
        """Hand out every unacknowledged batch again, oldest first (call on reconnect)."""
        with self._lock:
            self._cursor = -1

    def pending_count(self) -> int:
        """Entries stored and not yet acknowledged (batched or not)."""
        return int(self._count)

    def unbatched_count(self) -> int:
        """Entries not yet sealed into a batch."""
        return int(self._unbatched)

    def size_bytes(self) -> int:
        """Payload bytes of the pending entries."""
        return int(self._bytes)

    def unacked_batches(self) -> int:
        with self._lock:
            self._check_open()
            return int(self._db.execute("SELECT count(*) FROM batches").fetchone()[0])

    @property
    def source_cursor(self) -> int | None:
        """The source position stored with the last ``append(..., cursor=...)``, if any."""
        return self._source_cursor

    @property
    def next_batch_id(self) -> int:
        """The id the next sealed batch gets (persisted; never reused)."""
        return int(self._next_batch_id)

    @property
    def fill_ratio(self) -> float:
        return max(int(self._count) / self.max_entries, int(self._bytes) / self.max_bytes)

    @property
    def near_full(self) -> bool:
        return self._near_full

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals -----------------------------------------------------------------------

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)

    def _meta(self, key: str) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"outbox {self.path} is closed")

    def _seal(self, max_items: int) -> tuple[int, int, int] | None:
        if self._unbatched == 0:
            return None
        rows = self._db.execute(
            "SELECT seq FROM entries WHERE seq > ? ORDER BY seq LIMIT ?",
            (self._batched_upto, max_items),
        ).fetchall()
        if not rows:
            return None
        first, last = rows[0][0], rows[-1][0]
        batch_id = self._next_batch_id
        with self._tx():
            self._db.execute(
                "INSERT INTO batches (batch_id, first_seq, last_seq) VALUES (?, ?, ?)",
                (batch_id, first, last),
            )
            self._db.execute(
                "UPDATE meta SET value = ? WHERE key = 'next_batch_id'", (batch_id + 1,)
            )
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'batched_upto'", (last,))
        self._next_batch_id = batch_id + 1
        self._batched_upto = last
        self._unbatched -= len(rows)
        return batch_id, first, last

    def _update_level(self) -> None:
        ratio = self.fill_ratio
        near = ratio >= self.warn_ratio
        if near and not self._near_full:
            log.warning(
                "OUTBOX NEAR FULL: %s holds %d/%d entries, %d/%d bytes (%.0f%% of its bound); "
                "the broker is not acknowledging fast enough - at 100%% the meter reader is "
                "blocked (nothing is dropped)",
                self.path,
                self._count,
                self.max_entries,
                self._bytes,
                self.max_bytes,
                100 * ratio,
            )
        elif not near and self._near_full:
            log.info("outbox %s back below its warning level (%.0f%%)", self.path, 100 * ratio)
        self._near_full = near
        if self._g_pending is not None:
            self._g_pending.set(self._count)
        if self._g_bytes is not None:
            self._g_bytes.set(self._bytes)
        if self._g_fill is not None:
            self._g_fill.set(ratio)
        if self._g_near is not None:
            self._g_near.set(1 if near else 0)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
