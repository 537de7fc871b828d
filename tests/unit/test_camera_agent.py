"""The edge camera agent without a broker: queue, counters, resize, blur, pacing, sources."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from edge.camera.agent import CameraAgent, CameraConfig, EncodedFrame  # noqa: E402
from edge.camera.processing import (  # noqa: E402
    DropOldestQueue,
    FramePacer,
    blur_regions,
    output_size,
    parse_polygon,
    resize_to_width,
)
from edge.camera.publisher import Done, PublisherUnavailable  # noqa: E402
from edge.camera.sources import (  # noqa: E402
    CapturedFrame,
    SourceError,
    SourceKind,
    VideoSource,
    classify,
)
from schemas.codecs import FrameCodec  # noqa: E402

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


# --- test doubles of our own ports (not of Kafka) -------------------------------------------


class ListSource:
    """``n`` noise frames at ``fps`` on the source clock; optionally failing first (live)."""

    def __init__(
        self,
        n: int,
        fps: float = 10.0,
        size: tuple[int, int] = (320, 240),
        fail_reads: int = 0,
        live: bool = False,
    ) -> None:
        self.name = "list"
        self.kind: SourceKind = "stream" if live else "file"
        self.live = live
        self.rate_limited = False
        self.n, self.fps, self.size = n, fps, size
        self.fail_reads = fail_reads
        self.opens = 0
        self.i = 0
        self.rng = np.random.default_rng(0)

    def open(self) -> None:
        self.opens += 1

    def read(self) -> CapturedFrame | None:
        if self.fail_reads > 0:
            self.fail_reads -= 1
            raise SourceError("camera went away")
        if self.i >= self.n:
            return None
        w, h = self.size
        img = self.rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        t = self.i / self.fps
        self.i += 1
        return CapturedFrame(img, t, T0 if not self.live else None)

    def close(self) -> None:
        pass


class HeldPublisher:
    """Accepts sends but acknowledges only when released (a slow broker)."""

    def __init__(self, fail_sends: bool = False) -> None:
        self.sent: list[tuple[bytes, bytes, int]] = []
        self.pending: list[Done] = []
        self.release = threading.Event()
        self.fail_sends = fail_sends
        self.connects = 0
        self.unavailable = 0

    def connect(self) -> None:
        if self.unavailable > 0:
            self.unavailable -= 1
            raise PublisherUnavailable("broker down")
        self.connects += 1

    def send(self, key: bytes, value: bytes, timestamp_ms: int, done: Done) -> None:
        if self.fail_sends:
            raise RuntimeError("send failed")
        self.sent.append((key, value, timestamp_ms))
        if self.release.is_set():
            done(None)
        else:
            self.pending.append(done)

    def ack_all(self) -> None:
        self.release.set()
        pending, self.pending = self.pending, []
        for done in pending:
            done(None)

    def flush(self, timeout_s: float) -> None:
        self.ack_all()

    def close(self) -> None:
        pass


def _config(**kw: object) -> CameraConfig:
    base: dict[str, object] = {
        "camera_id": "cam-t",
        "fps": 10.0,
        "width": 160,
        "speed": 0.0,
        "progress_interval_s": 0.0,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.02,
        "drain_timeout_s": 2.0,
    }
    base.update(kw)
    return CameraConfig(**base)  # type: ignore[arg-type]


def _counts(agent: CameraAgent) -> dict[str, float]:
    m = agent.metrics
    return {
        "captured": m.captured.value,
        "published": m.published.value,
        "dropped": m.dropped_backpressure.value,
        "send_errors": m.send_errors.value,
        "abandoned": m.abandoned.value,
        "skipped": m.skipped_rate.value,
        "reconnects": m.reconnects.value,
    }


# --- the drop-oldest queue and the counters ---------------------------------------------------


def test_drop_oldest_queue_evicts_the_oldest_and_drains_after_close() -> None:
    q: DropOldestQueue[int] = DropOldestQueue(3)
    assert [q.put(i) for i in range(5)] == [None, None, None, 0, 1]
    assert len(q) == 3
    assert q.get(timeout=0) == 2
    q.close()
    with pytest.raises(RuntimeError):
        q.put(9)
    assert [q.get(), q.get(), q.get()] == [3, 4, None]


def test_drop_oldest_queue_wakes_a_waiting_getter() -> None:
    q: DropOldestQueue[str] = DropOldestQueue(2)
    got: list[str | None] = []
    t = threading.Thread(target=lambda: got.append(q.get(timeout=5)))
    t.start()
    time.sleep(0.05)
    q.put("frame")
    t.join(timeout=2)
    assert got == ["frame"]


def test_slow_broker_drops_oldest_frames_and_every_frame_is_accounted_for() -> None:
    pub = HeldPublisher()
    agent = CameraAgent(_config(queue_size=5, max_in_flight=2), pub)
    src = ListSource(60)
    timer = threading.Timer(0.5, pub.ack_all)  # the broker answers late
    timer.start()
    assert agent.run(src) == 0
    timer.join()
    c = _counts(agent)
    assert c["captured"] == 60
    assert c["dropped"] > 0  # the capture side never waited for the broker
    assert c["published"] + c["dropped"] + c["send_errors"] + c["abandoned"] == 60
    # what was sent is keyed by camera, decodable and in increasing seq order; the seq gaps
    # are exactly the dropped frames
    codec = FrameCodec()
    seqs = [codec.decode(v).header.seq for _, v, _ in pub.sent]
    assert all(k == b"cam-t" for k, _, _ in pub.sent)
    assert seqs == sorted(seqs) and len(seqs) == c["published"]
    assert seqs[-1] == 59  # the newest frame survives: freshness beats completeness
    assert 60 - len(seqs) == c["dropped"] + c["abandoned"]
    frame = codec.decode(pub.sent[0][1])
    assert (frame.header.width, frame.header.height) == (160, 120)
    assert frame.header.captured_at == T0 and pub.sent[0][2] == int(T0.timestamp() * 1000)


def test_send_errors_are_counted_not_fatal() -> None:
    agent = CameraAgent(_config(), HeldPublisher(fail_sends=True))
    assert agent.run(ListSource(12)) == 0
    c = _counts(agent)
    assert c["captured"] == 12 and c["published"] == 0
    assert c["send_errors"] + c["dropped"] == 12 and c["send_errors"] >= 1


def test_unreachable_broker_is_retried() -> None:
    pub = HeldPublisher()
    pub.release.set()
    pub.unavailable = 3
    agent = CameraAgent(_config(queue_size=100), pub)
    assert agent.run(ListSource(20)) == 0
    assert pub.connects == 1 and _counts(agent)["published"] == 20


def test_live_source_failures_reconnect_with_backoff() -> None:
    pub = HeldPublisher()
    pub.release.set()
    src = ListSource(5, fail_reads=3, live=True)
    agent = CameraAgent(_config(), pub)
    assert agent.run(src) == 0
    c = _counts(agent)
    assert c["reconnects"] == 3 and src.opens == 4
    assert agent.metrics.source_errors.value == 3
    assert c["published"] == 5


def test_on_frame_hook_sees_every_frame_and_no_publisher_needs_no_queue() -> None:
    seen: list[EncodedFrame] = []
    agent = CameraAgent(_config(max_frames=7, seq_start=100), None, on_frame=seen.append)
    assert agent.run(ListSource(50)) == 0
    assert [f.seq for f in seen] == list(range(100, 107))
    assert _counts(agent)["dropped"] == 0 and len(agent.queue) == 0


def test_target_fps_skips_source_frames() -> None:
    pub = HeldPublisher()
    pub.release.set()
    agent = CameraAgent(_config(fps=10, queue_size=200), pub)
    assert agent.run(ListSource(100, fps=25)) == 0  # 4 s of 25 fps video
    c = _counts(agent)
    assert c["captured"] == 40 and c["skipped"] == 60


def test_hook_failure_stops_the_agent_with_an_error() -> None:
    def boom(frame: EncodedFrame) -> None:
        raise RuntimeError("disk full")

    agent = CameraAgent(_config(), None, on_frame=boom)
    assert agent.run(ListSource(10)) == 1


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"camera_id": "cam/1"}, "camera id"),
        ({"fps": 0}, "fps"),
        ({"width": 8}, "width"),
        ({"jpeg_quality": 0}, "quality"),
        ({"queue_size": 0}, "queue"),
    ],
)
def test_config_is_checked(kw: dict[str, object], msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        _config(**kw)


# --- resize and blur --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "target", "expected"),
    [
        ((1920, 1080), 640, (640, 360)),
        ((768, 576), 640, (640, 480)),
        ((1280, 720), 0, (1280, 720)),
        ((1280, 720), 1280, (1280, 720)),
        ((640, 480), 1280, (1280, 960)),
        ((1000, 333), 500, (500, 166)),  # even height
    ],
)
def test_output_size_keeps_aspect(
    size: tuple[int, int], target: int, expected: tuple[int, int]
) -> None:
    assert output_size(*size, target) == expected
    img = np.zeros((size[1], size[0], 3), np.uint8)
    assert resize_to_width(img, target).shape == (expected[1], expected[0], 3)


def test_resize_to_same_width_is_a_no_op() -> None:
    img = np.zeros((360, 640, 3), np.uint8)
    assert resize_to_width(img, 640) is img


def test_blur_changes_only_the_region() -> None:
    rng = np.random.default_rng(3)
    img = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    poly = parse_polygon("50,40 200,40 200,120 50,120")
    out = blur_regions(img, [poly])
    mask = np.zeros((240, 320), np.uint8)
    cv2.fillPoly(mask, [np.array(poly, np.int32)], 255)
    inside, outside = mask > 0, mask == 0
    assert np.array_equal(out[outside], img[outside])
    # the region is smoothed: far less pixel-to-pixel variation than the noise it was
    assert np.abs(np.diff(out[60:100, 70:180].astype(int), axis=1)).mean() < 10
    assert np.abs(np.diff(img[60:100, 70:180].astype(int), axis=1)).mean() > 50
    assert (out[inside] != img[inside]).mean() > 0.9
    assert blur_regions(img, []) is img


def test_blur_region_partly_outside_the_frame() -> None:
    img = np.full((100, 100, 3), 7, np.uint8)
    img[::2] = 250
    out = blur_regions(img, [parse_polygon("80,80 300,80 300,300 80,300")])
    assert np.array_equal(out[:70], img[:70])
    assert not np.array_equal(out[85:], img[85:])


@pytest.mark.parametrize("bad", ["", "1,2 3,4", "1,2 3 5,6", "a,b 1,1 2,2", "-1,0 5,5 0,5"])
def test_parse_polygon_rejects_bad_input(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_polygon(bad)


# --- pacing -----------------------------------------------------------------------------------


def test_pacer_keeps_every_frame_at_the_source_rate() -> None:
    pacer = FramePacer(10)
    assert all(pacer.keep(i * 0.1) for i in range(1000))  # float sums do not skip frames


@pytest.mark.parametrize(
    ("src_fps", "target", "kept"), [(25, 10, 100), (30, 10, 100), (30, 7.5, 75)]
)
def test_pacer_decimates_to_the_target_rate(src_fps: float, target: float, kept: int) -> None:
    pacer = FramePacer(target)
    assert sum(pacer.keep(i / src_fps) for i in range(src_fps * 10)) == kept


def test_pacer_resyncs_after_a_gap_and_a_new_timeline() -> None:
    pacer = FramePacer(10)
    assert pacer.keep(0.0) and not pacer.keep(0.05) and pacer.keep(0.1)
    assert pacer.keep(5.0)  # gap: one frame now ...
    assert not pacer.keep(5.05) and pacer.keep(5.1)  # ... then the normal rhythm
    assert pacer.keep(0.0)  # looped file: a new timeline


@pytest.mark.parametrize(("speed", "expected"), [(1.0, 0.5), (2.0, 0.25), (0.5, 1.0), (0.0, 0.0)])
def test_pacer_wait_is_source_time_over_speed(speed: float, expected: float) -> None:
    pacer = FramePacer(10, speed=speed, max_lag_s=10)
    assert pacer.wait_s(100.0, now=50.0) == 0.0  # anchors
    assert pacer.wait_s(100.5, now=50.0) == pytest.approx(expected)


def test_pacer_reanchors_instead_of_rushing_when_far_behind() -> None:
    pacer = FramePacer(10, speed=1.0, max_lag_s=1.0)
    pacer.wait_s(0.0, now=0.0)
    assert pacer.wait_s(1.0, now=1.5) == 0.0 and pacer.reanchors == 0  # 0.5 s late: catch up
    assert pacer.wait_s(1.1, now=5.0) == 0.0 and pacer.reanchors == 1  # far behind
    assert pacer.wait_s(1.2, now=5.0) == pytest.approx(0.1)  # normal rhythm from here


def test_pacer_paces_a_recorded_source_in_real_time() -> None:
    pub = HeldPublisher()
    pub.release.set()
    agent = CameraAgent(_config(speed=1.0, fps=20), pub)
    t0 = time.monotonic()
    assert agent.run(ListSource(11, fps=20)) == 0  # 0.5 s of video
    assert 0.45 <= time.monotonic() - t0 < 2.0


# --- sources ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "kind"),
    [
        ("sim", "sim"),
        ("0", "device"),
        ("rtsp://u:p@10.0.0.7:554/s", "stream"),
        ("http://cam/mjpg", "stream"),
        ("clip.mp4", "file"),
        ("file:///tmp/clip.mp4", "file"),
    ],
)
def test_classify(uri: str, kind: str) -> None:
    assert classify(uri) == kind


@pytest.fixture
def video(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (320, 240))
    for i in range(20):
        img = np.zeros((240, 320, 3), np.uint8)
        cv2.putText(img, str(i), (100, 150), cv2.FONT_HERSHEY_SIMPLEX, 3, (255, 255, 255), 5)
        writer.write(img)
    writer.release()
    yield path


def test_video_source_reads_a_file_on_its_own_clock(video: Path) -> None:
    src = VideoSource(str(video))
    src.open()
    frames = []
    while (f := src.read()) is not None:
        frames.append(f)
    src.close()
    assert len(frames) == 20 and src.native_fps == pytest.approx(25.0)
    assert [f.media_t for f in frames[:3]] == pytest.approx([0.0, 0.04, 0.08])
    assert frames[0].image.shape == (240, 320, 3) and frames[0].captured_at is None


def test_video_source_loops(video: Path) -> None:
    src = VideoSource(str(video), loop=True)
    src.open()
    ts = [src.read() for _ in range(25)]
    assert all(f is not None for f in ts)
    assert ts[20] is not None and ts[20].media_t == 0.0


def test_video_source_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such video file"):
        VideoSource(str(tmp_path / "nope.mp4"))


def test_stream_that_cannot_open_raises_source_error() -> None:
    src = VideoSource("rtsp://127.0.0.1:9/none", read_timeout_s=1.0)
    with pytest.raises(SourceError, match=r"cannot open stream rtsp://127\.0\.0\.1:9/none"):
        src.open()
    assert "secret" not in VideoSource("rtsp://u:secret@127.0.0.1:9/x").name
