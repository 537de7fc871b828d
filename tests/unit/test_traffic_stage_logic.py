"""The Kafka-free parts of the vision and traffic workers.

Camera directory changes, the vision processor (batched detection, per-camera tracks,
ground positions, speeds), the traffic worker's per-camera state (judgement with evidence,
snapshots of evidence frames, replay suppression), Webster advice periods, pacing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

cv2 = pytest.importorskip("cv2")

from citystream.errors import SinkError  # noqa: E402
from schemas.codecs import Frame  # noqa: E402
from schemas.messages import (  # noqa: E402
    BBox,
    FrameHeader,
    LaneCount,
    PhaseTiming,
    SignalPlan,
    TrackBatch,
    TrackObservation,
    VehicleClass,
    ViolationKind,
)
from streams.traffic.advice import (  # noqa: E402
    AdviceAggregator,
    PlanBook,
    advise,
    demand_by_lane,
)
from streams.traffic.camera_state import CameraState, StateConfig  # noqa: E402
from streams.traffic.cameras import (  # noqa: E402
    CameraDirectory,
    CameraInfo,
    diff_cameras,
    parse_camera_row,
)
from streams.traffic.evidence import verify_bundle  # noqa: E402
from streams.traffic.feeds import Held, Pacer  # noqa: E402
from streams.traffic.tracks import TrackHistory  # noqa: E402
from streams.traffic.webster import SaturationFlow  # noqa: E402
from streams.vision.detections import Detections  # noqa: E402
from streams.vision.detector import DecodeFailure  # noqa: E402
from streams.vision.health import Reference  # noqa: E402
from streams.vision.processor import FrameWork, VisionProcessor, id_base  # noqa: E402
from streams.vision.stage import FileReferenceStore  # noqa: E402
from tests.unit.test_traffic_factories import T0, cycle, make_calibration, rect, straight  # noqa: E402

CAL = make_calibration()
CAL_DOC = CAL.model_dump(mode="json")


def info(camera_id: str = "cam-1", version: int = 1, **doc: Any) -> CameraInfo:
    return parse_camera_row(camera_id, "int-1", {**CAL_DOC, **doc}, version, 640, 360)


# --- camera directory ----------------------------------------------------------------------
def test_camera_rows_and_changes() -> None:
    a = info()
    assert a.calibration is not None and a.calibration.calibration_version == "1"
    assert a.calibration.camera_id == "cam-1" and a.problem is None
    empty = parse_camera_row("cam-2", "int-1", {}, 0)
    assert empty.calibration is None and "no calibration" in (empty.problem or "")
    bad = parse_camera_row("cam-3", "int-1", {"homography": [[1, 2]]}, 4)
    assert bad.calibration is None and "invalid calibration" in (bad.problem or "")
    assert parse_camera_row("cam-3", "int-1", "{not json", 4).problem
    moved = info(version=2)
    edited = info(speed_limit_kmh=40)  # same version, edited document: also a change
    assert len({a.fingerprint, moved.fingerprint, edited.fingerprint}) == 3
    d = diff_cameras({"cam-1": a, "cam-2": empty}, {"cam-1": moved, "cam-4": info("cam-4")})
    assert (d.added, d.moved, d.removed) == (("cam-4",), ("cam-1",), ("cam-2",))


def test_directory_refreshes_reports_and_survives_db_errors() -> None:
    clock = [0.0]
    rows: list[CameraInfo] = [info()]
    fail = [False]

    def loader() -> list[CameraInfo]:
        if fail[0]:
            raise SinkError("db down")
        return list(rows)

    d = CameraDirectory(loader, refresh_s=5.0, clock=lambda: clock[0])
    with pytest.raises(SinkError):  # never loaded: the worker must know
        fail[0] = True
        d.refresh(force=True)
    fail[0] = False
    assert d.refresh(force=True) and d.take_changes().added == ("cam-1",)
    rows[:] = [info(version=2), info("cam-5")]
    assert not d.refresh()  # not due yet
    assert d.lookup("cam-5") is not None  # unknown id: reloaded at once
    changes = d.take_changes()
    assert changes.added == ("cam-5",) and changes.moved == ("cam-1",)
    assert d.lookup("cam-404") is None and d.reloads == 2  # rate-limited forced reload
    fail[0] = True
    clock[0] = 10.0
    assert not d.refresh() and d.errors == 1 and d.get("cam-5") is not None
    assert not d.take_changes()


# --- vision processor -----------------------------------------------------------------------
class BlobDetector:
    """A real, tiny detector: bright blobs of a greyscale JPEG are cars."""

    model_version = "blob-1"
    classes = (VehicleClass.car,)
    device = "cpu"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def detect_jpegs(self, jpegs: Any) -> list[Detections | DecodeFailure]:
        self.calls.append(len(jpegs))
        out: list[Detections | DecodeFailure] = []
        for j in jpegs:
            img = cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_GRAYSCALE)
            if img is None:
                out.append(DecodeFailure("not a decodable JPEG"))
                continue
            _, _, stats, _ = cv2.connectedComponentsWithStats((img > 128).astype(np.uint8))
            boxes = [(x, y, x + w, y + h) for x, y, w, h, area in stats[1:] if area > 20]
            n = len(boxes)
            out.append(Detections(np.array(boxes).reshape(-1, 4), np.full(n, 0.9), np.zeros(n)))
        return out


def frame(camera_id: str, seq: int, boxes: list[tuple[int, int, int, int]]) -> Frame:
    img = np.full((360, 640), 40, np.uint8)
    for x1, y1, x2, y2 in boxes:
        cv2.rectangle(img, (x1, y1), (x2, y2), 255, -1)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    header = FrameHeader(
        camera_id=camera_id,
        seq=seq,
        captured_at=datetime.fromtimestamp(T0, UTC) + timedelta(seconds=seq / 10),
        width=640,
        height=360,
    )
    return Frame(header, bytes(buf))


def cam_a(seq: int) -> Frame:  # one car moving right 5 px per frame, bottom at y=200
    return frame("cam-a", seq, [(100 + 5 * seq, 170, 140 + 5 * seq, 200)])


def cam_b(seq: int) -> Frame:  # two cars moving left
    return frame(
        "cam-b",
        seq,
        [(500 - 4 * seq, 50, 530 - 4 * seq, 80), (400 - 4 * seq, 250, 450 - 4 * seq, 300)],
    )


def run_frames(proc: VisionProcessor, frames: list[FrameWork], batch: int) -> list[Any]:
    out = []
    for i in range(0, len(frames), batch):
        out += proc.process(frames[i : i + batch])
    return out


def test_track_ids_do_not_depend_on_batch_mates() -> None:
    a, b = info("cam-a"), info("cam-b")
    alone = VisionProcessor(BlobDetector())
    mixed_det = BlobDetector()
    mixed = VisionProcessor(mixed_det)
    res_alone = run_frames(alone, [FrameWork(cam_a(k), a) for k in range(30)], batch=4)
    interleaved = [FrameWork(f, c) for k in range(30) for f, c in ((cam_a(k), a), (cam_b(k), b))]
    res_mixed = run_frames(mixed, interleaved, batch=5)
    only_a = [r for r in res_mixed if r.batch is not None and r.batch.camera_id == "cam-a"]
    assert max(mixed_det.calls) == 5  # really batched across cameras
    assert [r.batch for r in res_alone] == [r.batch for r in only_a]
    last = only_a[-1].batch
    assert last is not None and len(last.tracks) == 1
    obs = last.tracks[0]
    assert obs.track_id == id_base(T0) + 1 and obs.vehicle_class is VehicleClass.car
    # box (245..286, 170..201) at 640x360 -> x = 0.1 u - 32, y = 10 - 0.2 v (calibration at 2x)
    assert obs.ground_xy == pytest.approx((0.1 * (120.5 + 5 * 29) - 32, 10 - 0.2 * 201), abs=0.01)
    assert obs.speed_kmh == pytest.approx(0.5 * 10 * 3.6, rel=0.05)  # 0.5 m per frame at 10 fps


def test_failures_stale_frames_and_a_moved_camera() -> None:
    proc = VisionProcessor(BlobDetector())
    a = info("cam-a")
    broken = Frame(cam_a(3).header, b"\xff\xd8 not really a jpeg \xff\xd9")
    out = proc.process([FrameWork(cam_a(0), a), FrameWork(cam_a(0), a), FrameWork(broken, a)])
    assert out[0].batch is not None and out[1].stale and out[2].failure is not None
    assert "cam-a#3" in out[2].failure and "decodable" in out[2].failure
    out = run_frames(proc, [FrameWork(cam_a(k), a) for k in range(4, 12)], batch=8)
    first_id = out[-1].batch.tracks[0].track_id
    # recalibrated: ground shifted 100 m east; tracks restart with new (higher) ids
    h = [[0.05, 0, 68], [0, -0.1, 10], [0, 0, 1]]
    moved = info("cam-a", version=2, homography=h)
    out = run_frames(proc, [FrameWork(cam_a(k), moved) for k in range(12, 20)], batch=8)
    obs = out[-1].batch.tracks[0]
    assert obs.track_id > first_id
    assert obs.ground_xy is not None and obs.ground_xy[0] == pytest.approx(
        0.1 * (120.5 + 95) + 68, abs=0.01
    )


def test_reference_views_survive_in_files(tmp_path: Path) -> None:
    store = FileReferenceStore(tmp_path)
    assert store.load("cam-1", 3) is None
    ref = Reference(np.arange(320 * 180, dtype=np.uint8).reshape(180, 320), np.eye(2, 3), 12.5)
    store.save("cam-1", 3, ref)
    back = store.load("cam-1", 3)
    assert back is not None and np.array_equal(back.image, ref.image) and back.taken_at == 12.5
    assert store.load("cam-1", 4) is None


# --- traffic: per-camera state ----------------------------------------------------------------
def batches(
    tracks: list[TrackHistory],
    until: float,
    fps: float = 10,
    class_at: Callable[[float], VehicleClass] | None = None,
) -> list[TrackBatch]:
    """One batch per frame from T0 to ``until`` (s after T0) with the tracks present then;
    ``class_at``: the tracker's class vote at each time (s after T0), for every track."""
    out = []
    for k in range(int(until * fps) + 1):
        t = T0 + k / fps
        obs = []
        for tr in tracks:
            i = np.flatnonzero(np.isclose(tr.t, t, rtol=0, atol=1e-4))
            if len(i):
                x, y = tr.xy[i[0]]
                obs.append(
                    TrackObservation(
                        track_id=tr.track_id,
                        vehicle_class=class_at(t - T0) if class_at else tr.vehicle_class,
                        confidence=0.9,
                        bbox=BBox(x1=60, y1=30, x2=90, y2=60),
                        ground_xy=(float(x), float(y)),
                    )
                )
        out.append(
            TrackBatch(
                camera_id="cam-1",
                frame_seq=k,
                captured_at=datetime.fromtimestamp(t, UTC),
                model_version="blob-1",
                tracks=obs,
            )
        )
    return out


