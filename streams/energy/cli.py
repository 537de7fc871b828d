"""``citystream energy router|aggregator|forecaster``: the energy stream stages."""

from __future__ import annotations

import argparse

from citystream.settings import Settings
from citystream.worker import add_worker_arguments

STAGES = ("router", "aggregator", "forecaster")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "stage",
        choices=STAGES,
        help="router: meter.readings -> by district; aggregator: windows and "
        "anomalies; forecaster: 48 h P10/P50/P90 forecasts and peak alerts",
    )
    parser.add_argument("--group-id", default=None, help="consumer group (default per stage)")
    parser.add_argument(
        "--allowed-lateness",
        type=int,
        default=3600,
        metavar="S",
        help="aggregator: seconds a reading may arrive after its window (default: %(default)s)",
    )
    parser.add_argument(
        "--idle-advance",
        type=float,
        default=10.0,
        metavar="S",
        help="aggregator: after S seconds without input, take event time to "
        "be wall-clock now (default: %(default)s)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=300.0,
        metavar="S",
        help="forecaster: seconds between cycles (default: %(default)s)",
    )
    add_worker_arguments(parser)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from citystream.worker import metrics_port, run_until_signalled, setup_logging

    setup_logging(args.log_level)
    if args.stage == "forecaster":
        from streams.energy.forecast_job import ForecastConfig, ForecastJob

        job = ForecastJob(settings, ForecastConfig(interval_s=args.interval))
        return run_until_signalled(
            "energy-forecaster", job.run, job.stop, (job.registry,), metrics_port(args, settings)
        )
    from streams.energy.stages import Aggregator, Router

    kw = {"group_id": args.group_id} if args.group_id else {}
    stage: Router | Aggregator
    if args.stage == "router":
        stage = Router(settings, **kw)
    else:
        stage = Aggregator(
            settings,
            **kw,
            allowed_lateness_s=args.allowed_lateness,
            idle_advance_s=args.idle_advance,
        )
    return run_until_signalled(
        stage.name, stage.run, stage.stop, (stage.registry,), metrics_port(args, settings)
    )
