"""Everything the traffic worker keeps per camera, without I/O.

A :class:`CameraState` holds the camera's open tracks (:class:`TrackStore`), its lane counter
(:class:`LaneCounter`) and its last seconds of frames (:class:`FrameRing`).  Feed it the
camera's ``TrackBatch`` es and frames in time order; it

* counts lanes per window (:meth:`add_batch` returns the rows of closed windows): a window
  closes when the camera's event time reaches its end, never by wall-clock time;
* judges the open tracks with every rule every ``judge_every_s`` of event time
  (:meth:`expire`): a finding that more of the track cannot undo (``settled``: a red light
  once the vehicle is past the line on red, a wrong-way stretch, a stop past its limit, a
  speed over the limit by a full running median, a bus-lane stay) is reported as soon as
  the frames after it are in, while the vehicle is still in view;
* judges a track once it has been unseen for ``track_idle_s`` (event time) with every rule,
  for what the open judgement did not report, and builds an
  :class:`~streams.traffic.evidence.Evidence` for each violation: frames before/after, a crop
  of the vehicle, its trajectory, the signal states, the calibration and the model version;
* judges a track that is still open but older than ``track_max_age_s`` (a parked vehicle, a
  static false detection) on what was seen so far and cuts it to its last ``track_tail_s``
  (:class:`Cut`), so that no track holds the worker's commit point for ever.  The tail is at
  least the camera's longest no-stopping dwell limit (+1 s), so a stop that began before the
  cut is still judged in full, and the age cap at least two tails;
* keeps the camera's frames from ``frame_buffer_s`` before its tracks' event time on, and
  frames that run ahead of the tracks until they come (up to ``frames_ahead_max_s``), and
  the frames around each finding on an open track that is not reported yet: by the time the
  track ends they may have left the ring; the judgement uses whichever set is closer in
  time.

The open judgement runs on a fixed event-time grid, so a replay of the same batches finds
the same thing on the same part of a track: the same violation id, which the sink collapses.

Replays after a crash start at the first record of the oldest open track, so a track that
was already judged may be replayed in part: :attr:`judged` (restored by the worker after a
restart) holds the time up to which each judged (or cut) track was judged, and its
observations up to it are dropped by the track store (lane counts still see them: a replay
rebuilds the open window from its first record).  :attr:`fired` holds the kinds of the
violations each recent track was found with; a later segment of the same track id (after a
cut, a gap, a restart) never reports those kinds again.  Both are a :class:`CameraMemory`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from schemas.messages import LaneCount, SignalState, TrackBatch, ViolationKind
from streams.traffic.calibration import Calibration
from streams.traffic.counts import LaneCounter, Observation
from streams.traffic.evidence import Evidence, FrameRing, TimedFrame, crop_jpeg
from streams.traffic.rules import RuleViolation, evaluate_all
from streams.traffic.signals import SignalTimeline
from streams.traffic.tracks import TrackHistory, TrackStore


@dataclass(frozen=True)
class StateConfig:
    track_idle_s: float = 3.0
    count_window_s: int = 60
    frame_buffer_s: float = 12.0
    frames_ahead_max_s: float = 120.0
    frames_each_side: int = 3
    judge_every_s: float = 0.2
    judge_open: bool = True
    class_settled_s: float = 1.0
    class_settled_share: float = 0.5
    signal_lag_s: float = 0.5
    evidence_wait_s: float = 1.0
    track_max_age_s: float = 300.0
    track_tail_s: float = 30.0

    def __post_init__(self) -> None:
        if self.track_max_age_s <= 2 * self.track_idle_s:
            raise ValueError("track_max_age_s must be more than twice track_idle_s")


@dataclass(frozen=True)
class BatchResult:
    """Effect of one batch: ``accepted`` False for a stale/duplicate frame."""

    accepted: bool
    new_tracks: tuple[int, ...] = ()
    new_window: bool = False
    counts: tuple[LaneCount, ...] = ()


@dataclass(frozen=True)
class Judged:
    violation: RuleViolation
    evidence: Evidence


@dataclass(frozen=True)
class Cut:
    """An open track older than ``track_max_age_s``, judged and cut to its tail: its points
    up to ``dropped_until`` are forgotten, the first one kept is at ``kept_from``."""

    track_id: int
    dropped_until: float
    kept_from: float


@dataclass(frozen=True)
class Expired:
    closed: tuple[TrackHistory, ...] = ()
    judged: tuple[Judged, ...] = ()
    cut: tuple[Cut, ...] = ()


#: track id -> (its last time when judged, the kinds of violation found on it)
Fired = dict[int, tuple[float, frozenset[ViolationKind]]]


@dataclass
class CameraMemory:
    """What a camera's judgements leave behind for a replay (restart) or a later segment:
    ``judged``: track id -> time up to which its observations were judged;
    ``fired``: track id -> (last time, kinds) of recent tracks with violations."""

    judged: dict[int, float] = field(default_factory=dict)
    fired: Fired = field(default_factory=dict)

    def merge(self, other: CameraMemory) -> None:
        for tid, t in other.judged.items():
            self.judged[tid] = max(t, self.judged.get(tid, -math.inf))
        for tid, (t, kinds) in other.fired.items():
            prev = self.fired.get(tid)
            self.fired[tid] = (t, kinds) if prev is None else (max(t, prev[0]), prev[1] | kinds)


@dataclass
class _Snapshot:
    t: float
    before: list[TimedFrame]
    after: list[TimedFrame]


def signal_states(signals: SignalTimeline, t: float) -> dict[str, object]:
    """The state of every known signal group at ``t`` and since when (for evidence)."""
    groups: dict[str, object] = {}
    for g in signals.groups:
        since = signals.since(g, t)
        if since is not None:
            groups[g] = {"state": str(since[0]), "since_t": round(since[1], 3)}
    return {"t": round(t, 4), "groups": groups}


def _near(frames: Sequence[TimedFrame], t: float, span: float = 2.0) -> int:
    return sum(1 for f in frames if abs(f.t - t) <= span)


@dataclass
class CameraState:
    """Per-camera tracks, counts and frames of the traffic worker (see the module doc)."""

    calibration: Calibration
    config: StateConfig = field(default_factory=StateConfig)
    #: the intersection's signals (lane counts of arrivals on red read them)
    signals: SignalTimeline | None = None
    model_version: str = "unknown"
    now: float = -math.inf
    frames_now: float = -math.inf
    window_start: float | None = None
    #: open track id -> time first seen
    open: dict[int, float] = field(default_factory=dict)
    #: judged track id -> its last time, restored after a restart: observations of the
    #: track up to that time are a replay of a track already judged
    judged: dict[int, float] = field(default_factory=dict)
    #: track id -> (last time judged, kinds found): not reported again for that track
    fired: Fired = field(default_factory=dict)

    def __post_init__(self) -> None:
        cal, cfg = self.calibration, self.config
        self.store = TrackStore(cal.camera_id)
        self.counter = LaneCounter(cal, window_s=cfg.count_window_s, signals=self.signals)
        self.ring = FrameRing(cfg.frame_buffer_s, cfg.frames_ahead_max_s)
        self._snapshots: dict[tuple[int, ViolationKind], _Snapshot] = {}
        #: settled findings on open tracks, to be reported (see :meth:`_report_due`)
        self._due: dict[tuple[int, ViolationKind], RuleViolation] = {}
        self._judged_step = -math.inf
        self._judged_len: dict[int, int] = {}  # open track -> its points when last judged
        # the tail of a cut track covers the longest dwell limit (a stop that began before
        # the cut is judged as without it), and a track lives at least two tails
        dwell = max((z.max_dwell_s for z in cal.zones_of("no_stopping")), default=0.0)
        self.tail_s = max(cfg.track_tail_s, dwell + 1.0)
        self.max_age_s = max(cfg.track_max_age_s, 2 * self.tail_s)

    @property
    def camera_id(self) -> str:
        return self.calibration.camera_id

    @property
    def oldest_open_age_s(self) -> float:
        """Event-time age of the oldest open track (0 with none)."""
        return self.now - min(self.open.values()) if self.open else 0.0

    def memory(self) -> CameraMemory:
        return CameraMemory(dict(self.judged), dict(self.fired))

    def restore(self, memory: CameraMemory) -> None:
        mine = self.memory()
        mine.merge(memory)
        self.judged, self.fired = mine.judged, mine.fired

    # --- input ---------------------------------------------------------------------------
    def add_batch(self, batch: TrackBatch) -> BatchResult:
        t = batch.captured_at.timestamp()
        if t <= self.now:
            return BatchResult(False)
        self.now = t
        self.ring.trim(t)
        self.model_version = batch.model_version
        if self.judged and min(self.judged.values()) < t:
            self.judged = {k: v for k, v in self.judged.items() if v >= t}
        kept = [
            o
            for o in batch.tracks
            if o.ground_xy is not None and not t <= self.judged.get(o.track_id, -math.inf)
        ]
        new = tuple(o.track_id for o in kept if o.track_id not in self.open)
        for tid in new:
            self.open[tid] = t
        self.store.add(batch.model_copy(update={"tracks": kept}))
        w = self.config.count_window_s
        start = math.floor(t / w) * w
        new_window = start != self.window_start
        self.window_start = start
        # every observation: a replay rebuilds the open window from its first record, the
        # parts of judged tracks in it included
        counts = self.counter.add_frame(
            t,
            [
                Observation(o.track_id, o.vehicle_class, o.ground_xy, o.speed_kmh)
                for o in batch.tracks
                if o.ground_xy is not None
            ],
        )
        return BatchResult(True, new, new_window, tuple(counts))

    def add_frame(self, t: float, jpeg: bytes) -> bool:
        if t <= self.frames_now:
            return False
        self.frames_now = t
        self.ring.add(t, jpeg)
        # tracks may run ahead of frames (a backlog read tracks first): keep the frames of
        # each due finding as they come, before a burst of later ones pushes them out
        for key, v in self._due.items():
            self._keep_frames(key, v)
        return True

    # --- judgement -----------------------------------------------------------------------
    def expire(self, signals: SignalTimeline, *, flush: bool = False) -> Expired:
        """Call after every batch.  Judges, by event time:

        * the open tracks, every ``judge_every_s`` (:meth:`_judge_open`): their settled
          findings are reported as soon as the frames after them are in (:meth:`_report_due`);
        * the tracks unseen for ``track_idle_s`` (all open tracks with ``flush``) and the
          open ones older than ``track_max_age_s``, which are then cut to their tail."""
        cfg = self.config
        step = math.floor(self.now / cfg.judge_every_s)
        if self.open and step > self._judged_step:
            self._judged_step = step
            self._judge_open(signals)
        closed = self.store.expire(math.inf if flush else self.now, cfg.track_idle_s)
        for c in closed:
            self.open.pop(c.track_id, None)
        old = [tid for tid, t0 in self.open.items() if self.now - t0 > self.max_age_s]
        aged = [a for tid in sorted(old) if (a := self.store.history(tid)) is not None]
        ending = {h.track_id: h for h in [*closed, *aged]}
        reported = self._report_due(signals, ending, flush=flush)
        if not ending:
            return Expired(judged=reported)
        judged = reported + self._judge(list(ending.values()), signals)
        cuts = []
        for h in aged:
            dropped = self.store.cut(h.track_id, self.now - self.tail_s)
            if dropped is not None:
                self.open[h.track_id] = dropped[1]
                cuts.append(Cut(h.track_id, *dropped))
        gone = {h.track_id for h in closed} | {c.track_id for c in cuts}
        self._snapshots = {k: s for k, s in self._snapshots.items() if k[0] not in gone}
        horizon = self.now - self.max_age_s
        self.fired = {k: v for k, v in self.fired.items() if v[0] >= horizon or k in self.open}
        return Expired(tuple(closed), judged, tuple(cuts))

    def _judge_open(self, signals: SignalTimeline) -> None:
        """Every rule on the open tracks.  A finding is due, to be reported, when it is
        settled (see :class:`~streams.traffic.rules.RuleViolation`) and so is the track's
        class: its vote has held for ``class_settled_s`` and for ``class_settled_share`` of
        the track's age (the vote sums the track's detections, so an old winner is not
        overtaken quickly).  A red light also waits until the camera's event time is
        ``signal_lag_s`` past the commit point: a phase change may still be on its way.
        For the other findings the frames around them are kept: the ring may have lost them
        by the time the track ends (a vehicle stopped for a minute)."""
        cfg = self.config
        # a track without new points since the last time finds what it found then
        lengths = self.store.lengths()
        grown = {
            tid: h
            for tid, n in lengths.items()
            if self._judged_len.get(tid) != n and (h := self.store.history(tid)) is not None
        }
        self._judged_len = lengths
        for v in evaluate_all(grown.values(), self.calibration, signals):
            key = (v.track_id, v.kind)
            if key in self._due or v.kind in self.fired.get(v.track_id, (0.0, frozenset()))[1]:
                continue
            if cfg.judge_open and self._settled(v, grown[v.track_id]):
                self._due[key] = v
            elif math.isfinite(self.frames_now):  # else no frames to keep
                self._keep_frames(key, v)

    def _settled(self, v: RuleViolation, track: TrackHistory) -> bool:
        if not v.settled:
            return False
        held, age = self.now - track.class_since, self.now - float(track.t[0])
        if held < max(self.config.class_settled_s, self.config.class_settled_share * age):
            return False
        if v.kind is ViolationKind.red_light:
            return self.now >= float(v.details["committed_t"]) + self.config.signal_lag_s
        return True

    def _keep_frames(self, key: tuple[int, ViolationKind], v: RuleViolation) -> None:
        """Keep the frames the ring has around ``v`` now, and those kept for it before (the
        ring moves on); a finding that moved by more than 0.5 s starts again."""
        n = self.config.frames_each_side
        snap = self._snapshots.get(key)
        if snap is None or abs(snap.t - v.t) > 0.5:
            before, after = self.ring.around(v.t, n, n)
            if before or snap is None:
                self._snapshots[key] = _Snapshot(v.t, before, after)
        elif len(snap.after) < n:  # the frames after it are still coming in
            before, after = self.ring.around(snap.t, n, n)
            if before and (not snap.before or before[-1].t > snap.before[-1].t):
                snap.before = before  # closer to it
            if len(after) > len(snap.after):
                snap.after = after

    def _report_due(
        self, signals: SignalTimeline, ending: dict[int, TrackHistory], *, flush: bool
    ) -> tuple[Judged, ...]:
        """The due findings whose ``frames_each_side`` frames after them are in, or whose
        camera's frames are ``evidence_wait_s`` past them without those, and all of those of
        tracks ending now.  (A camera's frames may come after its tracks, up to the pacer's
        lead; a camera without frames reports when the track ends.)"""
        out = []
        n, wait = self.config.frames_each_side, self.config.evidence_wait_s
        for key, v in list(self._due.items()):
            track = ending.get(v.track_id)
            waiting = track is None and not flush and self.frames_now < v.t + wait
            if waiting and len(self.ring.around(v.t, 0, n)[1]) < n:
                continue  # the frames after it are still to come
            track = track or self.store.history(v.track_id)
            del self._due[key]
            assert track is not None, "a due finding is reported before its track ends"
            out.append(Judged(v, self._evidence(v, track, signals)))
            last, kinds = self.fired.get(v.track_id, (-math.inf, frozenset()))
            self.fired[v.track_id] = (max(last, self.now), kinds | {v.kind})
        return tuple(out)

    def _judge(self, tracks: list[TrackHistory], signals: SignalTimeline) -> tuple[Judged, ...]:
        """Every rule on ``tracks``, but no kind a track was already reported for."""
        by_id = {h.track_id: h for h in tracks}
        out = []
        for v in evaluate_all(tracks, self.calibration, signals):
            if v.kind in self.fired.get(v.track_id, (0.0, frozenset()))[1]:
                continue  # an earlier segment of the track (before a cut or a gap) fired it
            out.append(Judged(v, self._evidence(v, by_id[v.track_id], signals)))
        for h in tracks:
            kinds = frozenset(j.violation.kind for j in out if j.violation.track_id == h.track_id)
            prev = self.fired.get(h.track_id)
            if kinds or prev is not None:
                before = prev[1] if prev is not None else frozenset()
                self.fired[h.track_id] = (float(h.t[-1]), before | kinds)
        return tuple(out)

    def flush_counts(self) -> list[LaneCount]:
        self.window_start = None
        return self.counter.flush()

    def _frames(self, v: RuleViolation) -> tuple[list[TimedFrame], list[TimedFrame]]:
        n = self.config.frames_each_side
        before, after = self.ring.around(v.t, n, n)
        snap = self._snapshots.get((v.track_id, v.kind))
        if snap is not None and _near(snap.before + snap.after, v.t) > _near(before + after, v.t):
            return snap.before, snap.after
        return before, after

    def _evidence(self, v: RuleViolation, track: TrackHistory, signals: SignalTimeline) -> Evidence:
        before, after = self._frames(v)
        crop = None
        frames = before + after
        if frames and len(track.bbox):
            f = min(frames, key=lambda fr: abs(fr.t - v.t))
            k = int(np.argmin(np.abs(track.t - f.t)))
            try:
                crop = crop_jpeg(f.jpeg, [float(c) for c in track.bbox[k]])
            except ValueError:
                crop = None  # box outside the frame or a damaged JPEG: the frames remain
        signal = signal_states(signals, v.t)
        group = v.details.get("signal_group")
        if isinstance(group, str):
            state = signals.state_at(group, v.t)
            signal["violated_group"] = group
            signal["violated_state"] = str(state or SignalState.off)
        return Evidence(
            violation=v,
            track=track,
            calibration=self.calibration,
            model_version=self.model_version,
            frames_before=before,
            frames_after=after,
            crop=crop,
            signal=signal,
        )
