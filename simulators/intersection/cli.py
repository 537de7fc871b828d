"""``citystream sim intersection``: the SUMO intersection as a running service.

Imports nothing heavy at import time (SUMO, OpenCV and the broker clients are imported inside
:func:`run`), so building the ``citystream`` parser stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from citystream.settings import Settings
from citystream.worker import (
    add_worker_arguments,
    metrics_port,
    run_until_signalled,
    setup_logging,
    standalone_main,
)

DESCRIPTION = (
    "Run a simulated signalised intersection (SUMO) with its camera: frames to Kafka "
    "camera.frames through the edge camera agent, signal changes to MQTT "
    "city/<city>/signals/<id>/phase as a controller reports them (QoS 1), plans received on "
    "city/<city>/signals/<id>/plan installed in SUMO and announced on .../plan-applied. "
    "Registers the intersection and camera (with its calibration) in the database. Writes "
    "ground truth (violations, per-frame objects, per-lane per-minute counts) and captures "
    "on request. Deterministic by seed (alone; a corridor's junctions exchange vehicles in "
    "real time)."
)

EXAMPLES = """examples:
  # live, real time, forever (Ctrl-C stops cleanly)
  citystream sim intersection --intersection-id int-1
  # ten simulated minutes as fast as possible, with ground truth
  citystream sim intersection --duration 600 --speed 0 --truth int-1.truth.jsonl
  # a capture with its truth sidecar (int-1.truth.jsonl), no broker or database needed;
  # 90 s of traffic first, so the junction is busy from the first frame on
  citystream sim intersection --duration 300 --speed 0 --no-publish --no-register \\
      --capture int-1.cap --start 2026-01-05T07:00:00+07:00 --warmup 90
  # a corridor: two junctions 300 m apart, vehicles drive from one to the other
  citystream sim intersection --intersection-id int-1 --neighbour E=int-2
  citystream sim intersection --intersection-id int-2 --neighbour W=int-1 --seed 2
  # dusk, more violators, 1280 px frames, metrics on :9120
  citystream sim intersection --lighting dusk --violators 3 --width 1280 --metrics-port 9120
