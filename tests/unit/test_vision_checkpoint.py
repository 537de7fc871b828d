"""The vision worker's tracker snapshot: processor state -> file -> a restarted processor.

A restored processor sends exactly the track batches the uninterrupted one sends; frames
before the snapshot (a replay after a failed commit) are stale; a restart without a snapshot
never issues an id issued before; a corrupt or foreign snapshot file is ignored, loudly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from schemas.codecs import Frame
from schemas.messages import FrameHeader, TrackBatch, VehicleClass
from streams.traffic.cameras import CameraInfo, parse_camera_row
from streams.vision.checkpoint import (
    INT32_MAX,
    VERSION,
    FileReferenceStore,
    SnapshotFile,
    decode,
    encode,
)
from streams.vision.detections import Detections
from streams.vision.detector import DecodeFailure
from streams.vision.health import Reference
from streams.vision.processor import FrameOutcome, FrameWork, VisionProcessor
from tests.unit.test_tracking import scene
from tests.unit.test_traffic_factories import T0, make_calibration

CAL_DOC = make_calibration().model_dump(mode="json")
FPS = 10


@pytest.fixture(autouse=True)
def _cv2() -> None:
    pytest.importorskip("cv2")  # the processor samples camera health with it


#: real JPEGs of frames (``picture``) -> their number, for the scripted detector
PICTURES: dict[bytes, int] = {}


class ScriptedDetector:
    """Detections of the synthetic street of ``tests.unit.test_tracking.scene``.  The "JPEG"
    of frame ``k`` is ``frame-<k>`` between JPEG start and end markers (the health watchdog
    cannot decode it: no samples) or a real picture of it from :func:`picture`."""

    model_version = "scripted-1"
    classes: Sequence[VehicleClass] = (
        VehicleClass.motorbike,
        VehicleClass.car,
        VehicleClass.bus,
        VehicleClass.truck,
    )
    device = "cpu"

    def detect_jpegs(self, jpegs: Sequence[bytes]) -> list[Detections | DecodeFailure]:
        return [scene(PICTURES[j] if j in PICTURES else int(j[8:-2])) for j in jpegs]


@cache
def background() -> Any:
    import cv2

    noise = np.random.default_rng(1).integers(0, 256, (400, 720)).astype(np.uint8)
    blurred = cv2.GaussianBlur(noise, (0, 0), 2.0).astype(np.float64)
    lo, hi = blurred.min(), blurred.max()
    return ((blurred - lo) * 255 / (hi - lo)).astype(np.uint8)  # full contrast


def picture(k: int, moved_at: int) -> bytes:
    """Frame ``k`` as a textured street with the scene's vehicles on it; from ``moved_at``
    on the camera looks 25 px further right (its calibration no longer holds)."""
    import cv2

    dx = 25 if k >= moved_at else 0
    img = background()[20:380, 30 + dx : 670 + dx].copy()
    for x1, y1, x2, y2 in scene(k).xyxy.astype(int).tolist():
        cv2.rectangle(img, (x1, y1), (x2, y2), 255, -1)
    jpeg = bytes(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1])
    PICTURES[jpeg] = k
    return jpeg


def info(version: int = 1, **doc: Any) -> CameraInfo:
    return parse_camera_row("cam-1", "int-1", {**CAL_DOC, **doc}, version, 640, 360)


def work(
    k: int, cam: CameraInfo, floor_t: float | None = None, moved_at: int | None = None
) -> FrameWork:
    jpeg = b"\xff\xd8frame-%d\xff\xd9" % k if moved_at is None else picture(k, moved_at)
    header = FrameHeader(
        camera_id=cam.camera_id,
        seq=k,
        captured_at=datetime.fromtimestamp(T0, UTC) + timedelta(seconds=k / FPS),
        width=640,
        height=360,
    )
    return FrameWork(Frame(header, jpeg), cam, floor_t)


def run(
    proc: VisionProcessor,
    frames: range,
    batch: int,
    floor_t: float | None = None,
    moved_at: int | None = None,
) -> list[FrameOutcome]:
    cam = info()
    ks = list(frames)
    out: list[FrameOutcome] = []
    for i in range(0, len(ks), batch):
        out += proc.process([work(k, cam, floor_t, moved_at) for k in ks[i : i + batch]])
    return out


def batches(outcomes: list[FrameOutcome]) -> list[TrackBatch]:
    return [o.batch for o in outcomes if o.batch is not None]


def ids(outcomes: list[FrameOutcome]) -> set[int]:
    return {t.track_id for b in batches(outcomes) for t in b.tracks}


def restart(
    tmp_path: Path, proc: VisionProcessor, refs: FileReferenceStore | None = None
) -> VisionProcessor:
    """Snapshot ``proc`` to a file, read it back into a new processor (a new process)."""
    store = SnapshotFile(tmp_path / "vision" / "g.trackers.json")
    store.save({("camera.frames", 0): 123}, [(0, c) for c in proc.snapshot()])
    loaded = SnapshotFile(store.path).load()
    assert loaded is not None and loaded.offsets == {("camera.frames", 0): 123}
    fresh = VisionProcessor(ScriptedDetector(), references=refs)
    for saved in loaded.cameras.values():
        assert saved.partition == 0
        fresh.restore(saved.state, info())
    return fresh


@pytest.mark.parametrize("cut", [3, 25, 48, 71])
def test_a_restored_processor_sends_what_the_uninterrupted_one_sends(
    cut: int, tmp_path: Path
) -> None:
    original = run(VisionProcessor(ScriptedDetector()), range(90), batch=4)
    first = VisionProcessor(ScriptedDetector())
    before = run(first, range(cut), batch=5)  # other batches: ids do not depend on them
    assert batches(before) == batches(original[:cut])
    restored = restart(tmp_path, first)
    # the commit after the snapshot failed: the worker is handed 3 frames it already did
    after = run(restored, range(cut - 3, 90), batch=7)
    assert all(o.stale and o.batch is None for o in after[:3])
    assert batches(after[3:]) == batches(original[cut:])  # ids, boxes, ground, speeds
    speeds = [t.speed_kmh for b in batches(after[3:]) for t in b.tracks]
    assert any(s is not None for s in speeds)  # the speed windows came through too
    assert len(ids(original[:cut]) & ids(original[cut:])) >= (1 if cut > 10 else 0)


@pytest.mark.parametrize("cut", [45, 65, 95])
def test_a_restored_watchdog_withholds_ground_positions_when_the_original_does(
    cut: int, tmp_path: Path
) -> None:
    """The camera moves at frame 20; the watchdog sees it in its background (the median of
    recent samples) from about frame 40 and raises "shifted" 5 s later, at frame 90: from
    then on no ground positions are sent.  Cut before (the condition pending) and after:
    the restored watchdog decides at the same frames."""
    original = run(
        VisionProcessor(ScriptedDetector(), references=FileReferenceStore(tmp_path / "a")),
        range(130),
        batch=4,
        moved_at=20,
    )
    grounded = [any(t.ground_xy is not None for t in b.tracks) for b in batches(original)]
    assert all(grounded[1:90]) and not any(grounded[90:])  # the test shows the withholding
    assert [(k, a.kind) for k, o in enumerate(original) for a in o.alerts] == [
        (90, "camera_shifted")
    ]
    refs = FileReferenceStore(tmp_path / "b")
    first = VisionProcessor(ScriptedDetector(), references=refs)
    run(first, range(cut), batch=5, moved_at=20)
    restored = restart(tmp_path, first, refs)
    after = run(restored, range(cut, 130), batch=3, moved_at=20)
    assert batches(after) == batches(original[cut:])
    assert [a.kind for o in after for a in o.alerts] == (["camera_shifted"] if cut < 90 else [])


def test_reference_views_keep_the_one_before(tmp_path: Path) -> None:
    store = FileReferenceStore(tmp_path)
    views = [Reference(np.full((18, 32), k, np.uint8), np.eye(2, 3), 10.0 * k) for k in range(3)]
    store.save("cam-1", 2, views[0])
    store.save("cam-1", 2, views[1])
    latest, before = store.load("cam-1", 2), store.load("cam-1", 2, taken_at=0.0)
    assert latest is not None and latest.taken_at == 10.0
    assert before is not None and before.image[0, 0] == 0
    store.save("cam-1", 2, views[2])
    assert store.load("cam-1", 2, taken_at=0.0) is None  # two back: gone
    kept = store.load("cam-1", 2, taken_at=10.0)
    assert kept is not None and kept.image[0, 0] == 1
    assert store.load("cam-1", 3) is None and store.load("cam-1", 3, taken_at=10.0) is None


def test_a_restart_without_snapshot_never_reuses_an_id() -> None:
    dead = VisionProcessor(ScriptedDetector())
    issued = ids(run(dead, range(40), batch=4))  # then killed; the last commit was at frame 5
    assert len(issued) >= 4
    # without a floor the new tracker's ids start where the dead one's did (same second of
    # event time): ids of vehicles seen before the restart go to other vehicles
    naive = ids(run(VisionProcessor(ScriptedDetector()), range(5, 80), batch=4))
    assert naive & issued
    # with the worker's floor (the wall clock of its start, after the dead one's last frame)
    restart_t = T0 + 40 / FPS + 5.0
    resumed = ids(run(VisionProcessor(ScriptedDetector()), range(5, 80), 4, floor_t=restart_t))
    assert resumed and not resumed & issued
    assert min(resumed) > max(issued) and max(resumed) < INT32_MAX
    # a floor earlier than the frames changes nothing: the base is the frame's time
    early = ids(run(VisionProcessor(ScriptedDetector()), range(5, 80), 4, floor_t=T0 - 99))
    assert early == naive


def test_a_camera_recalibrated_while_stopped_keeps_its_ids_not_its_tracks(
    tmp_path: Path,
) -> None:
    first = VisionProcessor(ScriptedDetector())
    issued = ids(run(first, range(30), batch=4))
    (snap,) = first.snapshot()
    moved = info(version=2, homography=[[0.05, 0, 68], [0, -0.1, 10], [0, 0, 1]])
    assert moved.fingerprint != snap.fingerprint
    proc = VisionProcessor(ScriptedDetector())
    proc.restore(decode(encode_one(snap)).cameras["cam-1"].state, moved)
    cam = moved
    out: list[FrameOutcome] = []
    for k in range(30, 60):
        out += proc.process([work(k, cam)])
    assert not batches(out)[0].tracks  # tracks start over (and need two hits)
    assert min(ids(out)) > max(issued)


def encode_one(snap: Any) -> bytes:
    from streams.vision.checkpoint import SavedCamera, Snapshot

    return encode(Snapshot({("camera.frames", 2): 7}, {"cam-1": SavedCamera(2, snap)}))


def test_the_snapshot_holds_live_tracks_only() -> None:
    proc = VisionProcessor(ScriptedDetector())
    sizes = []
    for k in range(0, 140, 10):
        run(proc, range(k, k + 10), batch=5)
        (snap,) = proc.snapshot()
        live = {(snap.base + int(i)) % INT32_MAX for i in snap.tracker.track_ids if i >= 0}
        assert set(snap.speeds) <= live
        size = len(encode_one(snap))
        sizes.append((len(snap.tracker), size))
        assert size < 700 + 2000 * len(snap.tracker), (k, len(snap.tracker), size)
    # the street emptied (vehicles enter up to frame 101): at most a ghost's tentative track
    assert not snap.speeds and (snap.tracker.track_ids < 0).all()
    assert sizes[-1][1] < min(s for _, s in sizes[1:-1]) < max(s for _, s in sizes) / 4


def test_snapshot_file_round_trip_and_atomic_replace(tmp_path: Path) -> None:
    proc = VisionProcessor(ScriptedDetector())
    run(proc, range(33), batch=4)
    store = SnapshotFile(tmp_path / "g.trackers.json")
    assert store.load() is None  # none yet: no error
    offsets = {("camera.frames", 0): 10, ("camera.frames", 3): 99}
    store.save(offsets, [(3, c) for c in proc.snapshot()])
    store.save(offsets, [(3, c) for c in proc.snapshot()])  # over the old one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.trackers.json"]
    back = store.load()
    assert back is not None and back.offsets == offsets
    (want,) = proc.snapshot()
    got = back.cameras["cam-1"].state
    assert back.cameras["cam-1"].partition == 3
    assert encode_one(got) == encode_one(want)  # exact: every float, every id
    assert json.loads(store.path.read_text())["v"] == VERSION


def _corrupt(raw: bytes) -> list[tuple[str, bytes]]:
    doc = json.loads(raw)
    cam = doc["cameras"][0]

    def edit(f: Any) -> bytes:
        d = json.loads(raw)
        f(d)
        return json.dumps(d).encode()

    return [
        ("truncated", raw[: len(raw) // 2]),
        ("empty", b""),
        ("garbage", b"\x00\xff" * 40),
        ("json list", b"[]"),
        ("other kind", edit(lambda d: d.update(kind="citystream.traffic.state"))),
        ("future version", edit(lambda d: d.update(v=VERSION + 1))),
        ("older version", edit(lambda d: d.update(v=VERSION - 1))),
        ("no offsets", edit(lambda d: d.pop("offsets"))),
        ("bad base64", edit(lambda d: d["cameras"][0]["tracker"].update(means="@@@"))),
        (
            "short floats",
            edit(lambda d: d["cameras"][0]["tracker"].update(n=cam["tracker"]["n"] + 1)),
        ),
        ("id past counter", edit(lambda d: d["cameras"][0]["tracker"].update(next_id=1))),
        ("negative offset", edit(lambda d: d["offsets"][0].__setitem__(2, -5))),
        # one float where a speed filter's nine belong
        (
            "speed state",
            edit(lambda d: d["cameras"][0]["speeds"][0].__setitem__(1, "AAAAAAAAAAA=")),
        ),
        ("no health", edit(lambda d: d["cameras"][0].pop("health"))),
        ("a condition", edit(lambda d: d["cameras"][0]["health"]["conditions"].pop("shifted"))),
    ]


def test_a_corrupt_or_foreign_snapshot_is_ignored_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proc = VisionProcessor(ScriptedDetector())
    run(proc, range(33), batch=4)
    store = SnapshotFile(tmp_path / "g.trackers.json")
    store.save({("camera.frames", 0): 10}, [(0, c) for c in proc.snapshot()])
    raw = store.path.read_bytes()
    assert json.loads(raw)["cameras"][0]["speeds"], "the edits below need a speed filter"
    for what, data in _corrupt(raw):
        store.path.write_bytes(data)
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="streams.vision.checkpoint"):
            assert store.load() is None, what
        assert any("start afresh" in r.getMessage() for r in caplog.records), what
    store.path.write_bytes(raw)
    assert store.load() is not None  # the intact file still reads


# --- the stage: snapshot before each commit, restore and seek at start --------------------------
class _Sent:
    def failed(self) -> bool:
        return False


class FakeProducer:
    """Stands in for KafkaProducer: keeps what was sent, every send succeeds."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    def send(self, topic: str, key: bytes | None = None, value: bytes = b"") -> _Sent:
        self.sent.append((topic, key, value))
        return _Sent()

    def flush(self) -> None:
        return None


