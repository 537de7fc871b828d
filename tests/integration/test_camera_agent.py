"""The edge camera agent and the intersection simulator service on the real stack.

* a small video written with cv2.VideoWriter -> ``citystream edge camera`` -> Kafka
  camera.frames: every frame decodable, keyed by camera, increasing seq, right header;
* ``citystream sim intersection`` for 20 simulated seconds: frames in camera.frames, signal
  changes through MQTT and the real bridge into Kafka signal.phases, a plan published over
  MQTT (as the city map does) installed in SUMO and announced on plan-applied, an invalid plan
  refused and counted, the camera registered in the DB with its calibration.
"""

from __future__ import annotations

import base64
import queue
import re
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from citystream.stack.private import free_port
from citystream.testing import Record, Stack, wait_until
from schemas.codecs import FrameCodec, JsonCodec
from schemas.messages import Alert, SignalPhaseChange, SignalPlan
from schemas.topics import DEAD_LETTER_CODEC

cv2 = pytest.importorskip("cv2")
pytestmark = pytest.mark.integration

CLI = ("-m", "citystream.cli")


def _log(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.exists() else "(no log)"


def _metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _final_counts(log: str) -> dict[str, int]:
    line = [x for x in log.splitlines() if " final cam=" in x][-1]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)(?=\s|$)", line)}


def _keyed(key: str) -> Any:
    return lambda r: r.key == key.encode()


