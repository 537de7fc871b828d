"""The traffic worker: tracks + frames + signals -> violations, lane counts, signal advice.

One :class:`~streams.consumer.ConsumerLoop` (one group) over ``traffic.tracks`` and
``camera.frames`` (both keyed by camera, same partition count: the range assignor gives a
worker all tracks and frames of its cameras, see :mod:`.camera_state`; :mod:`.feeds` paces
the two) and ``traffic.counts`` read back (keyed by intersection: all cameras of an
intersection meet for Webster's advice, :mod:`.advice` -> ``signal.recommendations``).
Signals and plans come from :class:`~.feeds.SignalFeed`.  Violations get an evidence bundle
under ``traffic.evidence_dir`` (default ``<state_dir>/evidence``) whose SHA-256 goes into the
``Violation`` -> ``traffic.violations``.

Event time drives everything: a camera's count window closes when the camera's
``TrackBatch`` es (one per frame, empty ones too) reach the window's end, its open tracks are
judged on a grid of event time (a violation is reported while the vehicle is in view, see
:mod:`.camera_state`) and once more after ``track_idle_s`` of *event* time without them, so
the results do not depend on how fast records arrive (a vision worker falling behind under
load delays them, it does not cut windows short) nor on how they were polled.

The end of a camera's input is the only thing wall-clock time decides, and only where
nothing can be waiting: the camera is *retired* (open tracks judged, the open window emitted
as it is, its state dropped) when

* nothing of it is held or left to fetch on either topic, its tracks have caught up with its
  frames (the vision worker has sent a batch for the last frame this worker has seen; a
  camera without frames on Kafka counts as caught up) and neither has brought anything for
  ``idle_flush_s`` (``--idle-flush``): the camera stopped (the end of a replay or of a
  simulated run); a vision worker that is merely behind leaves the tracks behind the frames;
* or no tracks came for ``camera_gone_s`` (``traffic.camera_gone_s``) with none left to
  fetch, whatever the frames do: the camera or the vision worker is down.  Its open window
  is then emitted partial rather than holding the commits of its partition for as long as
  the outage lasts; if the camera comes back within the same window, the rest of that window
  goes out under the same key, which the sink drops (it keeps the first row).  This is the
  price of a bounded replay; ``camera_gone_s`` sets it.

At least once, with replays that collapse: offsets are committed no further than the first
record of an open track or count window (tracks), the frames those need (frames) and the
first count of an open advice period (counts).  A track open for longer than
``track_max_age_s`` of event time is judged on what was seen and cut to its tail
(:class:`~.camera_state.Cut`), and its first record moves up to the tail's, so a parked car
cannot pin the commit point.  Results have deterministic keys, bundles are reused on replay,
and each camera's :class:`~.camera_state.CameraMemory` (tracks judged or cut since the
commit point, kinds already reported per track) is saved before each commit
(:mod:`.durable`) so a replay neither judges those parts again nor reports a kind twice.
Bad input -> ``traffic.tracks.dlq``, or skipped and counted (frames, counts, signals: their
own consumers dead-letter them).
"""

from __future__ import annotations

import logging
import math
import time
from bisect import bisect_left
from collections.abc import Callable
from pathlib import Path

from citystream.errors import SchemaError, SinkError
from citystream.settings import Settings
from schemas.codecs import Frame, dead_letter
from schemas.messages import LaneCount, TrackBatch, Violation
from schemas.topics import TOPICS
from streams.consumer import ConsumerLoop
from streams.decode import decode_record
from streams.traffic.advice import AdviceAggregator, advise_due
from streams.traffic.calibration import Calibration
from streams.traffic.camera_state import CameraMemory, CameraState, Judged, StateConfig
from streams.traffic.cameras import CameraDirectory, CameraInfo
from streams.traffic.durable import StateFile, keep_evidence
from streams.traffic.feeds import Held, Pacer, SignalFeed
from streams.traffic.webster import SaturationFlow

log = logging.getLogger(__name__)
TRACKS, FRAMES, COUNTS = TOPICS["traffic.tracks"], TOPICS["camera.frames"], TOPICS["traffic.counts"]
VIOLATIONS, RECS = TOPICS["traffic.violations"], TOPICS["signal.recommendations"]


