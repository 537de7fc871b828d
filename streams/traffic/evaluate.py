"""``citystream traffic evaluate``: a simulator scenario through the real stack, end to end,
scored against the simulator's ground truth.

1. starts a private stack (Kafka, Mosquitto, TimescaleDB) in a temporary state dir on free
   loopback ports, creates the topics and applies the migrations;
2. starts the pipeline as separate processes, exactly as deployed: the MQTT->Kafka bridge,
   the vision worker (YOLO + tracker), the traffic worker (rules, counts, advice) and the DB
   sink;
3. runs the intersection simulator (SUMO + virtual camera) for ``--duration`` simulated
   seconds at ``--speed``: frames to Kafka, signal phases over MQTT, truth to a file;
4. waits until every worker has consumed and committed everything, then reads what landed
   in TimescaleDB (violations, lane counts) and on ``traffic.tracks`` (for speeds);
5. scores: precision and recall per violation type (a detection matches a true violation of
   the same type within ``--tolerance`` s), count error per lane over the run, and the speed
   MAE of detected tracks associated with true vehicles by box overlap;
6. measures latencies: one watcher tails ``camera.frames`` and ``traffic.tracks`` and notes
   when each frame and each frame's track batch arrived (frame -> tracks, every frame);
   another polls the DB every 0.2 s and notes when each violation row became visible
   (frame -> violation row, measured from the last frame the violation's evidence bundle
   holds: the worker cannot write the row before that frame has arrived).

The pure scoring lives in :mod:`streams.traffic.scoring`; this module only orchestrates.
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from citystream.settings import Settings
from citystream.stack.private import child_env, private_settings
from citystream.table import format_table
from schemas.messages import LaneCount, TrackBatch
from schemas.topics import TOPICS
from streams.traffic.calibration import Calibration
from streams.traffic.counts import lane_flows
from streams.traffic.scoring import (
    Box,
    Discharge,
    Event,
    KindScore,
    LaneError,
    SaturationError,
    associate_tracks,
    count_errors,
    match_violations,
    saturation_errors,
    speed_errors,
)
from streams.traffic.webster import SaturationFlow

log = logging.getLogger("citystream.traffic.evaluate")

#: The aims of the issue, printed next to the figures.
AIMS = {"precision": 0.95, "recall": 0.90, "count_error": 0.05, "speed_mae_kmh": 3.0}
KINDS = ("red_light", "speeding", "wrong_way", "illegal_stop", "bus_lane")
#: the traffic_counts columns read back, as LaneCount fields
COUNT_FIELDS = tuple(f for f in LaneCount.model_fields if f != "v")


@dataclass(frozen=True)
class Scenario:
    description: str
    sim_args: tuple[str, ...] = ()


SCENARIOS: dict[str, Scenario] = {
    "default": Scenario("weekday morning in daylight, default demand and violator rates"),
    "dusk": Scenario(
        "the default traffic at dusk (darker, noisier frames)", ("--lighting", "dusk")
    ),
    "night": Scenario("the default traffic at night", ("--lighting", "night")),
    "violators": Scenario(
        "three times the default violator rates (more events per minute)", ("--violators", "3")
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenario",
        choices=sorted(SCENARIOS),
        default="default",
        help="; ".join(f"{k}: {v.description}" for k, v in SCENARIOS.items()),
    )
    parser.add_argument("--seed", type=int, default=1, help="simulation seed (default: 1)")
    parser.add_argument(
        "--duration", type=float, default=300.0, metavar="S", help="simulated seconds (300)"
    )
    parser.add_argument(
        "--demand",
        type=float,
        default=None,
        metavar="VEH_PER_HOUR",
        help="total demand over the four arms (default: the scenario's, 2,450 veh/h)",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        metavar="X",
        help="simulation speed; 1 = real time (the camera's pace), 0 = as fast as possible "
        "(default: 1)",
    )
    parser.add_argument("--fps", type=float, default=10.0, help="camera frames/s (default: 10)")
    parser.add_argument("--width", type=int, default=640, help="frame width, px (default: 640)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=3.0,
        metavar="S",
        help="a detected violation matches a true one within this many seconds (3)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep logs, truth, state and the track batches (tracks.jsonl) here",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


# --- the private stack and the pipeline ----------------------------------------------------


class Pipeline:
    """The workers as child processes (``python -m citystream.cli ...``), logs in ``logs``."""

    #: name -> (consumer group, the topics it must have drained, command)
    WORKERS: dict[str, tuple[str | None, tuple[str, ...], tuple[str, ...]]] = {
        "bridge": (None, (), ("bridge",)),
        "vision": ("eval-vision", ("camera.frames",), ("vision", "worker")),
        "traffic": (
            "eval-traffic",
            ("traffic.tracks", "camera.frames"),
            ("traffic", "worker", "--idle-flush", "5"),
        ),
        "sink": ("eval-sink", ("traffic.violations", "traffic.counts"), ("sink",)),
    }

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings = settings
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "citystream.cli", *args],
                env=child_env(self.settings),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        for name, (group, _, args) in self.WORKERS.items():
            self.spawn(name, *args, *(("--group-id", group) if group else ()))

    @classmethod
    def groups(cls) -> dict[str, list[str]]:
        return {g: list(topics) for g, topics, _ in cls.WORKERS.values() if g}

    def check(self) -> None:
        for name, proc in self.procs.items():
            if name != "sim" and proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class ViolationWatch(threading.Thread):
    """Polls the DB for the violation rows of one intersection; ``seen``: violation id ->
    the wall-clock time its row was first visible (epoch s)."""

    def __init__(self, dsn: str, intersection_id: str, every_s: float = 0.2) -> None:
        super().__init__(name="violation-watch", daemon=True)
        self.dsn, self.intersection_id, self.every_s = dsn, intersection_id, every_s
        self.seen: dict[str, float] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        import psycopg

        conn: psycopg.Connection[Any] | None = None
        while not self._stop_event.wait(self.every_s):
            try:
                if conn is None:
                    conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
                rows = conn.execute(
                    "SELECT violation_id FROM violations WHERE intersection_id = %s",
                    (self.intersection_id,),
                ).fetchall()
            except psycopg.Error as exc:
                log.warning("violation watch: %s", exc)
                if conn is not None:
                    conn.close()
                conn = None
                continue
            now = time.time()
            for (vid,) in rows:
                self.seen.setdefault(vid, now)
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


class FrameWatch(threading.Thread):
    """Tails ``camera.frames`` and ``traffic.tracks`` for one camera: ``arrived`` /
    ``tracked``: a frame's event time (epoch s, to the ms) -> the wall-clock time this
    consumer received the frame (when the pipeline could first read it) / the frame's track
    batch; ``batches``: the camera's track batches.  :meth:`stop` reads both topics to their
    end first; ``complete`` says it did."""

    def __init__(self, bootstrap: str, camera_id: str) -> None:
        super().__init__(name="frame-watch", daemon=True)
        self.bootstrap, self.camera_id = bootstrap, camera_id
        self.arrived: dict[float, float] = {}
        self.tracked: dict[float, float] = {}
        self.batches: list[TrackBatch] = []
        self.complete = False
        self._stop_event = threading.Event()

    def run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        from schemas.codecs import Frame
        from schemas.topics import TOPICS

        frames, tracks = TOPICS["camera.frames"], TOPICS["traffic.tracks"]
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10
        )
        try:
            tps = [
                TopicPartition(topic.name, p)
                for topic in (frames, tracks)
                for p in consumer.partitions_for_topic(topic.name)
            ]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            end: dict[TopicPartition, int] | None = None
            while True:
                if end is None and self._stop_event.is_set():
                    end = consumer.end_offsets(tps)
                if end is not None and all(consumer.position(tp) >= end[tp] for tp in tps):
                    self.complete = True
                    return
                for tp, msgs in consumer.poll(timeout_ms=100).items():
                    now = time.time()
                    for m in msgs:
                        if tp.topic == frames.name:
                            frame = frames.codec.decode(m.value)
                            assert isinstance(frame, Frame)
                            camera, at, into = (
                                frame.header.camera_id,
                                frame.header.captured_at,
                                self.arrived,
                            )
                        else:
                            batch = tracks.codec.decode(m.value)
                            assert isinstance(batch, TrackBatch)
                            camera, at, into = batch.camera_id, batch.captured_at, self.tracked
                            if camera == self.camera_id:
                                self.batches.append(batch)
                        if camera == self.camera_id:
                            into.setdefault(round(at.timestamp(), 3), now)
        except Exception:  # not complete: the evaluation stops with this in the log
            log.exception("frame watch failed")
        finally:
            consumer.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=120)


# --- reading results -------------------------------------------------------------------------


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def read_truth(path: Path) -> dict[str, Any]:
    """Violations, per-frame boxes (by frame seq) and lane totals from the truth file."""
    violations: list[Event] = []
    frames: dict[int, list[Box]] = {}
    lanes: dict[str, int] = defaultdict(int)
    discharge: dict[str, Discharge] = {}
    meta: dict[str, Any] = {}
    with path.open() as f:
        for line in f:
            rec = json.loads(line)
            kind = rec["kind"]
            if kind == "violation":
                violations.append(
                    Event(
                        rec["violation"],
                        _ts(rec["occurred_at"]),
                        rec["vehicle_id"],
                        int(rec["track_id"]),
                    )
                )
            elif kind == "frame":
                frames[rec["seq"]] = [
                    Box(o["track_id"], tuple(o["bbox"]), o["speed_kmh"]) for o in rec["objects"]
                ]
            elif kind == "lane_count":
                lanes[rec["lane_id"]] += rec["count"]
            elif kind == "discharge":
                discharge[rec["lane_id"]] = Discharge(rec["discharged_pcu"], rec["discharge_s"])
            elif kind == "meta":
                meta = rec
    return {
        "violations": violations,
        "frames": frames,
        "lanes": dict(lanes),
        "discharge": discharge,
        "meta": meta,
    }


def track_boxes(batches: Iterable[TrackBatch]) -> dict[int, list[Box]]:
    """Track batches as boxes by frame seq, for scoring."""
    return {
        b.frame_seq: [
            Box(o.track_id, (o.bbox.x1, o.bbox.y1, o.bbox.x2, o.bbox.y2), o.speed_kmh)
            for o in b.tracks
        ]
        for b in batches
    }


def read_tracks(settings: Settings, camera_id: str) -> dict[int, list[Box]]:
    """Every TrackBatch of ``camera_id`` on ``traffic.tracks``, as boxes by frame seq."""
    from kafka import KafkaConsumer, TopicPartition

    from schemas.topics import TOPICS

    topic = TOPICS["traffic.tracks"]
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, enable_auto_commit=False)
    batches: list[TrackBatch] = []
    try:
        tps = [TopicPartition(topic.name, p) for p in consumer.partitions_for_topic(topic.name)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        while any(consumer.position(tp) < end[tp] for tp in tps):
            for msgs in consumer.poll(timeout_ms=1000).values():
                for m in msgs:
                    batch = topic.codec.decode(m.value)
                    assert isinstance(batch, TrackBatch)
                    if batch.camera_id == camera_id:
                        batches.append(batch)
    finally:
        consumer.close()
    return track_boxes(batches)


def last_evidence_frame(bundle: Path) -> float | None:
    """The event time of the last frame in an evidence bundle (None: unreadable bundle)."""
    try:
        with zipfile.ZipFile(bundle) as zf:
            manifest = json.loads(zf.read("manifest.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    times = manifest["frame_times"]
    return float(max([*times["before"], *times["after"], manifest["t"]]))


def _latency_summary(values: list[float]) -> dict[str, float | int | None]:
    """n, p50, p99 and max of latencies (s)."""
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    a = np.asarray(values, dtype=np.float64)
    return {
        "n": len(a),
        "p50": round(float(np.percentile(a, 50)), 3),
        "p99": round(float(np.percentile(a, 99)), 3),
        "max": round(float(a.max()), 3),
    }


def violation_latencies(
    seen: dict[str, float], last_frame: dict[str, float], arrived: dict[float, float]
) -> list[float]:
    """Seconds from the arrival of each violation's last evidence frame on Kafka to its row
    being seen in the DB, for the violations with all three known."""
    times = sorted(arrived)
    out = []
    for vid, t in last_frame.items():
        i = bisect.bisect_left(times, t - 0.005)  # the frame at t, to 5 ms
        if vid in seen and i < len(times) and abs(times[i] - t) <= 0.005:
            out.append(seen[vid] - arrived[times[i]])
    return sorted(out)


def read_db(settings: Settings, intersection_id: str) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(settings.db.dsn) as conn:
        violations = conn.execute(
            "SELECT kind, occurred_at, violation_id, evidence_uri, evidence_sha256, track_id "
            "FROM violations WHERE intersection_id = %s ORDER BY occurred_at",
            (intersection_id,),
        ).fetchall()
        lanes = conn.execute(
            "SELECT lane_id, sum(count)::int FROM traffic_counts "
            "WHERE intersection_id = %s GROUP BY lane_id",
            (intersection_id,),
        ).fetchall()
        counts = conn.execute(
            f"SELECT {', '.join(COUNT_FIELDS)} FROM traffic_counts WHERE intersection_id = %s",
            (intersection_id,),
        ).fetchall()
    return {
        "violations": [Event(k, t.timestamp(), vid, tid) for k, t, vid, _, _, tid in violations],
        "evidence": [(uri, sha) for _, _, _, uri, sha, _ in violations],
        "evidence_of": {vid: uri for _, _, vid, uri, _, _ in violations},
        "lanes": {lane: n for lane, n in lanes},
        "counts": [LaneCount(**dict(zip(COUNT_FIELDS, row, strict=True))) for row in counts],
    }


# --- the report ----------------------------------------------------------------------------------


def report(
    truth: dict[str, Any],
    db: dict[str, Any],
    tracks: dict[int, list[Box]],
    *,
    tolerance_s: float,
    horizon: tuple[float, float],
) -> dict[str, Any]:
    """Scores of one run; events are scored inside ``horizon`` (start, end) only, so a
    violation the run cut off on either side counts for neither list."""
    lo, hi = horizon

    def inside(es: list[Event]) -> list[Event]:
        return [e for e in es if lo <= e.t <= hi]

    pairs = [(truth["frames"][seq], det) for seq, det in tracks.items() if seq in truth["frames"]]
    mapping = associate_tracks(pairs)
    scores = match_violations(
        inside(truth["violations"]), inside(db["violations"]), tolerance_s, mapping
    )
    # only the lanes the camera watches (its calibration's approach lanes) can be counted
    cal_lanes = truth["meta"].get("calibration", {}).get("lanes", [])
    watched = {lane["lane_id"] for lane in cal_lanes if lane.get("stop_line")}
    lanes = count_errors(
        {k: v for k, v in truth["lanes"].items() if k in watched},
        {k: v for k, v in db["lanes"].items() if k in watched},
    )
    cal = truth["meta"].get("calibration")
    flows = lane_flows(db.get("counts", []), Calibration.from_dict(cal)) if cal else {}
    saturation = saturation_errors(
        {k: v for k, v in truth.get("discharge", {}).items() if k in watched},
        {k: Discharge(f.discharged_pcu, f.discharge_s) for k, f in flows.items() if k in watched},
    )
    errors = speed_errors(pairs, mapping)
    on_vehicle = speed_errors(pairs, mapping, on_vehicle=True)
    total_true = sum(e.true for e in lanes)
    total_measured = sum(e.measured for e in lanes)

    def kind_row(s: KindScore) -> dict[str, Any]:
        return {
            "true": s.true,
            "detected": s.detected,
            "matched": s.matched,
            "precision": s.precision,
            "recall": s.recall,
        }

    def lane_row(e: LaneError) -> dict[str, Any]:
        return {"true": e.true, "measured": e.measured, "error": e.error}

    def saturation_row(e: SaturationError) -> dict[str, Any]:
        return {
            "true_pcu_h": e.true_pcu_h,
            "true_s": e.true.seconds,
            "measured_pcu_h": e.measured_pcu_h,
            "measured_s": e.measured.seconds,
            "error": e.error,
        }

    return {
        "violations": {k: kind_row(scores[k]) for k in sorted(scores)},
        "lanes": {e.lane_id: lane_row(e) for e in lanes},
        "count_error_total": abs(total_measured - total_true) / total_true if total_true else None,
        "count_error_max_lane": max(
            (e.error for e in lanes if e.error is not None and e.true >= 10), default=None
        ),
        "saturation": {e.lane_id: saturation_row(e) for e in saturation},
        "speed_mae_kmh": sum(errors) / len(errors) if errors else None,
        "speed_observations": len(errors),
        "speed_mae_on_vehicle_kmh": sum(on_vehicle) / len(on_vehicle) if on_vehicle else None,
        "speed_observations_off_vehicle": len(errors) - len(on_vehicle),
        "tracks_associated": len(mapping),
        "frames_scored": len(pairs),
        "aims": AIMS,
    }


def _fmt(x: float | None, pct: bool = False, digits: int = 3) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}%" if pct else f"{x:.{digits}f}"


def print_report(rep: dict[str, Any]) -> None:
    rows = [
        [k, v["true"], v["detected"], v["matched"], _fmt(v["precision"]), _fmt(v["recall"])]
        for k, v in rep["violations"].items()
    ]
    print(format_table(["violation", "true", "detected", "matched", "precision", "recall"], rows))
    print()
    rows = [
        [lane, v["true"], v["measured"], _fmt(v["error"], pct=True)]
        for lane, v in rep["lanes"].items()
    ]
    print(format_table(["lane", "true vehicles", "counted", "error"], rows))
    print()
    print(
        f"count error: total {_fmt(rep['count_error_total'], pct=True)}, worst lane "
        f"(>= 10 vehicles) {_fmt(rep['count_error_max_lane'], pct=True)} (aim <= 5%)"
    )
    rows = [
        [
            lane,
            f"{v['true_s']:.0f}",
            _fmt(v["true_pcu_h"], digits=0),
            f"{v['measured_s']:.0f}",
            _fmt(v["measured_pcu_h"], digits=0),
            _fmt(v["error"], pct=True),
        ]
        for lane, v in rep.get("saturation", {}).items()
    ]
    if rows:
        print()
        print(
            "saturation flow (PCU per hour of green with a queue; a rate from "
            f"{SaturationFlow().min_discharge_s:g} s of it, as the advice takes one):"
        )
        print(
            format_table(
                ["lane", "true s", "true PCU/h", "camera s", "camera PCU/h", "error"], rows
            )
        )
    mae = rep["speed_mae_kmh"]
    print(
        f"speed MAE: {'-' if mae is None else f'{mae:.2f}'} km/h over "
        f"{rep['speed_observations']} observations of {rep['tracks_associated']} tracks "
        f"(aim <= 3 km/h)"
    )
    if mae is not None and rep.get("speed_mae_on_vehicle_kmh") is not None:
        print(
            f"  of which on the vehicle under the box: {rep['speed_mae_on_vehicle_kmh']:.2f} km/h; "
            f"{rep['speed_observations_off_vehicle']} observations were of a track that had "
            "moved off its vehicle (a tracking error)"
        )
    if "violations_stored" in rep:
        print(
            f"evidence: {rep['evidence_verified']} of {rep['violations_stored']} stored "
            "violations have a bundle whose SHA-256 matches the DB row"
        )
    for key, what in (
        ("track_latency_s", "frame -> its track batch on traffic.tracks (every frame)"),
        (
            "violation_latency_s",
            "frame -> violation row (from the last frame in its evidence bundle)",
        ),
    ):
        lat = rep.get(key)
        if lat and lat["n"]:
            print(
                f"{what}: p50 {lat['p50']:.2f} s, p99 {lat['p99']:.2f} s, "
                f"max {lat['max']:.2f} s, n {lat['n']}"
            )
    if rep.get("run"):
        r = rep["run"]
        print(
            f"run: scenario {r['scenario']}, seed {r['seed']}, {r['duration_s']:.0f} simulated s, "
            f"{r['frames']} frames, wall {r['wall_s']:.0f} s"
        )


# --- orchestration -------------------------------------------------------------------------------


def evaluate(args: argparse.Namespace, base: Settings, workdir: Path) -> dict[str, Any]:
    from citystream.capture.lag import wait_for_drain
    from citystream.db.migrate import migrate
    from citystream.kafka_topics import ensure_topics
    from citystream.stack.supervisor import down, up

    settings = private_settings(workdir / "state", base)
    scenario = SCENARIOS[args.scenario]
    inter = f"eval-{args.scenario}-{args.seed}"
    camera = f"{inter}-cam-s"
    truth_file = workdir / "truth.jsonl"
    started = time.monotonic()

    def progress(msg: str) -> None:
        if not args.json:
            print(msg, file=sys.stderr, flush=True)

    watch: ViolationWatch | None = None
    frames: FrameWatch | None = None
    up(settings, progress=lambda msg: progress(f"[stack] {msg}"))
    pipeline = Pipeline(settings, workdir / "logs")
    try:
        ensure_topics(settings.kafka.bootstrap)
        migrate(settings.db.dsn)
        frames = FrameWatch(settings.kafka.bootstrap, camera)
        frames.start()
        watch = ViolationWatch(settings.db.dsn, inter)
        watch.start()
        pipeline.start()
        sim_args = [
            "sim",
            "intersection",
            "--intersection-id",
            inter,
            "--camera-id",
            camera,
            "--seed",
            str(args.seed),
            "--duration",
            str(args.duration),
            "--speed",
            str(args.speed),
            "--fps",
            str(args.fps),
            "--width",
            str(args.width),
            "--truth",
            str(truth_file),
            *scenario.sim_args,
        ]
        if args.demand is not None:
            sim_args += ["--demand", str(args.demand)]
        progress(f"running scenario {args.scenario!r} for {args.duration:.0f} simulated s ...")
        sim = pipeline.spawn("sim", *sim_args)
        while sim.poll() is None:
            pipeline.check()
            time.sleep(1.0)
        if sim.returncode != 0:
            tail = (pipeline.logs / "sim.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the simulator exited with {sim.returncode}:\n{tail}")
        progress("simulation done; waiting for the pipeline to drain ...")
        groups = Pipeline.groups()
        # vision on CPU may run behind the camera: allow it the run's length again, and more
        budget = 120.0 + 3.0 * args.duration * args.fps / 10.0
        wait_for_drain(settings.kafka.bootstrap, groups, timeout_s=budget, settle_s=5.0)
        # the traffic worker retires a camera (judges its open tracks, emits its last
        # window) once its tracks caught up with its frames and --idle-flush (5 s) passed
        time.sleep(10.0)
        wait_for_drain(settings.kafka.bootstrap, groups, timeout_s=120.0, settle_s=5.0)
        pipeline.check()
        truth = read_truth(truth_file)
        db = read_db(settings, inter)  # every row is in: the drain waited for the sink
    finally:
        for thread in (watch, frames):
            if thread is not None:
                thread.stop()
        pipeline.stop()
        down(settings)
    assert frames is not None and watch is not None
    if not frames.complete:
        raise RuntimeError("the frame watcher did not read traffic.tracks to its end (see log)")
    if args.keep:
        codec = TOPICS["traffic.tracks"].codec
        with (workdir / "tracks.jsonl").open("wb") as dump:
            dump.writelines(codec.encode(b).rstrip(b"\n") + b"\n" for b in frames.batches)
    tracks = track_boxes(frames.batches)
    start = _ts(truth["meta"]["start"]) if "start" in truth["meta"] else 0.0
    rep = report(
        truth,
        db,
        tracks,
        tolerance_s=args.tolerance,
        # the first seconds (tracks not yet long enough) and the last (tracks cut off by
        # the end of the run) cannot be judged the same way by the pipeline and the truth
        horizon=(start + 5.0, start + args.duration - 10.0),
    )
    from streams.traffic.evidence import verify_bundle

    root = settings.traffic.evidence_dir or settings.state_dir / "evidence"
    rep["evidence_verified"] = sum(verify_bundle(root / uri, sha) for uri, sha in db["evidence"])
    rep["violations_stored"] = len(db["evidence"])
    last_frames = {
        vid: t
        for vid, uri in db["evidence_of"].items()
        if (t := last_evidence_frame(root / uri)) is not None
    }
    lat = violation_latencies(watch.seen, last_frames, frames.arrived)
    rep["violation_latency_s"] = _latency_summary(lat)
    rep["track_latency_s"] = _latency_summary(
        [at - frames.arrived[t] for t, at in frames.tracked.items() if t in frames.arrived]
    )
    rep["run"] = {
        "scenario": args.scenario,
        "seed": args.seed,
        "duration_s": args.duration,
        "demand_veh_h": args.demand,
        "frames": len(truth["frames"]),
        "wall_s": round(time.monotonic() - started, 1),
    }
    return rep


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.duration < 30:
        print("citystream traffic evaluate: --duration must be at least 30 s", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="citystream-eval-"))
    try:
        rep = evaluate(args, settings, workdir)
    finally:
        if args.keep is not None:
            shutil.copytree(workdir, args.keep, dirs_exist_ok=True)
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        print_report(rep)
    return 0
