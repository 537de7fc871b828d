"""ByteTrack-style tracker: id stability through crossings, misses and new arrivals."""

from __future__ import annotations

import numpy as np
import pytest

from streams.vision import ByteTracker, Detections, MultiCameraTracker, TrackerConfig
from streams.vision.tracking import TrackerState, box_diou, box_iou


def dets(
    boxes: list[tuple[float, float, float, float]],
    conf: float = 0.9,
    cls: list[int] | None = None,
    confs: list[float] | None = None,
    looks: list[float] | None = None,
) -> Detections:
    """Detections; ``looks``: each box's colour, as a grey level 0..1 (12 equal numbers)."""
    n = len(boxes)
    return Detections(
        np.array(boxes, dtype=float).reshape(-1, 4),
        np.array(confs if confs is not None else [conf] * n),
        np.array(cls if cls is not None else [0] * n),
        appearance=None if looks is None else np.repeat(np.array(looks)[:, None], 12, axis=1),
    )


def box(cx: float, cy: float, w: float = 20, h: float = 30) -> tuple[float, float, float, float]:
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def ids_by_x(out: Detections) -> dict[int, float]:
    return {int(t): float((b[0] + b[2]) / 2) for t, b in zip(out.tracker_id, out.xyxy, strict=True)}


def test_detections_validate_and_select() -> None:
    d = dets([box(10, 10), box(50, 50)], confs=[0.9, 0.3])
    assert len(d) == 2 and list(d.tracker_id) == [-1, -1]
    assert len(d[d.confidence > 0.5]) == 1
    assert d.bottom_center[1].tolist() == [50, 65]
    with pytest.raises(ValueError):
        Detections(np.zeros((2, 4)), np.zeros(1), np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError):
        d.xyxy[0, 0] = 1.0  # read-only


def test_iou() -> None:
    a = np.array([[0, 0, 10, 10]], dtype=float)
    assert box_iou(a, np.array([[5, 0, 15, 10]], dtype=float))[0, 0] == pytest.approx(1 / 3)


def test_diou() -> None:
    a = np.array([[0, 0, 10, 10]], dtype=float)
    assert box_diou(a, a)[0, 0] == pytest.approx(1.0)
    # touching side by side: IoU 0, centres 10 apart, enclosing box 20 x 10
    assert box_diou(a, np.array([[10, 0, 20, 10]], dtype=float))[0, 0] == pytest.approx(-0.2)


def test_a_small_fast_vehicle_is_confirmed() -> None:
    # 16 x 26 px, 17 px/frame right and 14 down (a motorbike at 70 km/h near the camera):
    # consecutive boxes do not overlap, so an IoU match never confirms a new track
    tracker = ByteTracker()
    ids = [
        tracker.update(dets([box(100 + 17 * k, 100 + 14 * k, 16, 26)])).tracker_id.tolist()
        for k in range(10)
    ]
    assert ids[1:] == [[1]] * 9
    # two queued cars 40 px apart, seen alternately (the detector flickers): a new track
    # never takes the other car's box
    tracker = ByteTracker()
    for k in range(10):
        out = tracker.update(dets([box(100 + 40 * (k % 2), 100)]))
        assert len(out) == 0, k


def test_crossing_objects_keep_ids() -> None:
    tracker = ByteTracker()
    first: dict[int, str] = {}
    for k in range(40):  # A moves right, B moves left, same row: they overlap at k ~ 20
        a, b = 100 + 10 * k, 500 - 10 * k
        out = tracker.update(dets([box(a, 200), box(b, 200)]))
        for tid, x in ids_by_x(out).items():
            if a == b:
                continue  # identical boxes: nothing to check in this frame
            who = "A" if abs(x - a) < 1 else "B"
            assert first.setdefault(tid, who) == who, f"id {tid} switched at frame {k}"
    assert sorted(first.values()) == ["A", "B"]


