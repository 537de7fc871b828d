"""The ``citystream`` command line.

Subcommands import what they need lazily, so ``citystream --help`` is instant and
works without the heavy optional dependencies installed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from citystream.errors import CityStreamError
from citystream.settings import Settings, load_settings

Handler = Callable[[argparse.Namespace, Settings], int]


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _parser(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    help_: str,
    examples: Sequence[str],
    handler: Handler | None,
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_,
        description=help_,
        epilog=_examples(*examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if handler is not None:
        p.set_defaults(handler=handler)
    return p


# --- stack ---------------------------------------------------------------------------------


def _print_status(settings: Settings) -> int:
    from citystream.stack import workers
    from citystream.stack.supervisor import status
    from citystream.table import format_table

    rows = status(settings) + workers.status(settings)
    print(
        format_table(
            ["service", "address", "state", "pid", "data dir"],
            [(s.name, s.address, s.state, s.pid or "-", s.data_dir) for s in rows],
        )
    )
    return 0 if all(s.state in ("running", "external") for s in rows) else 1


def bring_up(settings: Settings, progress: Callable[[str], None]) -> None:
    """Start the stack if needed, create missing topics, apply pending migrations."""
    from citystream.db.migrate import migrate
    from citystream.kafka_topics import ensure_topics
    from citystream.stack.supervisor import up
    from schemas.topics import all_topic_specs

    up(settings, progress=progress)
    created = ensure_topics(settings.kafka.bootstrap)
    progress(f"topics: {len(created)} created, {len(all_topic_specs()) - len(created)} present")
    applied = migrate(settings.db.dsn)
    progress(f"migrations: {len(applied)} applied")


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    bring_up(settings, lambda msg: print(f"[up] {msg}", flush=True))
    print()
    code = _print_status(settings)
    print()
    print(f"Kafka bootstrap: {settings.kafka.bootstrap}")
    print(f"MQTT:            mqtt://{settings.mqtt.host}:{settings.mqtt.port}")
    print(f"TimescaleDB:     psql '{settings.db.dsn}'")
    print("Stop with `citystream down`; logs with `citystream logs SERVICE`.")
    return code


def cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    from citystream.stack import workers
    from citystream.stack.supervisor import down

    workers.stop(settings)
    down(settings)
    return _print_status(settings) if args.verbose else 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    return _print_status(settings)


def cmd_logs(args: argparse.Namespace, settings: Settings) -> int:
    from citystream.stack import workers
    from citystream.stack.supervisor import log_path

    if args.service in ("kafka", "mosquitto", "postgres"):
        path = log_path(settings, args.service)
    else:
        worker_log = workers.log_path(settings, args.service)
        if worker_log is None:
            names = ", ".join(w.name for w in workers.registered(settings)) or "none running"
            print(f"unknown service {args.service!r}; workers: {names}", file=sys.stderr)
            return 2
        path = worker_log
    if not path.exists():
        print(f"no log yet for {args.service} ({path})", file=sys.stderr)
        return 1
    lines = path.read_text(errors="replace").splitlines()
    print("\n".join(lines[-args.lines :]))
    return 0


# --- contracts and storage -----------------------------------------------------------------


def cmd_schemas_export(args: argparse.Namespace, settings: Settings) -> int:
    from schemas.export import export_json_schemas

    for path in export_json_schemas(Path(args.out)):
        print(path)
    return 0


def cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from citystream.table import format_table
    from schemas.topics import TOPICS

    print(
        format_table(
            ["topic", "key", "partitions", "retention h", "schema", "dead letters"],
            [
                (t.name, t.key, t.partitions, t.retention_ms // 3_600_000, t.schema, t.dlq)
                for t in TOPICS.values()
            ],
        )
    )
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from citystream.db.migrate import migrate

    applied = migrate(settings.db.dsn)
    print(
        f"{len(applied)} migration(s) applied"
        + (f": {', '.join(m.name for m in applied)}" if applied else "")
    )
    return 0


# --- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="citystream",
        description="CityStream: cameras and smart meters to violations, counts, load "
        "forecasts and a live city map. Settings come from CITYSTREAM_* variables or the TOML "
        "file named by CITYSTREAM_CONFIG.",
        epilog=_examples(
            "citystream up                 # start Kafka, Mosquitto, TimescaleDB locally",
            "citystream status             # what runs where",
            "citystream logs kafka -n 100  # last lines of a service's log",
            "citystream schemas export --out schemas/json",
            "CITYSTREAM_KAFKA__PORT=29092 citystream up   # other ports",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    _parser(
        sub,
        "up",
        "Start the local stack (if not already running), create topics, "
        "apply migrations, print where everything is.",
        ["citystream up", "CITYSTREAM_STATE_DIR=/srv/cs citystream up"],
        cmd_up,
    )
    p = _parser(
        sub,
        "down",
        "Stop the services of the local stack started by `up`.",
        ["citystream down", "citystream down -v"],
        cmd_down,
    )
    p.add_argument("-v", "--verbose", action="store_true", help="print the status afterwards")
    _parser(
        sub,
        "status",
        "Show each service, its address, state and data dir. Exit code 1 "
        "when a service is stopped or crashed.",
        ["citystream status"],
        cmd_status,
    )
    p = _parser(
        sub,
        "logs",
        "Print the end of a service's log.",
        ["citystream logs postgres", "citystream logs kafka -n 200"],
        cmd_logs,
    )
    p.add_argument("service", help="kafka, mosquitto, postgres, or a worker (see status)")
    p.add_argument("-n", "--lines", type=int, default=50, help="lines to show (default 50)")

    schemas_p = _parser(sub, "schemas", "Wire contracts.", ["citystream schemas export"], None)
    schemas_sub = schemas_p.add_subparsers(title="schemas commands", metavar="COMMAND")
    p = _parser(
        schemas_sub,
        "export",
        "Write JSON Schema files of every message type.",
        ["citystream schemas export --out ./json-schemas"],
        cmd_schemas_export,
    )
    p.add_argument("--out", default="schemas/json", help="output dir (default schemas/json)")
    _parser(sub, "topics", "List the topic registry.", ["citystream topics"], cmd_topics)
    _parser(
        sub,
        "migrate",
        "Apply pending SQL migrations to the configured database.",
        ["citystream migrate", "CITYSTREAM_DB__PORT=5432 citystream migrate"],
        cmd_migrate,
    )

    _add_plugins(sub)
    return parser


#: Subcommands implemented next to their code: (path, module, help, examples).  Each module
#: has ``add_arguments(parser)`` and ``run(args, settings) -> int`` and imports lazily.
PLUGINS: tuple[tuple[tuple[str, ...], str, str, tuple[str, ...]], ...] = (
    (
        ("demo",),
        "citystream.demo",
        "Run the whole simulated city through the real pipeline: stack, workers, a backfill "
        "of history, a live gateway, the city map.",
        (
            "citystream demo",
            "citystream demo --meters 10000 --backfill-days 14",
            "citystream demo --backfill-days 0   # live only",
        ),
    ),
    (
        ("bridge",),
        "edge.bridge.cli",
        "Run the MQTT -> Kafka bridge (acks MQTT only after Kafka acked).",
        ("citystream bridge", "citystream bridge --metrics-port 9108"),
    ),
    (
        ("edge", "meter"),
        "edge.meter.cli",
        "Run a meter gateway (data concentrator): durable outbox, batches to MQTT at QoS 1.",
        (
            "citystream edge meter --gateway-id gw-1 --sim --meters 500",
            "citystream edge meter --gateway-id gw-7 --replay readings.jsonl",
        ),
    ),
    (
        ("edge", "camera"),
        "edge.camera.cli",
        "Run an edge camera agent: video file, RTSP stream, device or simulator -> JPEG "
        "frames on Kafka camera.frames (drop-oldest under backpressure).",
        (
            "citystream edge camera --camera-id cam-1 --source video.mp4 --fps 10 --width 640",
            "citystream edge camera --camera-id cam-7 --source rtsp://10.0.0.7/stream1 "
            '--blur "0,0 200,0 200,80 0,80"',
            "citystream edge camera --camera-id cam-sim --source sim --duration 600",
        ),
    ),
    (
        ("energy", "backtest"),
        "streams.energy.backtest",
        "Rolling-origin day-ahead backtest of our load forecaster against the baselines a "
        "utility would use (weekly naive, Holt-Winters, MSTL+ETS), measured in the same run.",
        (
            "citystream energy backtest --dataset taylor",
            "citystream energy backtest --csv feeder.csv --time-col ts --load-col kw",
            "citystream energy backtest --dataset sim --json",
        ),
    ),
    (
        ("energy", "stage"),
        "streams.energy.cli",
        "Run an energy stream stage: router (readings by district), aggregator (15-min "
        "windows per feeder/district, anomaly alerts) or forecaster (48 h P10/P50/P90).",
        (
            "citystream energy stage router",
            "citystream energy stage aggregator --allowed-lateness 1800 --metrics-port 9111",
            "citystream energy stage forecaster --interval 900",
        ),
    ),
    (
        ("sim", "meters-seed"),
        "simulators.meters.cli",
        "Write a simulated city's districts, feeders and meters to the reference tables.",
        ("citystream sim meters-seed --meters 3000 --seed 0",),
    ),
    (
        ("sim", "intersection"),
        "simulators.intersection.cli",
        "Run a simulated intersection: camera frames to Kafka, signal phases to MQTT, plans "
        "applied from MQTT, ground truth and captures alongside.",
        (
            "citystream sim intersection --intersection-id int-1",
            "citystream sim intersection --duration 600 --speed 0 --truth int-1.truth.jsonl",
            "citystream sim intersection --duration 300 --speed 0 --no-publish --no-register "
            "--capture int-1.cap",
        ),
    ),
    (
        ("vision", "worker"),
        "streams.vision.cli",
        "Run a vision worker: camera.frames -> batched YOLO detection across cameras -> "
        "per-camera ByteTrack tracks with ground positions and speeds -> traffic.tracks; "
        "camera health (frozen, black, occluded, shifted) -> traffic.alerts.",
        (
            "citystream vision worker",
            "citystream vision worker --device cuda:0 --batch-max 64 --metrics-port 9112",
            "citystream vision worker --weights /srv/models/city-yolo11s.pt",
        ),
    ),
    (
        ("vision", "train"),
        "streams.vision.train",
        "Train the project's own YOLO detector on a labelled dataset generated from the "
        "intersection simulator; writes the weights, metrics.json and a MODEL_CARD.md "
        "(data, settings, per-class mAP on held-out simulator runs).",
        (
            "citystream vision train --out runs/vision --frames 1200 --time-min 30",
            "citystream vision train --out runs/ft --model runs/vision/citystream-sim-yolo11n.pt "
            "--epochs 5",
            "citystream vision train --out runs/gpu --frames 8000 --epochs 60 --device cuda",
        ),
    ),
    (
        ("traffic", "worker"),
        "streams.traffic.cli",
        "Run a traffic worker: tracks + frames + signal phases -> violations with evidence "
        "bundles (traffic.violations), lane counts (traffic.counts) and Webster signal-timing "
        "advice (signal.recommendations).",
        (
            "citystream traffic worker",
            "citystream traffic worker --evidence-dir /srv/evidence --metrics-port 9113",
            "citystream traffic worker --idle-flush 5 --signal-lookback 7200",
        ),
    ),
    (
        ("traffic", "evaluate"),
        "streams.traffic.evaluate",
        "Run a simulator scenario through the real stack end to end (private Kafka, Mosquitto, "
        "TimescaleDB; bridge, vision, traffic and sink workers) and score it against ground "
        "truth: precision/recall per violation type, count error per lane, speed MAE.",
        (
            "citystream traffic evaluate --scenario default",
            "citystream traffic evaluate --scenario night --seed 3 --duration 600",
            "citystream traffic evaluate --demand 3000 --json > report.json",
        ),
    ),
    (
        ("record",),
        "citystream.capture.record_cli",
        "Capture Kafka topics (keys, values, headers, timestamps) into an indexed capture "
        "file; Ctrl-C stops cleanly.",
        (
            "citystream record --topics meter.readings --out day.cap --duration 3600",
            "citystream record --topics camera.frames signal.phases --out junction.cap "
            "--max-records 5000",
            "citystream record --topics meter.readings --out all.cap --from-beginning "
            "--stop-at-end",
        ),
    ),
    (
        ("replay",),
        "citystream.capture.replay_cli",
        "Play a capture back into Kafka or MQTT, keeping event-time spacing (time-warped) or "
        "as fast as possible.",
        (
            "citystream replay day.cap --speed 60",
            "citystream replay day.cap --as-fast-as-possible",
            "citystream replay day.cap --target mqtt --speed 96   # as gateways, via the bridge",
            "citystream replay day.cap --from +6h --to +9h --loop",
        ),
    ),
    (
        ("capture", "info"),
        "citystream.capture.info_cli",
        "Show what a capture file holds (records, topics, time range, damage).",
        ("citystream capture info day.cap", "citystream capture info day.cap --json"),
    ),
    (
        ("map",),
        "citymap.cli",
        "Serve the live city map and its API (OpenAPI at /api/v1/docs).",
        (
            "citystream map",
            "citystream map --port 9000 --host 0.0.0.0",
            'CITYSTREAM_CITYMAP__TOKENS=\'[{"token":"...","role":"operator",'
            '"name":"alice"}]\' citystream map',
        ),
    ),
    (
        ("sink",),
        "streams.sink.cli",
        "Run the DB sink: result topics -> TimescaleDB (idempotent, at least once).",
        ("citystream sink", "citystream sink --topics meter.readings --metrics-port 9110"),
    ),
)


def _add_plugins(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    import importlib

    groups: dict[str, argparse._SubParsersAction] = {}  # type: ignore[type-arg]
    for path, module_name, help_, examples in PLUGINS:
        target = sub
        for group in path[:-1]:
            if group not in groups:
                gp = _parser(sub, group, f"{group} commands", [f"citystream {group} --help"], None)
                groups[group] = gp.add_subparsers(title=f"{group} commands", metavar="COMMAND")
            target = groups[group]
        module = importlib.import_module(module_name)
        p = _parser(target, path[-1], help_, examples, None)
        module.add_arguments(p)
        p.set_defaults(handler=module.run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # Supervised workers carry a marker argument (see citystream.stack.workers).
    while argv and argv[0].startswith("--worker="):
        argv.pop(0)
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args, load_settings())
    except CityStreamError as exc:
        print(f"citystream: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
