"""Soak benchmark: the demo city at its nominal rate for ``--minutes``, memory and lag sampled
every ``--interval`` seconds; memory should stay flat and lag bounded.

By default it builds what ``citystream demo`` builds, on a private stack (temporary state dir,
free loopback ports, like the test fixture), and tears it down afterwards:

1. Kafka, Mosquitto, TimescaleDB; the simulated city (``--meters``, default 3,000) seeded;
2. the demo's workers, supervised under the state dir: MQTT bridge, DB sink, energy router,
   aggregator (``--allowed-lateness 900``) and forecaster (``--interval 60``), city map;
3. ``--backfill-hours`` of history through a gateway as fast as the pipeline takes it, and a
   wait until the router and the sink have caught up (not sampled: warm-up);
4. the live gateway: every meter sends one reading per 15-minute interval, i.e. the city's
   nominal rate (``--speed 1``; ``--speed 96`` plays a day in 15 minutes, its timestamps
   ending at the wall clock when the soak ends).  Sampling starts with it.

With ``--attach`` it starts nothing and samples the stack and workers of the configured state
dir (``CITYSTREAM_STATE_DIR``), e.g. a running ``citystream demo``.

Each sample: memory of every service and worker (RSS and PSS of its process tree, psutil),
consumer lag of the sink, router and aggregator groups (records; the aggregator commits only
up to its oldest open window, so its lag never drops to zero while windows are open), rows
in the energy tables, 1-minute load average.  At the end: the table of samples and, over the
samples after ``--warmup`` (processes still starting up), per component the memory growth
from the first to the last sample, its least-squares slope, and the growth over the second
half alone; per group the lag's maximum in the first and the second half.  Verdict: memory
is flat when no component grew more than ``max(--mem-tolerance-mb, 5 %)`` over the second
half (a leak keeps growing; caches and heaps that fill up to their configured size, such as
the JVM heap, PostgreSQL's shared buffers or the torch allocator, stop, and the whole-run
growth shows how much they took); lag is bounded when no group's maximum in the second half
exceeds twice that of the first half plus ``--lag-slack``.  The curve goes to
``bench/results/soak.json``.

examples:
  python bench/soak.py                               # 30 min, demo city at real time
  python bench/soak.py --minutes 3 --interval 30     # a quick check
  python bench/soak.py --minutes 30 --speed 96       # a simulated day every 15 minutes
  CITYSTREAM_STATE_DIR=.citystream python bench/soak.py --attach --minutes 60
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from citystream.settings import Settings
from citystream.table import format_table

ROOT = Path(__file__).resolve().parents[1]
GROUPS = {
    "sink": "citystream-db-sink",
    "router": "citystream-energy-router",
    "aggregator": "citystream-energy-aggregator",
}
TABLES = ("meter_readings", "feeder_load", "energy_forecasts", "events")
SHORT = {  # table columns: component -> short name
    "kafka": "kafka",
    "postgres": "pg",
    "mosquitto": "mqtt",
    "bridge": "bridge",
    "sink": "sink",
    "energy-router": "router",
    "energy-aggregator": "agg",
    "energy-forecaster": "fcst",
    "map": "map",
    "meters-live": "gw",
}


# --- what runs ---------------------------------------------------------------------------------


def components(settings: Settings) -> dict[str, int]:
    """Running services and workers of the state dir: name -> pid."""
    from citystream.stack import workers
    from citystream.stack.supervisor import status

    return {
        s.name: s.pid
        for s in [*status(settings), *workers.status(settings)]
        if s.state == "running" and s.pid
    }


@dataclass(frozen=True)
class Memory:
    rss_mb: float
    pss_mb: float | None  # None where smaps cannot be read
    procs: int


def tree_memory(pid: int) -> Memory | None:
    """RSS and PSS of a process and all its descendants (PSS shares shared pages fairly: a
    postgres backend's view of shared_buffers is not counted once per backend)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    rss = 0
    pss: int | None = 0
    alive = 0
    for p in procs:
        try:
            rss += p.memory_info().rss
            alive += 1
            if pss is not None:
                pss += getattr(p.memory_full_info(), "pss", 0)
        except psutil.AccessDenied:
            pss = None
        except psutil.Error:
            continue
    if not alive:
        return None
    return Memory(rss / 2**20, None if pss is None else pss / 2**20, alive)


class LagProbe:
    """Consumer lag per group (records), with one admin client re-made after an error."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._admin: Any = None

    def sample(self) -> dict[str, int | None]:
        from kafka.admin import KafkaAdminClient

        from citystream.capture.lag import consumer_lag

        try:
            if self._admin is None:
                self._admin = KafkaAdminClient(
                    bootstrap_servers=self.bootstrap, client_id="citystream-soak"
                )
            lags = consumer_lag(self._admin, list(GROUPS.values()))
            return {name: sum(lags.get(g, {}).values()) for name, g in GROUPS.items()}
        except Exception as exc:  # a sample without lag is still a sample
            print(f"  lag not available: {exc}", flush=True)
            self.close()
            return dict.fromkeys(GROUPS)

    def close(self) -> None:
        if self._admin is not None:
            try:
                self._admin.close()
            finally:
                self._admin = None


def row_counts(dsn: str) -> dict[str, int | None]:
    import psycopg

    out: dict[str, int | None] = dict.fromkeys(TABLES)
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            for table in TABLES:
                row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
                out[table] = int(row[0]) if row else None
    except psycopg.Error as exc:
        print(f"  row counts not available: {exc}", flush=True)
    return out


@dataclass
class Sample:
    minute: float
    at: str
    memory: dict[str, dict[str, Any]]
    lag: dict[str, int | None]
    rows: dict[str, int | None]
    load1: float
    missing: list[str] = field(default_factory=list)


def take_sample(settings: Settings, probe: LagProbe, t0: float, expected: set[str]) -> Sample:
    running = components(settings)
    memory = {}
    for name, pid in sorted(running.items()):
        m = tree_memory(pid)
        if m is not None:
            memory[name] = asdict(m)
    return Sample(
        minute=round((time.monotonic() - t0) / 60, 2),
        at=datetime.now(UTC).isoformat(timespec="seconds"),
        memory=memory,
        lag=probe.sample(),
        rows=row_counts(settings.db.dsn),
        load1=round(os.getloadavg()[0], 2),
        missing=sorted(expected - set(memory)),
    )


# --- the private demo city ---------------------------------------------------------------------


def floor15(t: datetime) -> datetime:
    return t.replace(minute=t.minute - t.minute % 15, second=0, microsecond=0)


def metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == name:
            return float(value)
    return None


def start_city(args: argparse.Namespace, settings: Settings) -> tuple[Any, datetime]:
    """Stack, city, workers, backfill (see the module docstring); returns the stack and the
    first interval start of the live gateway."""
    from citystream.capture.lag import wait_for_drain
    from citystream.stack import workers
    from citystream.stack.private import free_port
    from citystream.testing import start_stack
    from simulators.meters.seed import seed_reference
    from simulators.meters.topology import CityConfig, build_city

    stack = start_stack(settings)
    city = build_city(CityConfig(n_meters=args.meters, seed=args.seed))
    with stack.db() as conn:
        print(f"  seeded {seed_reference(conn, city)}", flush=True)
    bridge_port = free_port()
    pipeline = [
        workers.Worker("bridge", ("bridge", "--metrics-port", str(bridge_port))),
        workers.Worker("sink", ("sink",)),
        workers.Worker("energy-router", ("energy", "stage", "router")),
        workers.Worker(
            "energy-aggregator", ("energy", "stage", "aggregator", "--allowed-lateness", "900")
        ),
        workers.Worker("energy-forecaster", ("energy", "stage", "forecaster", "--interval", "60")),
        workers.Worker("map", ("map",)),
    ]
    env = {"CITYSTREAM_CITYMAP__PORT": str(free_port()), "PYTHONUNBUFFERED": "1"}
    workers.start(settings, pipeline, env, base_env=stack.env())
    deadline = time.monotonic() + 120
    while metric(bridge_port, "citystream_bridge_mqtt_subscribed") != 1:
        if time.monotonic() > deadline:
            raise SystemExit(f"the bridge did not subscribe; see {settings.state_dir}/logs")
        time.sleep(0.5)
    print(f"  workers: {', '.join(w.name for w in pipeline)}", flush=True)

    now = datetime.now(UTC)
    live_start = floor15(now - timedelta(minutes=args.minutes * max(args.speed - 1, 0)))
    live_start -= timedelta(minutes=15)
    sim = ("--sim", "--meters", str(args.meters), "--seed", str(args.seed))
    if args.backfill_hours > 0:
        start = live_start - timedelta(hours=args.backfill_hours)
        print(f"  backfill: {args.backfill_hours} h from {start:%Y-%m-%d %H:%M} ...", flush=True)
        t0 = time.monotonic()
        backfill = [sys.executable, "-m", "citystream.cli", "edge", "meter",
                    "--gateway-id", "gw-backfill", *sim, "--start", start.isoformat(),
                    "--hours", str(args.backfill_hours), "--progress-interval", "0"]  # fmt: skip
        log = settings.state_dir / "logs" / "backfill.log"
        with log.open("wb") as out:
            code = subprocess.call(
                backfill, cwd=ROOT, env={**stack.env(), **env}, stdout=out, stderr=subprocess.STDOUT
            )
        if code != 0:
            raise SystemExit(f"backfill gateway exited with {code}; log {log}")
        wait_for_drain(
            settings.kafka.bootstrap,
            {GROUPS["router"]: ["meter.readings"], GROUPS["sink"]: ["meter.readings"]},
            timeout_s=args.drain_timeout,
            settle_s=3.0,
        )
        print(f"  backfill stored in {time.monotonic() - t0:.0f} s", flush=True)
    return stack, live_start


def start_live(
    args: argparse.Namespace, settings: Settings, stack: Any, live_start: datetime
) -> None:
    from citystream.stack import workers

    # the simulated span of the soak, an hour more so that it outlasts the sampling
    hours = (args.speed * args.minutes + 60) / 60
    live = workers.Worker(
        "meters-live",
        ("edge", "meter", "--gateway-id", "gw-live", "--sim", "--meters", str(args.meters),
         "--seed", str(args.seed), "--start", live_start.isoformat(), "--speed", str(args.speed),
         "--hours", f"{hours:.2f}"),
    )  # fmt: skip
    workers.start(settings, [live], {"PYTHONUNBUFFERED": "1"}, base_env=stack.env())


# --- summary -----------------------------------------------------------------------------------


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope (per minute) of (minute, value) points; 0 for fewer than 2."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


def summarize(all_samples: list[Sample], args: argparse.Namespace) -> dict[str, Any]:
    """Verdicts over the samples from ``--warmup`` on (all of them if none is that late)."""
    samples = [s for s in all_samples if s.minute >= args.warmup] or all_samples
    names = sorted({n for s in samples for n in s.memory})
    memory: dict[str, Any] = {}
    flat = True
    for name in names:
        pts = [(s.minute, s.memory[name]["rss_mb"]) for s in samples if name in s.memory]
        first, last = pts[0][1], pts[-1][1]
        growth = last - first
        mid = pts[len(pts) // 2][1]  # where the second half starts
        late_growth = last - mid
        ok = late_growth <= max(args.mem_tolerance_mb, 0.05 * mid)
        flat &= ok
        memory[name] = {
            "first_rss_mb": round(first, 1),
            "last_rss_mb": round(last, 1),
            "max_rss_mb": round(max(v for _, v in pts), 1),
            "growth_mb": round(growth, 1),
            "growth_second_half_mb": round(late_growth, 1),
            "slope_mb_per_min": round(slope(pts), 3),
            "flat": ok,
        }
    lag: dict[str, Any] = {}
    bounded = True
    half = len(samples) // 2
    for name in GROUPS:
        values = [s.lag.get(name) for s in samples]
        a = [v for v in values[: max(half, 1)] if v is not None]
        b = [v for v in values[half:] if v is not None]
        ok = not b or max(b) <= 2 * max(a or [0]) + args.lag_slack
        bounded &= ok
        lag[name] = {
            "max_first_half": max(a) if a else None,
            "max_second_half": max(b) if b else None,
            "last": values[-1],
            "bounded": ok,
        }
    rows = {}
    for table in TABLES:  # over the whole run
        first_n, last_n = all_samples[0].rows.get(table), all_samples[-1].rows.get(table)
        if first_n is not None and last_n is not None:
            span = max(all_samples[-1].minute - all_samples[0].minute, 1e-9)
            rows[table] = {
                "landed": last_n - first_n,
                "per_min": round((last_n - first_n) / span, 1),
            }
    missing = sorted({n for s in all_samples for n in s.missing})
    return {"from_minute": samples[0].minute, "memory": memory, "lag": lag, "rows": rows,
            "memory_flat": flat, "lag_bounded": bounded, "components_gone": missing}  # fmt: skip


def print_report(samples: list[Sample], summary: dict[str, Any]) -> None:
    names = sorted({n for s in samples for n in s.memory}, key=lambda n: list(SHORT).index(n)
                   if n in SHORT else len(SHORT))  # fmt: skip
    headers = ["min", "readings", "+/min", "lag sink", "lag router", "lag agg", "load1"]
    headers += [f"{SHORT.get(n, n)} MB" for n in names]
    table = []
    prev: Sample | None = None
    for s in samples:
        n = s.rows.get("meter_readings")
        p = prev.rows.get("meter_readings") if prev else None
        per_min = (
            round((n - p) / max(s.minute - prev.minute, 1e-9))
            if prev is not None and n is not None and p is not None
            else "-"
        )
        row: list[object] = [f"{s.minute:.1f}", n if n is not None else "-", per_min]
        row += [s.lag.get(g) if s.lag.get(g) is not None else "-" for g in GROUPS]
        row.append(f"{s.load1:.2f}")
        row += [round(s.memory[n]["rss_mb"]) if n in s.memory else "-" for n in names]
        table.append(row)
        prev = s
    print()
    print("memory: RSS of each component's process tree, MB (PSS in the JSON)")
    print(format_table(headers, table))
    print()
    mem_rows = [
        [name, m["first_rss_mb"], m["last_rss_mb"], m["max_rss_mb"], m["growth_mb"],
         m["growth_second_half_mb"], m["slope_mb_per_min"], "yes" if m["flat"] else "NO"]
        for name, m in summary["memory"].items()
    ]  # fmt: skip
    print(f"from minute {summary['from_minute']:.1f} on (before: warm-up)")
    print(format_table(["component", "first MB", "last MB", "max MB", "growth MB",
                        "2nd half MB", "MB/min", "flat"], mem_rows))  # fmt: skip
    print()
    lag_rows = [
        [g, v["max_first_half"], v["max_second_half"], v["last"], "yes" if v["bounded"] else "NO"]
        for g, v in summary["lag"].items()
    ]
    print(format_table(["group", "max lag 1st half", "max lag 2nd half", "last", "bounded"],
                       lag_rows))  # fmt: skip
    print()
    landed = ", ".join(
        f"{t} +{v['landed']} ({v['per_min']}/min)" for t, v in summary["rows"].items()
    )
    print(f"rows landed while sampling: {landed}")
    if summary["components_gone"]:
        print(f"components not running at some sample: {', '.join(summary['components_gone'])}")
    print(
        f"memory flat: {'yes' if summary['memory_flat'] else 'NO'}; "
        f"lag bounded: {'yes' if summary['lag_bounded'] else 'NO'}"
    )


# --- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    head, _, examples = (__doc__ or "").partition("examples:")
    parser = argparse.ArgumentParser(
        description=head.strip(),
        epilog="examples:" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = parser.add_argument
    a("--minutes", type=float, default=30.0, help="how long to sample (%(default)s)")
    a("--interval", type=float, default=60.0, help="seconds between samples (%(default)s)")
    a(
        "--warmup",
        type=float,
        default=1.0,
        help="minutes of samples shown but left out of the verdicts (%(default)s)",
    )
    a(
        "--speed",
        type=float,
        default=1.0,
        help="live gateway time-warp: 1 = the city's nominal rate, one reading per meter "
        "every 15 min (%(default)s)",
    )
    a("--meters", type=int, default=3000, help="meters of the demo city (%(default)s)")
    a("--seed", type=int, default=0, help="city seed (%(default)s)")
    a(
        "--backfill-hours",
        type=int,
        default=24,
        help="history sent before sampling starts, 0 for none (%(default)s)",
    )
    a(
        "--drain-timeout",
        type=float,
        default=600.0,
        help="max seconds for the pipeline to take the backfill (%(default)s)",
    )
    a(
        "--attach",
        action="store_true",
        help="sample the running stack and workers of the configured state dir; start nothing",
    )
    a(
        "--mem-tolerance-mb",
        type=float,
        default=50.0,
        help="growth per component over the second half still called flat, or 5 %% if more "
        "(%(default)s)",
    )
    a(
        "--lag-slack",
        type=int,
        default=1000,
        help="records the 2nd-half lag may exceed twice the 1st-half lag by (%(default)s)",
    )
    a("--keep", action="store_true", help="keep the private state dir (logs) afterwards")
    a(
        "--out",
        type=Path,
        default=ROOT / "bench" / "results" / "soak.json",
        help="where the JSON goes (bench/results/soak.json)",
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.interval <= 0 or args.speed <= 0:
        parser.error("--minutes, --interval and --speed must be positive")

    from citystream.settings import load_settings
    from citystream.stack import workers
    from citystream.stack.supervisor import down
    from citystream.testing import stack_settings

    wall0 = time.monotonic()
    state: Path | None = None
    if args.attach:
        settings = load_settings()
        running = components(settings)
        if not {"kafka", "postgres"} <= set(running):
            raise SystemExit(
                f"--attach: no running stack in {settings.state_dir} (running: "
                f"{', '.join(running) or 'nothing'}); start one with `citystream demo`"
            )
    else:
        state = Path(tempfile.mkdtemp(prefix="citystream-soak-"))
        settings = stack_settings(state)
    samples: list[Sample] = []
    probe = LagProbe(settings.kafka.bootstrap)
    try:
        if not args.attach:
            print(f"demo city on a private stack in {state}", flush=True)
            stack, live_start = start_city(args, settings)
            start_live(args, settings, stack, live_start)
            print(f"  live gateway from {live_start:%H:%M} UTC at speed {args.speed:g}", flush=True)
        expected = set(components(settings))
        print(f"sampling {', '.join(sorted(expected))} every {args.interval:g} s for "
              f"{args.minutes:g} min", flush=True)  # fmt: skip
        t0 = time.monotonic()
        k = 0
        while True:
            s = take_sample(settings, probe, t0, expected)
            samples.append(s)
            rss = sum(m["rss_mb"] for m in s.memory.values())
            print(f"  {s.minute:6.2f} min  readings {s.rows.get('meter_readings')}  lag {s.lag}  "
                  f"RSS total {rss:.0f} MB  load {s.load1}", flush=True)  # fmt: skip
            k += 1
            due = t0 + k * args.interval
            if due - t0 > args.minutes * 60 + 1e-6:
                break
            time.sleep(max(0.0, due - time.monotonic()))
    except KeyboardInterrupt:
        print("interrupted: reporting the samples taken so far", flush=True)
    finally:
        probe.close()
        if not args.attach:
            workers.stop(settings)
            down(settings)
            if state is not None and not args.keep:
                shutil.rmtree(state, ignore_errors=True)
            elif state is not None:
                print(f"kept {state}")
    if not samples:
        return 1
    summary = summarize(samples, args)
    print_report(samples, summary)
    result = {
        "benchmark": "soak",
        "at": datetime.now(UTC).isoformat(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "cpus": os.cpu_count(),
        "summary": summary,
        "samples": [asdict(s) for s in samples],
        "wall_s": round(time.monotonic() - wall0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out} ({result['wall_s']:.0f} s)")
    return 0 if summary["memory_flat"] and summary["lag_bounded"] else 1


if __name__ == "__main__":
    sys.exit(main())