def tiny_jpeg(k: int) -> bytes:
    img = np.full((90, 160, 3), 60, np.uint8)
    cv2.putText(img, str(k), (10, 50), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 255), 2)
    return bytes(cv2.imencode(".jpg", img)[1])


def feed(state: CameraState, bs: list[TrackBatch], signals: Any) -> list[Any]:
    return [j for _, j in feed_timed(state, bs, signals)]


def feed_timed(state: CameraState, bs: list[TrackBatch], signals: Any) -> list[tuple[float, Any]]:
    """Frames and batches in time order; each judgement with the time (s after T0) of the
    batch after which it came out."""
    judged = []
    for b in bs:
        t = b.captured_at.timestamp()
        state.add_frame(t, tiny_jpeg(b.frame_seq))
        state.add_batch(b)
        judged += [(round(t - T0, 3), j) for j in state.expire(signals).judged]
    return judged


@pytest.mark.parametrize("judge_open", [True, False])
def test_red_light_runner_judged_with_evidence(tmp_path: Path, judge_open: bool) -> None:
    signals = cycle(green_until=0.0)  # amber at T0, red from T0 + 3
    runner = straight(5.0, -40.0, 0.0, 10.0, 4.0, t0=T0 + 2, track_id=7)  # line at T0 + 5
    state = CameraState(CAL, StateConfig(track_idle_s=3.0, judge_open=judge_open))
    timed = feed_timed(state, batches([runner], until=12.0), signals)
    assert [j.violation.kind for _, j in timed] == [ViolationKind.red_light]
    at, judged = timed[0]
    ev, v = judged.evidence, judged.violation
    # the ground point crosses at T0 + 5; the car's front (seen from behind) 4.5 m earlier
    assert v.t == pytest.approx(T0 + 4.55, abs=0.11) and v.track_id == 7
    committed = float(v.details["committed_t"]) - T0
    assert committed == pytest.approx(5.2, abs=0.11)
    if judge_open:  # while the runner is in view (until T0 + 6), once the signal lag passed
        assert committed + state.config.signal_lag_s - 0.01 <= at <= committed + 0.5 + 0.2
    else:  # once the track has ended (unseen for track_idle_s)
        assert at > 6.0 + 3.0
    assert len(ev.frames_before) == 3 and len(ev.frames_after) == 3
    assert all(abs(f.t - v.t) <= 0.31 for f in [*ev.frames_before, *ev.frames_after])
    assert ev.crop is not None and ev.crop[:2] == b"\xff\xd8"
    assert ev.signal["violated_state"] == "red" and ev.model_version == "blob-1"
    from streams.traffic.evidence import store_bundle

    stored = store_bundle(tmp_path, ev)
    assert verify_bundle(stored.path, stored.sha256)
    msg = v.to_message("int-1", stored.uri, stored.sha256)
    assert msg.violation_id == v.violation_id and msg.details["signal_group"] == "S_through"
    assert not state.open  # judged and forgotten


