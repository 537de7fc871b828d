"""The schema migrator: plain SQL files applied in order, recorded in ``schema_migrations``.

Files are named ``NNNN_name.sql`` (four digits, lowercase name) and live in
``citystream/db/migrations/`` inside the package, so an installed CityStream finds them
too.  Rules:

* versions are 1, 2, 3, ... with no gaps or duplicates; anything else is refused before
  touching the database;
* every file runs in its own transaction together with its ``schema_migrations`` row, so a
  failed file leaves nothing behind and is retried next time;
* a session advisory lock serialises concurrent migrators (two workers starting at once):
  the second waits, then finds everything applied;
* running again is a no-op; a file whose content changed after it was applied is refused
  (write a new migration instead), as is a database that has versions the files don't.

Files must not contain their own ``BEGIN``/``COMMIT``.  Use :func:`migrate` with a DSN or
:func:`apply_migrations` with an open connection; ``python -m citystream.db.migrate``
applies them from the command line.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import psycopg

from citystream.errors import CityStreamError

log = logging.getLogger(__name__)

#: Key of the session advisory lock held while migrating (any constant bigint will do).
ADVISORY_LOCK_KEY = 0x43_6974_7953_7472  # "CityStr"
FILENAME_RE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9][a-z0-9_]*)\.sql$")


class MigrationError(CityStreamError, RuntimeError):
    """The migration files or the recorded schema history are inconsistent, or a file failed."""


@dataclass(frozen=True)
class Migration:
    """One SQL file: its version, name, content and the SHA-256 of the content."""

    version: int
    name: str
    sql: bytes

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql).hexdigest()

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"


@dataclass(frozen=True)
class AppliedMigration:
    version: int
    name: str
    checksum: str
    applied_at: datetime


def default_directory() -> Traversable:
    """The migrations shipped inside the package."""
    return resources.files("citystream.db").joinpath("migrations")


def parse_filename(filename: str) -> tuple[int, str]:
    """``'0003_energy.sql'`` -> ``(3, 'energy')``; a clear error for anything else."""
    match = FILENAME_RE.match(filename)
    if match is None:
        raise MigrationError(
            f"bad migration file name {filename!r}: expected NNNN_name.sql "
            "(four digits, then lowercase letters, digits and underscores)"
        )
    version = int(match["version"])
    if version < 1:
        raise MigrationError(f"bad migration file name {filename!r}: versions start at 0001")
    return version, match["name"]


def order_migrations(migrations: Iterable[Migration]) -> list[Migration]:
    """Sort by version and refuse duplicates and gaps (versions must be exactly 1..N)."""
    ordered = sorted(migrations, key=lambda m: (m.version, m.name))
    seen: dict[int, Migration] = {}
    for mig in ordered:
        if mig.version in seen:
            raise MigrationError(
                f"duplicate migration version {mig.version:04d}: "
                f"{seen[mig.version].filename} and {mig.filename}; renumber one of them"
            )
        seen[mig.version] = mig
    for expected, mig in enumerate(ordered, start=1):
        if mig.version != expected:
            raise MigrationError(
                f"gap in migration versions: {expected:04d} is missing before {mig.filename}"
            )
    return ordered


def discover(directory: Path | Traversable | None = None) -> list[Migration]:
    """Read, validate and order the ``*.sql`` files of ``directory`` (default: the package's)."""
    root = default_directory() if directory is None else directory
    if not root.is_dir():
        raise MigrationError(f"migrations directory {root} does not exist")
    found = []
    for entry in root.iterdir():
        if not entry.name.endswith(".sql") or not entry.is_file():
            continue
        version, name = parse_filename(entry.name)
        found.append(Migration(version, name, entry.read_bytes()))
    if not found:
        raise MigrationError(f"no migration files (NNNN_name.sql) in {root}")
    return order_migrations(found)


def plan(migrations: Sequence[Migration], applied: Iterable[AppliedMigration]) -> list[Migration]:
    """The migrations still to apply, after checking the recorded history against the files.

    Refuses a recorded version with no file and a file whose checksum differs from the
    one recorded when it was applied.
    """
    by_version = {m.version: m for m in migrations}
    done: set[int] = set()
    for rec in applied:
        mig = by_version.get(rec.version)
        if mig is None:
            raise MigrationError(
                f"the database has migration {rec.version:04d} ({rec.name}) applied but there "
                "is no such file: is this code older than the database?"
            )
        if mig.checksum != rec.checksum:
            raise MigrationError(
                f"migration {mig.filename} changed after it was applied "
                f"(recorded sha256 {rec.checksum[:12]}..., file {mig.checksum[:12]}...); "
                "restore the file and put the change in a new migration"
            )
        done.add(rec.version)
    return [m for m in migrations if m.version not in done]


# --- database side ---------------------------------------------------------------------------

_CREATE_HISTORY = b"""
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


def applied_migrations(conn: psycopg.Connection[Any]) -> list[AppliedMigration]:
    """The history recorded in ``schema_migrations`` (empty if the table does not exist)."""
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return []
    rows = conn.execute(
        "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version"
    ).fetchall()
    return [AppliedMigration(*row) for row in rows]


def apply_migrations(
    conn: psycopg.Connection[Any], migrations: Sequence[Migration] | None = None
) -> list[Migration]:
    """Apply the pending ``migrations`` (default: :func:`discover`) and return those applied.

    ``conn`` must not be inside a transaction; it is switched to autocommit for the duration
    and restored afterwards.
    """
    todo_all = list(migrations) if migrations is not None else discover()
    order_migrations(todo_all)  # validate even a hand-built list
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise MigrationError("apply_migrations needs a connection that is not in a transaction")
    old_autocommit = conn.autocommit
    conn.autocommit = True
    try:
        conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        try:
            conn.execute(_CREATE_HISTORY)
            todo = plan(todo_all, applied_migrations(conn))
            for mig in todo:
                _apply_one(conn, mig)
            return todo
        finally:
            if not conn.closed:
                conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
    finally:
        if not conn.closed:
            conn.autocommit = old_autocommit


def _apply_one(conn: psycopg.Connection[Any], mig: Migration) -> None:
    log.info("applying migration %s", mig.filename)
    try:
        with conn.transaction():
            conn.execute(mig.sql)  # no parameters: sent as a simple multi-statement query
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (mig.version, mig.name, mig.checksum),
            )
    except psycopg.Error as exc:
        raise MigrationError(f"migration {mig.filename} failed and was rolled back: {exc}") from exc


def migrate(dsn: str, directory: Path | Traversable | None = None) -> list[Migration]:
    """Connect to ``dsn`` (e.g. ``settings.db.dsn``), apply pending migrations, return them."""
    migrations = discover(directory)
    try:
        conn = psycopg.connect(dsn, autocommit=True)
    except psycopg.OperationalError as exc:
        raise MigrationError(f"cannot connect to the database to migrate it: {exc}") from exc
    with conn:
        return apply_migrations(conn, migrations)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m citystream.db.migrate [--dsn DSN] [--list]``."""
    from citystream.settings import load_settings

    parser = argparse.ArgumentParser(
        prog="python -m citystream.db.migrate",
        description="Apply CityStream's SQL migrations to PostgreSQL/TimescaleDB.",
    )
    parser.add_argument("--dsn", help="libpq connection string (default: from settings)")
    parser.add_argument("--list", action="store_true", help="only list the migration files")
    args = parser.parse_args(argv)
    if args.list:
        for mig in discover():
            print(f"{mig.filename}  sha256={mig.checksum}")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dsn = args.dsn or load_settings().db.dsn
    applied = migrate(dsn)
    print(f"applied {len(applied)} migration(s)" + "".join(f"\n  {m.filename}" for m in applied))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
