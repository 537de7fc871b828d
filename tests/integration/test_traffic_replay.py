"""The shipped traffic capture (``tests/captures/intersection_60s.cap``) replayed into the real
stack and through the real pipeline, as separate processes:

capture -> Kafka ``camera.frames`` + ``signal.phases`` -> ``citystream vision worker`` (the
shipped YOLO weights, per-camera tracker) -> ``traffic.tracks`` -> ``citystream traffic
worker`` (rules, evidence bundles, lane counts) -> ``citystream sink`` -> TimescaleDB.

Asserted is what must hold whatever the detector's quality: a track batch for every replayed
frame, lane counts of the camera's approach lanes within 50 % of the simulator's stop-line
crossings, and a verifiable evidence bundle for every violation stored.  Precision and recall
against the capture's truth are printed (``pytest -s``), not asserted: they measure the model.
"""

from __future__ import annotations

import subprocess
import uuid
from datetime import datetime
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("ultralytics")
pytest.importorskip("cv2")

from citystream.capture import CaptureReader, read_truth
from citystream.capture.simulated import truth_path
from citystream.testing import Stack, capture_path, replay_capture, wait_for_drain, wait_until
from schemas.messages import TrackBatch
from schemas.topics import TOPICS
from simulators.intersection.camera import VirtualCamera
from simulators.intersection.reference import Placement, register_reference
from streams.traffic.calibration import Calibration
from streams.traffic.evaluate import print_report, read_db, read_tracks, report
from streams.traffic.evaluate import read_truth as read_truth_file
from streams.traffic.evidence import verify_bundle

pytestmark = pytest.mark.integration
CAPTURE = "intersection_60s.cap"
TRACKS = TOPICS["traffic.tracks"]


def _alive(proc: subprocess.Popen[bytes], log: Path) -> None:
    if proc.poll() is not None:
        raise AssertionError(
            f"{log.stem} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}"
        )