def test_frames_that_come_after_their_tracks_still_make_the_evidence() -> None:
    """Tracks read 25 s ahead of the frames, then the frames in one burst: trimmed to the
    tracks' time at the next batch, the ring alone would have lost those of the red light."""
    signals = cycle(green_until=0.0)
    runner = straight(5.0, -40.0, 0.0, 10.0, 27.0, t0=T0 + 2, track_id=7)  # line at T0 + 5
    state = CameraState(CAL)
    bs = batches([runner], until=30.0)
    judged = [j for b in bs[:250] for j in (state.add_batch(b), state.expire(signals))[1].judged]
    assert judged == []  # the red light is due, waiting for its frames
    for b in bs[:300]:
        state.add_frame(b.captured_at.timestamp(), tiny_jpeg(b.frame_seq))
    state.add_batch(bs[250])
    [j] = state.expire(signals).judged
    assert j.violation.kind is ViolationKind.red_light
    frames = [*j.evidence.frames_before, *j.evidence.frames_after]
    assert len(frames) == 6 and all(abs(f.t - j.violation.t) <= 0.31 for f in frames)


def test_frames_that_come_before_their_tracks_are_kept_until_they_come() -> None:
    """A backlog read a minute of frames before the first track batch (or a vision worker
    catching up): the frames wait for their tracks instead of leaving the 12 s ring."""
    signals = cycle(green_until=0.0)
    runner = straight(5.0, -40.0, 0.0, 10.0, 4.0, t0=T0 + 2, track_id=7)  # line at T0 + 5
    state = CameraState(CAL)
    bs = batches([runner], until=60.0)
    for b in bs:
        state.add_frame(b.captured_at.timestamp(), tiny_jpeg(b.frame_seq))
    judged = [j for b in bs for j in (state.add_batch(b), state.expire(signals))[1].judged]
    assert [j.violation.kind for j in judged] == [ViolationKind.red_light]
    frames = [*judged[0].evidence.frames_before, *judged[0].evidence.frames_after]
    assert len(frames) == 6 and all(abs(f.t - judged[0].violation.t) <= 0.31 for f in frames)
    assert len(state.ring._frames) <= 12 * 10 + 1  # trimmed to the tracks' time once they came


