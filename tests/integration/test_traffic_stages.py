"""The vision and traffic workers on the real stack (Kafka, TimescaleDB), as subprocesses.

1. Tracks built from the intersection simulator's ground truth (injected violators), its
   signal phases and plan, and its rendered JPEG frames -> ``citystream traffic worker`` ->
   ``citystream sink`` -> violations with verifiable evidence bundles, lane counts and a
   Webster recommendation in TimescaleDB.  Detections are compared with the simulator's truth.
2. Rendered frames -> ``citystream vision worker`` with the shipped YOLO weights ->
   ``traffic.tracks`` (ground positions checked against the truth); an undecodable frame and
   a frame of an unknown camera -> the DLQ; a frozen feed -> one ``camera_frozen`` alert.
3. The same vision worker picks up a new calibration written to the DB while it runs.
4. The traffic worker killed with SIGKILL mid-stream and restarted: same results as one
   clean pass, no track judged twice.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("libsumo")
pytest.importorskip("cv2")

from citystream.testing import Stack, wait_until
from schemas.codecs import Frame
from schemas.messages import (
    BBox,
    FrameHeader,
    SignalPhaseChange,
    SignalPlan,
    TrackBatch,
    TrackObservation,
)
from schemas.topics import DEAD_LETTER_CODEC, TOPICS
from simulators.intersection.calibration import build_calibration
from simulators.intersection.camera import VirtualCamera
from simulators.intersection.render import Renderer
from simulators.intersection.sim import (
    IntersectionSim,
    ScenarioConfig,
    TruthViolation,
    ViolatorRates,
)
from streams.traffic.calibration import Calibration
from streams.traffic.camera_state import CameraState, StateConfig
from streams.traffic.evidence import verify_bundle
from streams.traffic.signals import SignalTimeline
from streams.vision.tracking import box_iou

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
HOT = ViolatorRates(red_light=200, speeding=200, wrong_way=100, illegal_stop=100, bus_lane=200)
SECONDS = 100.0
TAG = uuid.uuid4().hex[:6]
WEIGHTS = sorted((ROOT / "streams" / "vision" / "models").glob("*.pt"))


def spawn(stack: Stack, log: Path, *args: str, **env: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "citystream.cli", *args],
            cwd=ROOT,
            env={**stack.env(), **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop(*procs: subprocess.Popen[bytes]) -> list[int]:
    for p in procs:
        p.terminate()
    return [p.wait(timeout=60) for p in procs]


@pytest.fixture
def cameras(stack: Stack) -> Iterator[list[str]]:
    """Camera ids a test registers; their rows are deleted afterwards, so later workers
    reading the shared topics from the start dead-letter that test's data instead of
    processing it again."""
    ids: list[str] = []
    yield ids
    with stack.db() as conn:
        conn.execute("DELETE FROM cameras WHERE id = ANY(%s)", (ids,))


def register(stack: Stack, intersection_id: str, *cals: Calibration, version: int = 1) -> None:
    with stack.db() as conn:
        conn.execute(
            "INSERT INTO intersections (id, name, lon, lat) VALUES (%s, %s, 106.7, 10.78) "
            "ON CONFLICT (id) DO NOTHING",
            (intersection_id, f"test {intersection_id}"),
        )
        for cal in cals:
            conn.execute(
                "INSERT INTO cameras (id, intersection_id, width, height, calibration, "
                "calibration_version) VALUES (%s, %s, %s, %s, %s::jsonb, %s) "
                "ON CONFLICT (id) DO UPDATE SET calibration = EXCLUDED.calibration, "
                "calibration_version = EXCLUDED.calibration_version",
                (cal.camera_id, intersection_id, *cal.image_size, cal.to_json(), version),
            )


def other_arms_calibration(net_file: str, camera_id: str, intersection_id: str) -> Calibration:
    """An overhead view of the N, E and W approach lanes (the S camera has the south)."""
    import sumolib

    from simulators.intersection.plan import read_links
    from streams.traffic.geometry import polyline_to_polygon

    net = sumolib.net.readNet(net_file)
    rank = {"through": 0, "right": 1, "left": 2, "u_turn": 3}
    group_of: dict[str, tuple[str, str]] = {}
    for link in read_links(net_file):
        cur = group_of.get(link.in_lane)
        if cur is None or rank[link.movement] < rank[cur[1]]:
            group_of[link.in_lane] = (link.group, link.movement)
    lanes = []
    for arm in "NEW":
        for lane in net.getEdge(f"{arm}_in").getLanes():
            shape = np.array(lane.getShape(), dtype=np.float64)
            d = (shape[-1] - shape[0]) / np.linalg.norm(shape[-1] - shape[0])
            n = np.array([-d[1], d[0]]) * lane.getWidth() / 2
            group, movement = group_of[lane.getID()]
            lanes.append(
                {
                    "lane_id": lane.getID(),
                    "approach": arm,
                    "movement": movement,
                    "signal_group": group,
                    "direction": d.tolist(),
                    "polygon": polyline_to_polygon(shape, lane.getWidth()).tolist(),
                    "stop_line": [(shape[-1] + n).tolist(), (shape[-1] - n).tolist()],
                }
            )
    return Calibration.from_dict(
        {
            "camera_id": camera_id,
            "intersection_id": intersection_id,
            "calibration_version": "1",
            "image_size": [1000, 1000],
            "homography": [[0.5, 0, -250], [0, -0.5, 250], [0, 0, 1]],
            "speed_limit_kmh": 50,
            "lanes": lanes,
        }
    )


@dataclass
class Scenario:
    intersection_id: str
    cam_s: Calibration
    cam_o: Calibration
    plan: SignalPlan
    phases: list[SignalPhaseChange] = field(default_factory=list)
    tracks: list[TrackBatch] = field(default_factory=list)
    frames: list[Frame] = field(default_factory=list)
    truth: list[TruthViolation] = field(default_factory=list)
    seen_frames: Counter[int] = field(default_factory=Counter)  # track id -> frames in view


def _obs(track_id: int, cls: Any, bbox: Any, xy: Any, speed: float) -> TrackObservation:
    return TrackObservation(
        track_id=track_id,
        vehicle_class=cls,
        confidence=0.9,
        bbox=BBox(x1=bbox[0], y1=bbox[1], x2=bbox[2], y2=bbox[3]),
        ground_xy=(round(xy[0], 3), round(xy[1], 3)),
        speed_kmh=max(speed, 0.0),
    )


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    """100 s of the south camera's view (10 fps tracks from ground truth, 5 fps frames) and
    an overhead 'camera' of the other arms (tracks only), with injected violators."""
    iid = f"int-t{TAG}"
    cfg = ScenarioConfig(intersection_id=iid, seed=5, violators=HOT)
    cam = VirtualCamera(width=640, height=360)
    with IntersectionSim(cfg) as sim:
        net = str(sim.net_file)
        s = Scenario(
            iid,
            build_calibration(cfg, cam, net, camera_id=f"cam-s-{TAG}", version="1"),
            other_arms_calibration(net, f"cam-o-{TAG}", iid),
            sim.plan,
        )
        renderer = Renderer(cam, net, s.cam_s)
        for k, step in enumerate(sim.run(SECONDS)):
            at = datetime.fromtimestamp(step.t, UTC)
            s.phases += step.phase_changes
            img, truth = renderer.render(step)
            s.seen_frames.update(g.track_id for g in truth)
            obs = [
                _obs(g.track_id, g.vehicle_class, g.bbox, g.ground_xy, g.speed_kmh) for g in truth
            ]
            s.tracks.append(
                TrackBatch(
                    camera_id=s.cam_s.camera_id,
                    frame_seq=k,
                    captured_at=at,
                    model_version="sim-truth",
                    tracks=obs,
                )
            )
            others = [
                _obs(v.track_id, v.vehicle_class, (0, 0, 1, 1), v.center, v.speed_mps * 3.6)
                for v in step.vehicles
                if v.lane_id[:1] in "NEW" or v.lane_id.startswith(":")
            ]
            s.tracks.append(
                TrackBatch(
                    camera_id=s.cam_o.camera_id,
                    frame_seq=k,
                    captured_at=at,
                    model_version="sim-truth",
                    tracks=others,
                )
            )
            if k % 2 == 0:
                header = FrameHeader(
                    camera_id=s.cam_s.camera_id, seq=k, captured_at=at, width=640, height=360
                )
                s.frames.append(Frame(header, renderer.encode(img)))
        s.truth = list(sim.truth)
    return s


def produce_all(stack: Stack, records: list[tuple[str, bytes, bytes]]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=stack.settings.kafka.bootstrap,
        acks="all",
        linger_ms=20,
        max_request_size=8 << 20,
    )
    try:
        futures = [producer.send(t, key=k, value=v) for t, k, v in records]
        producer.flush()
        assert all(f.get(timeout=30) for f in futures)
    finally:
        producer.close()


def scenario_records(s: Scenario) -> list[tuple[str, bytes, bytes]]:
    """Plan, phases, frames, then tracks (frames ahead of tracks, as in a backlog)."""
    ph, pl, tr, fr = (
        TOPICS[n] for n in ("signal.phases", "signal.plans", "traffic.tracks", "camera.frames")
    )
    records = [(pl.name, pl.key_of(s.plan), pl.codec.encode(s.plan))]
    records += [(ph.name, ph.key_of(c), ph.codec.encode(c)) for c in s.phases]
    records += [(fr.name, fr.key_of(f), fr.codec.encode(f)) for f in s.frames]
    records += [(tr.name, tr.key_of(b), tr.codec.encode(b)) for b in s.tracks]
    return records


def rekeyed(s: Scenario, suffix: str) -> Scenario:
    """The same scenario under other intersection and camera ids."""
    iid = s.intersection_id + suffix
    cams = {c.camera_id: c.camera_id + suffix for c in (s.cam_s, s.cam_o)}

    def cal(c: Calibration) -> Calibration:
        return c.model_copy(update={"camera_id": cams[c.camera_id], "intersection_id": iid})

    return Scenario(
        iid,
        cal(s.cam_s),
        cal(s.cam_o),
        s.plan.model_copy(update={"intersection_id": iid}),
        [c.model_copy(update={"intersection_id": iid}) for c in s.phases],
        [b.model_copy(update={"camera_id": cams[b.camera_id]}) for b in s.tracks],
        [
            Frame(f.header.model_copy(update={"camera_id": cams[f.header.camera_id]}), f.jpeg)
            for f in s.frames
        ],
        s.truth,
        s.seen_frames,
    )


def start_traffic(stack: Stack, log: Path, group: str, evidence: Path) -> subprocess.Popen[bytes]:
    env = {
        "CITYSTREAM_TRAFFIC__COUNT_WINDOW_S": "10",
        "CITYSTREAM_TRAFFIC__RECOMMEND_EVERY_S": "30",
        "CITYSTREAM_TRAFFIC__CAMERA_REFRESH_S": "1",
        "CITYSTREAM_TRAFFIC__EVIDENCE_DIR": str(evidence),
    }
    return spawn(stack, log, "traffic", "worker", "--group-id", group, "--idle-flush", "3", **env)


def start_sink(stack: Stack, log: Path, group: str) -> subprocess.Popen[bytes]:
    return spawn(stack, log, "sink", "--group-id", group, "--max-delay", "0.5")


def expected_violations(s: Scenario) -> set[tuple[str, int]]:
    """(kind, track) of the injected violators the south camera saw for 2 s or more."""
    return {(t.kind, t.track_id) for t in s.truth if t.injected and s.seen_frames[t.track_id] >= 20}


def violation_rows(stack: Stack, intersection_id: str) -> list[Any]:
    with stack.db() as conn:
        return conn.execute(
            "SELECT kind, track_id, evidence_uri, evidence_sha256, camera_id, details, "
            "violation_id, occurred_at FROM violations WHERE intersection_id = %s",
            (intersection_id,),
        ).fetchall()


def clean_run(s: Scenario) -> set[tuple[str, str, int, float]]:
    """(kind, camera, track, time) of every violation the pure per-camera logic finds in
    the scenario, processed once, in order, in this process."""
    signals = SignalTimeline.from_changes(s.phases)
    states = {
        c.camera_id: CameraState(c, StateConfig(count_window_s=10)) for c in (s.cam_s, s.cam_o)
    }
    found = []
    for b in s.tracks:
        states[b.camera_id].add_batch(b)
        found += states[b.camera_id].expire(signals).judged
    for state in states.values():
        found += state.expire(signals, flush=True).judged
    return {
        (
            str(j.violation.kind),
            j.violation.camera_id,
            j.violation.track_id,
            round(j.violation.t, 3),
        )
        for j in found
    }


def found_set(rows: list[Any]) -> set[tuple[str, str, int, float]]:
    return {(r[0], r[4], r[1], round(r[7].timestamp(), 3)) for r in rows}


def settled_rows(stack: Stack, s: Scenario) -> list[Any]:
    """The violation rows once every one a clean pass finds has landed (the last ones come
    when the cameras' inputs end, after the idle flush), plus 2 s for any extra to show."""
    clean = clean_run(s)
    wait_until(
        lambda: found_set(violation_rows(stack, s.intersection_id)) >= clean,
        90,
        "every violation the pure logic finds",
    )
    time.sleep(2)  # anything more (there should be nothing) would land now
    return violation_rows(stack, s.intersection_id)


def test_traffic_worker_violations_evidence_counts_advice(
    stack: Stack, scenario: Scenario, cameras: list[str], tmp_path: Path
) -> None:
    s = scenario
    evidence = tmp_path / "evidence"
    register(stack, s.intersection_id, s.cam_s, s.cam_o)
    cameras += [s.cam_s.camera_id, s.cam_o.camera_id]
    worker = start_traffic(stack, tmp_path / "traffic.log", f"t-traffic-{TAG}", evidence)
    sink = start_sink(stack, tmp_path / "sink.log", f"t-sink-{TAG}")
    try:
        t0 = time.monotonic()
        tr = TOPICS["traffic.tracks"]
        records = scenario_records(s)
        stray = s.tracks[0].model_copy(update={"camera_id": f"cam-unknown-{TAG}"})
        records.append((tr.name, tr.key_of(stray), tr.codec.encode(stray)))
        produce_all(stack, records)
        produced_s = time.monotonic() - t0

        def rows(sql: str) -> list[Any]:
            with stack.db() as conn:
                return conn.execute(sql, (s.intersection_id,)).fetchall()

        wait_until(
            lambda: rows(
                "SELECT 1 FROM signal_plans WHERE intersection_id = %s AND kind = 'recommended'"
            ),
            90,
            "a signal recommendation in the DB",
        )
        cam_s = s.cam_s.camera_id
        expected = expected_violations(s)

        def recalled() -> set[tuple[str, int]]:
            found = violation_rows(stack, s.intersection_id)
            return {(r[0], r[1]) for r in found if r[4] == cam_s} & expected

        wait_until(lambda: len(recalled()) >= 0.8 * len(expected), 60, "violations of the truth")
        elapsed = time.monotonic() - t0
        found = settled_rows(stack, s)
        mine = [r for r in found if r[4] == cam_s]
        hits = recalled()
        print(
            f"\nproduced {len(records)} records in {produced_s:.1f} s; "
            f"results after {elapsed:.1f} s"
        )
        print(f"truth (injected, visible): {sorted(Counter(k for k, _ in expected).items())}")
        print(f"found, south camera: {sorted(Counter(r[0] for r in mine).items())}")
        print(f"recall {len(hits)}/{len(expected)}; missed: {sorted(expected - hits)}")
        assert len(hits) >= 0.8 * len(expected)
        assert {k for k, _ in expected} <= {k for k, _ in hits}  # every kind found at least once

        per_track = Counter((r[0], r[4], r[1]) for r in found)
        assert max(per_track.values()) == 1, per_track  # one violation per kind and track
        assert found_set(found) == clean_run(s)  # what the pure logic finds, processed once
        for kind, _tid, uri, sha, cam, details, _vid, _at in found:
            path = evidence / uri
            assert path.exists() and verify_bundle(path, sha), uri
            with zipfile.ZipFile(path) as zf:
                manifest = json.loads(zf.read("manifest.json"))
                names = zf.namelist()
            assert (
                manifest["model_version"] == "sim-truth" and manifest["calibration_version"] == "1"
            )
            assert manifest["kind"] == kind and "trajectory.json" in names
            if cam == cam_s and kind == "red_light":
                assert any(n.startswith("frames/before") for n in names)
                assert any(n.startswith("frames/after") for n in names) and "crop.jpg" in names
                assert details["signal_state"] == "red"
        tampered = evidence / mine[0][2]
        tampered.write_bytes(tampered.read_bytes() + b"x")
        assert not verify_bundle(tampered, mine[0][3])

        counts = rows(
            "SELECT camera_id, lane_id, sum(count), sum(discharged), sum(discharge_s) "
            "FROM traffic_counts WHERE intersection_id = %s GROUP BY camera_id, lane_id"
        )
        by_lane = {(c, lane): n for c, lane, n, _, _ in counts}
        assert any(n > 0 for (c, _), n in by_lane.items() if c == cam_s)
        assert any(n > 0 for (c, _), n in by_lane.items() if c == s.cam_o.camera_id)
        # queue discharges on green were measured (the saturation flows of the advice)
        assert any(d > 0 and secs > 0 for c, _, _, d, secs in counts if c == cam_s), counts
        rec = rows(
            "SELECT plan, current_plan_id, predicted_delay_current_s FROM signal_plans "
            "WHERE intersection_id = %s AND kind = 'recommended' ORDER BY valid_from LIMIT 1"
        )[0]
        assert (
            rec[1] == s.plan.plan_id and rec[2] > 0
        )  # the plan in force has a real delay under measured demand
        assert all(7 <= p["green_s"] <= 90 for p in rec[0]["phases"])

        dlq = stack.consume(
            "traffic.tracks.dlq",
            1,
            where=lambda r: r.key == f"cam-unknown-{TAG}".encode(),
        )
        assert (
            dlq
            and "not in the cameras reference table"
            in DEAD_LETTER_CODEC.decode(dlq[0].value).reason
        )
    finally:
        codes = stop(worker, sink)
    assert codes == [0, 0], (tmp_path / "traffic.log").read_text()[-3000:]


def test_traffic_worker_kill_9_replays_without_duplicates(
    stack: Stack, scenario: Scenario, cameras: list[str], tmp_path: Path
) -> None:
    """SIGKILL the traffic worker mid-stream and restart it (same group): the replay from its
    last commit rebuilds open tracks and windows; nothing is judged twice or lost."""
    s = rekeyed(scenario, "-k")
    evidence = tmp_path / "evidence"
    register(stack, s.intersection_id, s.cam_s, s.cam_o)
    cameras += [s.cam_s.camera_id, s.cam_o.camera_id]
    group = f"t-traffic-k-{TAG}"
    worker = start_traffic(stack, tmp_path / "traffic1.log", group, evidence)
    sink = start_sink(stack, tmp_path / "sink.log", f"t-sink-k-{TAG}")
    try:
        produce_all(stack, scenario_records(s))
        wait_until(lambda: len(violation_rows(stack, s.intersection_id)) >= 4, 90, "violations")
        worker.kill()
        worker.wait(timeout=30)
        before = violation_rows(stack, s.intersection_id)
        worker = start_traffic(stack, tmp_path / "traffic2.log", group, evidence)
        expected = expected_violations(s)

        def done() -> bool:
            rows = violation_rows(stack, s.intersection_id)
            hits = {(r[0], r[1]) for r in rows if r[4] == s.cam_s.camera_id} & expected
            return len(hits) >= 0.8 * len(expected)

        wait_until(done, 90, "the restarted worker to reach the truth")
        rows = settled_rows(stack, s)
        per_track = Counter((r[0], r[4], r[1]) for r in rows)
        print(f"\nkill -9 after {len(before)} violations; {len(rows)} after the restart")
        assert max(per_track.values()) == 1, per_track  # no track judged twice
        assert found_set(rows) == clean_run(s)  # the same as one clean pass, nothing more
        for r in rows:
            assert verify_bundle(evidence / r[2], r[3]), r[2]
        restarted = (tmp_path / "traffic2.log").read_text()
        assert "traffic.tracks" in restarted
    finally:
        codes = stop(worker, sink)
    assert codes == [0, 0], (tmp_path / "traffic2.log").read_text()[-3000:]


# --- vision -----------------------------------------------------------------------------------
@dataclass
class Footage:
    calibration: Calibration
    frames: list[Frame]
    truth: dict[int, list[Any]]  # frame seq -> the renderer's ground truth objects


@pytest.fixture(scope="module")
def footage() -> Footage:
    """8 s of the simulator's camera at 10 fps (640x360), after a minute of traffic."""
    cfg = ScenarioConfig(
        intersection_id=f"int-v{TAG}", seed=1, violators=ViolatorRates(0, 0, 0, 0, 0)
    )
    cam = VirtualCamera(width=640, height=360)
    frames, truth = [], {}
    with IntersectionSim(cfg) as sim:
        cal = build_calibration(cfg, cam, str(sim.net_file), camera_id=f"cam-v-{TAG}", version="1")
        renderer = Renderer(cam, str(sim.net_file), cal)
        for k, step in enumerate(sim.run(58.0)):
            if k >= 500:
                img, truth[k - 500] = renderer.render(step)
                header = FrameHeader(
                    camera_id=cal.camera_id,
                    seq=k - 500,
                    captured_at=datetime.fromtimestamp(step.t, UTC),
                    width=640,
                    height=360,
                )
                frames.append(Frame(header, renderer.encode(img)))
    return Footage(cal, frames, truth)


def ground_errors(
    batches: list[TrackBatch], truth: dict[int, list[Any]], shift: tuple[float, float] = (0, 0)
) -> list[float]:
    """Distance (m) from each grounded observation to the true centre (moved by ``shift``)
    of the vehicle its box overlaps most (IoU >= 0.5)."""
    errors = []
    for b in batches:
        true = truth[b.frame_seq]
        for o in b.tracks:
            if o.ground_xy is None or not true:
                continue
            box = np.array([[o.bbox.x1, o.bbox.y1, o.bbox.x2, o.bbox.y2]])
            iou = box_iou(box, np.array([g.bbox for g in true]))
            if iou.max() >= 0.5:
                g = true[int(iou.argmax())].ground_xy
                d = np.subtract(o.ground_xy, (g[0] + shift[0], g[1] + shift[1]))
                errors.append(float(np.hypot(*d)))
    return errors


def _tracks(stack: Stack, camera_id: str, n: int, min_seq: int = 0) -> list[TrackBatch]:
    codec = TOPICS["traffic.tracks"].codec
    recs = stack.consume(
        "traffic.tracks",
        n,
        timeout_s=120,
        where=lambda r: r.key == camera_id.encode() and codec.decode(r.value).frame_seq >= min_seq,
    )
    return [codec.decode(r.value) for r in recs]


@pytest.mark.skipif(not WEIGHTS, reason="no shipped YOLO weights in streams/vision/models/")
def test_vision_worker_tracks_dead_letters_and_live_recalibration(
    stack: Stack, footage: Footage, cameras: list[str], tmp_path: Path
) -> None:
    cal = footage.calibration
    cid = cal.camera_id
    register(stack, f"int-v{TAG}", cal)
    cameras.append(cid)
    log = tmp_path / "vision.log"
    worker = spawn(
        stack,
        log,
        "vision",
        "worker",
        "--group-id",
        f"t-vision-{TAG}",
        "--from-latest",
        "--weights",
        str(WEIGHTS[0]),
        CITYSTREAM_TRAFFIC__CAMERA_REFRESH_S="1",
    )
    try:
        wait_until(
            lambda: "starting at the end" in log.read_text(), 180, "the vision worker to join"
        )
        fr = TOPICS["camera.frames"]
        first, second = footage.frames[:40], footage.frames[40:]
        broken = Frame(
            second[0].header.model_copy(update={"seq": 999}),
            b"\xff\xd8" + b"not a picture" * 50 + b"\xff\xd9",
        )
        stranger = Frame(
            first[0].header.model_copy(update={"camera_id": f"cam-x-{TAG}"}), first[0].jpeg
        )
        t0 = time.monotonic()
        produce_all(
            stack, [(fr.name, fr.key_of(f), fr.codec.encode(f)) for f in [*first, broken, stranger]]
        )
        before = _tracks(stack, cid, len(first))
        took = time.monotonic() - t0
        assert sorted(b.frame_seq for b in before) == list(range(len(first)))
        obs = [o for b in before for o in b.tracks]
        print(f"\nvision: {len(first)} frames -> {len(obs)} track observations in {took:.1f} s")
        assert len({o.track_id for o in obs}) >= 2
        errors = ground_errors(before, footage.truth)
        print(f"ground error vs vehicle centre: median {np.median(errors):.2f} m, n={len(errors)}")
        assert len(errors) >= 10 and np.median(errors) < 3.0  # box bottom centre vs centre
        versions = {b.model_version for b in before}
        assert len(versions) == 1 and WEIGHTS[0].stem in versions.pop()

        dlq = stack.consume(
            "camera.frames.dlq",
            2,
            where=lambda r: r.key in (cid.encode(), f"cam-x-{TAG}".encode()),
        )
        reasons = sorted(DEAD_LETTER_CODEC.decode(r.value).reason for r in dlq)
        assert len(reasons) == 2, reasons
        assert any(f"{cid}#999" in r for r in reasons)
        assert any("not in the cameras reference table" in r for r in reasons)

        # a new calibration while the worker runs: the ground moves 100 m east
        moved = cal.model_copy(
            update={
                "homography": (
                    np.array([[1, 0, 100], [0, 1, 0], [0, 0, 1]]) @ np.array(cal.homography)
                ).tolist()
            }
        )
        register(stack, f"int-v{TAG}", moved, version=2)
        time.sleep(2.5)  # two directory refreshes
        produce_all(stack, [(fr.name, fr.key_of(f), fr.codec.encode(f)) for f in second])
        after = _tracks(stack, cid, len(second), min_seq=second[0].header.seq)
        assert len(after) == len(second) and worker.poll() is None  # same process
        moved_errors = ground_errors(after, footage.truth, shift=(100.0, 0.0))
        assert len(moved_errors) >= 10 and np.median(moved_errors) < 3.0
        assert min(o.track_id for b in after for o in b.tracks) > max(o.track_id for o in obs)

        # the feed freezes: the same picture once a second -> one camera_frozen alert
        last = second[-1].header
        still = [
            Frame(
                last.model_copy(
                    update={
                        "seq": last.seq + k,
                        "captured_at": last.captured_at + timedelta(seconds=k),
                    }
                ),
                second[-1].jpeg,
            )
            for k in range(1, 15)
        ]
        produce_all(stack, [(fr.name, fr.key_of(f), fr.codec.encode(f)) for f in still])
        alerts = stack.consume(
            "traffic.alerts", 1, timeout_s=60, where=lambda r: r.key == cid.encode()
        )
        kinds = [TOPICS["traffic.alerts"].codec.decode(r.value).kind for r in alerts]
        assert kinds == ["camera_frozen"], kinds
    finally:
        codes = stop(worker)
    assert codes == [0], log.read_text()[-3000:]