def _stop(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.terminate()
    for proc in procs.values():
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_traffic_capture_through_the_pipeline(stack: Stack, tmp_path: Path) -> None:
    path = capture_path(CAPTURE)
    truth = read_truth(path)
    meta = truth[0]
    calibration = Calibration.from_dict(meta["calibration"])
    camera, intersection = calibration.camera_id, calibration.intersection_id
    width, height = calibration.image_size
    with CaptureReader(path) as reader:
        codec = TOPICS["camera.frames"].codec
        seqs = [codec.decode(r.value).header.seq for r in reader if r.topic == "camera.frames"]
    assert len(seqs) == 301

    # the frames' camera must be known (with its calibration) before a worker sees them
    register_reference(
        stack.settings.db.dsn,
        calibration,
        VirtualCamera(width=width, height=height),
        Placement(name="capture intersection_60s"),
        {"source": f"tests/captures/{CAPTURE}"},
    )
    tag = uuid.uuid4().hex[:8]
    evidence = tmp_path / "evidence"
    logs = {name: tmp_path / f"{name}.log" for name in ("vision", "traffic", "sink")}
    groups = {name: f"it-traffic-replay-{name}-{tag}" for name in logs}
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(name: str, *args: str) -> None:
        cli = ("-m", "citystream.cli", *args, "--group-id", groups[name])
        procs[name] = stack.spawn(logs[name], *cli)

    try:
        # vision starts at the end of camera.frames (earlier tests' frames are not its work)
        spawn("vision", "vision", "worker", "--from-latest")
        spawn("sink", "sink", "--topics", "traffic.violations", "traffic.counts")

        def vision_ready() -> bool:
            _alive(procs["vision"], logs["vision"])
            return "starting at the end of" in logs["vision"].read_text(errors="replace")

        wait_until(vision_ready, 120, "the vision worker to load its model and join")
        stats = replay_capture(stack, path)
        assert stats.records == 349

        # a track batch for every replayed frame (possibly with no tracks in it)
        batches = stack.consume(
            TRACKS.name,
            count=len(seqs),
            timeout_s=240,
            where=lambda r: r.key == camera.encode(),
        )
        _alive(procs["vision"], logs["vision"])
        decoded = [TRACKS.codec.decode(r.value) for r in batches]
        assert all(isinstance(b, TrackBatch) and b.camera_id == camera for b in decoded)
        got = {b.frame_seq for b in decoded if isinstance(b, TrackBatch)}
        missing = sorted(set(seqs) - got)
        assert not missing, f"no TrackBatch for frames {missing[:20]} ({len(missing)})"
        observations = sum(len(b.tracks) for b in decoded if isinstance(b, TrackBatch))
        print(f"\ntraffic.tracks: {len(decoded)} batches, {observations} observations")

        # the traffic worker reads both inputs from their start (paced against each other)
        spawn("traffic", "traffic", "worker", "--idle-flush", "5", "--evidence-dir", str(evidence))
        wait_for_drain(
            stack, {groups["traffic"]: ["traffic.tracks", "camera.frames"]}, timeout_s=120
        )
        wait_for_drain(
            stack,
            {groups["sink"]: ["traffic.violations", "traffic.counts"]},
            timeout_s=60,
            settle_s=3,
        )
        for name in procs:
            _alive(procs[name], logs[name])
    finally:
        _stop(procs)
        with stack.db() as conn:  # later workers reading camera.frames dead-letter these
            conn.execute("DELETE FROM cameras WHERE id = %s", (camera,))

    # lane counts of the approach lanes vs. the simulator's stop-line crossings
    approach = {lane.lane_id for lane in calibration.lanes if lane.stop_line is not None}
    true_lanes: dict[str, int] = {}
    for t in truth:
        if t["kind"] == "lane_count" and t["lane_id"] in approach:
            true_lanes[t["lane_id"]] = true_lanes.get(t["lane_id"], 0) + int(t["count"])
    with stack.db() as conn:
        rows = conn.execute(
            "SELECT lane_id, sum(count)::int, count(*)::int FROM traffic_counts "
            "WHERE camera_id = %s GROUP BY lane_id ORDER BY lane_id",
            (camera,),
        ).fetchall()
        violations = conn.execute(
            "SELECT kind, occurred_at, evidence_uri, evidence_sha256 FROM violations "
            "WHERE camera_id = %s ORDER BY occurred_at",
            (camera,),
        ).fetchall()
    measured = {lane: n for lane, n, _ in rows if lane in approach}
    true_total, measured_total = sum(true_lanes.values()), sum(measured.values())
    print(f"lane counts (approach lanes {sorted(approach)}):")
    for lane in sorted(approach):
        print(f"  {lane}: true {true_lanes.get(lane, 0)}, measured {measured.get(lane, 0)}")
    print(f"  total: true {true_total}, measured {measured_total}")
    assert measured, f"no traffic_counts rows for {camera}'s approach lanes; rows: {rows}"
    assert true_total > 0
    # a sanity bound, not the accuracy aim (that is `citystream traffic evaluate`'s job): most
    # of the last seconds' crossings are of small vehicles far from the camera, and some are
    # cut off by the end of the capture; nothing may be counted twice
    assert 0 < measured_total <= true_total
    assert violations, "no violation stored from a capture with 4 true ones"

    # every violation stored has its evidence bundle, and the bundle verifies
    print(f"violations stored: {len(violations)} ({', '.join(v[0] for v in violations)})")
    for kind, at, uri, sha in violations:
        bundle = evidence / uri
        assert bundle.exists(), f"{kind} at {at}: no evidence file {bundle}"
        assert verify_bundle(bundle, sha), f"{kind} at {at}: evidence {bundle} does not verify"

    # precision / recall against the truth (printed: they measure the model, not the code)
    t0 = datetime.fromisoformat(meta["start"]).timestamp()
    rep = report(
        read_truth_file(truth_path(path)),
        read_db(stack.settings, intersection),
        read_tracks(stack.settings, camera),
        tolerance_s=3.0,
        horizon=(t0 + 5.0, t0 + 50.0),
    )
    print_report(rep)