@pytest.mark.parametrize("judge_open", [True, False])
def test_long_stop_has_its_evidence_frames(judge_open: bool) -> None:
    """Reported when the dwell passes the limit, with the frames around that moment; or,
    judged when the vehicle has left, with the frames kept for it then (the ring holds 5 s)."""
    stopped = [(T0 + k / 10, -3.0, -30.0) for k in range(500)]  # 50 s in the no-stopping zone
    leaving = [(T0 + 50 + k / 10, -3.0, -30.0 - k) for k in range(1, 15)]
    track = TrackHistory.from_points(stopped + leaving, VehicleClass.car, track_id=3)
    state = CameraState(CAL, StateConfig(frame_buffer_s=5.0, judge_open=judge_open))
    timed = feed_timed(state, batches([track], until=56.0), cycle(100.0))
    assert [j.violation.kind for _, j in timed] == [ViolationKind.illegal_stop]
    at, judged = timed[0]
    v, ev = judged.violation, judged.evidence
    assert v.t == pytest.approx(T0 + 30.0)
    assert at == pytest.approx(30.4 if judge_open else 51.4 + 3.1, abs=0.11)  # left at 51.4
    frames = [*ev.frames_before, *ev.frames_after]
    assert len(frames) == 6 and all(abs(f.t - v.t) <= 0.31 for f in frames)


