"""The vision worker: ``camera.frames`` -> batched detection -> tracks -> ``traffic.tracks``.

A plain :class:`~streams.consumer.ConsumerLoop` (not a faust agent).  :meth:`handle` only
decodes and buffers; after each poll :meth:`on_idle` hands the buffered frames of *all*
cameras to :class:`~streams.vision.processor.VisionProcessor` in batches of up to
``vision.batch_max`` (waiting at most ``vision.batch_wait_ms`` for a batch to fill), which
makes one detector call per batch.  Inference runs on the polling thread: with a plain
kafka-python loop nothing else needs that thread (heartbeats run on the client's own
thread), the detector parallelises internally (decode thread pool, GPU), and the loop
stays simple and ordered.  The progress log and ``/metrics`` report the share of wall time
spent in detection.

Outputs: a ``TrackBatch`` per frame (empty ones too: the traffic worker needs every frame
for occupancy and event time) keyed by camera; camera health alerts -> ``traffic.alerts``.
Dead letters (``camera.frames.dlq``, with the reason): undecodable records or JPEGs, and
frames of cameras that are not in the ``cameras`` table.  A new consumer group starts at the
earliest frames, or with ``from_latest`` at the newest (a video backlog is rarely worth
detecting).  Offsets are committed after the
batch holding them was processed and its outputs acknowledged (at least once; a replay
re-sends batches the traffic worker drops as already seen).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from citystream.settings import Settings
from schemas.codecs import Frame, dead_letter
from schemas.messages import Alert, Severity
from schemas.topics import TOPICS
from streams.consumer import ConsumerLoop
from streams.decode import decode_record
from streams.traffic.cameras import CameraDirectory
from streams.vision.detector import Detector
from streams.vision.health import HealthConfig, Reference
from streams.vision.processor import FrameWork, VisionProcessor

log = logging.getLogger(__name__)
FRAMES = TOPICS["camera.frames"]
TRACKS = TOPICS["traffic.tracks"]
ALERTS = TOPICS["traffic.alerts"]


class FileReferenceStore:
    """Watchdog reference views as ``<root>/<camera_id>.v<version>.npz`` (small greyscale)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, camera_id: str, version: int) -> Path:
        return self.root / f"{camera_id}.v{version}.npz"

    def load(self, camera_id: str, version: int) -> Reference | None:
        path = self._path(camera_id, version)
        try:
            with np.load(path) as data:
                return Reference(
                    np.asarray(data["image"], dtype=np.uint8),
                    np.asarray(data["to_view"], dtype=np.float64).reshape(2, 3),
                    float(data["taken_at"]),
                )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable reference view %s: %s", path, exc)
            return None

    def save(self, camera_id: str, version: int, reference: Reference) -> None:
        path = self._path(camera_id, version)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(
                tmp, image=reference.image, to_view=reference.to_view, taken_at=reference.taken_at
            )
            tmp.replace(path)
        except OSError as exc:  # the watchdog works without it; a restart re-learns the view
            log.warning("cannot save the reference view of %s: %s", camera_id, exc)


@dataclass(frozen=True)
class _Buffered:
    work: FrameWork
    key: bytes | None
    value: bytes
    partition: int
    offset: int


