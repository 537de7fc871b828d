"""Captures written directly by simulators, with their ground truth alongside.

A simulator does not need Kafka to make a capture: it hands :func:`write_capture` the
records it would have produced, ``(topic, key, value, timestamp)``, and the truth it knows
(injected faults, true loads, ...) as JSON-ready dicts.  The truth lands in a JSON Lines
sidecar next to the capture (``day.cap`` -> ``day.truth.jsonl``), one object per line, each
with a ``"kind"`` field, so a test can replay the capture and score the pipeline's output
against it::

    write_capture("day.cap", records, truth=[{"kind": "fault", ...}, ...],
                  metadata={"simulator": "meters", "seed": 1})
    truth = read_truth("day.cap")
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from citystream.capture.format import CapturedRecord, CaptureWriter

#: (topic, key, value, timestamp): the timestamp as aware datetime or epoch milliseconds.
SimRecord = tuple[str, bytes | None, bytes, "datetime | int"]


def truth_path(capture: str | os.PathLike[str]) -> Path:
    """The truth sidecar of ``capture``: same name, ``.truth.jsonl`` instead of the suffix."""
    p = Path(capture)
    return p.with_name(p.stem + ".truth.jsonl")


def _ms(ts: datetime | int) -> int:
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return round(ts.timestamp() * 1000)
    return int(ts)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_capture(
    path: str | os.PathLike[str],
    records: Iterable[SimRecord | CapturedRecord],
    *,
    truth: Iterable[Mapping[str, Any]] | None = None,
    metadata: Mapping[str, Any] | None = None,
    compression: str = "zlib",
    level: int = 9,
    block_records: int = 1000,
) -> int:
    """Write ``records`` (in order) to a capture at ``path`` and ``truth`` to its sidecar.

    Records get ``partition`` -1 and consecutive ``offset`` s (they never were in Kafka).
    Returns the number of records written.
    """
    meta = {"source": "simulator", **(metadata or {})}
    with CaptureWriter(
        path, metadata=meta, compression=compression, level=level, block_records=block_records
    ) as writer:
        for i, item in enumerate(records):
            if isinstance(item, CapturedRecord):
                writer.add(item)
            else:
                topic, key, value, ts = item
                writer.add(CapturedRecord(topic, key, value, _ms(ts), -1, i))
    n = writer.records_written
    if truth is not None:
        with truth_path(path).open("w") as f:
            for obj in truth:
                f.write(json.dumps(obj, sort_keys=True, default=_json_default) + "\n")
    return n


def read_truth(capture: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The truth sidecar of ``capture`` (empty if there is none)."""
    p = truth_path(capture)
    if not p.exists():
        return []
    with p.open() as f:
        return [json.loads(line) for line in f if line.strip()]
