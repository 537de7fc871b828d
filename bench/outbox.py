"""Outbox throughput: appends/s and acks/s (seal + read + delete) for several chunk sizes.

    python bench/outbox.py [--n 200000] [--json bench/results/outbox.json]

Each append is one fsynced SQLite transaction (WAL, synchronous=FULL); the baseline row is
the same workload with synchronous=OFF (no fsync) measured in the same run, to show what
durability costs on this disk.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from edge.outbox import Outbox

PAYLOAD = (
    b'{"v":1,"meter_id":"mt0001234","ts":"2026-01-05T00:15:00Z","interval_s":900,'
    b'"import_kwh":0.1234,"export_kwh":0.0,"voltage_v":null}'
)


def run(n: int, chunk: int, batch: int, durable: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d, Outbox(Path(d) / "o.db", max_entries=2 * n) as ob:
        if not durable:
            ob._db.execute("PRAGMA synchronous=OFF")
        items = [PAYLOAD] * chunk
        t0 = time.perf_counter()
        for _ in range(n // chunk):
            ob.append(items)
        t1 = time.perf_counter()
        acked = 0
        while (b := ob.peek_batch(batch)) is not None:
            acked += ob.ack(b.batch_id)
        t2 = time.perf_counter()
        total = (n // chunk) * chunk
        assert acked == total
        return {
            "chunk": chunk,
            "batch": batch,
            "durable": durable,
            "appends_per_s": total / (t1 - t0),
            "acks_per_s": total / (t2 - t1),
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    rows = [run(a.n, c, 1000, True) for c in (10, 100, 1000)] + [run(a.n, 1000, 1000, False)]
    print(f"{'chunk':>6} {'batch':>6} {'fsync':>6} {'appends/s':>12} {'acks/s':>12}")
    for r in rows:
        print(
            f"{r['chunk']:>6} {r['batch']:>6} {'yes' if r['durable'] else 'no':>6} "
            f"{r['appends_per_s']:>12,.0f} {r['acks_per_s']:>12,.0f}"
        )
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