def test_track_survives_missed_frames_and_occlusion_by_low_scores() -> None:
    tracker = ByteTracker(TrackerConfig(track_buffer=10))
    seen: set[int] = set()
    for k in range(30):
        x = 100 + 8 * k
        if 10 <= k < 14:  # detector unsure (occlusion starts): only low-confidence boxes
            d = dets([box(x, 100)], conf=0.3)
        elif 14 <= k < 22:  # 8 frames missing entirely
            d = dets([])
        else:
            d = dets([box(x, 100)])
        seen.update(int(t) for t in tracker.update(d).tracker_id)
    assert seen == {1}


def test_a_vehicle_of_another_colour_does_not_take_a_lost_id() -> None:
    # a queued motorbike leaves unseen (occluded); the next stops where it stood
    def run(first: float, second: float, looks: bool = True) -> list[list[int]]:
        tracker = ByteTracker()
        out = []
        for k in range(16):
            if k < 6:
                d = dets([box(100, 100)], looks=[first] if looks else None)
            elif k < 9:
                d = dets([], looks=[] if looks else None)
            else:
                d = dets([box(103, 101)], looks=[second] if looks else None)
            out.append(tracker.update(d).tracker_id.tolist())
        return out

    assert run(0.2, 0.7)[5:] == [[1]] + [[]] * 4 + [[2]] * 6  # another vehicle: a new id
    assert run(0.2, 0.21)[5:] == [[1]] + [[]] * 3 + [[1]] * 7  # the same one came back
    assert run(0.2, 0.7, looks=False)[-1] == [1]  # without appearance: it takes the id


def test_appearance_picks_between_overlapping_boxes() -> None:
    # two motorbikes side by side, stopped; the detector's boxes of them overlap the tracks'
    # boxes about equally in one frame (jitter): colour decides, not a coin
    tracker = ByteTracker()
    for _ in range(5):
        out = tracker.update(dets([box(100, 100), box(112, 100)], looks=[0.2, 0.8]))
    want = {round(x): t for t, x in ids_by_x(out).items()}
    out = tracker.update(dets([box(104, 100), box(108, 100)], looks=[0.8, 0.2]))
    got = {round(x): t for t, x in ids_by_x(out).items()}
    assert got == {104: want[112], 108: want[100]}


def test_lost_beyond_buffer_and_new_objects_get_new_ids() -> None:
    tracker = ByteTracker(TrackerConfig(track_buffer=3))
    for _ in range(3):
        out = tracker.update(dets([box(100, 100)]))
    assert out.tracker_id.tolist() == [1]
    for _ in range(5):
        tracker.update(dets([]))
    assert tracker.live_track_count == 0
    tracker.update(dets([box(100, 100), box(400, 100)]))
    out = tracker.update(dets([box(100, 100), box(400, 100)]))
    assert sorted(out.tracker_id.tolist()) == [2, 3]


def test_low_confidence_never_starts_a_track_and_class_is_voted() -> None:
    tracker = ByteTracker()
    for _ in range(3):
        assert len(tracker.update(dets([box(50, 50)], conf=0.4))) == 0
    classes = [3, 3, 3, 1, 3, 3]
    for c in classes:
        out = tracker.update(dets([box(300, 300)], cls=[c]))
    assert out.class_id.tolist() == [3]


def test_camera_ids_are_independent_of_other_cameras() -> None:
    solo = ByteTracker()
    multi = MultiCameraTracker()
    for k in range(10):
        d = dets([box(100 + 5 * k, 100), box(300, 300 - 5 * k)])
        other = dets([box(50 * i + 20, 400) for i in range(k % 4 + 1)])
        multi.update("cam-b", other)
        got = multi.update("cam-a", d)
        want = solo.update(d)
    assert got.tracker_id.tolist() == want.tracker_id.tolist()
    assert multi.cameras == ["cam-a", "cam-b"]


