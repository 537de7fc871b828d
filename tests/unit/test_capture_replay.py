"""Replay pacing, looping, filtering and MQTT topic mapping, with a fake clock and target."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from citystream.capture import CapturedRecord, CaptureReader, CaptureWriter
from citystream.capture.recorder import topics_arg
from citystream.capture.replayer import (
    Pacer,
    ReplayOptions,
    mqtt_topic_for,
    parse_time,
    replay,
)
from citystream.errors import CityStreamError


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class SleepingStop(threading.Event):
    """A stop event whose ``wait`` advances the fake clock instead of sleeping."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout or 0.0)
        self.clock.now += timeout or 0.0
        return self.is_set()


class ListTarget:
    name = "list"

    def __init__(
        self,
        clock: FakeClock | None = None,
        stop_after: int | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.sent: list[tuple[float, CapturedRecord]] = []
        self.clock, self.stop_after, self.stop = clock, stop_after, stop
        self.flushed = 0

    def send(self, record: CapturedRecord) -> int:
        self.sent.append((self.clock() if self.clock else 0.0, record))
        if self.stop_after and len(self.sent) >= self.stop_after and self.stop:
            self.stop.set()
        return len(record.value or b"")

    def flush(self) -> None:
        self.flushed += 1

    def close(self) -> None:
        pass


def recs(ts: list[int]) -> list[CapturedRecord]:
    return [CapturedRecord("meter.readings", b"gw1", b"x" * 10, t, 0, i) for i, t in enumerate(ts)]


def test_pacer_time_warp() -> None:
    clock = FakeClock()
    p = Pacer(speed=10, clock=clock)
    assert p.delay(1_000_000) == 0.0
    assert p.delay(1_010_000) == pytest.approx(1.0)  # 10 s of event time at 10x
    clock.now += 3
    assert p.delay(1_010_000) == pytest.approx(-2.0)  # late by 2 s


def test_replay_keeps_event_spacing_and_never_reorders() -> None:
    clock = FakeClock()
    stop = SleepingStop(clock)
    target = ListTarget(clock)
    records = recs([0, 60_000, 30_000, 120_000])  # a record out of time order is sent at once
    stats = replay(records, target, ReplayOptions(speed=60), stop=stop, clock=clock)
    times = [t - 100.0 for t, _ in target.sent]
    assert [r for _, r in target.sent] == records
    assert times == pytest.approx([0.0, 1.0, 1.0, 2.0])
    assert stats.records == 4 and stats.bytes == 40 and target.flushed == 1


def test_as_fast_as_possible_does_not_wait() -> None:
    clock = FakeClock()
    stop = SleepingStop(clock)
    replay(
        recs([0, 10**9]),
        ListTarget(clock),
        ReplayOptions(as_fast_as_possible=True),
        stop=stop,
        clock=clock,
    )
    assert stop.waits == []


def write_cap(path: Path, records: list[CapturedRecord]) -> Path:
    with CaptureWriter(path, block_records=2) as w:
        w.add_many(records)
    return path


def test_loop_range_and_stop(tmp_path: Path) -> None:
    path = write_cap(tmp_path / "c.cap", recs([0, 1000, 2000, 3000, 4000]))
    clock = FakeClock()
    with CaptureReader(path) as reader:
        target = ListTarget(clock)
        stats = replay(
            reader,
            target,
            ReplayOptions(
                as_fast_as_possible=True, loop=True, max_loops=3, start_ms=1000, end_ms=3000
            ),
            clock=clock,
        )
        assert [r.timestamp_ms for _, r in target.sent] == [1000, 2000] * 3
        assert stats.loops == 3
        stop = threading.Event()
        target = ListTarget(clock, stop_after=7, stop=stop)
        stats = replay(
            reader,
            target,
            ReplayOptions(as_fast_as_possible=True, loop=True),
            stop=stop,
            clock=clock,
        )
        assert stats.records == 7
        empty = replay(reader, ListTarget(), ReplayOptions(loop=True, start_ms=10**12), clock=clock)
        assert empty.records == 0  # an empty range does not spin forever


def test_mqtt_topic_for_meter_batches_and_signals() -> None:
    batch = CapturedRecord("meter.readings", b"gw000003", b"{}", 0)
    assert mqtt_topic_for(batch, "hcm") == "city/hcm/meters/gw000003/readings"
    keyless = CapturedRecord(
        "signal.phases", None, json.dumps({"intersection_id": "i-9"}).encode(), 0
    )
    assert mqtt_topic_for(keyless, "dn") == "city/dn/signals/i-9/phase"
    with pytest.raises(CityStreamError, match="no MQTT route"):
        mqtt_topic_for(CapturedRecord("camera.frames", b"c", b"", 0), "hcm")
    with pytest.raises(CityStreamError, match="no key"):
        mqtt_topic_for(CapturedRecord("signal.phases", None, b"not json", 0), "hcm")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("2026-02-01T00:00:00Z", 1769904000000),
        ("2026-02-01T07:00:00+07:00", 1769904000000),
        ("2026-02-01T00:00:00", 1769904000000),
        ("1769904000000", 1769904000000),
        ("+90m", 1000 + 5_400_000),
        ("+1.5h", 1000 + 5_400_000),
        ("+1d", 1000 + 86_400_000),
    ],
)
def test_parse_time(text: str, expected: int) -> None:
    assert parse_time(text, base_ms=1000) == expected


def test_parse_time_errors() -> None:
    with pytest.raises(ValueError):
        parse_time("+5x", 0)
    with pytest.raises(ValueError):
        parse_time("+5m")
    with pytest.raises(ValueError):
        parse_time("yesterday")


def test_topics_arg() -> None:
    assert topics_arg(["a,b", "c", "a"]) == ("a", "b", "c")
