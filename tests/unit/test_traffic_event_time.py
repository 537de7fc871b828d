"""The traffic worker advances on event time: count windows, track judgement, the age cap.

The worker itself (:class:`~streams.traffic.stage.TrafficStage`) runs here without Kafka:
records are handed to :meth:`handle` in partition order, sends are recorded, and the test
owns the wall clock and says whether a partition has records left to fetch.  That is how a
vision worker falling behind looks from the traffic worker: batches arriving minutes apart
in wall-clock time, in order by event time, with nothing else to fetch meanwhile.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from citystream.settings import Settings
from schemas.codecs import Frame
from schemas.messages import (
    BBox,
    FrameHeader,
    LaneCount,
    TrackBatch,
    TrackObservation,
    VehicleClass,
    Violation,
    ViolationKind,
)
from schemas.topics import TOPICS
from streams.traffic.camera_state import CameraMemory, CameraState, StateConfig
from streams.traffic.cameras import CameraDirectory, parse_camera_row
from streams.traffic.counts import LaneCounter, Observation
from streams.traffic.durable import StateFile
from streams.traffic.signals import SignalTimeline
from streams.traffic.stage import TrafficStage
from streams.traffic.tracks import TrackHistory
from tests.unit.test_traffic_factories import T0, make_calibration, straight

TRACKS, FRAMES = TOPICS["traffic.tracks"], TOPICS["camera.frames"]
COUNTS, VIOLATIONS = TOPICS["traffic.counts"], TOPICS["traffic.violations"]
CAL = make_calibration()
JPEG = b"\xff\xd8" + b"\x00" * 64 + b"\xff\xd9"  # never decoded: no crop is asked of it


# --- a traffic worker without Kafka ------------------------------------------------------------
class _Done:
    @staticmethod
    def failed() -> bool:
        return False


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    def send(self, topic: str, key: bytes | None = None, value: bytes = b"") -> _Done:
        self.sent.append((topic, key, value))
        return _Done()

    def flush(self) -> None:
        return None


class OfflineStage(TrafficStage):
    """The worker with a test-owned wall clock and fetch state; sends are recorded."""

    def __init__(self, settings: Settings, *, idle_flush_s: float = 5.0) -> None:
        info = parse_camera_row("cam-1", "int-1", CAL.model_dump(mode="json"), 1, 1280, 720)
        directory = CameraDirectory(lambda: [info], 3600.0)
        directory.refresh(force=True)
        super().__init__(settings, directory=directory, idle_flush_s=idle_flush_s)
        self.producer = RecordingProducer()
        self.wall = 0.0
        self.clock = lambda: self.wall
        self.more_to_fetch: set[tuple[str, int]] = set()
        self.offsets: Counter[str] = Counter()
        self.handled: dict[tuple[str, int], int] = {}

    def _unfetched(self, topic: str, partition: int) -> bool:
        return (topic, partition) in self.more_to_fetch

    def give(self, topic: str, key: bytes | None, value: bytes, offset: int | None = None) -> None:
        off = self.offsets[topic] if offset is None else offset
        self.offsets[topic] = off + 1
        self.handle(topic, 0, off, key, value)
        self.handled[(topic, 0)] = off + 1

    def give_batch(self, batch: TrackBatch, offset: int | None = None) -> None:
        self.give(TRACKS.name, TRACKS.key_of(batch), TRACKS.codec.encode(batch), offset)

    def give_frame(self, t: float, seq: int) -> None:
        at = datetime.fromtimestamp(t, UTC)
        header = FrameHeader(camera_id="cam-1", seq=seq, captured_at=at, width=1280, height=720)
        frame = Frame(header, JPEG)
        self.give(FRAMES.name, FRAMES.key_of(frame), FRAMES.codec.encode(frame))

    def commit(self) -> dict[tuple[str, int], int]:
        """A checkpoint whose offsets are taken as committed."""
        safe = self.checkpoint(dict(self.handled))
        self.commits.inc()
        return safe

    def rows(self) -> list[LaneCount]:
        out = []
        for topic, _, value in self.producer.sent:
            if topic == COUNTS.name:
                row = COUNTS.codec.decode(value)
                assert isinstance(row, LaneCount)
                out.append(row)
        return out

    def violations_sent(self) -> list[Violation]:
        out = []
        for topic, _, value in self.producer.sent:
            if topic == VIOLATIONS.name:
                v = VIOLATIONS.codec.decode(value)
                assert isinstance(v, Violation)
                out.append(v)
        return out


def settings(tmp_path: Path, **traffic: Any) -> Settings:
    return Settings(
        state_dir=tmp_path / "state",
        traffic={"evidence_dir": tmp_path / "evidence", "count_window_s": 10, **traffic},
    )


def observation(track: TrackHistory, k: int) -> TrackObservation:
    x, y = track.xy[k]
    return TrackObservation(
        track_id=track.track_id,
        vehicle_class=track.vehicle_class,
        confidence=0.9,
        bbox=BBox(x1=600, y1=300, x2=640, y2=340),
        ground_xy=(float(x), float(y)),
    )


def batches(tracks: list[TrackHistory], until: float, fps: float = 10) -> Iterator[TrackBatch]:
    """One batch per frame from T0 to T0 + ``until`` with the tracks present then."""
    for k in range(round(until * fps) + 1):
        t = T0 + k / fps
        obs = []
        for tr in tracks:
            i = np.flatnonzero(np.isclose(tr.t, t, rtol=0, atol=1e-4))
            if len(i):
                obs.append(observation(tr, int(i[0])))
        yield TrackBatch(
            camera_id="cam-1",
            frame_seq=k,
            captured_at=datetime.fromtimestamp(t, UTC),
            model_version="m-1",
            tracks=obs,
        )


def through_traffic(n: int, every_s: float) -> list[TrackHistory]:
    """``n`` cars up lane S_in_1, one every ``every_s``, each over the stop line 5.2 s in."""
    return [
        straight(5.0, -62.0, 0.0, 10.0, 7.0, t0=T0 + 1 + k * every_s, track_id=100 + k)
        for k in range(n)
    ]


def totals(rows: list[LaneCount]) -> dict[tuple[float, str], int]:
    out: Counter[tuple[float, str]] = Counter()
    for r in rows:
        out[(r.window_start.timestamp(), r.lane_id)] += r.count
    return dict(out)


# --- count windows close by event time ---------------------------------------------------------
def test_late_input_in_wall_clock_yields_full_windows(tmp_path: Path) -> None:
    """The vision worker far behind: every batch comes a minute after the one before in
    wall-clock time (nothing left to fetch meanwhile), while the camera's frames are
    already there.  No window closes before the camera's event time passes its end; every
    window comes out once, complete; the last one when the input has ended."""
    cars = through_traffic(8, 4.0)
    all_batches = list(batches(cars, until=40.0, fps=2))
    reference = LaneCounter(CAL, window_s=10)
    expected: list[LaneCount] = []
    for b in all_batches:
        t = b.captured_at.timestamp()
        obs = [
            Observation(o.track_id, o.vehicle_class, o.ground_xy)
            for o in b.tracks
            if o.ground_xy is not None
        ]
        expected += reference.add_frame(t, obs)
    expected += reference.flush()
    assert sum(r.count for r in expected if r.lane_id == "S_in_1") == 8

    stage = OfflineStage(settings(tmp_path))
    for k, b in enumerate(all_batches):  # the camera is live: its frames are all here
        stage.give_frame(b.captured_at.timestamp(), k)
    for b in all_batches:
        stage.wall += 60.0  # a minute of wall-clock time since the last batch
        stage.on_idle()
        assert "cam-1" in stage.states  # not taken for the end of the input
        stage.give_batch(b)
        stage.on_idle()
        now = stage.states["cam-1"].now
        for row in stage.rows():
            assert row.window_start.timestamp() + row.window_s <= now  # closed by event time
    stage.wall += 60.0
    stage.on_idle()  # caught up with the frames, a minute without input: the end
    assert "cam-1" not in stage.states
    rows = stage.rows()
    assert len({(r.window_start, r.lane_id, r.vehicle_class) for r in rows}) == len(rows)
    assert totals(rows) == totals(expected)
    assert stage.retired.labels("ended").value == 1


def test_no_end_while_tracks_lag_frames_or_records_wait(tmp_path: Path) -> None:
    stage = OfflineStage(settings(tmp_path, camera_gone_s=600.0))
    bs = list(batches(through_traffic(2, 4.0), until=20.0, fps=2))
    for k, b in enumerate(bs):
        stage.give_frame(b.captured_at.timestamp(), k)
    for b in bs[:20]:
        stage.give_batch(b)
    window = stage.window_offset["cam-1"]
    stage.more_to_fetch = {(TRACKS.name, 0)}
    stage.wall += 1000.0
    stage.on_idle()  # tracks left to fetch: nothing ends, however long it has been quiet
    assert "cam-1" in stage.states and stage.rows() == []
    stage.more_to_fetch = set()
    stage.last_input["cam-1"] = stage.wall
    stage.wall += 100.0
    stage.on_idle()  # drained and quiet, but the tracks lag the frames: vision is behind
    assert "cam-1" in stage.states
    assert stage.commit()[(TRACKS.name, 0)] <= window  # the open window holds the commit
    stage.wall += 500.0
    stage.on_idle()  # no tracks for camera_gone_s: the camera (or vision) is down
    assert "cam-1" not in stage.states and stage.retired.labels("gone").value == 1
    assert stage.commit()[(TRACKS.name, 0)] == 20  # no longer held
    stage.give_frame(T0 + 30.0, 99)  # the camera still sends frames: a new state, which
    stage.wall += 1.0
    stage.on_idle()  # waits camera_gone_s again before it is retired
    assert "cam-1" in stage.states and stage.retired.labels("gone").value == 1


def test_camera_without_frames_ends_after_idle_flush(tmp_path: Path) -> None:
    stage = OfflineStage(settings(tmp_path))
    for b in batches(through_traffic(2, 4.0), until=20.0, fps=2):
        stage.give_batch(b)
    stage.wall += 4.0
    stage.on_idle()
    assert "cam-1" in stage.states
    stage.wall += 1.0
    stage.on_idle()
    assert "cam-1" not in stage.states
    assert sum(r.count for r in stage.rows()) == 2
    assert stage.commit() == {(TRACKS.name, 0): 41}


# --- the age cap -------------------------------------------------------------------------------
def parked(minutes: float, fps: float, track_id: int = 5) -> TrackHistory:
    """A car parked in the no-stopping zone (max dwell 30 s), then driving off down the exit
    lane."""
    n = int(minutes * 60 * fps)
    rng = np.random.default_rng(1)
    pts = [
        (T0 + k / fps, -3.0 + rng.normal(0, 0.05), -30.0 + rng.normal(0, 0.05)) for k in range(n)
    ]
    pts += [(T0 + (n + k) / fps, -3.0, -30.0 - 1.5 * k) for k in range(1, 15)]
    return TrackHistory.from_points(pts, VehicleClass.car, track_id=track_id)


@pytest.mark.parametrize("judge_open", [False, True])
def test_state_judges_cuts_and_never_repeats_a_kind(judge_open: bool) -> None:
    """Judged at the age cap on all it had seen (301 s), never again at the later cuts nor
    when the car leaves.  Judging open tracks finds the stop at 30 s, but a camera without
    frames has no evidence frames to wait for: it reports when the track ends or is cut."""
    cfg = StateConfig(track_max_age_s=300.0, track_tail_s=30.0, judge_open=judge_open)
    state = CameraState(CAL, cfg)
    signals = SignalTimeline()
    car = parked(20, fps=1)
    judged, cuts, longest = [], [], 0
    for b in batches([car], until=20 * 60 + 20, fps=1):
        state.add_batch(b)
        e = state.expire(signals)
        judged += e.judged
        cuts += e.cut
        h = state.store.history(5)
        longest = max(longest, len(h) if h is not None else 0)
        assert state.oldest_open_age_s <= 300.0
    assert [j.violation.kind for j in judged] == [ViolationKind.illegal_stop]
    assert judged[0].violation.t == pytest.approx(T0 + 30.0)
    assert len(judged[0].evidence.track) == 302
    assert [c.kept_from - T0 for c in cuts] == [270.0, 540.0, 810.0, 1080.0]
    assert all(c.dropped_until == c.kept_from - 1.0 for c in cuts)
    assert longest <= 302 and not state.open
    assert state.fired[5][1] == {ViolationKind.illegal_stop}


def test_a_long_dwell_limit_raises_the_tail_and_the_cap() -> None:
    """A no-stopping zone allowing 400 s: a tail of 30 s would restart the dwell clock at
    every cut and the stop would never be judged; the tail covers the limit instead."""
    zone = {
        "zone_id": "S_nostop",
        "kind": "no_stopping",
        "polygon": [(-7, -40), (0, -40), (0, -20), (-7, -20)],
        "max_dwell_s": 400,
    }
    state = CameraState(make_calibration(zones=[zone]), StateConfig(track_max_age_s=300.0))
    assert (state.tail_s, state.max_age_s) == (401.0, 802.0)
    judged = []
    for b in batches([parked(15, fps=1)], until=15 * 60 + 20, fps=1):
        state.add_batch(b)
        judged += state.expire(SignalTimeline()).judged
    assert [(j.violation.kind, j.violation.t - T0) for j in judged] == [
        (ViolationKind.illegal_stop, 400.0)
    ]


def test_fired_kinds_survive_a_restart_through_the_state_file(tmp_path: Path) -> None:
    file = StateFile(tmp_path / "s.json")
    memory = CameraMemory({7: T0 + 6.0}, {5: (T0 + 300.0, frozenset({ViolationKind.illegal_stop}))})
    file.save({"cam-1": memory}, {"int-1": T0})
    back, done = file.load()
    assert back["cam-1"] == memory and done == {"int-1": T0}
    (tmp_path / "v1.json").write_text('{"v": 1, "judged": {"cam-1": {"7": 1.5}}}')
    old, _ = StateFile(tmp_path / "v1.json").load()
    assert old["cam-1"] == CameraMemory({7: 1.5}, {})


def test_a_20_minute_static_track_does_not_hold_the_commits(tmp_path: Path) -> None:
    """A car parked for 20 minutes: judged once at the age cap (illegal stop), cut to its
    tail every 270 s, the commit point follows the tail, and a worker killed after a
    commit and restarted from it reports nothing twice."""
    car = parked(20, fps=2)
    bs = list(batches([car], until=20 * 60 + 12, fps=2))
    clean = OfflineStage(settings(tmp_path / "clean"))
    commits: list[int] = []
    for k, b in enumerate(bs):
        clean.give_batch(b)
        if k % 120 == 119:  # every minute of event time
            commits.append(clean.commit()[(TRACKS.name, 0)])
            h = clean.states["cam-1"].store.history(5)
            assert h is not None and len(h) <= 300 * 2 + 1
            clean.on_idle()
            assert clean.oldest_track.value <= 300.0
    kinds = [v.kind for v in clean.violations_sent()]
    assert kinds == [ViolationKind.illegal_stop]
    assert clean.tracks_cut.value == 4
    assert commits[3] == 0  # 4 minutes in: the track's first batch
    assert commits[5] == 2 * 269.5  # after the first cut (at 300.5 s): its tail's first batch
    assert commits == sorted(commits) and commits[-1] == 2 * 1078

    crashed = OfflineStage(settings(tmp_path / "restart"))
    cut_at = 2 * 620  # after the second cut (at 570 s), mid-way to the third
    committed = []
    for k, b in enumerate(bs[:cut_at]):
        crashed.give_batch(b)
        if k % 120 == 119:
            committed.append(crashed.commit()[(TRACKS.name, 0)])
    before = crashed.violations_sent()
    assert [v.kind for v in before] == [ViolationKind.illegal_stop]
    # the last commit did not get through: the replay starts before the second cut's tail
    restart_at = committed[-2]
    assert restart_at == 2 * 269.5 < committed[-1]
    restarted = OfflineStage(settings(tmp_path / "restart"))  # same state file
    for off in range(restart_at, len(bs)):
        restarted.give_batch(bs[off], offset=off)
    restarted.wall += 10.0
    restarted.on_idle()
    after = restarted.violations_sent()
    assert after == []  # the cut part was judged, the kind reported: nothing again
    assert restarted.tracks_cut.value == clean.tracks_cut.value - crashed.tracks_cut.value


# --- counting ----------------------------------------------------------------------------------
def test_a_box_jittering_over_the_lines_counts_once() -> None:
    """A vehicle whose position jitters back over the stop line (and the arrival line) and
    forwards again is one vehicle, not two."""
    counter = LaneCounter(CAL, window_s=60)
    ys = [-45.0, -41.0, -39.5, -40.5, -39.0, -30.0, -20.0, -10.5, -9.6, -10.2, -9.0, -5.0]
    rows = []
    for k, y in enumerate(ys):
        rows += counter.add_frame(T0 + k, [Observation(9, VehicleClass.car, (5.0, y))])
    rows += counter.flush()
    lane = [r for r in rows if r.lane_id == "S_in_1" and r.vehicle_class is VehicleClass.car]
    assert [(r.count, r.arrivals) for r in lane] == [(1, 1)]
    assert sum(r.count for r in rows) == 1
