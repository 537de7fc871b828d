"""``citystream sink``: run the DB sink worker."""

from __future__ import annotations

import argparse

from citystream.settings import Settings
from citystream.worker import add_worker_arguments

EXAMPLES = (
    "citystream sink",
    "citystream sink --topics meter.readings energy.load --metrics-port 9110",
    "citystream sink --group-id sink-b --batch-rows 50000",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from streams.sink.worker import storable_topics

    parser.add_argument(
        "--topics",
        nargs="+",
        default=None,
        metavar="TOPIC",
        help=f"topics to store (default: all storable: {' '.join(storable_topics())})",
    )
    parser.add_argument(
        "--group-id",
        default="citystream-db-sink",
        help="Kafka consumer group (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-rows",
        type=int,
        default=20_000,
        help="rows buffered before a DB write (else every second) (default: %(default)s)",
    )
    parser.add_argument(
        "--max-delay",
        type=float,
        default=1.0,
        metavar="S",
        help="flush at least this often, seconds (default: %(default)s)",
    )
    add_worker_arguments(parser)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from citystream.worker import metrics_port, run_until_signalled, setup_logging
    from streams.sink.worker import DbSink, SinkConfig, storable_topics

    setup_logging(args.log_level)
    config = SinkConfig(
        topics=tuple(args.topics or storable_topics()),
        group_id=args.group_id,
        batch_rows=args.batch_rows,
        max_delay_s=args.max_delay,
    )
    sink = DbSink(settings, config)
    return run_until_signalled(
        "sink", sink.run, sink.stop, (sink.registry,), metrics_port(args, settings)
    )
