"""The edge camera agent: a frame source -> JPEG frames on Kafka ``camera.frames``.

Threads and data path::

    capture thread    source.read() -> keep the target fps -> pace (recorded sources)
                      -> resize to --width -> privacy blur -> JPEG -> FrameCodec bytes
                      -> on_frame hook (the simulator writes truth/captures here)
                      -> DropOldestQueue (bounded; full: the OLDEST frame is dropped)
    publisher thread  queue -> at most ``max_in_flight`` un-acked sends -> Kafka (acks=all)
                      key = camera_id, record timestamp = capture time
    main thread       progress log lines, /metrics, stop on signal

Freshness beats completeness for video: when Kafka is slow or away the capture thread never
waits; it evicts the oldest queued frame and counts it (``frames_dropped_backpressure``).
Sequence numbers are assigned at capture, so a consumer sees the gaps.  A live source that
fails is reopened with exponential backoff and jitter (``reconnects``); so is a producer that
cannot reach the brokers.  Every captured frame ends up in exactly one of ``published``,
``dropped_backpressure``, ``send_errors`` or ``abandoned`` (still queued at shutdown).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from citystream.metrics import Counter, Gauge, Registry, Summary
from edge.camera.processing import (
    DropOldestQueue,
    FramePacer,
    Polygon,
    blur_regions,
    encode_jpeg,
    resize_to_width,
)
from edge.camera.publisher import Done, Publisher, PublisherUnavailable
from edge.camera.sources import CapturedFrame, FrameSource, SourceError
from edge.meter.agent import Backoff
from schemas.codecs import Frame, FrameCodec
from schemas.messages import FrameHeader

log = logging.getLogger("citystream.edge.camera")

_CODEC = FrameCodec()
_IDENT = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


@dataclass(frozen=True)
class CameraConfig:
    camera_id: str
    fps: float = 10.0
    width: int = 640
    jpeg_quality: int = 80
    blur: tuple[Polygon, ...] = ()
    blur_kernel: int = 41
    speed: float = 1.0  # recorded sources: 1 real time, 2 twice as fast, 0 as fast as possible
    queue_size: int = 30
    max_in_flight: int = 8
    max_frames: int | None = None
    seq_start: int = 0
    progress_interval_s: float = 10.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    drain_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not _IDENT.fullmatch(self.camera_id):
            raise ValueError(
                f"camera id {self.camera_id!r} must be 1-64 of letters, digits and '_.:-'"
            )
        if not 0 < self.fps <= 120:
            raise ValueError(f"fps must be within (0, 120], got {self.fps}")
        if not (self.width == 0 or 16 <= self.width <= 8192):
            raise ValueError(f"width must be 0 (native) or within 16..8192, got {self.width}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"JPEG quality must be within 1..100, got {self.jpeg_quality}")
        if self.speed < 0:
            raise ValueError("speed must be >= 0 (0: as fast as possible)")
        if self.queue_size < 1 or self.max_in_flight < 1:
            raise ValueError("queue size and max in flight must be >= 1")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError("max frames must be >= 1")
        if self.seq_start < 0:
            raise ValueError("seq start must be >= 0")


@dataclass(frozen=True)
class EncodedFrame:
    """A frame ready to send: its header, the FrameCodec bytes and where it came from."""

    header: FrameHeader
    value: bytes
    jpeg_bytes: int
    captured_mono: float
    source: CapturedFrame = field(repr=False)

    @property
    def seq(self) -> int:
        return self.header.seq

    @property
    def timestamp_ms(self) -> int:
        return round(self.header.captured_at.timestamp() * 1000)


@dataclass(frozen=True)
class _Outgoing:
    """What the queue holds: only the bytes (never the source image or its extras)."""

    seq: int
    value: bytes
    timestamp_ms: int
    captured_mono: float


@dataclass
class CameraMetrics:
    registry: Registry
    captured: Counter = field(init=False)
    published: Counter = field(init=False)
    dropped_backpressure: Counter = field(init=False)
    send_errors: Counter = field(init=False)
    abandoned: Counter = field(init=False)
    skipped_rate: Counter = field(init=False)
    frame_errors: Counter = field(init=False)
    reconnects: Counter = field(init=False)
    source_errors: Counter = field(init=False)
    bytes_published: Counter = field(init=False)
    queue_depth: Gauge = field(init=False)
    in_flight: Gauge = field(init=False)
    source_up: Gauge = field(init=False)
    behind_s: Gauge = field(init=False)
    process_s: Summary = field(init=False)
    latency_s: Summary = field(init=False)

    def __post_init__(self) -> None:
        r = self.registry
        self.captured = r.counter("frames_captured_total", "Frames taken into the pipeline")
        self.published = r.counter("frames_published_total", "Frames acknowledged by Kafka")
        self.dropped_backpressure = r.counter(
            "frames_dropped_backpressure_total", "Oldest frames evicted from the full queue"
        )
        self.send_errors = r.counter("send_errors_total", "Frames Kafka did not acknowledge")
        self.abandoned = r.counter(
            "frames_abandoned_total", "Frames still queued when the agent stopped"
        )
        self.skipped_rate = r.counter(
            "frames_skipped_rate_total", "Source frames skipped to keep the target fps"
        )
        self.frame_errors = r.counter(
            "frame_errors_total", "Source frames that could not be processed (skipped)"
        )
        self.reconnects = r.counter("reconnects_total", "Attempts to reopen a failed source")
        self.source_errors = r.counter("source_errors_total", "Source open/read failures")
        self.bytes_published = r.counter("bytes_published_total", "Frame bytes acknowledged")
        self.queue_depth = r.gauge("queue_depth", "Frames waiting for the publisher")
        self.in_flight = r.gauge("in_flight", "Frames sent and awaiting Kafka's ack")
        self.source_up = r.gauge("source_up", "1 while the source delivers frames")
        self.behind_s = r.gauge(
            "behind_real_time_seconds", "How late the last recorded frame was against its slot"
        )
        self.process_s = r.summary(
            "process_seconds", "Resize + blur + JPEG encode time per frame", window=1000
        )
        self.latency_s = r.summary(
            "publish_latency_seconds", "Capture to Kafka ack per frame", window=1000
        )


class CameraAgent:
    """One camera: :meth:`run` a source until it ends, ``max_frames``, or :meth:`stop`.

    ``publisher`` None: frames go only to ``on_frame`` (e.g. a capture file); nothing is
    queued or dropped.  ``on_frame`` runs on the capture thread, for every captured frame,
    before the frame is queued.
    """

    def __init__(
        self,
        config: CameraConfig,
        publisher: Publisher | None,
        *,
        registry: Registry | None = None,
        on_frame: Callable[[EncodedFrame], None] | None = None,
        on_progress: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.publisher = publisher
        self.metrics = CameraMetrics(registry or Registry("citystream_edge_camera"))
        self.on_frame = on_frame
        self.on_progress = on_progress
        self.pacer = FramePacer(config.fps, speed=config.speed)
        self.queue: DropOldestQueue[_Outgoing] = DropOldestQueue(config.queue_size)
        self._key = config.camera_id.encode()
        self._seq = config.seq_start
        self._stop = threading.Event()
        self._capture_done = threading.Event()
        self._inflight = threading.Semaphore(config.max_in_flight)
        self._inflight_n = 0
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._drain_deadline: float | None = None
        self._last_error_log = 0.0

    # --- public ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Graceful stop (signal-safe): stop capturing, send what is queued for at most
        ``drain_timeout_s``, then return from :meth:`run`."""
        self._stop.set()

    @property
    def next_seq(self) -> int:
        return self._seq

    def run(self, source: FrameSource) -> int:
        """Blocking.  Returns 0, or 1 when the source or the ``on_frame`` hook failed."""
        cfg = self.config
        capture = threading.Thread(
            target=self._capture_main, args=(source,), name="camera-capture", daemon=True
        )
        publisher: threading.Thread | None = None
        if self.publisher is not None:
            publisher = threading.Thread(
                target=self._publish_main, name="camera-publisher", daemon=True
            )
            publisher.start()
        log.info(
            "camera %s: %s -> %s at %g fps, width %s, JPEG q%d, %d blur region(s)",
            cfg.camera_id,
            source.name,
            "Kafka" if self.publisher is not None else "local outputs only",
            cfg.fps,
            cfg.width or "native",
            cfg.jpeg_quality,
            len(cfg.blur),
        )
        capture.start()
        last = time.monotonic()
        last_captured = 0.0
        try:
            while capture.is_alive() or (publisher is not None and publisher.is_alive()):
                capture.join(timeout=0.2)
                if self._capture_done.is_set() and publisher is not None:
                    publisher.join(timeout=0.2)
                now = time.monotonic()
                ending = self._stop.is_set() or self._capture_done.is_set()
                if ending and self._drain_deadline is None:
                    self._drain_deadline = now + cfg.drain_timeout_s
                if cfg.progress_interval_s and now - last >= cfg.progress_interval_s:
                    fps = (self.metrics.captured.value - last_captured) / (now - last)
                    self._progress(fps)
                    last, last_captured = now, self.metrics.captured.value
        finally:
            self._stop.set()
            capture.join(timeout=5)
            if publisher is not None:
                publisher.join(timeout=cfg.drain_timeout_s + 5)
            self._progress(None)
        if self._error is not None:
            log.error("camera %s failed: %r", cfg.camera_id, self._error)
            return 1
        return 0

    # --- capture ----------------------------------------------------------------------------

    def _capture_main(self, source: FrameSource) -> None:
        try:
            self._capture(source)
        except BaseException as exc:  # reported by run()
            self._error = exc
            self._stop.set()
        finally:
            try:
                source.close()
            except Exception as exc:  # closing anyway
                log.warning("closing %s: %s", source.name, exc)
            self.queue.close()
            self._capture_done.set()

    def _capture(self, source: FrameSource) -> None:
        cfg, m = self.config, self.metrics
        backoff = Backoff(cfg.backoff_initial_s, cfg.backoff_max_s)
        opened = False
        while not self._stop.is_set():
            try:
                if not opened:
                    source.open()
                    opened = True
                    m.source_up.set(1)
                frame = source.read()
            except SourceError as exc:
                m.source_errors.inc()
                m.source_up.set(0)
                source.close()
                opened = False
                delay = backoff.next()
                log.warning("%s; reconnecting in %.1f s (attempt %d)", exc, delay, backoff.attempt)
                if self._stop.wait(delay):
                    return
                m.reconnects.inc()
                continue
            if frame is None:
                log.info("%s ended", source.name)
                m.source_up.set(0)
                return
            backoff.reset()
            if not source.rate_limited and not self.pacer.keep(frame.media_t):
                m.skipped_rate.inc()
                continue
            if not source.live:
                wait = self.pacer.wait_s(frame.media_t)
                m.behind_s.set(self.pacer.behind_s)
                if wait > 0 and self._stop.wait(wait):
                    return
            encoded = self._encode(frame)
            if encoded is None:
                continue
            m.captured.inc()
            if self.on_frame is not None:
                self.on_frame(encoded)
            if self.publisher is not None:
                out = _Outgoing(
                    encoded.seq, encoded.value, encoded.timestamp_ms, encoded.captured_mono
                )
                if self.queue.put(out) is not None:
                    m.dropped_backpressure.inc()
                m.queue_depth.set(len(self.queue))
            if cfg.max_frames is not None and m.captured.value >= cfg.max_frames:
                log.info("captured %d frames (--max-frames); stopping", cfg.max_frames)
                return

    def _encode(self, frame: CapturedFrame) -> EncodedFrame | None:
        cfg = self.config
        t0 = time.perf_counter()
        try:
            img = resize_to_width(frame.image, cfg.width)
            img = blur_regions(img, cfg.blur, cfg.blur_kernel)
            jpeg = encode_jpeg(img, cfg.jpeg_quality)
            h, w = img.shape[:2]
            header = FrameHeader(
                camera_id=cfg.camera_id,
                seq=self._seq,
                captured_at=frame.captured_at or datetime.now(UTC),
                width=w,
                height=h,
            )
            value = _CODEC.encode(Frame(header=header, jpeg=jpeg))
        except ValueError as exc:  # includes SchemaError and pydantic's ValidationError
            self.metrics.frame_errors.inc()
            self._log_rate_limited(f"frame skipped: {exc}")
            return None
        self._seq += 1
        self.metrics.process_s.observe(time.perf_counter() - t0)
        return EncodedFrame(header, value, len(jpeg), time.monotonic(), frame)

    # --- publishing -------------------------------------------------------------------------

    def _draining_over(self) -> bool:
        d = self._drain_deadline
        return d is not None and time.monotonic() >= d

    def _publish_main(self) -> None:
        assert self.publisher is not None
        try:
            self._publish(self.publisher)
        except BaseException as exc:  # reported by run()
            self._error = exc
            self._stop.set()
        finally:
            left = self.queue.clear()
            if left:
                self.metrics.abandoned.inc(len(left))
                log.warning("%d queued frames not sent before the drain timeout", len(left))
            self.publisher.flush(max(0.1, self.config.drain_timeout_s / 2))
            self.publisher.close()
            self.metrics.queue_depth.set(0)

    def _publish(self, publisher: Publisher) -> None:
        cfg, m = self.config, self.metrics
        backoff = Backoff(cfg.backoff_initial_s, cfg.backoff_max_s)
        connected = False
        while not self._draining_over():
            if not connected:
                try:
                    publisher.connect()
                    connected = True
                    backoff.reset()
                except PublisherUnavailable as exc:
                    delay = backoff.next()
                    log.warning("%s; retry in %.1f s", exc, delay)
                    deadline = self._drain_deadline
                    if deadline is not None:
                        delay = min(delay, max(0.0, deadline - time.monotonic()))
                    time.sleep(delay)
                    continue
            item = self.queue.get(timeout=0.2)
            m.queue_depth.set(len(self.queue))
            if item is None:
                if self.queue.closed:
                    break
                continue
            while not self._inflight.acquire(timeout=0.2):
                if self._draining_over():
                    m.abandoned.inc()
                    return
            self._track_inflight(+1)
            try:
                publisher.send(self._key, item.value, item.timestamp_ms, self._done_cb(item))
            except Exception as exc:  # KafkaError, timeouts: the frame is lost, not retried
                self._finish(item, exc)
        # wait for the acks of what is in flight (bounded by the drain deadline)
        deadline = self._drain_deadline or time.monotonic() + cfg.drain_timeout_s
        publisher.flush(max(0.1, deadline - time.monotonic()))

    def _done_cb(self, item: _Outgoing) -> Done:
        return lambda exc: self._finish(item, exc)

    def _finish(self, item: _Outgoing, exc: BaseException | None) -> None:
        m = self.metrics
        if exc is None:
            m.published.inc()
            m.bytes_published.inc(len(item.value))
            m.latency_s.observe(time.monotonic() - item.captured_mono)
        else:
            m.send_errors.inc()
            self._log_rate_limited(f"frame {item.seq} not sent: {exc!r}")
        self._track_inflight(-1)
        self._inflight.release()

    def _track_inflight(self, delta: int) -> None:
        with self._lock:
            self._inflight_n += delta
            self.metrics.in_flight.set(self._inflight_n)

    # --- logs -------------------------------------------------------------------------------

    def _log_rate_limited(self, msg: str) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= 5.0:
            self._last_error_log = now
            log.warning("%s", msg)

    def _progress(self, fps: float | None) -> None:
        m = self.metrics
        p50 = m.process_s.quantiles()[0.5]
        log.info(
            "%s cam=%s captured=%d published=%d dropped_backpressure=%d send_errors=%d "
            "abandoned=%d skipped_rate=%d reconnects=%d queue=%d in_flight=%d "
            "encode_p50=%.1fms behind=%.2fs%s",
            "progress" if fps is not None else "final",
            self.config.camera_id,
            m.captured.value,
            m.published.value,
            m.dropped_backpressure.value,
            m.send_errors.value,
            m.abandoned.value,
            m.skipped_rate.value,
            m.reconnects.value,
            len(self.queue),
            self._inflight_n,
            0.0 if math.isnan(p50) else 1000 * p50,
            self.pacer.behind_s,
            f" fps={fps:.1f}" if fps is not None else "",
        )
        if self.on_progress is not None:
            self.on_progress()


def parse_blur(regions: Sequence[str]) -> tuple[Polygon, ...]:
    """``--blur`` values (one polygon each) -> polygons; ValueError names the bad one."""
    from edge.camera.processing import parse_polygon

    return tuple(parse_polygon(r) for r in regions)