class FakeConsumer:
    """Stands in for KafkaConsumer for one assigned partition with a committed offset."""

    def __init__(self, committed: int | None) -> None:
        from kafka import TopicPartition

        self.tp = TopicPartition("camera.frames", 0)
        self.done = committed
        self.sought: list[int] = []

    def assignment(self) -> set[Any]:
        return {self.tp}

    def committed(self, tp: Any) -> int | None:
        return self.done if tp == self.tp else None

    def poll(self, **_: Any) -> dict[Any, Any]:
        return {}

    def seek(self, tp: Any, offset: int) -> None:
        self.sought.append(offset)


def stage(tmp_path: Path, committed: int | None) -> Any:
    from citystream.settings import Settings
    from streams.traffic.cameras import CameraDirectory
    from streams.vision.stage import VisionStage

    directory = CameraDirectory(lambda: [info()], 60.0)
    directory.refresh(force=True)
    st = VisionStage(
        Settings(state_dir=tmp_path), "g", detector=ScriptedDetector(), directory=directory
    )
    st.processor = VisionProcessor(ScriptedDetector())
    st.consumer, st.producer = FakeConsumer(committed), FakeProducer()
    return st


def feed(st: Any, frames: range) -> dict[tuple[str, int], int]:
    from schemas.topics import TOPICS

    codec = TOPICS["camera.frames"].codec
    for k in frames:
        frame = work(k, info()).frame
        st.handle("camera.frames", 0, 500 + k, b"cam-1", codec.encode(frame))
    return {("camera.frames", 0): 500 + frames.stop}