"""


def _start(text: str) -> datetime | None:
    if text == "now":
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if t.tzinfo is None:
        raise argparse.ArgumentTypeError(f"--start needs a UTC offset: {text!r}")
    return t


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--intersection-id", default="int-1", help="intersection id (default: %(default)s)"
    )
    parser.add_argument(
        "--camera-id", default=None, help="camera id (default: <intersection-id>-cam-s)"
    )
    parser.add_argument(
        "--city", default=None, help="city id in MQTT topics (default: settings citymap.city)"
    )
    parser.add_argument("--seed", type=int, default=1, help="traffic seed (default: %(default)s)")
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="S",
        help="simulated seconds to run after the warm-up (default: forever)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=0.0,
        metavar="S",
        help="simulated seconds of traffic before the first frame, not rendered, published "
        "or written (an empty junction fills up); --start is the time of the first frame's "
        "clock, not of the warm-up (default: %(default)s)",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        metavar="X",
        help="1 = real time, 10 = ten times as fast, 0 = as fast as possible "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--fps", type=float, default=10.0, help="camera frames per simulated second (max 10)"
    )
    parser.add_argument(
        "--width", type=int, default=640, metavar="PX", help="frame width, 16:9 (default: 640)"
    )
    parser.add_argument(
        "--quality", type=int, default=85, metavar="Q", help="JPEG quality (default: 85)"
    )
    parser.add_argument(
        "--start",
        type=_start,
        default=None,
        metavar="ISO|now",
        help="event time at which the frames' clock starts (simulated second 0 after the "
        "warm-up), ISO 8601 with offset (default: now)",
    )
    parser.add_argument("--name", default="Simulated junction", help="intersection name")
    parser.add_argument(
        "--lon", type=float, default=106.7009, help="intersection longitude (default: HCMC)"
    )
    parser.add_argument(
        "--lat", type=float, default=10.7769, help="intersection latitude (default: HCMC)"
    )
    parser.add_argument(
        "--violators",
        type=float,
        default=1.0,
        metavar="SCALE",
        help="injected violator rates times SCALE, 0 = none (default: %(default)s)",
    )
    parser.add_argument(
        "--demand",
        type=float,
        default=None,
        metavar="VEH_PER_HOUR",
        help="total demand over the four arms, split like the default (default: 2,450 veh/h)",
    )
    parser.add_argument("--lighting", choices=["day", "dusk", "night"], default="day")
    parser.add_argument(
        "--neighbour",
        action="append",
        default=[],
        metavar="ARM=ID",
        help="a neighbouring junction of a corridor on arm N, E, S or W (repeat for more): "
        "vehicles leaving by that arm drive on to it (Kafka sim.handoffs), and that arm's "
        "traffic comes from it instead of this junction's own demand; run both at --speed 1",
    )
    parser.add_argument(
        "--blur",
        action="append",
        default=[],
        metavar="POLY",
        help="privacy region 'x1,y1 x2,y2 x3,y3 ...' in frame pixels; repeat for more",
    )
    parser.add_argument(
        "--truth", type=Path, default=None, metavar="FILE", help="ground truth, JSON Lines"
    )
    parser.add_argument(
        "--capture",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write camera.frames + signal.phases to a capture (truth alongside)",
    )
    parser.add_argument(
        "--no-publish",
        action="store_true",
        help="no Kafka and no MQTT: only --truth / --capture outputs",
    )
    parser.add_argument(
        "--no-register", action="store_true", help="do not write the reference tables"
    )
    parser.add_argument(
        "--outcome-after",
        type=float,
        default=300.0,
        metavar="S",
        help="simulated seconds under a newly installed plan before the measured delay "
        "before/after is reported (MQTT .../outcome; default: %(default)s)",
    )
    parser.add_argument(
        "--delay-report",
        type=float,
        default=60.0,
        metavar="S",
        help="simulated seconds between average-delay updates (default: %(default)s)",
    )
    add_worker_arguments(parser, progress=True)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from edge.camera.agent import parse_blur
    from simulators.intersection.corridor import parse_neighbours
    from simulators.intersection.reference import Placement
    from simulators.intersection.service import (
        IntersectionService,
        ServiceConfig,
        now_start,
        scenario_rates,
    )

    setup_logging(args.log_level)
    if args.no_publish and args.truth is None and args.capture is None:
        print(
            "citystream sim intersection: --no-publish needs --truth or --capture", file=sys.stderr
        )
        return 2
    if not 0 < args.fps <= 10:
        print("citystream sim intersection: --fps must be within (0, 10]", file=sys.stderr)
        return 2
    try:
        config = ServiceConfig(
            intersection_id=args.intersection_id,
            camera_id=args.camera_id or f"{args.intersection_id}-cam-s",
            city=args.city or settings.citymap.city,
            seed=args.seed,
            duration_s=args.duration,
            warmup_s=args.warmup,
            speed=args.speed,
            fps=args.fps,
            width=args.width,
            jpeg_quality=args.quality,
            start=args.start or now_start(),
            placement=Placement(args.name, args.lon, args.lat),
            violators=scenario_rates(args.violators),
            demand_veh_h=args.demand,
            lighting=args.lighting,
            blur=parse_blur(args.blur),
            publish=not args.no_publish,
            register=not args.no_register,
            truth=args.truth,
            capture=args.capture,
            progress_interval_s=args.progress_interval,
            delay_report_s=args.delay_report,
            outcome_after_s=args.outcome_after,
            neighbours=tuple(parse_neighbours(args.neighbour).items()),
        )
        service = IntersectionService(config, settings)
    except ValueError as exc:
        print(f"citystream sim intersection: {exc}", file=sys.stderr)
        return 2
    return run_until_signalled(
        "sim.intersection",
        service.run,
        service.stop,
        (service.registry, service.camera_registry),
        metrics_port(args, settings),
    )


def main(argv: Sequence[str] | None = None) -> int:
    return standalone_main(
        "python -m simulators.intersection.cli", DESCRIPTION, EXAMPLES, add_arguments, run, argv
    )


if __name__ == "__main__":
    sys.exit(main())