def test_open_judgement_waits_for_a_settled_class() -> None:
    """A bus in the bus lane whose class vote flips at first: while the vote is young the
    finding on the open track is not reported, and the whole track (a bus) is no violation.
    Judged on every vote (no wait), it would have been reported as a car."""

    def votes(t: float) -> VehicleClass:
        car = t < 0.6 or 1.0 <= t < 1.8
        return VehicleClass.car if car else VehicleClass.bus

    bus = straight(1.5, -59.0, 0.0, 10.0, 4.5, cls=VehicleClass.bus, track_id=4)
    bs = batches([bus], until=9.0, class_at=votes)
    assert feed(CameraState(CAL), bs, cycle(100.0)) == []
    eager = feed(
        CameraState(CAL, StateConfig(class_settled_s=0.0, class_settled_share=0.0)),
        bs,
        cycle(100.0),
    )
    assert [(j.violation.kind, j.violation.vehicle_class) for j in eager] == [
        (ViolationKind.bus_lane, VehicleClass.car)
    ]


def test_speed_burst_at_a_tracks_start_is_not_reported_early() -> None:
    """20 m/s for its first second, then 10 m/s: the median of the first few windows is over
    the limit (55 km/h), the median of 9 never is; so neither the open track nor the whole
    one is a speeder."""
    fast = [(k / 10, 5.0, -60.0 + 2.0 * k) for k in range(11)]
    slow = [(1.0 + k / 10, 5.0, -40.0 + 1.0 * k) for k in range(1, 60)]
    track = TrackHistory.from_points([(T0 + t, x, y) for t, x, y in fast + slow], track_id=5)
    assert feed(CameraState(CAL), batches([track], until=10.0), cycle(100.0)) == []


def test_a_speeder_is_reported_once_it_has_left_a_short_enforcement_section() -> None:
    """A 35 m section holds fewer than 9 windows of 20 m at 72 km/h: the median of the ones
    it holds is the measurement, final once the vehicle has left the section (while it is
    still in view); on a track still inside, it would not be."""
    zones = [
        *CAL_DOC["zones"],
        {"zone_id": "S_speed", "kind": "speed", "polygon": rect(3.5, -45, 7, -10)},
    ]
    cal = make_calibration(zones=zones)
    speeder = straight(5.0, -60.0, 0.0, 20.0, 5.0, track_id=6)  # leaves the section at 2.5 s
    timed = feed_timed(CameraState(cal), batches([speeder], until=10.0), cycle(100.0))
    assert [j.violation.kind for _, j in timed] == [ViolationKind.speeding]
    at, judged = timed[0]
    assert judged.violation.details["speed_kmh"] == pytest.approx(72.0, abs=1.0)
    assert 2.5 < at <= 3.0  # the track lasts until 5 s, and ends at 8 s


