"""City map API benchmark: p50/p99 latency of the main reads at a fixed request rate, alone and
with N open SSE clients, plus the SSE fan-out delay (Kafka produce -> every client).

Runs its own private stack (Kafka, Mosquitto, TimescaleDB on free loopback ports, like the
tests), seeds ``--days`` of data for the default city, serves the map with uvicorn on loopback
and drives it with httpx.  Prints a table and writes ``bench/results/api.json``.

    python bench/api.py                      # 200 req/s for 20 s, 200 SSE clients
    python bench/api.py --rate 100 --duration 10 --sse 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from citymap.seed import CitySize, make_violation, seed
from citymap.testing import TEST_TOKENS, map_settings, scratch_database
from citystream.metrics import quantile
from citystream.table import format_table
from citystream.testing import stack_settings, start_stack
from schemas.topics import TOPICS

ENDPOINTS = [
    ("intersections", "/intersections", "viewer"),
    ("violations page", "/violations?limit=50", "operator"),
    (
        "violations filtered",
        "/violations?intersection_id=i021&review_state=pending&limit=50",
        "operator",
    ),
    ("counts 24h/15m", "/intersections/i011/counts?resolution=15m", "viewer"),
    ("queues 24h/15m", "/intersections/i011/queues?resolution=15m", "viewer"),
    ("plans", "/intersections/i011/plans", "viewer"),
    ("districts geojson", "/districts", "utility"),
    ("loads 7d/15m", "/loads?scope=district&scope_id=d01&resolution=15m", "utility"),
    ("forecast latest", "/forecasts?scope=district&scope_id=d01", "utility"),
    ("alerts", "/alerts?limit=50", "utility"),
]


class ServerProcess:
    """The map in its own process (``python -m citymap.cli``), so the load generator does not
    share its interpreter."""

    def __init__(self, settings: Any, env: dict[str, str]) -> None:
        cm = settings.citymap
        env = {
            **env,
            "CITYSTREAM_DB__NAME": settings.db.name,
            "CITYSTREAM_CITYMAP__PORT": str(cm.port),
            "CITYSTREAM_CITYMAP__DB_POOL_SIZE": str(cm.db_pool_size),
            "CITYSTREAM_CITYMAP__TOKENS": json.dumps([g.model_dump() for g in cm.tokens]),
        }
        self.url = f"http://127.0.0.1:{cm.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "citymap.cli", "--log-level", "WARNING"], env=env
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                h = httpx.get(self.url + "/api/v1/healthz", timeout=2).json()
                if h["db"] and h["live"]:
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError("the map server did not become ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def pct(values: list[float], q: float) -> float:
    return quantile(sorted(values), q) if values else float("nan")


async def load_phase(base: str, rate: float, duration: float) -> dict[str, list[float]]:
    """Open-loop: a request every 1/rate s, round-robin over the endpoints; latency in ms."""
    lat: dict[str, list[float]] = {name: [] for name, _, _ in ENDPOINTS}
    errors: list[str] = []
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=base + "/api/v1", limits=limits, timeout=10) as client:

        async def one(name: str, path: str, role: str) -> None:
            t0 = time.perf_counter()
            r = await client.get(path, headers={"Authorization": f"Bearer {TEST_TOKENS[role]}"})
            dt = (time.perf_counter() - t0) * 1000
            if r.status_code != 200:
                errors.append(f"{name}: {r.status_code}")
            lat[name].append(dt)

        tasks = []
        n = int(rate * duration)
        start = time.perf_counter()
        for i in range(n):
            name, path, role = ENDPOINTS[i % len(ENDPOINTS)]
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(name, path, role)))
        await asyncio.gather(*tasks)
        achieved = n / (time.perf_counter() - start)
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, e.g. {errors[:3]}")
    lat["_achieved_rate"] = [achieved]
    return lat


class SseClients:
    """``n`` open SSE connections; records when each sees each violation id."""

    def __init__(self, base: str, n: int) -> None:
        self.base, self.n = base, n
        self.seen: dict[str, list[float]] = {}
        self.opened = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(10, read=None),
            limits=httpx.Limits(max_connections=n + 10),
        )

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._one(i)) for i in range(self.n)]
        deadline = time.monotonic() + 30
        while self.opened < self.n and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self.opened < self.n:
            raise RuntimeError(f"only {self.opened}/{self.n} SSE clients connected")

    async def _one(self, i: int) -> None:
        role = ("operator", "viewer")[i % 2]
        url = f"{self.base}/api/v1/live?access_token={TEST_TOKENS[role]}"
        async with self._client.stream("GET", url) as r:
            event = ""
            async for line in r.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    if event == "hello":
                        self.opened += 1
                    elif event == "violation":
                        vid = json.loads(line[6:])["violation_id"]
                        self.seen.setdefault(vid, []).append(time.time())

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.aclose()


async def fanout_delays(sse: SseClients, produce: Any, count: int) -> list[float]:
    """Produce ``count`` violations, one every 100 ms; delay (ms) to each client."""
    sent: dict[str, float] = {}
    rnd = random.Random(5)
    for i in range(count):
        v = make_violation(900_000 + i, "i011", datetime.now(UTC), rnd)
        sent[v.violation_id] = time.time()
        await asyncio.to_thread(produce, v)
        await asyncio.sleep(0.1)
    await asyncio.sleep(2.0)
    delays = []
    for vid, t0 in sent.items():
        arrivals = sse.seen.get(vid, [])
        delays.extend((t - t0) * 1000 for t in arrivals)
        delays.extend([float("inf")] * (sse.n - len(arrivals)))
    return delays


async def run(base: str, args: argparse.Namespace, produce: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    await load_phase(base, args.rate, 3)  # warm-up
    out["reads"] = await load_phase(base, args.rate, args.duration)
    sse = SseClients(base, args.sse)
    await sse.start()
    try:
        out["reads_with_sse"] = await load_phase(base, args.rate, args.duration)
        out["fanout_ms"] = await fanout_delays(sse, produce, args.events)
    finally:
        await sse.stop()
    return out


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rate", type=float, default=200, help="requests per second (default 200)")
    p.add_argument("--duration", type=float, default=20, help="seconds per phase (default 20)")
    p.add_argument("--sse", type=int, default=200, help="open SSE clients (default 200)")
    p.add_argument("--events", type=int, default=20, help="violations for the fan-out test")
    p.add_argument("--days", type=int, default=7, help="days of seeded data (default 7)")
    p.add_argument("--out", default="bench/results/api.json")
    args = p.parse_args()
    if not (1 <= args.rate <= 2000 and 1 <= args.duration <= 300 and 0 <= args.sse <= 2000):
        p.error("rate 1..2000, duration 1..300 s, sse 0..2000")

    from citystream.stack.supervisor import down

    with tempfile.TemporaryDirectory(prefix="citymap-bench-") as tmp:
        settings = stack_settings(Path(tmp))
        stack = start_stack(settings)
        try:
            with scratch_database(settings.db) as db:
                t0 = time.perf_counter()
                rows = seed(db.dsn, CitySize(days=args.days))
                seed_s = time.perf_counter() - t0
                print(f"seeded {rows} in {seed_s:.1f} s")
                server = ServerProcess(map_settings(settings, db, db_pool_size=16), stack.env())
                try:
                    codec = TOPICS["traffic.violations"].codec
                    from kafka import KafkaProducer

                    producer = KafkaProducer(
                        bootstrap_servers=settings.kafka.bootstrap, acks=1, linger_ms=0
                    )

                    def produce(v: Any) -> None:
                        producer.send("traffic.violations", key=b"i011", value=codec.encode(v)).get(
                            timeout=10
                        )

                    res = asyncio.run(run(server.url, args, produce))
                    producer.close()
                finally:
                    server.stop()
        finally:
            down(stack.settings)

    table, record = [], {"endpoints": {}}
    for name, _, _ in ENDPOINTS:
        a, b = res["reads"][name], res["reads_with_sse"][name]
        row = {
            "p50_ms": pct(a, 0.5),
            "p99_ms": pct(a, 0.99),
            "sse_p50_ms": pct(b, 0.5),
            "sse_p99_ms": pct(b, 0.99),
            "n": len(a),
        }
        record["endpoints"][name] = row
        table.append(
            (
                name,
                len(a),
                f"{row['p50_ms']:.1f}",
                f"{row['p99_ms']:.1f}",
                f"{row['sse_p50_ms']:.1f}",
                f"{row['sse_p99_ms']:.1f}",
            )
        )
    all_a = [x for n, *_ in ENDPOINTS for x in res["reads"][n]]
    all_b = [x for n, *_ in ENDPOINTS for x in res["reads_with_sse"][n]]
    table.append(
        (
            "ALL reads",
            len(all_a),
            f"{pct(all_a, 0.5):.1f}",
            f"{pct(all_a, 0.99):.1f}",
            f"{pct(all_b, 0.5):.1f}",
            f"{pct(all_b, 0.99):.1f}",
        )
    )
    fan = res["fanout_ms"]
    lost = sum(1 for x in fan if x == float("inf"))
    fin = [x for x in fan if x != float("inf")]
    print()
    print(
        f"reads at {args.rate:.0f} req/s for {args.duration:.0f} s "
        f"(achieved {res['reads']['_achieved_rate'][0]:.0f} / "
        f"{res['reads_with_sse']['_achieved_rate'][0]:.0f} req/s); "
        f"latency ms, alone and with {args.sse} SSE clients open"
    )
    print(
        format_table(
            ["endpoint", "n", "p50", "p99", f"p50 +{args.sse} SSE", f"p99 +{args.sse} SSE"], table
        )
    )
    print()
    print(
        f"SSE fan-out, Kafka produce -> client, {args.events} violations x {args.sse} clients: "
        f"p50 {pct(fin, 0.5):.0f} ms, p99 {pct(fin, 0.99):.0f} ms, max {max(fin):.0f} ms, "
        f"missed {lost}   (aim: reads p99 < 100 ms, fan-out p99 < 1000 ms)"
    )
    record.update(
        {
            "machine": platform.node(),
            "python": platform.python_version(),
            "at": datetime.now(UTC).isoformat(),
            "args": vars(args),
            "seed_rows": rows,
            "all_reads": {
                "p50_ms": pct(all_a, 0.5),
                "p99_ms": pct(all_a, 0.99),
                "sse_p50_ms": pct(all_b, 0.5),
                "sse_p99_ms": pct(all_b, 0.99),
            },
            "achieved_rate": [
                res["reads"]["_achieved_rate"][0],
                res["reads_with_sse"]["_achieved_rate"][0],
            ],
            "fanout_ms": {
                "p50": pct(fin, 0.5),
                "p99": pct(fin, 0.99),
                "max": max(fin),
                "missed": lost,
                "deliveries": len(fan),
            },
        }
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
