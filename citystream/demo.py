"""``citystream demo``: the whole simulated city through the real pipeline.

Starts the local stack, seeds the simulated city's districts, feeders and meters, starts
the workers (MQTT bridge, DB sink, energy router/aggregator/forecaster, vision and traffic
workers, city map), starts ``--intersections`` simulated intersections along one street
(SUMO + a camera each: frames to Kafka, signal phases over MQTT, approved plans applied),
replays ``--backfill-days`` of meter readings through a gateway agent as fast as the
pipeline takes them (so the map has history and forecasts at once), then leaves a live
gateway running in real time.  Re-running it is safe: the backfill gateway's outbox
remembers what it sent, and the reference rows are upserts.
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from citystream.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--meters", type=int, default=3000, help="meters (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="city seed (default: %(default)s)")
    parser.add_argument(
        "--backfill-days",
        type=int,
        default=7,
        help="days of history sent before going live (default: %(default)s)",
    )
    parser.add_argument(
        "--intersections",
        type=int,
        default=2,
        help="simulated camera intersections along one street, 0 = none (default: %(default)s)",
    )
    parser.add_argument(
        "--camera-fps",
        type=float,
        default=5.0,
        help="frames/s of each simulated camera; YOLO runs on CPU here (default: %(default)s)",
    )


#: The demo street: first junction and the step between junctions (about 330 m east).
STREET_ORIGIN = (106.6985, 10.7765)
STREET_STEP_DEG = 0.003


def intersection_workers(n: int, fps: float) -> list[Any]:
    """One supervised ``citystream sim intersection`` per junction of the demo street; the
    junctions are one corridor (vehicles drive from one to the next)."""
    from citystream.stack import workers

    out = []
    for k in range(n):
        iid = f"int-{k + 1}"
        out.append(
            workers.Worker(
                f"intersection-{k + 1}",
                (
                    "sim",
                    "intersection",
                    "--intersection-id",
                    iid,
                    "--name",
                    f"Demo street, junction {k + 1}",
                    "--lon",
                    f"{STREET_ORIGIN[0] + k * STREET_STEP_DEG:.5f}",
                    "--lat",
                    f"{STREET_ORIGIN[1]:.5f}",
                    "--seed",
                    str(k + 1),
                    "--fps",
                    str(fps),
                    "--speed",
                    "1",
                    # one street: each junction's east/west arms lead to its neighbours
                    *(("--neighbour", f"W=int-{k}") if k > 0 else ()),
                    *(("--neighbour", f"E=int-{k + 2}") if k < n - 1 else ()),
                ),
            )
        )
    return out


def _tokens(settings: Settings) -> list[dict[str, str]]:
    """Demo access tokens, one per role, kept in the state dir across runs."""
    path = settings.state_dir / "demo-tokens.json"
    if path.exists():
        tokens: list[dict[str, str]] = json.loads(path.read_text())
        return tokens
    tokens = [
        {"token": secrets.token_urlsafe(18), "role": role, "name": f"demo-{role}"}
        for role in ("operator", "utility", "viewer")
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(tokens))
    path.chmod(0o600)
    return tokens


def _floor15(t: datetime) -> datetime:
    return t.replace(minute=t.minute - t.minute % 15, second=0, microsecond=0)


def run(args: argparse.Namespace, settings: Settings) -> int:
    import psycopg

    from citystream.cli import _print_status, bring_up
    from citystream.stack import workers
    from simulators.meters.seed import seed_reference
    from simulators.meters.topology import CityConfig, build_city

    def say(msg: str) -> None:
        print(f"[demo] {msg}", flush=True)

    bring_up(settings, say)
    city = build_city(CityConfig(n_meters=args.meters, seed=args.seed))
    with psycopg.connect(settings.db.dsn) as conn:
        counts = seed_reference(conn, city)
    say("city: " + ", ".join(f"{n} {t}" for t, n in counts.items()))

    tokens = _tokens(settings)
    env = {"CITYSTREAM_CITYMAP__TOKENS": json.dumps(tokens)}
    live_start = _floor15(datetime.now(UTC)) - timedelta(minutes=15)
    sim = ("--sim", "--meters", str(args.meters), "--seed", str(args.seed))
    pipeline = [
        workers.Worker("bridge", ("bridge",)),
        workers.Worker("sink", ("sink",)),
        workers.Worker("energy-router", ("energy", "stage", "router")),
        workers.Worker(
            "energy-aggregator", ("energy", "stage", "aggregator", "--allowed-lateness", "900")
        ),
        workers.Worker("energy-forecaster", ("energy", "stage", "forecaster", "--interval", "60")),
        workers.Worker("map", ("map",)),
    ]
    if args.intersections > 0:
        pipeline += [
            workers.Worker("vision", ("vision", "worker", "--from-latest")),
            workers.Worker("traffic", ("traffic", "worker")),
            *intersection_workers(args.intersections, args.camera_fps),
        ]
    workers.start(settings, pipeline, env)
    say(f"workers started: {', '.join(w.name for w in pipeline)}")

    if args.backfill_days > 0:
        start = live_start - timedelta(days=args.backfill_days)
        say(f"backfill: {args.backfill_days} days of {args.meters} meters from {start:%Y-%m-%d}")
        code = subprocess.call(
            [
                sys.executable,
                "-m",
                "citystream.cli",
                "edge",
                "meter",
                "--gateway-id",
                "gw-backfill",
                *sim,
                "--start",
                start.isoformat(),
                "--hours",
                str(args.backfill_days * 24),
                "--progress-interval",
                "10",
            ],
        )
        if code != 0:
            say(f"backfill gateway exited with {code}; see its output above")
            return code
    live = workers.Worker(
        "meters-live",
        (
            "edge",
            "meter",
            "--gateway-id",
            "gw-live",
            *sim,
            "--start",
            live_start.isoformat(),
            "--speed",
            "1",
            "--hours",
            str(24 * 365),
        ),
    )
    workers.start(settings, [live], env)
    say("live gateway started (real time, one reading per meter every 15 minutes)")
    print()
    code = _print_status(settings)
    cm = settings.citymap
    print(f"\nCity map: http://{cm.host}:{cm.port}/#token=<token>  (API docs: /api/v1/docs)")
    for t in tokens:
        print(f"  {t['role']:<9} http://{cm.host}:{cm.port}/#token={t['token']}")
    print("Logs: `citystream logs WORKER`; stop everything: `citystream down`.")
    return code