def test_open_judgement_is_the_same_in_a_replay() -> None:
    """A replay that starts later (after a crash) finds the same violations on the same
    parts of the tracks, so they get the same ids: the sink keeps one of each."""
    speeder = straight(5.0, -60.0, 0.0, 20.0, 3.0, t0=T0 + 4, track_id=8)  # 72 km/h
    stop = [(T0 + 1 + k / 10, -3.0, -30.0) for k in range(340)]  # 34 s stopped
    stopper = TrackHistory.from_points(stop, VehicleClass.car, track_id=9)
    bs = batches([speeder, stopper], until=40.0)
    first = feed_timed(CameraState(CAL), bs, cycle(100.0))
    kinds = {ViolationKind.speeding: 7.0, ViolationKind.illegal_stop: 31.0}
    assert sorted(j.violation.kind for _, j in first) == sorted(kinds)
    for at, j in first:  # each while its vehicle was in view
        assert at < kinds[j.violation.kind] + 0.6
    replay = feed_timed(CameraState(CAL), bs[7:], cycle(100.0))  # from T0 + 0.7
    assert [j.violation.violation_id for _, j in replay] == [
        j.violation.violation_id for _, j in first
    ]


def test_restored_judged_tracks_are_not_judged_again() -> None:
    signals = cycle(green_until=0.0)
    runner = straight(5.0, -40.0, 0.0, 10.0, 4.0, t0=T0 + 2, track_id=7)
    state = CameraState(CAL)
    state.judged = {7: T0 + 6.0}  # a replay after a crash: track 7 was judged up to T0 + 6
    judged = feed(state, batches([runner], until=12.0), signals)
    assert judged == []  # only the tail after T0 + 6 remains: no crossing in it


def test_windows_and_stale_batches() -> None:
    state = CameraState(CAL, StateConfig(count_window_s=10))
    bs = batches([straight(5.0, -30.0, 0.0, 10.0, 3.0, track_id=1)], until=25.0)
    results = [state.add_batch(b) for b in bs]
    assert results[0].new_window and results[0].new_tracks == (1,)
    assert not state.add_batch(bs[3]).accepted  # older than what was seen: a replay
    rows = [c for r in results for c in r.counts]
    through = [r for r in rows if r.lane_id == "S_in_1" and r.vehicle_class is VehicleClass.car]
    assert [r.count for r in through] == [1, 0]  # two closed windows; the third is open
    assert sum(r.new_window for r in results) == 3


# --- advice ------------------------------------------------------------------------------------
def lane_count(
    cam: str, lane: str, start: float, n: int, cls: str = "car", **extra: Any
) -> LaneCount:
    return LaneCount(
        intersection_id="int-1",
        camera_id=cam,
        lane_id=lane,
        movement="through",
        vehicle_class=VehicleClass(cls),
        window_start=datetime.fromtimestamp(start, UTC),
        window_s=10,
        count=n,
        occupancy=0.1,
        queue_len=0,
        **extra,
    )


def plan() -> SignalPlan:
    def phase(name: str, groups: list[str]) -> PhaseTiming:
        return PhaseTiming(name=name, signal_groups=groups, green_s=30, amber_s=3, all_red_s=2)

    return SignalPlan(
        intersection_id="int-1",
        plan_id="fixed-1",
        cycle_s=70,
        phases=[phase("NS", ["S_through", "S_right"]), phase("EW", ["E_through"])],
        valid_from=datetime(2026, 1, 1, tzinfo=UTC),
    )


EAST = make_calibration(
    camera_id="cam-2",
    lanes=[
        {
            "lane_id": "E_in_1",
            "movement": "through",
            "signal_group": "E_through",
            "direction": [-1, 0],
            "polygon": rect(10, 0, 60, 3.5),
            "stop_line": [[10, 0], [10, 3.5]],
        }
    ],
    zones=[],
)