class TrafficStage(ConsumerLoop):
    name = "traffic"

    def __init__(
        self,
        settings: Settings,
        group_id: str = "citystream-traffic",
        *,
        idle_flush_s: float = 10.0,
        signal_lookback_s: float = 3600.0,
        directory: CameraDirectory | None = None,
    ) -> None:
        super().__init__(
            settings, (TRACKS.name, FRAMES.name, COUNTS.name), group_id, max_poll_records=500
        )
        ts = settings.traffic
        self.config = StateConfig(
            track_idle_s=ts.track_idle_s,
            count_window_s=ts.count_window_s,
            frame_buffer_s=ts.frame_buffer_s,
            frames_ahead_max_s=ts.frames_ahead_max_s,
            track_max_age_s=ts.track_max_age_s,
            track_tail_s=ts.track_tail_s,
            judge_open=ts.judge_open,
            judge_every_s=ts.judge_every_s,
            signal_lag_s=ts.signal_lag_s,
        )
        self.idle_flush_s = idle_flush_s
        self.camera_gone_s = ts.camera_gone_s
        self.clock: Callable[[], float] = time.monotonic
        self.evidence_root = ts.evidence_dir or settings.state_dir / "evidence"
        self.state_file = StateFile(settings.state_dir / "traffic" / f"{group_id}.state.json")
        self.directory = directory or CameraDirectory.from_dsn(settings.db.dsn, ts.camera_refresh_s)
        self.feed = SignalFeed(settings.kafka.bootstrap, signal_lookback_s)
        self.pacer = Pacer(TRACKS.name, FRAMES.name)
        self.advice = AdviceAggregator(ts.recommend_every_s, lateness_s=2.0 * ts.count_window_s)
        self.sat = SaturationFlow(ts.saturation_pcu_h, ts.saturation_min_discharge_s)
        self.states: dict[str, CameraState] = {}
        self.partition_of: dict[str, int] = {}  # camera -> its tracks/frames partition
        self.infos: dict[str, CameraInfo] = {}
        self.first_offset: dict[tuple[str, int], int] = {}  # open (camera, track) -> offset
        self.last_offset: dict[tuple[str, int], int] = {}  # open (camera, track) -> offset
        #: tracks judged in this session: (camera, track) -> (last time, last offset)
        self.judged_log: dict[tuple[str, int], tuple[float, int]] = {}
        self.window_offset: dict[str, int] = {}  # camera -> first offset of its open window
        self.frame_log: dict[int, list[tuple[float, int]]] = {}  # partition -> (t, offset)
        #: camera -> (t, offset) of its batches since its oldest open track began
        self.batch_log: dict[str, list[tuple[float, int]]] = {}
        self.last_input: dict[str, float] = {}  # camera -> wall time of its last tracks
        self.last_frame: dict[str, float] = {}  # camera -> wall time of its last frame
        self._committed: dict[tuple[str, int], int] = {}  # as of the last successful commit
        self._pending: dict[tuple[str, int], int] = {}  # what the last checkpoint returned
        self._commits_seen = 0.0
        #: memories of cameras without a state: read at start, or left by a retired camera
        self._restored: dict[str, CameraMemory]
        self._restored, done = self.state_file.load()
        self.advice.restore(done)
        self._counts_input = self.clock()
        self._pruned_at = self.clock()
        r = self.registry
        self.violations = r.counter("violations_total", "Violations published", ("kind",))
        self.counts_sent = r.counter("lane_counts_total", "Lane count rows published")
        self.recs = r.counter("recommendations_total", "Signal recommendations published")
        self.skipped = r.counter("skipped_total", "Records skipped", ("topic", "reason"))
        self.no_advice = r.counter("advice_skipped_total", "Periods without advice", ("reason",))
        self.open_tracks = r.gauge("open_tracks", "Tracks not yet judged")
        self.oldest_track = r.gauge(
            "oldest_open_track_age_seconds", "Event-time age of the oldest open track"
        )
        self.tracks_cut = r.counter(
            "tracks_cut_total", "Open tracks judged and cut at traffic.track_max_age_s"
        )
        self.retired = r.counter("cameras_retired_total", "Camera states closed", ("reason",))

    # --- wiring --------------------------------------------------------------------------
    def connect(self) -> None:
        if not self.directory.load_blocking(self._stop):
            return
        self.directory.take_changes()
        self.feed.connect()
        self.feed.catch_up()
        super().connect()

    def run(self) -> None:
        if self.consumer is None:
            self.connect()
        if self.consumer is not None:
            super().run()

    def close(self) -> None:
        super().close()
        self.feed.close()

    # --- cameras -------------------------------------------------------------------------
    def _state(self, info: CameraInfo, partition: int) -> CameraState | None:
        cid = info.camera_id
        state = self.states.get(cid)
        if state is not None and self.infos[cid].fingerprint != info.fingerprint:
            self._retire(cid, "camera recalibrated", "recalibrated")
            state = None
        if state is None and info.calibration is not None:
            signals = self.feed.timeline(info.calibration.intersection_id)
            state = self.states[cid] = CameraState(info.calibration, self.config, signals)
            state.restore(self._restored.pop(cid, CameraMemory()))
            self.infos[cid] = info
            self.partition_of[cid] = partition
            self.last_input[cid] = self.clock()  # "gone" counts from here at the earliest
            self.batch_log[cid] = []
        return state

    def _retire(self, camera_id: str, why: str, reason: str, *, emit: bool = True) -> None:
        """Finish a camera's state: judge its open tracks and close its window (``emit``),
        or just drop it (its partition went to another worker, which replays it).  Its
        memory stays, for the camera's next state (tracks of a camera that comes back
        continue their ids)."""
        state = self.states.pop(camera_id, None)
        if state is None:
            return
        log.info("camera %s: state closed (%s)", camera_id, why)
        self.retired.labels(reason).inc()
        if emit:
            self._publish_expired(state, flush=True)
            self._send_counts(state.flush_counts())
        self._restored.setdefault(camera_id, CameraMemory()).merge(state.memory())
        for key in [k for k in self.first_offset if k[0] == camera_id]:
            del self.first_offset[key]
            self.last_offset.pop(key, None)
        self.window_offset.pop(camera_id, None)
        self.batch_log.pop(camera_id, None)
        self.infos.pop(camera_id, None)

    # --- records -------------------------------------------------------------------------
    def handle(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> None:
        if topic == COUNTS.name:
            self._handle_count(partition, offset, value)
            return
        self.pacer.fetch(topic, partition, offset)
        if topic == TRACKS.name:
            msg, dead = decode_record(
                TRACKS, value, stage=self.name, key=key, partition=partition, offset=offset
            )
            if dead is not None:
                self.dead_letter(TRACKS.name, key, dead)
                return
            assert isinstance(msg, TrackBatch)
            camera_id, t = msg.camera_id, msg.captured_at.timestamp()
            self.last_input[camera_id] = self.clock()
        else:
            try:
                msg = FRAMES.codec.decode(value or b"")
            except SchemaError:
                self.skipped.labels(FRAMES.name, "undecodable").inc()
                return
            assert isinstance(msg, Frame)
            camera_id, t = msg.header.camera_id, msg.header.captured_at.timestamp()
            self.last_frame[camera_id] = self.clock()
        held = Held(partition, offset, key, value or b"", msg, t)
        if self.pacer.should_hold(topic, camera_id, partition, t, self._unfetched):
            self.pacer.hold(topic, camera_id, held)
        else:
            self._process(topic, camera_id, held)

    def _unfetched(self, topic: str, partition: int) -> bool:
        """The partition has records this worker has not received yet."""
        from kafka import TopicPartition

        if self.consumer is None:
            return False
        hw = self.consumer.highwater(TopicPartition(topic, partition))
        return hw is not None and hw > self.pacer.fetched.get((topic, partition), 0)

    def _process(self, topic: str, camera_id: str, h: Held) -> None:
        self.pacer.done(topic, camera_id, h.t)
        if topic == TRACKS.name:
            self._handle_tracks(h)
        else:
            self._handle_frame(h)

    def _handle_tracks(self, h: Held) -> None:
        batch: TrackBatch = h.message
        cid = batch.camera_id
        info = self.directory.lookup(cid)
        if info is None or info.calibration is None:
            why = (
                f"camera {cid!r} is not in the cameras reference table"
                if info is None
                else f"camera {cid!r} has no valid calibration: {info.problem}"
            )
            letter = dead_letter(
                source_topic=TRACKS.name,
                payload=h.value,
                error=ValueError(why),
                stage=self.name,
                key=h.key,
                partition=h.partition,
                offset=h.offset,
            )
            self.dead_letter(TRACKS.name, h.key, letter)
            return
        state = self._state(info, h.partition)
        assert state is not None
        res = state.add_batch(batch)
        if not res.accepted:
            self.skipped.labels(TRACKS.name, "stale").inc()
            return
        self.batch_log[cid].append((h.t, h.offset))
        for tid in res.new_tracks:
            self.first_offset[(cid, tid)] = h.offset
        for o in batch.tracks:
            if o.track_id in state.open:
                self.last_offset[(cid, o.track_id)] = h.offset
        if res.new_window:
            self.window_offset[cid] = h.offset
        self._send_counts(res.counts)
        self._publish_expired(state)  # after every batch: judgement follows event time

    def _handle_frame(self, h: Held) -> None:
        frame: Frame = h.message
        info = self.directory.get(frame.header.camera_id)
        state = self._state(info, h.partition) if info is not None else None
        if state is None:
            self.skipped.labels(FRAMES.name, "unknown_or_uncalibrated_camera").inc()
            return
        if state.add_frame(h.t, frame.jpeg):
            self.frame_log.setdefault(h.partition, []).append((h.t, h.offset))

    def _handle_count(self, partition: int, offset: int, value: bytes | None) -> None:
        self._counts_input = self.clock()
        try:
            count = COUNTS.codec.decode(value or b"")
        except SchemaError:
            self.skipped.labels(COUNTS.name, "undecodable").inc()
            return
        assert isinstance(count, LaneCount)
        if not self.advice.add(count, partition, offset):
            self.skipped.labels(COUNTS.name, "period_done").inc()

    # --- periodic work -------------------------------------------------------------------
    def on_idle(self) -> None:
        self.directory.refresh()
        changes = self.directory.take_changes()
        for cid in (*changes.removed, *changes.moved):
            info, mine = self.directory.get(cid), self.infos.get(cid)
            if mine is not None and (info is None or info.fingerprint != mine.fingerprint):
                if info is None:
                    self._retire(cid, "camera removed", "removed")
                else:
                    self._retire(cid, "camera recalibrated", "recalibrated")
        self.feed.poll()
        if self.consumer is not None:
            assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
            revoked = [c for c, p in self.partition_of.items() if (TRACKS.name, p) not in assigned]
            for cid in revoked:
                self._retire(cid, "partition revoked", "revoked", emit=False)
                self.partition_of.pop(cid)
            for _topic, p in [k for k in self.pacer.fetched if k not in assigned]:
                self.pacer.drop_partition(p)
        for topic, camera_id, held in self.pacer.releasable(self._unfetched):
            self._process(topic, camera_id, held)
        now = self.clock()
        for cid, state in list(self.states.items()):
            ended = self._ended(cid, state, now)
            if ended is not None:
                self._retire(cid, *ended)
        quiet = now - self._counts_input >= self.idle_flush_s + 2 * self.config.count_window_s
        self._advise(force=quiet)
        self.open_tracks.set(sum(len(s.open) for s in self.states.values()))
        self.oldest_track.set(max((s.oldest_open_age_s for s in self.states.values()), default=0))
        if now - self._pruned_at >= 60.0:
            self._pruned_at = now
            latest: dict[str, float] = {}
            for st in self.states.values():
                iid = st.calibration.intersection_id
                latest[iid] = max(latest.get(iid, -math.inf), st.now)
            self.feed.prune({k: v for k, v in latest.items() if math.isfinite(v)})

    def _ended(self, camera_id: str, state: CameraState, now: float) -> tuple[str, str] | None:
        """Whether the camera's input ended (see the module doc): (why, reason) or None."""
        p = self.partition_of.get(camera_id)
        if p is None or self.pacer.held.get((TRACKS.name, camera_id)):
            return None
        if self._unfetched(TRACKS.name, p):
            return None
        quiet = now - self.last_input.get(camera_id, now)
        if quiet >= self.camera_gone_s:
            return f"no tracks for {quiet:.0f} s: camera or vision worker down", "gone"
        if self.pacer.held.get((FRAMES.name, camera_id)) or self._unfetched(FRAMES.name, p):
            return None
        quiet = min(quiet, now - self.last_frame.get(camera_id, -math.inf))
        if quiet >= self.idle_flush_s and state.now >= state.frames_now:
            return f"end of its input ({quiet:.0f} s without any)", "ended"
        return None

    def _offset_at(self, camera_id: str, t: float) -> int | None:
        """Offset of the camera's batch at event time ``t``."""
        entries = self.batch_log.get(camera_id, [])
        i = bisect_left(entries, (t, -1))
        return entries[i][1] if i < len(entries) and entries[i][0] == t else None

    def _publish_expired(self, state: CameraState, *, flush: bool = False) -> None:
        expired = state.expire(self.feed.timeline(state.calibration.intersection_id), flush=flush)
        cid = state.camera_id
        for h in expired.closed:
            key = (cid, h.track_id)
            self.first_offset.pop(key, None)
            last = self.last_offset.pop(key, None)
            if last is not None:
                self.judged_log[key] = (float(h.t[-1]), last)
        for cut in expired.cut:
            self.tracks_cut.inc()
            key = (cid, cut.track_id)
            kept, dropped = (self._offset_at(cid, t) for t in (cut.kept_from, cut.dropped_until))
            if kept is not None and key in self.first_offset:
                self.first_offset[key] = kept
            if dropped is not None:  # a replay from before the tail drops what was judged
                self.judged_log[key] = (cut.dropped_until, dropped)
        for j in expired.judged:
            msg = self._violation(state, j)
            self.violations.labels(str(msg.kind)).inc()
            self.send(VIOLATIONS.name, VIOLATIONS.key_of(msg), VIOLATIONS.codec.encode(msg))

    def _violation(self, state: CameraState, judged: Judged) -> Violation:
        uri, sha = keep_evidence(Path(self.evidence_root), judged)
        return judged.violation.to_message(state.calibration.intersection_id, uri, sha)

    def _send_counts(self, rows: tuple[LaneCount, ...] | list[LaneCount]) -> None:
        for row in rows:
            self.send(COUNTS.name, COUNTS.key_of(row), COUNTS.codec.encode(row))
        self.counts_sent.inc(len(rows))

    def _advise(self, *, force: bool) -> None:
        recs, skipped = advise_due(
            self.advice, self.feed.plans, self._calibrations, force=force, saturation=self.sat
        )
        for iid, why in skipped:
            self.no_advice.labels(why.split(":")[0]).inc()
            log.info("no advice for %s: %s", iid, why)
        for rec in recs:
            self.recs.inc()
            self.send(RECS.name, RECS.key_of(rec), RECS.codec.encode(rec))

    def _calibrations(self, intersection_id: str) -> dict[str, Calibration]:
        cams = self.directory.of_intersection(intersection_id)
        return {c.camera_id: c.calibration for c in cams if c.calibration is not None}

    # --- commits -------------------------------------------------------------------------
    def checkpoint(self, handled: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        safe = dict(handled)
        need_t: dict[int, float] = {}  # partition -> earliest event time a replay rebuilds
        for cid, state in self.states.items():
            p = self.partition_of[cid]
            starts = [*state.open.values()]
            if state.window_start is not None and cid in self.window_offset:
                starts.append(state.window_start)
            if starts:  # an idle camera (all judged, window closed) needs no frames back
                need_t[p] = min(need_t.get(p, math.inf), *starts)
        for (cid, _), off in self.first_offset.items():
            self._lower(safe, (TRACKS.name, self.partition_of[cid]), off)
        for cid, off in self.window_offset.items():
            self._lower(safe, (TRACKS.name, self.partition_of[cid]), off)
        for cid, entries in self.batch_log.items():  # what a later cut may look up
            st = self.states.get(cid)
            start = min(st.open.values(), default=math.inf) if st is not None else math.inf
            del entries[: bisect_left(entries, (start, -1))]
        for p, log_ in self.frame_log.items():
            keep_from = need_t.get(p, math.inf) - self.config.frame_buffer_s
            first = next((o for t, o in log_ if t >= keep_from), None)
            if first is not None:
                self._lower(safe, (FRAMES.name, p), first)
            self.frame_log[p] = [e for e in log_ if e[0] >= keep_from - 1.0]
        for p, off in self.advice.open_offsets().items():
            self._lower(safe, (COUNTS.name, p), off)
        for key, off in self.pacer.first_held().items():
            self._lower(safe, key, off)
        if self.commits.value > self._commits_seen:  # the last checkpoint's offsets got in
            self._committed.update(self._pending)
        self._commits_seen, self._pending = self.commits.value, dict(safe)
        self._save_state()
        return safe

    @staticmethod
    def _lower(safe: dict[tuple[str, int], int], key: tuple[str, int], offset: int) -> None:
        if key in safe:
            safe[key] = min(safe[key], offset)

    # --- state across restarts -----------------------------------------------------------
    def _save_state(self) -> None:
        """Before the commit, once the outputs are acknowledged: the judged tracks a replay
        from the last *committed* offsets would see again (this commit may not get through),
        and the advice periods already done."""
        self.producer.flush()
        failed = [f for f in self._sent if f.failed()]
        if failed:
            raise SinkError(f"{self.name}: {len(failed)} sends failed, e.g. {failed[0].exception}")
        keep: dict[str, CameraMemory] = {}
        for (cid, tid), (last_t, last_off) in list(self.judged_log.items()):
            p = self.partition_of.get(cid)
            if p is None or last_off < self._committed.get((TRACKS.name, p), 0):
                del self.judged_log[(cid, tid)]  # a replay starts after it
            else:
                keep.setdefault(cid, CameraMemory()).judged[tid] = last_t
        for cid, memory in self._restored.items():  # cameras without a state now
            keep.setdefault(cid, CameraMemory()).merge(memory)
        for cid, state in self.states.items():  # restored entries not passed, kinds found
            keep.setdefault(cid, CameraMemory()).merge(state.memory())
        self.state_file.save(keep, self.advice.done_until)