class VisionStage(ConsumerLoop):
    name = "vision"

    def __init__(
        self,
        settings: Settings,
        group_id: str = "citystream-vision",
        *,
        detector: Detector | None = None,
        directory: CameraDirectory | None = None,
        health: HealthConfig | None = None,
        from_latest: bool = False,
    ) -> None:
        vs = settings.vision
        super().__init__(
            settings, (FRAMES.name,), group_id, max_poll_records=vs.batch_max, commit_every_s=1.0
        )
        self.batch_max = vs.batch_max
        self.batch_wait_s = vs.batch_wait_ms / 1000.0
        self._detector = detector
        self.directory = directory or CameraDirectory.from_dsn(
            settings.db.dsn, settings.traffic.camera_refresh_s
        )
        self.health = health or HealthConfig()
        self.from_latest = from_latest
        self.processor: VisionProcessor | None = None
        self._buffer: list[_Buffered] = []
        self._buffer_since = 0.0
        self._report_at = time.monotonic()
        self._report_busy = 0.0
        self._report_calls = 0
        self._report_frames = 0
        self._frames_in_calls = 0
        r = self.registry
        self.frames = r.counter("frames_total", "Frames by outcome", ("outcome",))
        self.alerts = r.counter("camera_alerts_total", "Camera health alerts", ("kind",))
        self.tracks_sent = r.counter("track_observations_total", "Track observations sent")
        self.batch_size = r.summary("batch_frames", "Frames per detector call")
        self.detect_s = r.summary("detect_seconds", "Wall time of one detector call")
        self.busy = r.counter("detect_seconds_total", "Wall time spent in the detector")
        self.cameras = r.gauge("cameras", "Cameras with a tracker on this worker")

    # --- wiring --------------------------------------------------------------------------
    def connect(self) -> None:
        if not self.directory.load_blocking(self._stop):
            return
        if self._detector is None:
            from streams.vision.detector import load_detector

            self._detector = load_detector(self.settings.vision)
        log.info(
            "%s: detector %s on %s, %d classes",
            self.name,
            self._detector.model_version,
            self._detector.device,
            len(self._detector.classes),
        )
        refs = FileReferenceStore(self.settings.state_dir / "vision" / "reference-views")
        self.processor = VisionProcessor(self._detector, health=self.health, references=refs)
        super().connect()
        if self.from_latest:
            self._start_at_end()

    def _start_at_end(self, timeout_s: float = 60.0) -> None:
        """Partitions this group never committed start at their end (live video only)."""
        deadline = time.monotonic() + timeout_s
        while not self.consumer.assignment() and time.monotonic() < deadline:
            if self._stop.is_set():
                return
            self.consumer.poll(timeout_ms=200, update_offsets=False)  # join the group
        fresh = [tp for tp in self.consumer.assignment() if self.consumer.committed(tp) is None]
        if fresh:
            self.consumer.seek_to_end(*fresh)
            for (
                tp
            ) in fresh:  # resolve now: the reset is lazy, frames sent meanwhile would be skipped
                self.consumer.position(tp)
        log.info(
            "%s: starting at the end of %d partition(s) without committed offsets",
            self.name,
            len(fresh),
        )

    def run(self) -> None:
        if self.consumer is None:
            self.connect()
        if self.processor is None:  # stopped before the directory loaded
            return
        super().run()

    # --- records -------------------------------------------------------------------------
    def handle(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> None:
        frame, dead = decode_record(
            FRAMES, value, stage=self.name, key=key, partition=partition, offset=offset
        )
        if dead is not None:
            self.frames.labels("undecodable_record").inc()
            self.dead_letter(FRAMES.name, key, dead)
            return
        assert isinstance(frame, Frame) and value is not None
        info = self.directory.lookup(frame.header.camera_id)
        if info is None:
            self.frames.labels("unknown_camera").inc()
            self._dead(
                key,
                value,
                partition,
                offset,
                f"camera {frame.header.camera_id!r} is not in the cameras reference table; "
                "register it (with its calibration) first",
            )
            return
        if not self._buffer:
            self._buffer_since = time.monotonic()
        self._buffer.append(_Buffered(FrameWork(frame, info), key, value, partition, offset))
        if len(self._buffer) >= self.batch_max:
            self._flush()

    def _dead(
        self, key: bytes | None, value: bytes, partition: int, offset: int, reason: str
    ) -> None:
        self.dead_letter(
            FRAMES.name,
            key,
            dead_letter(
                source_topic=FRAMES.name,
                payload=value,
                error=ValueError(reason),
                stage=self.name,
                key=key,
                partition=partition,
                offset=offset,
            ),
        )

    def on_idle(self) -> None:
        self.directory.refresh()
        changes = self.directory.take_changes()
        if changes and self.processor is not None:
            for alert in self.processor.apply_changes(changes, self.directory.cameras):
                self._send_alert(alert)
        if self._buffer and time.monotonic() - self._buffer_since >= self.batch_wait_s:
            self._flush()
        now = time.monotonic()
        if now - self._report_at >= self.progress_every_s:
            busy = self.busy.value - self._report_busy
            calls = self.batch_size.count - self._report_calls
            log.info(
                "%s: detector busy %.0f%% of wall time, %.1f frames per call, %d cameras",
                self.name,
                100 * busy / (now - self._report_at),
                (self._frames_in_calls - self._report_frames) / calls if calls else 0.0,
                len(self.processor.cameras) if self.processor else 0,
            )
            self._report_at, self._report_busy = now, self.busy.value
            self._report_calls, self._report_frames = self.batch_size.count, self._frames_in_calls

    def checkpoint(self, handled: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        self._flush()  # nothing handled stays unprocessed across a commit
        return handled

    # --- batches -------------------------------------------------------------------------
    def _flush(self) -> None:
        processor = self.processor
        while self._buffer and processor is not None:
            chunk, self._buffer = self._buffer[: self.batch_max], self._buffer[self.batch_max :]
            t0 = time.perf_counter()
            outcomes = processor.process([b.work for b in chunk])
            dt = time.perf_counter() - t0
            self.detect_s.observe(dt)
            self.busy.inc(dt)
            self.batch_size.observe(len(chunk))
            self._frames_in_calls += len(chunk)
            for b, out in zip(chunk, outcomes, strict=True):
                for alert in out.alerts:
                    self._send_alert(alert)
                if out.failure is not None:
                    self.frames.labels("undecodable_image").inc()
                    self._dead(b.key, b.value, b.partition, b.offset, out.failure)
                elif out.stale:
                    self.frames.labels("stale").inc()
                elif out.batch is not None:
                    self.frames.labels("tracked").inc()
                    self.tracks_sent.inc(len(out.batch.tracks))
                    self.send(TRACKS.name, TRACKS.key_of(out.batch), TRACKS.codec.encode(out.batch))
            self.cameras.set(len(processor.cameras))
        self._buffer_since = time.monotonic()

    def _send_alert(self, alert: Alert) -> None:
        self.alerts.labels(alert.kind).inc()
        log.log(
            logging.INFO if alert.severity is Severity.info else logging.WARNING,
            "%s",
            alert.message,
        )
        self.send(ALERTS.name, ALERTS.key_of(alert), ALERTS.codec.encode(alert))

    def close(self) -> None:
        super().close()
        closer = getattr(self._detector, "close", None)
        if callable(closer):
            closer()