def test_advice_periods_complete_by_watermark_and_dedupe() -> None:
    agg = AdviceAggregator(period_s=30, lateness_s=20)
    t = 1_800_000_000.0  # a multiple of 30
    for k, w in enumerate((t, t + 10, t + 20)):
        assert agg.add(lane_count("cam-1", "S_in_1", w, 6), 0, 100 + k)
        agg.add(lane_count("cam-2", "E_in_1", w, 2), 1, 50 + k)
    assert agg.add(lane_count("cam-1", "S_in_1", t, 99), 0, 200) and agg.duplicates == 1
    assert agg.due() == [] and agg.open_offsets() == {0: 100, 1: 50}
    agg.add(lane_count("cam-1", "S_in_1", t + 40, 1), 0, 300)  # watermark t + 50
    due = agg.due()
    assert [(d.start, len(d.counts)) for d in due] == [(t, 6)]
    assert max(c.count for c in due[0].counts) == 6  # the first of the duplicates won
    assert not agg.add(lane_count("cam-2", "E_in_1", t + 10, 5), 1, 400)  # too late
    assert agg.open_offsets() == {0: 300}
    assert [d.start for d in agg.due(force=True)] == [t + 30]

    book = PlanBook()
    book.add(plan())
    current = book.in_force("int-1", due[0].end)
    assert current is not None and book.in_force("int-1", 0.0) is None
    blind = advise(due[0], current, {"cam-1": CAL})
    assert isinstance(blind, str) and "EW" in blind
    rec = advise(due[0], current, {"cam-1": CAL, "cam-2": EAST})
    assert not isinstance(rec, str)
    assert rec.issued_at.timestamp() == t + 30 and rec.current_plan_id == "fixed-1"
    greens = [p.green_s for p in rec.recommended.phases]
    assert greens[0] > greens[1] >= 7  # S carries 3x the flow of E, per lane
    assert 30 <= rec.recommended.cycle_s <= 150 + 10


def test_advice_measures_a_lane_saturation_flow_from_its_queue_discharges() -> None:
    """The same flows on S and E; S's queue discharges show 450 PCU/h of green (one car
    per 8 s): once there is enough of it, S is the critical lane and gets the longer green."""
    t = 1_800_000_000.0
    agg = AdviceAggregator(period_s=30, lateness_s=0)
    for k, w in enumerate((t, t + 10, t + 20)):
        agg.add(lane_count("cam-1", "S_in_1", w, 1, discharged=1, discharge_s=8.0), 0, k)
        agg.add(lane_count("cam-2", "E_in_1", w, 1), 1, k)
    (period,) = agg.due(force=True)
    cals = {"cam-1": CAL, "cam-2": EAST}
    demand = demand_by_lane(period.counts, cals, SaturationFlow(min_discharge_s=20))
    assert demand["cam-1/S_in_1"].saturation_pcu_h == pytest.approx(450)
    assert demand["cam-2/E_in_1"].saturation_pcu_h == 1800  # no discharge seen: assumed
    assumed = advise(period, plan(), cals)  # 24 s of discharge < the default 60 s
    measured = advise(period, plan(), cals, saturation=SaturationFlow(min_discharge_s=20))
    assert not isinstance(assumed, str) and not isinstance(measured, str)
    a, m = ([p.green_s for p in r.recommended.phases] for r in (assumed, measured))
    assert a[0] == a[1] and m[0] > m[1] + 30 and sum(m) > sum(a)  # S's y 0.8: a long cycle
    with pytest.raises(ValidationError, match="discharged exceeds count"):
        lane_count("cam-1", "S_in_1", t, 1, discharged=2)
    with pytest.raises(ValidationError, match="discharge_s exceeds window_s"):
        lane_count("cam-1", "S_in_1", t, 1, discharge_s=11.0)


