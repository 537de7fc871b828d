"""``citystream vision worker``: camera frames -> detection -> tracks (see :mod:`.stage`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from citystream.settings import Settings
from citystream.worker import add_worker_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--group-id", default="citystream-vision", help="consumer group (default: %(default)s)"
    )
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="YOLO .pt weights (default: settings vision.weights, else the shipped model)",
    )
    parser.add_argument(
        "--device", default=None, help="auto, cpu, cuda or cuda:N (default: settings)"
    )
    parser.add_argument(
        "--batch-max",
        type=int,
        default=None,
        metavar="N",
        help="frames per detector call at most (default: settings vision.batch_max)",
    )
    parser.add_argument(
        "--from-latest",
        action="store_true",
        help="a consumer group without committed offsets starts at the newest frames "
        "instead of the oldest kept ones",
    )
    add_worker_arguments(parser)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from citystream.worker import metrics_port, run_until_signalled, setup_logging
    from streams.vision.stage import VisionStage

    setup_logging(args.log_level)
    update: dict[str, object] = {}
    if args.weights is not None:
        update["weights"] = args.weights
    if args.device is not None:
        update["device"] = args.device
    if args.batch_max is not None:
        update["batch_max"] = args.batch_max
    if update:
        vision = settings.vision.model_validate({**settings.vision.model_dump(), **update})
        settings = settings.model_copy(update={"vision": vision})
    stage = VisionStage(settings, group_id=args.group_id, from_latest=args.from_latest)
    return run_until_signalled(
        stage.name, stage.run, stage.stop, (stage.registry,), metrics_port(args, settings)
    )
