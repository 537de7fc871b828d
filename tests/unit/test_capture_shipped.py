"""The shipped captures are readable, decode with the registry codecs and match their truth."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from citystream.capture import CaptureReader, read_truth
from schemas.codecs import Frame
from schemas.messages import MeterBatch, SignalPhaseChange
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


def test_intersection_capture_matches_truth() -> None:
    path = CAPTURES / "intersection_60s.cap"
    assert path.stat().st_size < 4_500_000
    truth = read_truth(path)
    meta = truth[0]
    assert meta["kind"] == "meta" and meta["warmup_s"] == 90.0
    camera, intersection = meta["camera_id"], meta["intersection_id"]
    assert meta["calibration"]["camera_id"] == camera
    assert meta["calibration"]["image_size"] == [640, 360]
    with CaptureReader(path) as reader:
        assert reader.complete and not reader.damage
        records = list(reader)
    frame_codec, phase_codec = TOPICS["camera.frames"].codec, TOPICS["signal.phases"].codec
    assert {r.topic for r in records} == {"camera.frames", "signal.phases"}
    frames: list[Frame] = [
        frame_codec.decode(r.value) for r in records if r.topic == "camera.frames"
    ]
    assert len(frames) == 301  # 60 s at 5 fps, and one more for the steps after the last
    assert all(r.key == camera.encode() for r in records if r.topic == "camera.frames")
    seqs = [f.header.seq for f in frames]
    assert seqs == sorted(set(seqs)) and seqs[0] == 0
    assert all(
        f.header.camera_id == camera and (f.header.width, f.header.height) == (640, 360)
        for f in frames
    )
    times = [f.header.captured_at for f in frames]
    assert times == sorted(times) and times[0] == datetime.fromisoformat(meta["start"]).replace(
        microsecond=100_000
    )
    phases: list[SignalPhaseChange] = [
        phase_codec.decode(r.value) for r in records if r.topic == "signal.phases"
    ]
    assert all(p.intersection_id == intersection for p in phases)
    # the signal states are known from the first frame on: every group once at its time
    initial = {p.signal_group for p in phases if p.changed_at == times[0]}
    assert len(initial) == 12 and min(p.changed_at for p in phases) == times[0]

    # the truth's frames are the capture's frames, one for one
    frame_truth = [t for t in truth if t["kind"] == "frame"]
    assert [t["seq"] for t in frame_truth] == seqs
    assert [datetime.fromisoformat(t["captured_at"]) for t in frame_truth] == times
    assert sum(len(t["objects"]) for t in frame_truth[:5]) > 0  # warmed up: traffic from the start
    violations = [t for t in truth if t["kind"] == "violation"]
    assert len(violations) >= 3
    assert all(
        times[0] <= datetime.fromisoformat(v["occurred_at"]) <= times[-1] for v in violations
    )


def test_intersection_capture_jpegs_decode() -> None:
    cv2 = pytest.importorskip("cv2")
    np = pytest.importorskip("numpy")
    frame_codec = TOPICS["camera.frames"].codec
    with CaptureReader(CAPTURES / "intersection_60s.cap") as reader:
        values = [r.value for r in reader if r.topic == "camera.frames"]
    for value in values[:: len(values) // 6]:
        frame = frame_codec.decode(value)
        img = cv2.imdecode(np.frombuffer(frame.jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape == (360, 640, 3)
