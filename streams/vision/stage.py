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
detecting); that start position is committed at once, so a worker killed before its first
commit resumes there instead of skipping to a newer end.  Offsets are committed after the
batch holding them was processed and its outputs acknowledged (at least once; a replay
re-sends batches the traffic worker drops as already seen).

Trackers survive restarts (:mod:`streams.vision.checkpoint`): before each commit, with every
output acknowledged, the worker writes a snapshot of the trackers of the cameras on its
partitions and the offsets it commits.  At start it restores the cameras of each assigned
partition whose snapshot offset is not behind the group's committed one, and seeks those
partitions to the snapshot's offset (a commit that failed after the snapshot must not feed
frames through the restored trackers twice; frames at or before a camera's last time are
skipped as stale anyway).  A camera that may have been tracked before without its state being
restored here (no snapshot, a corrupt or stale one, a partition taken over from another
worker) gets a tracker whose ids start above any id issued before
(:func:`~streams.vision.processor.id_base` of the wall clock).  If the snapshot cannot be
written, offsets are not committed past the last one written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from citystream.errors import SinkError
from citystream.settings import Settings
from schemas.codecs import Frame, dead_letter
from schemas.messages import Alert, Severity
from schemas.topics import TOPICS
from streams.consumer import ConsumerLoop
from streams.decode import decode_record
from streams.traffic.cameras import CameraDirectory
from streams.vision.checkpoint import FileReferenceStore as FileReferenceStore
from streams.vision.checkpoint import Offsets, Snapshot, SnapshotFile
from streams.vision.detector import Detector
from streams.vision.health import HealthConfig
from streams.vision.processor import FrameWork, VisionProcessor