def sent_batches(st: Any) -> list[TrackBatch]:
    from schemas.topics import TOPICS

    codec = TOPICS["traffic.tracks"].codec
    return [codec.decode(v) for t, _, v in st.producer.sent if t == "traffic.tracks"]


def test_the_stage_snapshots_before_each_commit_and_resumes_there(tmp_path: Path) -> None:
    original = batches(run(VisionProcessor(ScriptedDetector()), range(60), batch=4))
    first = stage(tmp_path, committed=None)
    assert first.checkpoint(feed(first, range(25))) == {("camera.frames", 0): 525}
    assert sent_batches(first) == original[:25]
    assert first.snapshot_writes.labels("ok").value == 1
    assert first.snapshots.path == tmp_path / "vision" / "g.trackers.json"
    # the commit of 525 failed (still 510 committed), then the worker was killed
    second = stage(tmp_path, committed=510)
    second._position(second.snapshots.load())
    assert second.consumer.sought == [525]  # not back to 510 through restored trackers
    assert second.processor.cameras == ["cam-1"]
    assert second._id_floor == {0: None}  # restored: its ids go on
    second.checkpoint(feed(second, range(25, 60)))
    assert sent_batches(second) == original[25:]


def test_a_snapshot_behind_the_commit_is_not_restored_and_ids_move_up(tmp_path: Path) -> None:
    first = stage(tmp_path, committed=None)
    first.checkpoint(feed(first, range(25)))
    issued = {t.track_id for b in sent_batches(first) for t in b.tracks}
    # another worker went on to offset 540 meanwhile: this snapshot is stale
    second = stage(tmp_path, committed=540)
    second._position(second.snapshots.load())
    assert second.consumer.sought == [] and second.processor.cameras == []
    assert second._id_floor[0] is not None  # a predecessor may have issued ids
    second._id_floor[0] = work(60, info()).frame.header.captured_at.timestamp()  # "now"
    second.checkpoint(feed(second, range(40, 80)))
    new = {t.track_id for b in sent_batches(second) for t in b.tracks}
    assert new and not new & issued


def test_offsets_stay_at_the_last_snapshot_while_it_cannot_be_written(tmp_path: Path) -> None:
    st = stage(tmp_path, committed=None)
    assert st.checkpoint(feed(st, range(10))) == {("camera.frames", 0): 510}
    (tmp_path / "vision" / "g.trackers.json").unlink()
    (tmp_path / "vision" / "g.trackers.json").mkdir()  # a directory where the file goes
    assert st.checkpoint(feed(st, range(10, 20))) == {("camera.frames", 0): 510}
    assert st.snapshot_writes.labels("failed").value == 1
    (tmp_path / "vision" / "g.trackers.json").rmdir()
    assert st.checkpoint(feed(st, range(20, 30))) == {("camera.frames", 0): 530}
    back = SnapshotFile(tmp_path / "vision" / "g.trackers.json").load()
    assert back is not None and back.offsets == {("camera.frames", 0): 530}
