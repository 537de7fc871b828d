"""The migrator's pure parts: file names, ordering, validation against recorded history."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from citystream.db.migrate import (
    AppliedMigration,
    Migration,
    MigrationError,
    discover,
    order_migrations,
    parse_filename,
    plan,
)


def make_migrations(*versions: int) -> list[Migration]:
    return [Migration(v, f"step{v}", f"SELECT {v};".encode()) for v in versions]


def applied(mig: Migration, checksum: str | None = None) -> AppliedMigration:
    return AppliedMigration(
        mig.version, mig.name, checksum or mig.checksum, datetime(2026, 1, 1, tzinfo=UTC)
    )


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("0001_timescaledb.sql", (1, "timescaledb")),
        ("0042_add_index_2.sql", (42, "add_index_2")),
        ("9999_x.sql", (9999, "x")),
    ],
)
def test_parse_filename_accepts(filename: str, expected: tuple[int, str]) -> None:
    assert parse_filename(filename) == expected


@pytest.mark.parametrize(
    "filename",
    [
        "1_short.sql",
        "00001_five.sql",
        "0001-dash.sql",
        "0001_Upper.sql",
        "0001_.sql",
        "0000_zero.sql",
        "0001_name.SQL",
        "abcd_name.sql",
    ],
)
def test_parse_filename_rejects(filename: str) -> None:
    with pytest.raises(MigrationError, match="bad migration file name"):
        parse_filename(filename)


def test_order_sorts_by_version() -> None:
    ordered = order_migrations(make_migrations(3, 1, 2))
    assert [m.version for m in ordered] == [1, 2, 3]


def test_order_rejects_duplicates() -> None:
    migs = [*make_migrations(1, 2), Migration(2, "other", b"SELECT 1;")]
    with pytest.raises(MigrationError, match="duplicate migration version 0002"):
        order_migrations(migs)


@pytest.mark.parametrize("versions", [(1, 3), (2, 3), (1, 2, 4)])
def test_order_rejects_gaps(versions: tuple[int, ...]) -> None:
    with pytest.raises(MigrationError, match="gap in migration versions"):
        order_migrations(make_migrations(*versions))


def test_checksum_is_sha256_of_content() -> None:
    mig = Migration(1, "a", b"SELECT 1;")
    assert mig.checksum == hashlib.sha256(b"SELECT 1;").hexdigest()
    assert mig.filename == "0001_a.sql"


def test_plan_fresh_database_applies_everything() -> None:
    migs = make_migrations(1, 2, 3)
    assert plan(migs, []) == migs


def test_plan_second_run_is_noop() -> None:
    migs = make_migrations(1, 2, 3)
    assert plan(migs, [applied(m) for m in migs]) == []


def test_plan_applies_only_new_files() -> None:
    migs = make_migrations(1, 2, 3)
    assert plan(migs, [applied(migs[0])]) == migs[1:]


def test_plan_refuses_changed_file() -> None:
    migs = make_migrations(1, 2)
    with pytest.raises(MigrationError, match=r"0001_step1\.sql changed after it was applied"):
        plan(migs, [applied(migs[0], checksum="0" * 64), applied(migs[1])])


def test_plan_refuses_unknown_applied_version() -> None:
    migs = make_migrations(1)
    ghost = AppliedMigration(2, "ghost", "0" * 64, datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(MigrationError, match=r"0002 \(ghost\) applied but there is no such file"):
        plan(migs, [applied(migs[0]), ghost])


def test_discover_reads_directory(tmp_path: Path) -> None:
    (tmp_path / "0002_b.sql").write_text("SELECT 2;")
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "README.md").write_text("not a migration")
    migs = discover(tmp_path)
    assert [(m.version, m.name, m.sql) for m in migs] == [
        (1, "a", b"SELECT 1;"),
        (2, "b", b"SELECT 2;"),
    ]


def test_discover_rejects_bad_name(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "2_b.sql").write_text("SELECT 2;")
    with pytest.raises(MigrationError, match=r"'2_b\.sql'"):
        discover(tmp_path)


@pytest.mark.parametrize("make_dir", [False, True])
def test_discover_empty_or_missing(tmp_path: Path, make_dir: bool) -> None:
    target = tmp_path / "migrations"
    if make_dir:
        target.mkdir()
    with pytest.raises(MigrationError):
        discover(target)


def test_shipped_migrations_are_valid() -> None:
    migs = discover()  # the package's own files: ordered, no gaps, names valid
    assert migs[0].filename == "0001_timescaledb.sql"
    assert b"CREATE EXTENSION IF NOT EXISTS timescaledb" in migs[0].sql
    for mig in migs:
        text = mig.sql.decode().upper()
        assert "COMMIT;" not in text and "BEGIN;" not in text, mig.filename
