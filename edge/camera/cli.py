"""``citystream edge camera``: run one edge camera agent.

This module imports nothing heavy at import time (OpenCV, kafka-python and the simulator are
imported inside :func:`run`), so building the ``citystream`` parser stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from citystream.settings import Settings
from citystream.worker import (
    add_worker_arguments,
    metrics_port,
    run_until_signalled,
    setup_logging,
    standalone_main,
)

DESCRIPTION = (
    "Edge camera agent: reads a video file, an RTSP/HTTP stream, a local device or the "
    "intersection simulator with OpenCV, keeps a target frame rate, resizes (keeping the "
    "aspect ratio), blurs privacy regions, JPEG-encodes and publishes frames to Kafka "
    "camera.frames keyed by camera id (acks=all). Under backpressure the oldest queued frames "
    "are dropped and counted; failed streams are reopened with backoff."
)

EXAMPLES = """examples:
  # a recorded video at real time, 10 fps, 640 px wide
  citystream edge camera --camera-id cam-1 --source video.mp4 --fps 10 --width 640
  # the same file looped forever, twice as fast, with a blurred window region
  citystream edge camera --camera-id cam-1 --source video.mp4 --loop --speed 2 \\
      --blur "400,40 620,40 620,160 400,160"
  # an IP camera (credentials are not logged) and a USB camera
  citystream edge camera --camera-id cam-7 --source rtsp://user:pw@10.0.0.7:554/stream1
  citystream edge camera --camera-id cam-usb --source 0 --fps 5
  # the intersection simulator's camera (frames only; `citystream sim intersection` runs
  # the whole junction with signals, plans and ground truth)
  citystream edge camera --camera-id cam-sim --source sim --seed 3 --duration 600
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The agent's options, added to ``parser`` (Kafka comes from settings.kafka)."""
    parser.add_argument(
        "--camera-id", required=True, help="camera id: Kafka key and FrameHeader.camera_id"
    )
    parser.add_argument(
        "--source",
        required=True,
        metavar="SRC",
        help="video file, rtsp:// / http:// URL, device index (0), or 'sim'",
    )
    parser.add_argument(
        "--fps", type=float, default=10.0, help="target frame rate (default: %(default)s)"
    )
    parser.add_argument(
        "--width",
        type=int,
        default=640,
        metavar="PX",
        help="output width, aspect ratio kept; 0 = source size (default: %(default)s)",
    )
    parser.add_argument(
        "--quality", type=int, default=80, metavar="Q", help="JPEG quality 1..100 (default: 80)"
    )
    parser.add_argument(
        "--blur",
        action="append",
        default=[],
        metavar="POLY",
        help="privacy region 'x1,y1 x2,y2 x3,y3 ...' in output pixels; repeat for more",
    )
    parser.add_argument(
        "--blur-kernel", type=int, default=41, metavar="PX", help="blur strength (default: 41)"
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        metavar="X",
        help="files and sim: 1 = real time, 4 = four times as fast, 0 = as fast as possible "
        "(default: %(default)s)",
    )
    parser.add_argument("--loop", action="store_true", help="files: start again at the end")
    parser.add_argument(
        "--max-frames", type=int, default=None, metavar="N", help="stop after N frames"
    )
    parser.add_argument(
        "--queue-size",
        type=int,
        default=30,
        metavar="N",
        help="frames queued for Kafka before the oldest are dropped (default: %(default)s)",
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=8,
        metavar="N",
        help="frames sent and awaiting Kafka's ack (default: %(default)s)",
    )
    parser.add_argument(
        "--read-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="streams: open/read timeout before a reconnect (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=1, help="sim: seed (default: %(default)s)")
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="S",
        help="sim: simulated seconds (default: forever)",
    )
    add_worker_arguments(parser, progress=True)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run until the source ends (or SIGTERM/SIGINT).  Returns the exit code."""
    from citystream.errors import ConfigError
    from citystream.metrics import Registry
    from edge.camera.agent import CameraAgent, CameraConfig, parse_blur
    from edge.camera.publisher import KafkaFramePublisher
    from edge.camera.sources import FrameSource, VideoSource, classify

    setup_logging(args.log_level)
    try:
        config = CameraConfig(
            camera_id=args.camera_id,
            fps=args.fps,
            width=args.width,
            jpeg_quality=args.quality,
            blur=parse_blur(args.blur),
            blur_kernel=args.blur_kernel,
            speed=args.speed,
            queue_size=args.queue_size,
            max_in_flight=args.max_in_flight,
            max_frames=args.max_frames,
            progress_interval_s=args.progress_interval,
        )
        source: FrameSource
        if classify(args.source) == "sim":
            from edge.camera.sources import SimulatorSource
            from simulators.intersection.service import make_scene
            from simulators.intersection.sim import ScenarioConfig

            scene = make_scene(ScenarioConfig(seed=args.seed), args.width or 640, args.camera_id)
            source = SimulatorSource(
                scene.sim, scene.renderer, fps=args.fps, duration_s=args.duration
            )
        else:
            source = VideoSource(args.source, loop=args.loop, read_timeout_s=args.read_timeout)
    except (ValueError, ConfigError) as exc:
        print(f"citystream edge camera: {exc}", file=sys.stderr)
        return 2

    registry = Registry("citystream_edge_camera")
    publisher = KafkaFramePublisher(
        settings.kafka.bootstrap, client_id=f"citystream-camera-{args.camera_id}"
    )
    agent = CameraAgent(config, publisher, registry=registry)
    return run_until_signalled(
        "camera",
        lambda: agent.run(source),
        agent.stop,
        (registry,),
        metrics_port(args, settings),
    )


def main(argv: Sequence[str] | None = None) -> int:
    return standalone_main("python -m edge.camera", DESCRIPTION, EXAMPLES, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