def test_video_file_frames_land_in_kafka(stack: Stack, tmp_path: Path) -> None:
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (320, 240))
    for i in range(30):  # 1.2 s at 25 fps
        img = np.full((240, 320, 3), (40, 90, 40), np.uint8)
        cv2.rectangle(img, (8 * i, 100), (8 * i + 40, 140), (0, 0, 255), -1)
        writer.write(img)
    writer.release()
    cam = f"cam-vid-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "camera.log"
    proc = stack.spawn(
        log,
        *CLI,
        "edge",
        "camera",
        "--camera-id",
        cam,
        "--source",
        str(video),
        "--fps",
        "10",
        "--width",
        "160",
        "--speed",
        "0",
        "--blur",
        "0,0 40,0 40,40 0,40",
    )
    assert proc.wait(timeout=60) == 0, _log(log)
    counts = _final_counts(_log(log))
    # 1.2 s of 25 fps video at 10 fps: 12 frames, all published
    assert counts["captured"] == 12 and counts["published"] == 12, counts
    assert counts["skipped_rate"] == 18 and counts["dropped_backpressure"] == 0
    records = stack.consume("camera.frames", count=12, timeout_s=30, where=_keyed(cam))
    assert len(records) == 12
    codec = FrameCodec()
    frames = [codec.decode(r.value) for r in records]
    assert [f.header.seq for f in frames] == list(range(12))
    assert len({r.partition for r in records}) == 1  # keyed by camera: one partition, in order
    for f in frames:
        assert (f.header.camera_id, f.header.width, f.header.height) == (cam, 160, 120)
        img = cv2.imdecode(np.frombuffer(f.jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (120, 160, 3)
    times = [f.header.captured_at for f in frames]
    assert times == sorted(times) and all(t.tzinfo is not None for t in times)


class _Subscriber:
    """A QoS 1 subscriber collecting (topic, payload)."""

    def __init__(self, stack: Stack, topic: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.got: queue.Queue[tuple[str, bytes]] = queue.Queue()
        ready = queue.Queue[bool]()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}")
        c.on_connect = lambda cl, *a: cl.subscribe(topic, qos=1)
        c.on_subscribe = lambda *a: ready.put(True)
        c.on_message = lambda cl, ud, msg: self.got.put((msg.topic, msg.payload))
        c.connect(stack.settings.mqtt.host, stack.settings.mqtt.port)
        c.loop_start()
        self.client = c
        assert ready.get(timeout=10)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(timeout=5)

    def next_plan(self, timeout_s: float) -> SignalPlan:
        _, payload = self.got.get(timeout=timeout_s)
        return JsonCodec(SignalPlan).decode(payload)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def bridge(stack: Stack, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    port = free_port()
    log = tmp_path / "bridge.log"
    proc = stack.spawn(
        log,
        "-m",
        "edge.bridge",
        "--client-id",
        f"cam-bridge-{uuid.uuid4().hex[:8]}",
        "--metrics-port",
        str(port),
    )

    def subscribed() -> bool:
        assert proc.poll() is None, _log(log)
        try:
            return _metrics(port).get("citystream_bridge_mqtt_subscribed") == 1
        except OSError:
            return False

    wait_until(subscribed, 60, "the bridge to subscribe")
    yield proc
    proc.terminate()
    assert proc.wait(timeout=30) == 0, _log(log)


def test_intersection_service_end_to_end(
    stack: Stack, bridge: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    from citymap.publish import PlanPublisher
    from simulators.intersection.plan import default_plan
    from simulators.intersection.reference import Placement, register_reference
    from streams.traffic.calibration import Calibration

    tag = uuid.uuid4().hex[:8]
    iid, cam = f"it-{tag}", f"it-{tag}-cam"
    base = f"city/hcm/signals/{iid}"
    sub = _Subscriber(stack, f"{base}/plan-applied")
    port = free_port()
    log = tmp_path / "sim.log"
    truth_file = tmp_path / "truth.jsonl"
    proc = stack.spawn(
        log,
        *CLI,
        "sim",
        "intersection",
        "--intersection-id",
        iid,
        "--camera-id",
        cam,
        "--city",
        "hcm",
        "--duration",
        "20",
        "--speed",
        "2",
        "--width",
        "320",
        "--truth",
        str(truth_file),
        "--metrics-port",
        str(port),
        "--progress-interval",
        "2",
        "--outcome-after",
        "3",
    )
    try:
        initial = sub.next_plan(timeout_s=60)  # announced when the first frame is out
        assert initial.plan_id == "fixed-1" and initial.intersection_id == iid
        sub.publish(f"{base}/plan", b'{"not": "a plan"')  # refused, counted, no crash
        plan = default_plan(iid, datetime.now(UTC), 20, 40, plan_id=f"plan-{tag}")
        plan = plan.model_copy(update={"phases": plan.phases[::-1]})  # EW first
        PlanPublisher(stack.settings.mqtt, "hcm").publish(plan)
        applied = sub.next_plan(timeout_s=30)
        assert applied == plan
        m = _metrics(port)
        assert m["citystream_sim_intersection_plans_received_total"] == 2
        assert m["citystream_sim_intersection_plans_invalid_total"] == 1
        assert m["citystream_sim_intersection_plans_applied_total"] == 1
        dl_metric = "citystream_sim_intersection_plans_dead_lettered_total"
        wait_until(lambda: _metrics(port).get(dl_metric) == 1, 5, "the refused plan's DLQ ack")
        assert proc.wait(timeout=60) == 0, _log(log)
    finally:
        sub.close()
        if proc.poll() is None:
            proc.kill()
    text = _log(log)
    assert "refused a plan" in text and f"applied plan plan-{tag}" in text

    # ground truth: frames, phases and the plan switch
    import json

    truth = [json.loads(line) for line in truth_file.read_text().splitlines()]
    kinds = [t["kind"] for t in truth]
    assert kinds[0] == "meta" and kinds.count("frame") == 200
    [switch] = [t for t in truth if t["kind"] == "plan_applied"]
    assert switch["plan_id"] == f"plan-{tag}" and switch["previous_plan_id"] == "fixed-1"
    truth_phases = [
        SignalPhaseChange.model_validate({k: v for k, v in t.items() if k != "kind"})
        for t in truth
        if t["kind"] == "phase"
    ]
    after = [p for p in truth_phases if p.changed_at >= datetime.fromisoformat(switch["at"])]
    assert after and {p.program_id for p in after} == {f"plan-{tag}"}

    # the refused plan is in the DLQ with its reason
    [dl] = stack.consume("signal.plans.dlq", count=1, timeout_s=30, where=_keyed(iid))
    letter = DEAD_LETTER_CODEC.decode(dl.value)
    assert letter.source_topic == f"{base}/plan" and letter.error_type == "SchemaError"
    assert base64.b64decode(letter.payload_b64) == b'{"not": "a plan"'

    # frames in Kafka: as many as the agent says it published, in seq order
    counts = _final_counts(text)
    assert counts["captured"] == 200
    assert counts["published"] + counts["dropped_backpressure"] == 200, counts
    frames: list[Record] = stack.consume(
        "camera.frames", count=counts["published"], timeout_s=30, where=_keyed(cam)
    )
    assert len(frames) == counts["published"] >= 190
    headers = [FrameCodec().decode(r.value).header for r in frames]
    seqs = [h.seq for h in headers]
    assert seqs == sorted(seqs) and seqs[-1] == 199
    assert {(h.width, h.height) for h in headers} == {(320, 180)}

    # signal changes: controller -> MQTT -> bridge -> Kafka signal.phases, all of them
    records = stack.consume(
        "signal.phases", count=len(truth_phases), timeout_s=30, where=_keyed(iid)
    )
    codec = JsonCodec(SignalPhaseChange)
    assert sorted(
        (p.changed_at, p.signal_group, p.state) for p in (codec.decode(r.value) for r in records)
    ) == sorted((p.changed_at, p.signal_group, p.state) for p in truth_phases)

    # the plans the controller ran (the initial one, then the approved one) reach Kafka
    # signal.plans through the bridge: the traffic worker and the map know the plan in force
    ran = stack.consume("signal.plans", count=2, timeout_s=30, where=_keyed(iid))
    plan_codec = JsonCodec(SignalPlan)
    assert [plan_codec.decode(r.value).plan_id for r in ran][-1] == plan.plan_id

    # 3 simulated s after the switch the controller reports the delay it measured before and
    # after, through the bridge to traffic.alerts (the map's intersection panel shows it)
    [outcome] = stack.consume("traffic.alerts", count=1, timeout_s=30, where=_keyed(iid))
    report = JsonCodec(Alert).decode(outcome.value)
    assert report.kind == "plan_outcome" and report.subject_id == iid
    assert report.details["plan_id"] == plan.plan_id
    assert report.details["previous_plan_id"] == "fixed-1"
    assert report.details["delay_before_s"] == switch["delay_before_s"]
    assert report.details["measured_s"] >= 3.0
    [reported] = [t for t in truth if t["kind"] == "plan_outcome"]
    assert reported["alert_id"] == report.alert_id

    # the camera in the reference tables, with its calibration
    with stack.db() as conn:
        row = conn.execute(
            "SELECT c.intersection_id, c.width, c.height, c.calibration, c.calibration_version, "
            "i.name FROM cameras c JOIN intersections i ON i.id = c.intersection_id "
            "WHERE c.id = %s",
            (cam,),
        ).fetchone()
    assert row is not None
    assert row[:3] == (iid, 320, 180) and row[4] == 1 and row[5] == "Simulated junction"
    stored = Calibration.from_dict(row[3])
    assert stored.camera_id == cam and stored.calibration_version == "1"
    assert stored.image_size == (320, 180) and stored.approach_lanes
    assert truth[0]["calibration"] == row[3]
    with stack.db() as conn:
        edges = conn.execute(
            "SELECT properties->>'edge' FROM road_segments WHERE intersection_id = %s", (iid,)
        ).fetchall()
    assert sorted(e for (e,) in edges) == sorted(f"{a}_{d}" for a in "NESW" for d in ("in", "out"))
    # registering the same calibration again keeps the version; a changed one bumps it
    from simulators.intersection.camera import VirtualCamera

    camera = VirtualCamera(width=320, height=180)
    dsn = stack.settings.db.dsn
    assert register_reference(dsn, stored, camera, Placement(), {})[0] == 1
    changed = stored.model_copy(update={"speed_limit_kmh": 40.0})
    version, saved = register_reference(dsn, changed, camera, Placement(), {})
    assert version == 2 and saved.calibration_version == "2"
