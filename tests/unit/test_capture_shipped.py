"""The shipped captures are readable, decode with the registry codecs and match their truth."""

from __future__ import annotations

from pathlib import Path

from citystream.capture import CaptureReader, read_truth
from schemas.messages import MeterBatch
from schemas.topics import TOPICS

CAPTURES = Path(__file__).resolve().parents[1] / "captures"


def test_meters_day_capture_matches_truth() -> None:
    path = CAPTURES / "meters_day.cap"
    assert path.stat().st_size < 1_000_000
    truth = read_truth(path)
    meta = next(t for t in truth if t["kind"] == "meta")
    codec = TOPICS["meter.readings"].codec
    with CaptureReader(path) as reader:
        assert reader.complete and not reader.damage
        records = list(reader)
    assert len(records) == meta["records"]
    batches: list[MeterBatch] = [codec.decode(r.value) for r in records]
    assert all(r.topic == "meter.readings" for r in records)
    assert all(r.key == b.gateway_id.encode() for r, b in zip(records, batches, strict=True))
    assert sum(len(b.readings) for b in batches) == meta["readings"]
    distinct = {(x.meter_id, x.ts) for b in batches for x in b.readings}
    assert len(distinct) == meta["distinct_readings"]
    meters = {t["meter_id"] for t in truth if t["kind"] == "meter"}
    assert len(meters) == meta["n_meters"] and {m for m, _ in distinct} <= meters
    # per gateway, batch_seq increases in capture order (what the bridge/pipeline relies on)
    last: dict[str, int] = {}
    for b in batches:
        assert b.batch_seq > last.get(b.gateway_id, -1)
        last[b.gateway_id] = b.batch_seq
    windows = [t for t in truth if t["kind"] == "window" and t["scope"] == "feeder"]
    assert sum(w["reported_readings"] for w in windows) == meta["distinct_readings"]
    assert meta["faults"] == sum(1 for t in truth if t["kind"] == "fault") > 0
