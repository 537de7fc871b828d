"""``citystream edge meter``: run one meter gateway (data concentrator) agent.

This module imports nothing heavy at import time, so building the ``citystream`` parser stays
fast; the lead's CLI calls :func:`add_arguments` and :func:`run`.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from citystream.settings import Settings
from citystream.worker import add_worker_arguments, metrics_port, setup_logging, standalone_main

DESCRIPTION = (
    "Meter gateway (data concentrator): reads meter readings, stores each one in a durable "
    "local outbox (SQLite WAL, fsynced) before sending, publishes MeterBatch messages to "
    "MQTT city/<city>/meters/<gateway-id>/readings at QoS 1 and deletes readings from the "
    "outbox only after the broker's PUBACK. Broker outages, kill -9 and reboots lose nothing: "
    "unacked readings are resent in order on restart."
)

EXAMPLES = """examples:
  # replay a JSON-lines file of MeterReading (one per line), exit when all are acked
  citystream edge meter --gateway-id gw-0001 --city hcm --replay readings.jsonl
  # same, paced to 500 readings/s, with Prometheus metrics on :9110
  citystream edge meter --gateway-id gw-0001 --replay readings.jsonl --rate 500 --metrics-port 9110
  # simulated meters: 3000 meters, one day of 15-min intervals, 96x faster than real time
  citystream edge meter --gateway-id gw-sim --sim --meters 3000 --hours 24 --speed 96
  # a broker elsewhere, a bigger outbox bound
  CITYSTREAM_MQTT__HOST=10.0.0.5 CITYSTREAM_MQTT__PORT=1883 \\
      citystream edge meter --gateway-id gw-0002 --replay r.jsonl --outbox-max-mb 4096
  # a restarted agent continues with the same outbox (default path, per gateway id):
  #   <state_dir>/edge/gw-0001.outbox
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The agent's options, added to ``parser`` (the broker comes from settings.mqtt)."""
    parser.add_argument("--gateway-id", required=True, help="this gateway's id (MQTT topic level)")
    parser.add_argument("--city", default="hcm", help="city id in the topic (default: %(default)s)")
    parser.add_argument(
        "--outbox",
        type=Path,
        default=None,
        metavar="PATH",
        help="outbox file (default: <state_dir>/edge/<gateway-id>.outbox)",
    )
    parser.add_argument(
        "--outbox-max-entries",
        type=int,
        default=2_000_000,
        metavar="N",
        help="outbox bound in readings; warns at 80%%, blocks the source at 100%% "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--outbox-max-mb",
        type=int,
        default=1024,
        metavar="MB",
        help="outbox bound in payload MiB (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1000,
        metavar="N",
        help="max readings per MeterBatch, 1..10000 (default: %(default)s)",
    )
    parser.add_argument(
        "--max-delay",
        type=float,
        default=1.0,
        metavar="S",
        help="send a partial batch after this many seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--max-inflight",
        type=int,
        default=32,
        metavar="N",
        help="batches published and awaiting PUBACK (default: %(default)s)",
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--replay", type=Path, metavar="FILE", help="JSON lines of MeterReading to send"
    )
    src.add_argument("--sim", action="store_true", help="readings from the meter simulator")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        metavar="R",
        help="--replay: readings per second, 0 = as fast as possible (default: %(default)s)",
    )
    parser.add_argument(
        "--meters", type=int, default=3000, help="--sim: meters (default: %(default)s)"
    )
    parser.add_argument(
        "--hours", type=float, default=24.0, help="--sim: simulated hours (default: %(default)s)"
    )
    parser.add_argument(
        "--start",
        default="2026-01-05T00:00:00+00:00",
        help="--sim: first interval start, ISO 8601 with offset (default: %(default)s)",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=0.0,
        metavar="X",
        help="--sim: time-warp factor (96 = a day in 15 min), 0 = as fast as possible "
        "(default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="--sim: seed (default: %(default)s)")
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="do not exit when the source is exhausted and everything is acked",
    )
    add_worker_arguments(parser, progress=True)


def default_outbox_path(settings: Settings, gateway_id: str) -> Path:
    return settings.state_dir / "edge" / f"{gateway_id}.outbox"


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run until the source is drained (or SIGTERM/SIGINT).  Returns the exit code."""
    from citystream.metrics import Registry, serve
    from edge.meter.agent import AgentConfig, MeterAgent, Source
    from edge.outbox import Outbox

    setup_logging(args.log_level)
    log = logging.getLogger("citystream.edge.meter")
    try:
        config = AgentConfig(
            gateway_id=args.gateway_id,
            city=args.city,
            max_batch=args.batch_size,
            max_delay_s=args.max_delay,
            max_inflight=args.max_inflight,
            progress_interval_s=args.progress_interval,
            exit_when_drained=not args.keep_running,
        )
    except ValueError as exc:
        print(f"citystream edge meter: {exc}", file=sys.stderr)
        return 2
    source: Source
    if args.replay is not None:
        from edge.meter.sources import ReplaySource

        if not args.replay.is_file():
            print(f"citystream edge meter: no such file: {args.replay}", file=sys.stderr)
            return 2
        source = ReplaySource(args.replay, rate=args.rate)
    else:
        from edge.meter.sources import sim_source

        source = sim_source(
            meters=args.meters, hours=args.hours, start=args.start, speed=args.speed, seed=args.seed
        )

    registry = Registry("citystream_edge_meter")
    outbox = Outbox(
        args.outbox or default_outbox_path(settings, args.gateway_id),
        max_entries=args.outbox_max_entries,
        max_bytes=args.outbox_max_mb * 2**20,
        registry=registry,
    )
    agent = MeterAgent(config, settings.mqtt, outbox, registry)
    port = metrics_port(args, settings)
    server = serve(registry, port=port) if port else None
    if server is not None:
        log.info("metrics on http://%s:%d/metrics", server.host, server.port)

    def on_signal(signum: int, frame: object) -> None:
        log.info("%s: stopping (unacked readings stay in the outbox)", signal.Signals(signum).name)
        agent.stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return agent.run(source)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        outbox.close()
        if server is not None:
            server.close()


def main(argv: Sequence[str] | None = None) -> int:
    return standalone_main("python -m edge.meter", DESCRIPTION, EXAMPLES, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
