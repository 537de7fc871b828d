"""Idempotent batch writer into TimescaleDB: COPY into a staging table, then INSERT ... ON CONFLICT.

One :class:`CopyWriter` per target table (a :class:`~citystream.db.tables.TableSpec`).
Rows are buffered by :meth:`CopyWriter.add` / :meth:`CopyWriter.add_many`; the buffer never
holds more than ``batch_size`` rows: when it is full the writer flushes before taking more
(explicit backpressure: the caller blocks while the batch is written).  A flush, in one
transaction:

1. ``CREATE TEMP TABLE IF NOT EXISTS _stage_<table> (LIKE <table> INCLUDING DEFAULTS)
   ON COMMIT DELETE ROWS`` (once per connection; a temp table has no indexes and no WAL);
2. ``COPY _stage_<table> (cols) FROM STDIN (FORMAT BINARY)``;
3. ``INSERT INTO <table> (cols) SELECT cols FROM _stage_<table>
   ON CONFLICT (<natural key>) DO NOTHING``;
4. ``COMMIT``.

So a replayed batch inserts nothing, duplicates inside one batch collapse to one row, and a
failed flush leaves nothing behind.

**Optimistic fast path** (``optimistic=True``, the default).  ``ON CONFLICT`` makes
PostgreSQL do a speculative insertion per row, which costs ~50% more than a plain insert.
Most batches hold only new rows, so step 3 first runs the plain ``INSERT ... SELECT`` inside
a savepoint; on a unique violation the savepoint is rolled back and the ``ON CONFLICT DO
NOTHING`` statement runs instead.  The result is the same row set either way (also under
concurrent writers).  After a batch with duplicates the writer stays on the ``ON CONFLICT``
path until a batch arrives that has none, so a long replay does not pay for failed attempts.
A failed attempt leaves dead tuples for autovacuum.  :meth:`~CopyWriter.flush` returns
``FlushResult(sent, inserted)`` only after the COMMIT.

**Acknowledging upstream.**  The caller commits its Kafka offsets (or acknowledges MQTT
messages) only for records whose rows went into a flush that *returned*; if a flush raises,
nothing is acknowledged and the records are consumed again after a restart or rebalance —
the natural keys make that replay harmless.  On failure the rows stay buffered, so calling
:meth:`~CopyWriter.flush` again retries the same batch.

Errors: :class:`~citystream.errors.SinkError` when the database cannot be reached or the
connection breaks (retry later); its subclass :class:`BatchRejected` when the server refuses
the data itself (a constraint or type error: retrying the same rows cannot succeed; send
them to the dead-letter topic or drop them with :meth:`~CopyWriter.discard`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from itertools import islice
from types import TracebackType
from typing import Any, NamedTuple, Self

import psycopg
from psycopg import sql

from citystream.db.tables import TableSpec
from citystream.errors import SinkError

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 20_000
MAX_BATCH_SIZE = 1_000_000


class BatchRejected(SinkError):
    """The database refused the rows of a batch (constraint, type or SQL error)."""


class FlushResult(NamedTuple):
    """What one or more flushes did: rows sent to the server and rows actually inserted."""

    sent: int = 0
    inserted: int = 0

    def plus(self, other: FlushResult) -> FlushResult:
        return FlushResult(self.sent + other.sent, self.inserted + other.inserted)

    @property
    def duplicates(self) -> int:
        """Rows that were already stored (replays) or repeated inside the batch."""
        return self.sent - self.inserted


# --- SQL generation (pure) -------------------------------------------------------------------


def stage_table_name(spec: TableSpec) -> str:
    return f"_stage_{spec.name}"


def _columns(spec: TableSpec) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(c) for c in spec.column_names)


def create_stage_sql(spec: TableSpec) -> sql.Composed:
    """Session-private, index-free staging table shaped like the target, emptied at commit."""
    return sql.SQL(
        "CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {target} INCLUDING DEFAULTS) "
        "ON COMMIT DELETE ROWS"
    ).format(stage=sql.Identifier(stage_table_name(spec)), target=sql.Identifier(spec.name))


def copy_sql(spec: TableSpec, *, binary: bool = True) -> sql.Composed:
    """``COPY <stage> (cols) FROM STDIN`` in binary (default) or text format."""
    fmt = sql.SQL(" (FORMAT BINARY)") if binary else sql.SQL("")
    return sql.SQL("COPY {stage} ({cols}) FROM STDIN{fmt}").format(
        stage=sql.Identifier(stage_table_name(spec)), cols=_columns(spec), fmt=fmt
    )


def insert_sql(spec: TableSpec, *, on_conflict: bool = True) -> sql.Composed:
    """Move the staged rows into the target, skipping rows whose natural key is stored.

    ``on_conflict=False`` gives the plain INSERT of the optimistic fast path (see
    :class:`CopyWriter`), which fails on the first duplicate instead of skipping it.
    """
    cols = _columns(spec)
    query = sql.SQL("INSERT INTO {target} ({cols}) SELECT {cols} FROM {stage}").format(
        target=sql.Identifier(spec.name), cols=cols, stage=sql.Identifier(stage_table_name(spec))
    )
    if not on_conflict:
        return query
    key = sql.SQL(", ").join(sql.Identifier(k) for k in spec.key)
    return query + sql.SQL(" ON CONFLICT ({key}) DO NOTHING").format(key=key)


# --- the writer ------------------------------------------------------------------------------


class CopyWriter:
    """Batches rows for one table and writes them idempotently (see the module docstring).

    ``conn`` is either a libpq DSN (the writer opens, owns and, after a connection failure,
    re-opens its connection) or an open :class:`psycopg.Connection` owned by the caller,
    which must not be inside a transaction when :meth:`flush` runs.
    """

    def __init__(
        self,
        conn: psycopg.Connection[Any] | str,
        spec: TableSpec,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        binary: bool = True,
        optimistic: bool = True,
        connect_timeout_s: int = 10,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be in 1..{MAX_BATCH_SIZE}, got {batch_size}")
        self.spec = spec
        self.batch_size = batch_size
        self.binary = binary
        self.optimistic = optimistic
        self._try_fast = optimistic
        self._dsn = conn if isinstance(conn, str) else None
        self._conn: psycopg.Connection[Any] | None = None if isinstance(conn, str) else conn
        self._connect_timeout_s = connect_timeout_s
        self._stage_ready_on: psycopg.Connection[Any] | None = None
        self._buf: list[Sequence[object]] = []
        self._create_stage = create_stage_sql(spec)
        self._copy = copy_sql(spec, binary=binary)
        self._insert = insert_sql(spec)
        self._insert_plain = insert_sql(spec, on_conflict=False)
        self.totals = FlushResult()

    @property
    def pending(self) -> int:
        """Rows buffered and not yet written."""
        return len(self._buf)

    def add(self, row: Sequence[object]) -> FlushResult | None:
        """Buffer one row; flush when the buffer reaches ``batch_size``.

        Returns the flush's result when one happened, else ``None``.  If an earlier flush
        failed and the buffer is still full, that batch is retried first and ``row`` is only
        taken once it succeeds.
        """
        self._check_width(row)
        result = None
        if len(self._buf) >= self.batch_size:
            result = self.flush()
        self._buf.append(row)
        if len(self._buf) >= self.batch_size:
            result = self.flush() if result is None else result.plus(self.flush())
        return result

    def add_many(self, rows: Iterable[Sequence[object]]) -> FlushResult:
        """Buffer many rows, flushing each time the buffer fills; the sum of those flushes.

        Same rules as :meth:`add`, in slices (cheaper per row).  If a flush raises, the rows
        not yet buffered are not taken: the caller still holds them.
        """
        total = FlushResult()
        width = len(self.spec.columns)
        it = iter(rows)
        while True:
            if len(self._buf) >= self.batch_size:
                total = total.plus(self.flush())
            chunk = list(islice(it, self.batch_size - len(self._buf)))
            if not chunk:
                return total
            for row in chunk:
                if len(row) != width:
                    self._check_width(row)
            self._buf.extend(chunk)

    def discard(self) -> int:
        """Drop the buffered rows (after a :class:`BatchRejected`); returns how many."""
        n = len(self._buf)
        self._buf.clear()
        return n

    def flush(self) -> FlushResult:
        """Write the buffered rows in one transaction; returns after COMMIT.

        Raises :class:`SinkError` (connection trouble) or :class:`BatchRejected` (bad data);
        in both cases the transaction is rolled back and the rows stay buffered.
        """
        if not self._buf:
            return FlushResult()
        conn = self._connection()
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            raise SinkError(
                f"{self.spec.name}: the writer's connection is inside a transaction; "
                "flush needs to COMMIT its own"
            )
        try:
            with conn.transaction(), conn.cursor() as cur:
                if self._stage_ready_on is not conn:
                    cur.execute(self._create_stage)
                with cur.copy(self._copy) as copy:
                    copy.set_types(self.spec.pg_types)
                    for row in self._buf:
                        copy.write_row(row)
                inserted = self._move_staged(conn, cur)
        except psycopg.OperationalError as exc:
            self._on_connection_error()
            raise SinkError(
                f"writing {len(self._buf)} rows to {self.spec.name} failed, "
                f"nothing was written (database unreachable or connection lost): {exc}"
            ) from exc
        except psycopg.Error as exc:
            if conn.closed or conn.broken:
                self._on_connection_error()
                raise SinkError(
                    f"writing {len(self._buf)} rows to {self.spec.name} failed, "
                    f"connection lost: {exc}"
                ) from exc
            raise BatchRejected(
                f"the database refused a batch of {len(self._buf)} rows for "
                f"{self.spec.name}, nothing was written: {exc}"
            ) from exc
        except (TypeError, ValueError, OverflowError) as exc:  # a value COPY cannot encode
            raise BatchRejected(
                f"a row for {self.spec.name} cannot be encoded for COPY "
                f"({', '.join(self.spec.pg_types)}): {exc}"
            ) from exc
        self._stage_ready_on = conn
        result = FlushResult(len(self._buf), inserted)
        self._buf.clear()
        self.totals = self.totals.plus(result)
        log.debug("%s: flushed %d rows, %d new", self.spec.name, result.sent, result.inserted)
        return result

    def close(self) -> None:
        """Close the connection if the writer owns it.  Buffered rows are *not* flushed."""
        if self._dsn is not None and self._conn is not None:
            self._conn.close()
            self._conn = None
        self._stage_ready_on = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self.flush()
        finally:
            self.close()

    def _check_width(self, row: Sequence[object]) -> None:
        if len(row) != len(self.spec.columns):
            raise ValueError(
                f"{self.spec.name}: row has {len(row)} values, expected "
                f"{len(self.spec.columns)} ({', '.join(self.spec.column_names)})"
            )

    def _move_staged(self, conn: psycopg.Connection[Any], cur: psycopg.Cursor[Any]) -> int:
        """Staging -> target; returns the number of rows inserted."""
        if self._try_fast:
            try:
                with conn.transaction():  # a savepoint: a duplicate undoes only this step
                    cur.execute(self._insert_plain)
                return cur.rowcount
            except psycopg.errors.UniqueViolation:
                self._try_fast = False
        cur.execute(self._insert)
        inserted = cur.rowcount
        # Back to the fast path once a batch had no duplicates (a replay has ended).
        self._try_fast = self.optimistic and inserted == len(self._buf)
        return inserted

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if self._dsn is None:
            raise SinkError(f"{self.spec.name}: the connection given to the writer is closed")
        try:
            self._conn = psycopg.connect(
                self._dsn, autocommit=True, connect_timeout=self._connect_timeout_s
            )
        except psycopg.OperationalError as exc:
            raise SinkError(
                f"cannot connect to the database to write {self.spec.name}: {exc}"
            ) from exc
        return self._conn

    def _on_connection_error(self) -> None:
        self._stage_ready_on = None
        if self._dsn is not None and self._conn is not None:
            self._conn.close()
            self._conn = None
