"""``citystream capture info``: what a capture file holds."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

from citystream.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="capture file")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _iso(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat() if ms is not None else "-"


def run(args: argparse.Namespace, settings: Settings) -> int:
    from citystream.capture.format import CaptureReader

    with CaptureReader(args.file) as reader:
        s = reader.stats()
        info = {
            "file": args.file,
            "complete": reader.complete,
            "metadata": reader.metadata,
            "records": s.records,
            "blocks": s.blocks,
            "first": _iso(s.min_ts),
            "last": _iso(s.max_ts),
            "topics": s.per_topic,
            "damage": [{"offset": d.offset, "reason": d.reason} for d in reader.damage],
        }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:9} {v}")
    return 0 if not info["damage"] else 1
