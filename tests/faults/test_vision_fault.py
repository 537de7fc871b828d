"""Fault suite, vision worker: ``kill -9`` mid-replay changes nothing downstream.

The shipped traffic capture (``tests/captures/intersection_60s.cap``) goes through the real
pipeline as in ``tests/integration/test_traffic_replay.py``: capture -> Kafka -> ``citystream
vision worker`` (shipped YOLO weights) -> ``traffic.tracks`` -> ``citystream traffic worker``
-> ``citystream sink`` -> TimescaleDB.  Once cleanly (a module fixture), then once per fault
with the vision worker killed with SIGKILL after a seeded random number of frames (and a
random fraction of a commit interval) and started again at once:

* ``vision``: just that;
* ``vision, commit lost``: as if the offset commit after the last snapshot had failed (the
  group's committed offset is set back two snapshots while the worker is down): the worker
  must resume at its snapshot, not feed frames through the restored trackers twice;
* ``vision, sent past snapshot``: as if the worker had sent the track batches of more frames
  than its last snapshot covers (snapshot file and committed offset both set back two
  snapshots, a consistent older pair): those frames are processed and sent again.

Between the passes every topic is emptied (``delete_records``) and the camera's rows and
reference views are deleted, so all passes see the same input and their results can be
compared row for row (the capture's event times are the same).  After the drain:

* every frame has a ``TrackBatch``; frames sent twice (only those past the snapshot the
  worker resumed from) say the same both times;
* the batches the traffic worker acts on (the first per frame: later ones are stale to it)
  are those of the clean pass: the same track ids in the same order, classes, and boxes,
  confidences, ground points and speeds equal up to one unit of their rounding (0.1 px,
  1e-4, 1 mm, 0.01 km/h), see below;
* no track id is used for two vehicles (observations matched to the capture's true
  vehicles, IoU >= 0.5) unless the clean pass did the same (a tracker id switch);
* the violations (ids are deterministic: kind, camera, track id, time) and the lane counts
  equal the clean pass's, and no two violations of one kind lie within 2 s and 3 m.

Why one rounding unit: the worker's state is restored bit for bit (the unit tests in
``tests/unit/test_vision_checkpoint.py`` check exact equality), but YOLO on the CPU does not
give bit-identical results for a frame in batches of different sizes (measured on the shipped
capture: a batch of one frame against one of 16 to 32, 6e-5 px and 3e-7 in confidence), and
the batches a frame lands in depend on when the worker polled, killed or not.  After
rounding, a value at a rounding edge then differs by one unit (seen: a confidence of 0.8495
against 0.8494 in one frame of 301).  Everything else (ids, violations, counts) is compared
exactly.  Each fault prints a row with the columns of the suite's table
(``tests/faults/test_faults.py``).
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("ultralytics")
pytest.importorskip("cv2")

from citystream.capture import CaptureReader, read_truth
from citystream.stack.private import free_port
from citystream.table import format_table
from citystream.testing import Stack, capture_path, replay_capture, wait_for_drain, wait_until
from schemas.messages import TrackBatch
from schemas.topics import TOPICS
from simulators.intersection.camera import VirtualCamera
from simulators.intersection.reference import Placement, register_reference
from streams.traffic.calibration import Calibration
from streams.vision.checkpoint import decode
from streams.vision.tracking import box_iou
from tests.faults.test_faults import HEADERS, metric
from tests.integration.test_traffic_replay import _alive, _stop

pytestmark = pytest.mark.integration
CAPTURE = "intersection_60s.cap"
SEED = 6
TRACKS = TOPICS["traffic.tracks"]
#: fault rows of this module (same columns as the suite's table; see the module docstring)
ROWS: list[tuple[object, ...]] = []
NOTE = (
    "vision rows: in flight: frames published but not committed by the vision worker at the "
    "kill; lost: frames without a track batch + violations and lane count rows missing "
    "against the clean pass; duplicated: violations twice (2 s, 3 m) or not in the clean "
    "pass + extra count rows; replayed: frames whose track batch was sent twice; rows again: "
    "kill -> first batch of the restarted worker; drained: kill -> every frame tracked."
)


@dataclass
class Pass:
    """One pass of the capture through the pipeline, and what it left."""

    batches: list[TrackBatch]  # traffic.tracks of the camera, in topic order
    violations: list[tuple[str, str, datetime, int]]  # id, kind, occurred_at, track id
    counts: dict[tuple[str, str, str, datetime], int]  # lane, movement, class, window
    row: dict[str, Any] = field(default_factory=dict)

    @property
    def effective(self) -> dict[int, TrackBatch]:
        """The batch of each frame the traffic worker acts on: the first (copies are stale)."""
        out: dict[int, TrackBatch] = {}
        for b in self.batches:
            out.setdefault(b.frame_seq, b)
        return out


class Tail:
    """The camera's batches on ``traffic.tracks`` as they arrive (no consumer group)."""

    def __init__(self, stack: Stack, camera: str) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.camera = camera.encode()
        self.consumer = KafkaConsumer(
            bootstrap_servers=stack.settings.kafka.bootstrap, enable_auto_commit=False
        )
        parts = self.consumer.partitions_for_topic(TRACKS.name)
        assert parts, "no traffic.tracks topic"
        tps = [TopicPartition(TRACKS.name, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.seqs: list[int] = []

    def poll(self) -> int:
        for msgs in self.consumer.poll(timeout_ms=300).values():
            for m in msgs:
                if m.key == self.camera:
                    batch = TRACKS.codec.decode(m.value)
                    assert isinstance(batch, TrackBatch)
                    self.seqs.append(batch.frame_seq)
        return len(self.seqs)

    def close(self) -> None:
        self.consumer.close()


def wipe(stack: Stack, camera: str) -> None:
    """Empty every topic (``delete_records`` up to the end), delete the camera's result rows
    and the health watchdog's reference views of it (the next pass learns them again)."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import KafkaAdminClient

    bootstrap = stack.settings.kafka.bootstrap
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        topics = [t for t in consumer.topics() if not t.startswith("__")]
        tps = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t)]
        ends = {tp: off for tp, off in consumer.end_offsets(tps).items() if off > 0}
        if ends:
            admin.delete_records(ends)
    finally:
        admin.close()
        consumer.close()
    for view in (stack.settings.state_dir / "vision" / "reference-views").glob(f"{camera}.*"):
        view.unlink()
    with stack.db() as conn:
        conn.execute("DELETE FROM violations WHERE camera_id = %s", (camera,))
        conn.execute("DELETE FROM traffic_counts WHERE camera_id = %s", (camera,))


def committed(stack: Stack, group: str) -> dict[tuple[str, int], int]:
    """The group's committed offsets."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=stack.settings.kafka.bootstrap)
    try:
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    finally:
        admin.close()
    return {(tp.topic, tp.partition): o.offset for tp, o in offsets.items()}


def set_committed(stack: Stack, group: str, offsets: dict[tuple[str, int], int]) -> None:
    """Set the group's committed offsets, once its killed member's session has expired."""
    from kafka import TopicPartition
    from kafka.admin import KafkaAdminClient
    from kafka.structs import OffsetAndMetadata

    want = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}
    admin = KafkaAdminClient(bootstrap_servers=stack.settings.kafka.bootstrap)
    errors: list[object] = []

    def done() -> bool:
        errors[:] = [e for e in admin.alter_group_offsets(group, want).values() if e.errno]
        return not errors

    try:
        wait_until(done, 120, f"the offsets of {group} to be settable ({errors})")
    finally:
        admin.close()


class Snapshots:
    """Copies of the worker's snapshot file as it rewrites it (for the injected faults)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.copies: list[tuple[bytes, dict[tuple[str, int], int]]] = []

    def poll(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        if not self.copies or self.copies[-1][0] != data:
            self.copies.append((data, decode(data).offsets))

    def older(self, before: dict[tuple[str, int], int], frames: int) -> bytes:
        """The latest copy at least ``frames`` frames behind ``before``."""
        for data, offsets in reversed(self.copies):
            if offsets and all(o <= before.get(k, o) - frames for k, o in offsets.items()):
                return data
        raise AssertionError(f"no snapshot {frames} frames behind {before}: {self.copies[-3:]}")


FAULTS = ("vision", "vision, commit lost", "vision, sent past snapshot")


def run_pass(stack: Stack, tmp: Path, camera: str, frames: int, fault: str | None) -> Pass:
    tag = uuid.uuid4().hex[:8]
    tmp.mkdir(parents=True, exist_ok=True)
    logs = {n: tmp / f"{n}.log" for n in ("vision", "vision2", "traffic", "sink")}
    groups = {n: f"f-vision-{n}-{tag}" for n in ("vision", "traffic", "sink")}
    snapshot = stack.settings.state_dir / "vision" / f"{groups['vision']}.trackers.json"
    port = free_port()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    vision_args = (
        *("-m", "citystream.cli", "vision", "worker", "--from-latest"),
        *("--group-id", groups["vision"], "--metrics-port", str(port)),
    )
    row: dict[str, Any] = {}
    tail = Tail(stack, camera)
    vision_log = logs["vision"]
    try:
        procs["vision"] = stack.spawn(logs["vision"], *vision_args)

        def ready() -> bool:
            _alive(procs["vision"], logs["vision"])
            return "starting at the end of" in logs["vision"].read_text(errors="replace")

        wait_until(ready, 180, "the vision worker to load its model and join")
        start = committed(stack, groups["vision"])  # the start position, committed at once
        t0 = time.monotonic()
        assert replay_capture(stack, capture_path(CAPTURE)).records == 349
        if fault is not None:
            rng = random.Random(f"{SEED}-{fault}")
            at = rng.randint(frames // 5, 3 * frames // 4)
            snaps = Snapshots(snapshot)

            def reached() -> bool:
                snaps.poll()
                return tail.poll() >= at

            wait_until(reached, 300, f"{at} track batches")
            time.sleep(rng.uniform(0.0, 1.0))  # anywhere between two commits
            procs["vision"].send_signal(signal.SIGKILL)
            procs["vision"].wait(timeout=30)
            killed = time.monotonic()
            sent, done_at = tail.poll(), committed(stack, groups["vision"])
            assert sent < frames, "the kill must come mid-replay"
            snaps.poll()
            last = snaps.copies[-1][1]
            key = ("camera.frames", decode(snaps.copies[-1][0]).cameras[camera].partition)
            done = done_at[key] - start[key]
            if fault != "vision":
                data = snaps.older(last, 2 * 8)  # two detector batches or more back
                older = decode(data).offsets
                set_committed(stack, groups["vision"], older)
                if fault == "vision, sent past snapshot":
                    tmp_file = snapshot.with_name(snapshot.name + ".test")
                    tmp_file.write_bytes(data)
                    tmp_file.replace(snapshot)
            resumes = decode(snapshot.read_bytes()).offsets[key] - start[key]
            vision_log = logs["vision2"]
            procs["vision"] = stack.spawn(vision_log, *vision_args)
            wait_until(lambda: tail.poll() > sent, 300, "batches from the restarted worker")
            row.update(
                moment=round(killed - t0, 1),
                in_flight=frames - done,  # published, not committed by the worker at the kill
                past_snapshot=max(sent - resumes, 0),  # sent beyond what the worker resumes at
                again=round(time.monotonic() - killed, 1),
            )
        else:
            killed = t0

        def all_frames() -> bool:
            tail.poll()
            return len(set(tail.seqs)) >= frames

        wait_until(all_frames, 400, "a track batch for every frame")
        wait_for_drain(stack, {groups["vision"]: ["camera.frames"]}, timeout_s=120)
        row["drained"] = round(time.monotonic() - killed, 1)
        row["snapshots"] = metric(port, 'snapshot_writes_total{outcome="ok"}')
        _alive(procs["vision"], vision_log)

        # the traffic worker reads both inputs from their start (paced against each other)
        cli = ("-m", "citystream.cli")
        evidence = tmp / "evidence"
        procs["sink"] = stack.spawn(
            logs["sink"],
            *(*cli, "sink", "--topics", "traffic.violations", "traffic.counts"),
            *("--group-id", groups["sink"]),
        )
        procs["traffic"] = stack.spawn(
            logs["traffic"],
            *(*cli, "traffic", "worker", "--idle-flush", "5", "--evidence-dir", str(evidence)),
            *("--group-id", groups["traffic"]),
        )
        wait_for_drain(
            stack, {groups["traffic"]: ["traffic.tracks", "camera.frames"]}, timeout_s=180
        )
        wait_for_drain(
            stack,
            {groups["sink"]: ["traffic.violations", "traffic.counts"]},
            timeout_s=60,
            settle_s=3,
        )
        for n, proc in procs.items():
            _alive(proc, vision_log if n == "vision" else logs[n])
    finally:
        tail.close()
        _stop(procs)
    for n, proc in procs.items():
        log = vision_log if n == "vision" else logs[n]
        assert proc.returncode == 0, log.read_text(errors="replace")[-3000:]
    if fault is not None:
        text = vision_log.read_text(errors="replace")
        assert "trackers of 1 of 1 camera(s) restored" in text, text[-3000:]
        if fault == "vision, commit lost":
            assert "resumes at the snapshot's offset" in text, text[-3000:]
    assert snapshot.exists()
    row["snapshot_bytes"] = snapshot.stat().st_size

    codec = TRACKS.codec
    batches = [
        b
        for r in stack.read_topic(TRACKS.name, where=lambda r: r.key == camera.encode())
        if isinstance(b := codec.decode(r.value), TrackBatch)
    ]
    with stack.db() as conn:
        violations = conn.execute(
            "SELECT violation_id, kind, occurred_at, track_id FROM violations "
            "WHERE camera_id = %s ORDER BY occurred_at, violation_id",
            (camera,),
        ).fetchall()
        counts = conn.execute(
            "SELECT lane_id, movement, vehicle_class, window_start, count FROM traffic_counts "
            "WHERE camera_id = %s",
            (camera,),
        ).fetchall()
    return Pass(batches, violations, {tuple(c[:4]): c[4] for c in counts}, row)


def difference(got: TrackBatch | None, want: TrackBatch, *, tolerance: bool = True) -> str:
    """How ``got`` differs from ``want`` ('' if not at all, or, with ``tolerance``, by at
    most one rounding unit of a float: 0.1 px, 1e-4 in confidence, 1 mm, 0.01 km/h)."""
    if got is None:
        return "no batch"
    if [o.track_id for o in got.tracks] != [o.track_id for o in want.tracks]:
        return (
            f"track ids {[o.track_id for o in got.tracks]} != {[o.track_id for o in want.tracks]}"
        )
    out = []
    for g, w in zip(got.tracks, want.tracks, strict=True):
        if g.vehicle_class != w.vehicle_class or (g.ground_xy is None) != (w.ground_xy is None):
            out.append(f"{g.track_id}: {g} != {w}")
            continue
        pairs = [
            (g.bbox.x1, w.bbox.x1, 0.1),
            (g.bbox.y1, w.bbox.y1, 0.1),
            (g.bbox.x2, w.bbox.x2, 0.1),
            (g.bbox.y2, w.bbox.y2, 0.1),
            (g.confidence, w.confidence, 1e-4),
            *zip(g.ground_xy or (), w.ground_xy or (), (1e-3, 1e-3), strict=False),
            (g.speed_kmh or 0.0, w.speed_kmh or 0.0, 0.01),
        ]
        slack = 1.001 if tolerance else 0.0
        if any(abs(a - b) > slack * unit for a, b, unit in pairs) or (
            (g.speed_kmh is None) != (w.speed_kmh is None)
        ):
            out.append(f"{g.track_id}: {g} != {w}")
    return "; ".join(out)


def vehicles_of_ids(p: Pass, truth: dict[datetime, list[dict[str, Any]]]) -> dict[int, set[int]]:
    """Track id -> the true vehicles its boxes cover (IoU >= 0.5) in >= 2 frames each."""
    seen: dict[int, Counter[int]] = defaultdict(Counter)
    for b in p.effective.values():
        objs = truth.get(b.captured_at, [])
        if not objs or not b.tracks:
            continue
        true_boxes = np.array([o["bbox"] for o in objs], dtype=float)
        boxes = np.array([[o.bbox.x1, o.bbox.y1, o.bbox.x2, o.bbox.y2] for o in b.tracks])
        iou = box_iou(boxes, true_boxes)
        for i, o in enumerate(b.tracks):
            j = int(iou[i].argmax())
            if iou[i, j] >= 0.5:
                seen[o.track_id][int(objs[j]["track_id"])] += 1
    return {tid: {v for v, n in c.items() if n >= 2} for tid, c in seen.items()}


def near_duplicates(p: Pass) -> list[tuple[str, str]]:
    """Pairs of violations of one kind within 2 s and 3 m (ground point of the track)."""
    where: dict[tuple[int, datetime], tuple[float, float] | None] = {}
    for b in p.effective.values():
        for o in b.tracks:
            where[(o.track_id, b.captured_at)] = o.ground_xy
    times = sorted(p.effective.values(), key=lambda b: b.captured_at)

    def at(tid: int, t: datetime) -> tuple[float, float] | None:
        best = min(times, key=lambda b: abs((b.captured_at - t).total_seconds()))
        return where.get((tid, best.captured_at))

    out = []
    vs = p.violations
    for i, (id1, kind1, t1, tid1) in enumerate(vs):
        for id2, kind2, t2, tid2 in vs[i + 1 :]:
            if kind1 != kind2 or abs((t2 - t1).total_seconds()) > 2.0:
                continue
            p1, p2 = at(tid1, t1), at(tid2, t2)
            if p1 is None or p2 is None or float(np.hypot(p1[0] - p2[0], p1[1] - p2[1])) <= 3.0:
                out.append((id1, id2))
    return out


@dataclass(frozen=True)
class Capture:
    camera: str
    seqs: list[int]
    truth: dict[datetime, list[dict[str, Any]]]  # frame time -> true objects
    clean: Pass


@pytest.fixture(scope="module")
def capture(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Capture]:
    """The capture's camera registered, and its clean pass through the pipeline."""
    path = capture_path(CAPTURE)
    records = read_truth(path)
    calibration = Calibration.from_dict(records[0]["calibration"])
    camera = calibration.camera_id
    width, height = calibration.image_size
    truth = {
        datetime.fromisoformat(r["captured_at"]): r["objects"]
        for r in records
        if r["kind"] == "frame"
    }
    with CaptureReader(path) as reader:
        codec = TOPICS["camera.frames"].codec
        seqs = [codec.decode(r.value).header.seq for r in reader if r.topic == "camera.frames"]
    register_reference(
        stack.settings.db.dsn,
        calibration,
        VirtualCamera(width=width, height=height),
        Placement(name="capture intersection_60s"),
        {"source": f"tests/captures/{CAPTURE}"},
    )
    try:
        clean = run_pass(stack, tmp_path_factory.mktemp("clean"), camera, len(seqs), None)
        assert sorted(b.frame_seq for b in clean.batches) == sorted(seqs)
        assert clean.violations, "the capture has violations; the clean pass found none"
        yield Capture(camera, seqs, truth, clean)
    finally:
        with stack.db() as conn:
            conn.execute("DELETE FROM cameras WHERE id = %s", (camera,))


@pytest.mark.timeout(900)  # a pass of YOLO on the CPU and two model loads (and the clean pass)
@pytest.mark.parametrize("fault", FAULTS)
def test_vision_worker_kill_minus_nine_changes_nothing_downstream(
    fault: str, stack: Stack, capture: Capture, tmp_path: Path
) -> None:
    wipe(stack, capture.camera)
    clean, seqs = capture.clean, capture.seqs
    faulty = run_pass(stack, tmp_path, capture.camera, len(seqs), fault)

    per_frame: dict[int, list[TrackBatch]] = defaultdict(list)
    for b in faulty.batches:
        per_frame[b.frame_seq].append(b)
    lost_frames = sorted(set(seqs) - set(per_frame))
    copies = {s: bs for s, bs in per_frame.items() if len(bs) > 1}
    differing = sorted(s for s, bs in copies.items() if any(difference(b, bs[0]) for b in bs[1:]))
    # what the traffic worker acted on, frame by frame, against the clean pass
    eff, want = faulty.effective, clean.effective
    changed = sorted(s for s in want if eff.get(s) != want[s])  # exactly
    moved = {s: d for s in changed if (d := difference(eff.get(s), want[s]))}  # beyond rounding
    # ids used for two vehicles beyond those of the clean pass (tracker id switches)
    two = {t: frozenset(v) for t, v in vehicles_of_ids(faulty, capture.truth).items() if len(v) > 1}
    two_clean = {
        t: frozenset(v) for t, v in vehicles_of_ids(clean, capture.truth).items() if len(v) > 1
    }
    merged = {tid: v for tid, v in two.items() if two_clean.get(tid) != v}
    dups = [d for d in near_duplicates(faulty) if d not in set(near_duplicates(clean))]
    vio, vio_clean = set(faulty.violations), set(clean.violations)
    missing_counts = {k: n for k, n in clean.counts.items() if faulty.counts.get(k) != n}
    extra_counts = {k: n for k, n in faulty.counts.items() if k not in clean.counts}

    r = faulty.row
    ROWS.append(
        (
            fault,
            r["moment"],
            0.0,
            r["in_flight"],
            len(lost_frames) + len(vio_clean - vio) + len(missing_counts),
            len(dups) + len(vio - vio_clean) + len(extra_counts),
            len(copies),
            0,
            r["again"],
            r["drained"],
        )
    )
    print(f"\n{format_table(list(HEADERS), ROWS)}")
    print(NOTE)
    print(
        f"clean: {len(clean.batches)} batches, {len(clean.violations)} violations, "
        f"{sum(clean.counts.values())} counted ({len(clean.counts)} rows), "
        f"ids on two vehicles: {len(two_clean)}; snapshot {clean.row['snapshot_bytes']} B, "
        f"{clean.row['snapshots']} written\n"
        f"{fault}: {r['past_snapshot']} frames sent past the snapshot resumed from; "
        f"{len(faulty.batches)} batches ({len(copies)} frames sent twice, "
        f"{len(differing)} copies differ), {len(changed)} frames differ in a float "
        f"({len(moved)} beyond a rounding unit), "
        f"{len(faulty.violations)} violations, {sum(faulty.counts.values())} counted; "
        f"snapshot {r['snapshot_bytes']} B"
    )
    # the restarted worker resumed at its snapshot: only frames sent past it can have been
    # sent again (with the snapshot's trackers), never the frames it covers
    assert len(copies) <= r["past_snapshot"], (len(copies), r["past_snapshot"])
    if fault == "vision, sent past snapshot":
        assert copies, "the fault is meant to make the worker send frames again"
    assert not lost_frames, f"frames without a TrackBatch: {lost_frames[:20]}"
    assert not differing, f"a replayed frame got other tracks: {differing[:10]}"
    for s in changed[:5]:
        print(f"frame {s}: {difference(eff.get(s), want[s], tolerance=False)}")
    assert not moved, f"frames whose tracks differ from the clean pass: {moved}"
    assert not merged, f"track ids used for two vehicles: {merged}"
    assert not dups, f"duplicated violations: {dups}"
    assert vio == vio_clean, (sorted(vio - vio_clean), sorted(vio_clean - vio))
    assert not missing_counts and not extra_counts, (missing_counts, extra_counts)