log = logging.getLogger(__name__)
FRAMES = TOPICS["camera.frames"]
TRACKS = TOPICS["traffic.tracks"]
ALERTS = TOPICS["traffic.alerts"]


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
        self.snapshot_writes = r.counter(
            "snapshot_writes_total", "Tracker snapshots written before a commit", ("outcome",)
        )
        self.snapshot_bytes = r.gauge("snapshot_bytes", "Size of the last tracker snapshot")
        self.snapshot_cameras = r.counter(
            "snapshot_cameras_total",
            "Cameras of the snapshot read at start: restored, or started afresh (why)",
            ("outcome",),
        )
        self.snapshots = SnapshotFile(settings.state_dir / "vision" / f"{group_id}.trackers.json")
        self._snap_offsets: Offsets = {}  # what the last snapshot written (or restored) covers
        self._snap_frames = -1  # frames processed when it was written
        self._partition_of: dict[str, int] = {}  # camera -> its camera.frames partition
        #: partition -> time new trackers of its cameras take their ids from at the earliest
        #: (None: none, nobody tracked them before this worker; see processor.id_base)
        self._id_floor: dict[int, float | None] = {}

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
        snapshot = self.snapshots.load()
        if self.from_latest or snapshot is not None:
            self._position(snapshot)

    def _position(self, snapshot: Snapshot | None, timeout_s: float = 180.0) -> None:
        """Join the group, then: restore the snapshot's cameras of the partitions assigned
        whose snapshot is not behind the committed offset, seek those partitions to the
        snapshot's offset, and (``from_latest``) start the others this group never committed
        at their end, committed at once.  The join waits out the session of a killed
        predecessor (``kafka.session_timeout_ms``); partitions assigned only later start without the
        snapshot (their new trackers take ids above the old ones)."""
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        deadline = time.monotonic() + timeout_s
        while not self.consumer.assignment() and time.monotonic() < deadline:
            if self._stop.is_set():
                return
            self.consumer.poll(timeout_ms=200, update_offsets=False)  # join the group
        assigned = sorted(self.consumer.assignment())
        if not assigned:
            log.warning("%s: no partitions assigned after %.0f s", self.name, timeout_s)
        committed = {tp: self.consumer.committed(tp) for tp in assigned}
        restored: set[int] = set()
        if snapshot is not None:
            restored = self._resume(snapshot, committed)
            self._restore(snapshot, restored)
        fresh = [tp for tp in assigned if committed[tp] is None and tp.partition not in restored]
        if self.from_latest:
            if fresh:
                self.consumer.seek_to_end(*fresh)
                # resolve now: the reset is lazy, frames sent meanwhile would be skipped; and
                # commit: a worker killed before its first commit must resume here
                start = {tp: OffsetAndMetadata(self.consumer.position(tp), "", -1) for tp in fresh}
                try:
                    self.consumer.commit(start)
                except KafkaError as exc:
                    log.warning("%s: could not commit the start offsets: %s", self.name, exc)
            log.info(
                "%s: starting at the end of %d partition(s) without committed offsets",
                self.name,
                len(fresh),
            )
        for tp in assigned:
            unknown_past = committed[tp] is not None and tp.partition not in restored
            self._id_floor[tp.partition] = time.time() if unknown_past else None

    def _resume(self, snapshot: Snapshot, committed: Mapping[Any, int | None]) -> set[int]:
        """Partitions (of those assigned, with their committed offsets) whose snapshot is
        usable: not behind the committed offset.  Those ahead of it are sought there."""
        usable: set[int] = set()
        for tp, done in committed.items():
            offset = snapshot.offsets.get((tp.topic, tp.partition))
            if offset is None:
                continue
            if done is not None and offset < done:
                log.warning(
                    "%s: the snapshot of %s[%d] is at offset %d, behind the committed %d "
                    "(another worker went on): its cameras start afresh",
                    self.name,
                    tp.topic,
                    tp.partition,
                    offset,
                    done,
                )
                continue
            usable.add(tp.partition)
            self._snap_offsets[(tp.topic, tp.partition)] = offset
            if done is None or offset > done:
                log.info(
                    "%s: %s[%d] resumes at the snapshot's offset %d (committed: %s)",
                    self.name,
                    tp.topic,
                    tp.partition,
                    offset,
                    done,
                )
                self.consumer.seek(tp, offset)
        return usable

    def _restore(self, snapshot: Snapshot, partitions: set[int]) -> None:
        assert self.processor is not None
        for cid, saved in sorted(snapshot.cameras.items()):
            info = self.directory.lookup(cid)
            if saved.partition not in partitions:
                outcome = "partition_elsewhere_or_stale"
            elif info is None:
                outcome = "camera_removed"
            else:
                self.processor.restore(saved.state, info)
                self._partition_of[cid] = saved.partition
                outcome = "restored"
            self.snapshot_cameras.labels(outcome).inc()
        n = sum(1 for c in snapshot.cameras.values() if c.partition in partitions)
        log.info(
            "%s: trackers of %d of %d camera(s) restored from %s",
            self.name,
            len(self.processor.cameras),
            n,
            self.snapshots.path,
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
        cid = frame.header.camera_id
        self._partition_of[cid] = partition
        if partition not in self._id_floor:
            self._id_floor[partition] = self._floor_of(partition)
        work = FrameWork(frame, info, self._id_floor[partition])
        self._buffer.append(_Buffered(work, key, value, partition, offset))
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

    def _floor_of(self, partition: int) -> float | None:
        """For a partition first seen after the start (a rebalance): did this group
        process it before (its cameras may have been tracked by another worker)?"""
        from kafka import TopicPartition
        from kafka.errors import KafkaError

        try:
            done = self.consumer.committed(TopicPartition(FRAMES.name, partition))
        except KafkaError:
            done = 0  # unknown: assume it was
        return time.time() if done is not None else None

    def _revoked(self) -> None:
        """Forget the cameras of partitions given to another worker: if one comes back, the
        state here is stale (the other worker went on with its own trackers)."""
        assigned = {tp.partition for tp in self.consumer.assignment() if tp.topic == FRAMES.name}
        if not assigned or self.processor is None:  # none: mid-rebalance, or no work at all
            return
        gone = {p for p in (*self._id_floor, *self._partition_of.values()) if p not in assigned}
        if not gone:
            return
        log.info("%s: partition(s) %s revoked: their cameras' trackers dropped", self.name, gone)
        for cid in [c for c, p in self._partition_of.items() if p in gone]:
            self.processor.forget(cid)
            del self._partition_of[cid]
        for p in gone:
            self._id_floor.pop(p, None)
            self._snap_offsets.pop((FRAMES.name, p), None)

    def on_idle(self) -> None:
        self.directory.refresh()
        changes = self.directory.take_changes()
        if changes and self.processor is not None:
            for alert in self.processor.apply_changes(changes, self.directory.cameras):
                self._send_alert(alert)
            for cid in changes.removed:
                self._partition_of.pop(cid, None)
            self._snap_frames = -1  # the state changed: the next checkpoint writes
        if self.consumer is not None:
            self._revoked()
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
        if self.processor is None or self.consumer is None:
            return handled
        # the snapshot claims every frame below its offsets: their outputs must be in Kafka
        self.producer.flush()
        failed = [f for f in self._sent if f.failed()]
        if failed:
            raise SinkError(f"{self.name}: {len(failed)} sends failed, e.g. {failed[0].exception}")
        assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        offsets = {k: v for k, v in {**self._snap_offsets, **handled}.items() if k in assigned}
        if offsets == self._snap_offsets and self._snap_frames == self._frames_in_calls:
            return offsets  # nothing new since the last snapshot
        mine = {p for t, p in offsets if t == FRAMES.name}
        cams = [c for c, p in self._partition_of.items() if p in mine]
        try:
            self.snapshots.save(
                offsets,
                [(self._partition_of[c.camera_id], c) for c in self.processor.snapshot(cams)],
            )
        except (OSError, ValueError) as exc:
            self.snapshot_writes.labels("failed").inc()
            log.error(
                "%s: cannot write the tracker snapshot %s (%s); offsets stay at the last one",
                self.name,
                self.snapshots.path,
                exc,
            )
            return {
                k: min(v, self._snap_offsets[k])
                for k, v in offsets.items()
                if k in self._snap_offsets
            }
        self.snapshot_writes.labels("ok").inc()
        self.snapshot_bytes.set(self.snapshots.last_size)
        self._snap_offsets, self._snap_frames = offsets, self._frames_in_calls
        return offsets

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
