"""Ingest benchmark: our idempotent writer against psql's \\copy, same rows, same run.

Generates N deterministic synthetic meter readings and loads them into ``meter_readings`` of
a scratch database (created next to the target database, migrated, dropped at the end):

* ``psql \\copy``            the baseline: plain COPY of a CSV file into the hypertable;
* ``writer (binary COPY)``  CopyWriter: binary COPY -> temp staging -> INSERT ON CONFLICT;
* ``replay (binary COPY)``  the same rows again through the writer: must insert 0 rows;
* ``writer, ON CONFLICT only`` the writer without its optimistic plain-INSERT fast path;
* ``writer (text COPY)``    the writer with text-format COPY (to show what binary buys).

Each load starts from an empty (truncated) table.  Prints a table and writes JSON to
``bench/results/db_ingest.json``.

Examples::

    python bench/db_ingest.py                       # 1,000,000 rows, DSN from settings
    python bench/db_ingest.py --rows 200000 --batch-size 20000
    python bench/db_ingest.py --dsn "host=127.0.0.1 port=15432 user=citystream dbname=citystream"
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from citystream.db.copy_writer import CopyWriter, FlushResult
from citystream.db.migrate import migrate
from citystream.db.tables import METER_READINGS, Row
from citystream.settings import load_settings

RESULTS = Path(__file__).resolve().parent / "results" / "db_ingest.json"
T0 = datetime(2026, 1, 5, tzinfo=UTC)


def make_rows(n: int, meters: int, seed: int) -> list[Row]:
    """``n`` readings of ``meters`` meters at 15-minute steps, in time order (as they stream)."""
    rng = random.Random(seed)
    base = [0.05 + 0.5 * rng.random() for _ in range(meters)]
    ids = [f"meter-{i:06d}" for i in range(meters)]
    out: list[Row] = []
    step = 0
    while len(out) < n:
        ts = T0 + timedelta(minutes=15 * (step + 1))
        for i in range(min(meters, n - len(out))):
            imp = round(base[i] * (0.5 + rng.random()), 4)
            exp = round(0.3 * rng.random(), 4) if i % 5 == 0 else 0.0
            volt = round(230.0 + rng.gauss(0, 2), 1) if i % 10 else None
            out.append((ids[i], ts, 900, imp, exp, volt))
        step += 1
    return out


def write_csv(rows: list[Row], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        for meter_id, ts, interval_s, imp, exp, volt in rows:
            w.writerow(
                (meter_id, ts.isoformat(), interval_s, imp, exp, "" if volt is None else volt)  # type: ignore[attr-defined]
            )


def with_dbname(dsn: str, dbname: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]


def recreate_database(admin_dsn: str, name: str, *, drop_only: bool = False) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        ident = sql.Identifier(name)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        if not drop_only:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))


def reset_table(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE meter_readings")
        with contextlib.suppress(psycopg.Error):  # CHECKPOINT needs a privileged role
            conn.execute("CHECKPOINT")  # start each load without the previous one's dirty pages


def count_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM meter_readings").fetchone()
        return int(row[0]) if row else 0


def run_psql_copy(dsn: str, csv_path: Path) -> float:
    cols = ", ".join(METER_READINGS.column_names)
    cmd = f"\\copy meter_readings ({cols}) FROM '{csv_path}' CSV"
    t = time.perf_counter()
    subprocess.run(["psql", dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", cmd], check=True)
    return time.perf_counter() - t


def run_writer(
    dsn: str, rows: list[Row], batch_size: int, **opts: bool
) -> tuple[float, FlushResult]:
    t = time.perf_counter()
    with CopyWriter(dsn, METER_READINGS, batch_size=batch_size, **opts) as writer:
        writer.add_many(rows)
    return time.perf_counter() - t, writer.totals


def best_of(repeat: int, fn: Callable[[], tuple[float, Any]]) -> tuple[float, Any]:
    results = [fn() for _ in range(repeat)]
    return min(results, key=lambda r: r[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="examples:\n"
        "  python bench/db_ingest.py\n"
        "  python bench/db_ingest.py --rows 200000 --batch-size 20000\n"
        '  python bench/db_ingest.py --dsn "host=127.0.0.1 port=15432 user=citystream '
        'dbname=citystream"',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="readings to load (1e6)")
    parser.add_argument("--batch-size", type=int, default=50_000, help="writer batch (50000)")
    parser.add_argument("--meters", type=int, default=2_000, help="distinct meters (2000)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (42)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per method, best kept (1)")
    parser.add_argument("--dsn", help="server to use (default: settings.db.dsn)")
    parser.add_argument("--bench-db", default="citystream_bench", help="scratch database name")
    parser.add_argument("--keep-db", action="store_true", help="keep the scratch database")
    parser.add_argument(
        "--skip-variants",
        action="store_true",
        help="skip the text-COPY and ON-CONFLICT-only variants of the writer",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON output ({RESULTS})")
    args = parser.parse_args(argv)

    admin_dsn = args.dsn or load_settings().db.dsn
    dsn = with_dbname(admin_dsn, args.bench_db)
    print(f"generating {args.rows:,} readings ...", file=sys.stderr)
    rows = make_rows(args.rows, args.meters, args.seed)
    recreate_database(admin_dsn, args.bench_db)
    try:
        migrate(dsn)
        with psycopg.connect(dsn) as conn:
            versions = conn.execute(
                "SELECT current_setting('server_version'), "
                "(SELECT extversion FROM pg_extension WHERE extname = 'timescaledb')"
            ).fetchone()
        results: list[dict[str, Any]] = []

        def record(method: str, seconds: float, inserted: int) -> None:
            results.append(
                {
                    "method": method,
                    "rows": len(rows),
                    "inserted": inserted,
                    "seconds": round(seconds, 3),
                    "rows_per_s": round(len(rows) / seconds),
                }
            )
            print(f"  {method}: {seconds:.2f} s", file=sys.stderr)

        with tempfile.TemporaryDirectory() as tmp:
            csv_path = Path(tmp) / "readings.csv"
            write_csv(rows, csv_path)
            runs: list[tuple[str, Callable[[], tuple[float, Any]]]] = []

            def copy_run() -> tuple[float, int]:
                reset_table(dsn)
                secs = run_psql_copy(dsn, csv_path)
                return secs, count_rows(dsn)

            def writer_run(fresh: bool, **opts: bool) -> Callable[[], tuple[float, int]]:
                def go() -> tuple[float, int]:
                    if fresh:
                        reset_table(dsn)
                    secs, res = run_writer(dsn, rows, args.batch_size, **opts)
                    stored = count_rows(dsn)
                    if stored != (res.inserted if fresh else len(rows)):
                        raise RuntimeError(f"table holds {stored} rows after {res}")
                    return secs, res.inserted

                return go

            runs.append(("psql \\copy (baseline)", copy_run))
            runs.append(("writer (binary COPY)", writer_run(True)))
            runs.append(("replay (binary COPY)", writer_run(False)))
            if not args.skip_variants:
                runs.append(("writer, ON CONFLICT only", writer_run(True, optimistic=False)))
                runs.append(("writer (text COPY)", writer_run(True, binary=False)))
            for method, fn in runs:
                secs, inserted = best_of(args.repeat, fn)
                record(method, secs, inserted)
    finally:
        if not args.keep_db:
            recreate_database(admin_dsn, args.bench_db, drop_only=True)

    base = results[0]["rows_per_s"]
    for r in results:
        r["ratio_vs_copy"] = round(r["rows_per_s"] / base, 3)
    print(f"\nmeter_readings ingest, {len(rows):,} rows, batch {args.batch_size:,}")
    head = ("method", "rows", "inserted", "seconds", "rows/s", "ratio")
    print("{:<26} {:>10} {:>10} {:>8} {:>10} {:>6}".format(*head))
    for r in results:
        print(
            f"{r['method']:<26} {r['rows']:>10,} {r['inserted']:>10,} {r['seconds']:>8.2f} "
            f"{r['rows_per_s']:>10,} {r['ratio_vs_copy']:>6.2f}"
        )
    report = {
        "benchmark": "db_ingest",
        "table": "meter_readings",
        "rows": len(rows),
        "batch_size": args.batch_size,
        "meters": args.meters,
        "repeat": args.repeat,
        "postgres": versions[0] if versions else None,
        "timescaledb": versions[1] if versions else None,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