# --- state across a restart --------------------------------------------------------------------
def scene(k: int) -> Detections:
    """Frame ``k`` of a busy synthetic street: vehicles enter and leave, two cross, one is
    occluded (low scores, then nothing), one is a lone false detection, classes flicker."""
    boxes: list[tuple[float, float, float, float]] = []
    confs: list[float] = []
    classes: list[int] = []
    looks: list[float] = []
    for v in range(12):
        start = 6 * v
        if not start <= k < start + 35:
            continue
        age = k - start
        x = 40 + (9 + v % 3) * age if v % 2 else 600 - (7 + v % 4) * age
        y = 80 + 40 * (v % 5)
        conf = 0.92 - 0.03 * (v % 4)
        if v == 5 and 10 <= age < 14:
            conf = 0.3  # occlusion: only low-confidence boxes
        if v == 5 and 14 <= age < 18:
            continue  # then nothing at all
        boxes.append(box(x, y, 22 + 2 * (v % 3), 30))
        confs.append(conf)
        classes.append(2 if (age + v) % 7 else 3)
        looks.append(0.1 + 0.07 * v + 0.01 * (k % 3))  # a colour per vehicle, some noise
    if k % 9 == 4:
        boxes.append(box(300 + k, 20))  # a one-frame ghost
        confs.append(0.65)
        classes.append(1)
        looks.append(0.5)
    return dets(boxes, cls=classes, confs=confs, looks=looks)


def assert_same(a: Detections, b: Detections) -> None:
    assert a.tracker_id.tolist() == b.tracker_id.tolist()
    assert a.class_id.tolist() == b.class_id.tolist()
    assert np.array_equal(a.xyxy, b.xyxy) and np.array_equal(a.confidence, b.confidence)


@pytest.mark.parametrize("cut", [1, 7, 23, 40, 66])
def test_restored_tracker_goes_on_exactly_like_the_original(cut: int) -> None:
    config = TrackerConfig(track_buffer=6)
    original, interrupted = ByteTracker(config), ByteTracker(config)
    for k in range(cut):
        assert_same(original.update(scene(k)), interrupted.update(scene(k)))
    state = interrupted.state()
    del interrupted  # the worker was killed
    restored = ByteTracker.from_state(state, config)
    assert restored.next_id == original.next_id and restored.frame_count == cut
    ids: set[int] = set()
    for k in range(cut, 90):
        want = original.update(scene(k))
        assert_same(restored.update(scene(k)), want)
        ids.update(want.tracker_id.tolist())
    assert len(ids) >= 3  # the test saw tracks born after the cut
    # and inside: the same tracks with bit-identical Kalman filters (predicted boxes)
    a, b = restored.state(), original.state()
    for name in ("track_ids", "states", "hits", "missed", "means", "covariances", "last_boxes"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.appearances.shape == (len(a), 12)
    assert np.array_equal(a.appearances, b.appearances, equal_nan=True)
    assert a.class_votes == b.class_votes and a.next_id == b.next_id


def test_tracker_state_is_a_copy_and_is_validated() -> None:
    tracker = ByteTracker()
    for k in range(20):
        tracker.update(scene(k))
    state = tracker.state()
    assert len(state) == tracker.live_track_count > 0
    assert sorted(state.track_ids[state.track_ids >= 0].tolist()) == sorted(tracker.live_ids)
    before = state.means.copy()
    tracker.update(scene(20))
    assert np.array_equal(state.means, before)  # the tracker went on, the state did not
    with pytest.raises(ValueError, match="shape"):
        TrackerState(**{**vars(state), "means": state.means[:, :4]})
    with pytest.raises(ValueError, match="below next_id"):
        TrackerState(**{**vars(state), "next_id": 1})
    with pytest.raises(ValueError, match="NaN"):
        TrackerState(**{**vars(state), "covariances": state.covariances * np.nan})
    with pytest.raises(ValueError, match="unknown state"):
        TrackerState(**{**vars(state), "states": state.states + 7})
    with pytest.raises(ValueError, match="appearances"):
        TrackerState(**{**vars(state), "appearances": state.appearances[1:]})
    partly = state.appearances.copy()
    partly[0, :3] = np.nan
    with pytest.raises(ValueError, match="appearances"):
        TrackerState(**{**vars(state), "appearances": partly})
