"""``citystream replay``: play a capture back into Kafka or MQTT."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from citystream.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="capture file")
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="time warp: 10 plays ten seconds of event time per second (default: 1)",
    )
    parser.add_argument(
        "--as-fast-as-possible", action="store_true", help="no pacing, send as fast as acked"
    )
    parser.add_argument("--loop", action="store_true", help="start over at the end (Ctrl-C stops)")
    parser.add_argument(
        "--from",
        dest="start",
        metavar="T",
        help="first timestamp: ISO 8601 (UTC if no offset), epoch ms, or +90m after the start",
    )
    parser.add_argument(
        "--to", dest="end", metavar="T", help="end timestamp (exclusive), as --from"
    )
    parser.add_argument("--topics", nargs="+", metavar="TOPIC", help="only these captured topics")
    parser.add_argument(
        "--target", choices=["kafka", "mqtt"], default="kafka", help="default: kafka"
    )
    parser.add_argument(
        "--topic-map",
        action="append",
        default=[],
        metavar="A=B",
        help="kafka target: write captured topic A to topic B (repeatable)",
    )
    parser.add_argument(
        "--keep-partitions",
        action="store_true",
        help="kafka target: write to the recorded partition (default: partition by key)",
    )
    parser.add_argument(
        "--timestamps",
        choices=["now", "original"],
        default="now",
        help="kafka target: record timestamp (default: now; 'original' may fall outside the "
        "topic's retention and be deleted)",
    )
    parser.add_argument("--city", default="hcm", help="mqtt target: city id in topics (hcm)")
    parser.add_argument(
        "--metrics-port", type=int, default=0, metavar="PORT", help="serve /metrics (0: off)"
    )
    parser.add_argument(
        "--progress-interval", type=float, default=2.0, metavar="S", help="default: %(default)s"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from citystream.capture.format import CaptureReader
    from citystream.capture.replayer import (
        KafkaTarget,
        MqttTarget,
        ReplayMetrics,
        ReplayOptions,
        Target,
        parse_time,
        replay,
    )
    from citystream.errors import ConfigError
    from citystream.metrics import serve

    topic_map: dict[str, str] = {}
    for item in args.topic_map:
        a, sep, b = item.partition("=")
        if not sep or not a or not b:
            raise ConfigError(f"--topic-map wants A=B, got {item!r}")
        topic_map[a] = b
    reader = CaptureReader(args.file)
    for d in reader.damage:
        print(f"replay: warning: {args.file} @ {d.offset}: {d.reason}", file=sys.stderr)
    base = min((b.min_ts for b in reader.blocks), default=None)
    try:
        start = parse_time(args.start, base) if args.start else None
        end = parse_time(args.end, base) if args.end else None
    except ValueError as exc:
        raise ConfigError(f"--from/--to: {exc}") from exc
    options = ReplayOptions(
        speed=args.speed,
        as_fast_as_possible=args.as_fast_as_possible,
        loop=args.loop,
        start_ms=start,
        end_ms=end,
        topics=tuple(args.topics) if args.topics else None,
        progress_interval_s=args.progress_interval,
    )
    target: Target
    if args.target == "kafka":
        target = KafkaTarget(
            settings.kafka.bootstrap,
            topic_map=topic_map,
            keep_partitions=args.keep_partitions,
            timestamps=args.timestamps,
        )
    else:
        m = settings.mqtt
        target = MqttTarget(
            m.host, m.port, city=args.city, username=m.username, password=m.password
        )
    metrics = ReplayMetrics()
    server = (
        serve(metrics.registry, port=args.metrics_port, host="127.0.0.1")
        if args.metrics_port
        else None
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        print(f"replay: {signal.Signals(signum).name}, stopping", file=sys.stderr)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stats = replay(
            reader,
            target,
            options,
            stop=stop,
            metrics=metrics,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        target.close()
        reader.close()
        if server is not None:
            server.close()
    print(f"{stats.line()}; done", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m citystream.capture.replay_cli`` (same as ``citystream replay``)."""
    from citystream.errors import CityStreamError
    from citystream.settings import load_settings

    parser = argparse.ArgumentParser(prog="citystream replay", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args, load_settings())
    except CityStreamError as exc:
        print(f"citystream replay: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