# --- pacing of tracks and frames -----------------------------------------------------------------
def test_pacer_holds_the_side_ahead_only_while_the_other_has_more_to_fetch() -> None:
    pacer = Pacer("traffic.tracks", "camera.frames", lead_s=2.0)
    more = {"camera.frames": True, "traffic.tracks": True}

    def unfetched(topic: str, partition: int) -> bool:
        return more[topic]

    def rec(offset: int, t: float) -> Held:
        return Held(0, offset, b"cam-1", b"", None, t)

    pacer.done("camera.frames", "cam-1", 100.0)
    assert not pacer.should_hold("traffic.tracks", "cam-1", 0, 101.5, unfetched)
    assert pacer.should_hold("traffic.tracks", "cam-1", 0, 103.0, unfetched)
    pacer.hold("traffic.tracks", "cam-1", rec(10, 103.0))
    pacer.hold("traffic.tracks", "cam-1", rec(11, 100.1))  # behind a held one: waits too
    # cam-2's frames have not started: its tracks wait while frames may still come
    assert pacer.should_hold("traffic.tracks", "cam-2", 0, 500.0, unfetched)
    assert pacer.first_held() == {("traffic.tracks", 0): 10}
    assert pacer.releasable(unfetched) == []
    pacer.done("camera.frames", "cam-1", 101.5)  # the frames caught up
    assert [h.offset for _, _, h in pacer.releasable(unfetched)] == [10, 11]
    pacer.done("traffic.tracks", "cam-1", 103.0)  # the worker processed them
    pacer.hold("camera.frames", "cam-1", rec(7, 200.0))
    assert pacer.releasable(unfetched) == []
    more["traffic.tracks"] = False  # nothing more will come: stop waiting
    assert [h.offset for _, _, h in pacer.releasable(unfetched)] == [7]
    assert pacer.first_held() == {}


def test_pacer_holds_a_cameras_frames_until_its_tracks_start() -> None:
    # fetched first, the frames of a whole minute would pass through the evidence ring (12 s)
    # before the first track batch: the violations early in it would find no frames before
    pacer = Pacer("traffic.tracks", "camera.frames", lead_s=2.0)
    more = {"camera.frames": True, "traffic.tracks": True}

    def unfetched(topic: str, partition: int) -> bool:
        return more[topic]

    assert pacer.should_hold("camera.frames", "cam-1", 0, 100.0, unfetched)
    pacer.hold("camera.frames", "cam-1", Held(0, 3, b"cam-1", b"", None, 100.0))
    assert pacer.releasable(unfetched) == []
    pacer.done("traffic.tracks", "cam-1", 99.5)  # its tracks started
    assert [h.offset for _, _, h in pacer.releasable(unfetched)] == [3]
    more["traffic.tracks"] = False  # a camera without tracks: its frames go once all is read
    assert not pacer.should_hold("camera.frames", "cam-3", 0, 100.0, unfetched)


def test_pacer_starts_a_camera_with_its_earliest_record() -> None:
    # both inputs held before either started (a backlog): the earlier one goes first, so
    # neither runs ahead of the other from the start (tracks far ahead of their frames were
    # judged with no evidence frames; frames far ahead would pass through the ring)
    pacer = Pacer("traffic.tracks", "camera.frames", lead_s=2.0)

    def unfetched(topic: str, partition: int) -> bool:
        return True

    for first, second in (("traffic.tracks", "camera.frames"), ("camera.frames", "traffic.tracks")):
        pacer = Pacer("traffic.tracks", "camera.frames", lead_s=2.0)
        assert pacer.should_hold(second, "cam-1", 0, 100.4, unfetched)  # the other may come
        pacer.hold(second, "cam-1", Held(0, 8, b"cam-1", b"", None, 100.4))
        assert not pacer.should_hold(first, "cam-1", 0, 100.0, unfetched)  # earlier: goes
        assert pacer.releasable(unfetched) == []  # the later one waits for it
        pacer.done(first, "cam-1", 100.0)  # it started: the other is within the lead
        assert [(t, h.offset) for t, _, h in pacer.releasable(unfetched)] == [(second, 8)]
