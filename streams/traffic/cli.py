"""``citystream traffic worker``: tracks + frames + signals -> violations, counts, advice."""

from __future__ import annotations

import argparse
from pathlib import Path

from citystream.settings import Settings
from citystream.worker import add_worker_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--group-id", default="citystream-traffic", help="consumer group (default: %(default)s)"
    )
    parser.add_argument(
        "--evidence-dir",
        type=Path,
        default=None,
        help="where evidence bundles go (default: settings traffic.evidence_dir, else "
        "<state_dir>/evidence)",
    )
    parser.add_argument(
        "--idle-flush",
        type=float,
        default=10.0,
        metavar="S",
        help="after S seconds without tracks or frames from a camera whose tracks have caught "
        "up with its frames, with nothing left to fetch, its input has ended (a replay, a "
        "simulated run): judge its open tracks and emit its open count window; a camera that "
        "is merely behind is never cut short (default: %(default)s)",
    )
    parser.add_argument(
        "--signal-lookback",
        type=float,
        default=3600.0,
        metavar="S",
        help="at start, read signal phase changes from S seconds back, so replayed tracks "
        "find the signal states of their time (default: %(default)s)",
    )
    add_worker_arguments(parser)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from citystream.worker import metrics_port, run_until_signalled, setup_logging
    from streams.traffic.stage import TrafficStage

    setup_logging(args.log_level)
    if args.evidence_dir is not None:
        traffic = settings.traffic.model_copy(update={"evidence_dir": args.evidence_dir})
        settings = settings.model_copy(update={"traffic": traffic})
    stage = TrafficStage(
        settings,
        group_id=args.group_id,
        idle_flush_s=args.idle_flush,
        signal_lookback_s=args.signal_lookback,
    )
    return run_until_signalled(
        stage.name, stage.run, stage.stop, (stage.registry,), metrics_port(args, settings)
    )
