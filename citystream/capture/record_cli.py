"""``citystream record``: capture Kafka topics into a capture file (stop with Ctrl-C)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from citystream.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--topics", nargs="+", required=True, metavar="TOPIC", help="Kafka topics to capture"
    )
    parser.add_argument("--out", required=True, metavar="FILE", help="capture file to write")
    parser.add_argument(
        "--from-beginning",
        action="store_true",
        help="start at the oldest retained record (default: only new records)",
    )
    parser.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    parser.add_argument("--max-records", type=int, metavar="N", help="stop after N records")
    parser.add_argument(
        "--stop-at-end",
        action="store_true",
        help="stop when every partition reached the end it had when recording started",
    )
    parser.add_argument(
        "--compression", choices=["zlib", "zstd", "none"], default="zlib", help="default: zlib"
    )
    parser.add_argument(
        "--progress-interval", type=float, default=2.0, metavar="S", help="default: %(default)s"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from citystream.capture.recorder import RecordOptions, record_to_file, topics_arg

    options = RecordOptions(
        topics=topics_arg(args.topics),
        from_beginning=args.from_beginning,
        duration_s=args.duration,
        max_records=args.max_records,
        stop_at_end=args.stop_at_end,
        progress_interval_s=args.progress_interval,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        print(f"record: {signal.Signals(signum).name}, writing the index", file=sys.stderr)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stats = record_to_file(
            settings.kafka.bootstrap,
            args.out,
            options,
            stop=stop,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
            compression=args.compression,
        )
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    print(f"{stats.line()}; {stats.reason}; wrote {args.out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m citystream.capture.record_cli`` (same as ``citystream record``)."""
    from citystream.errors import CityStreamError
    from citystream.settings import load_settings

    parser = argparse.ArgumentParser(prog="citystream record", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args, load_settings())
    except CityStreamError as exc:
        print(f"citystream record: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
