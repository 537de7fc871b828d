"""The intersection service without brokers: plan checks, truth counts, the simulator source,
and a deterministic capture + truth run."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

pytest.importorskip("libsumo")
pytest.importorskip("cv2")

from citystream.capture import read_capture, read_truth
from citystream.errors import SchemaError
from citystream.settings import Settings
from edge.camera.sources import SimFrame, SimulatorSource
from schemas.codecs import FrameCodec, JsonCodec
from schemas.messages import SignalPhaseChange, SignalState, VehicleClass
from simulators.intersection.camera import VirtualCamera
from simulators.intersection.controller import check_plan
from simulators.intersection.plan import default_plan
from simulators.intersection.reference import Placement, camera_row
from simulators.intersection.service import (
    IntersectionService,
    ServiceConfig,
    make_scene,
    scenario_rates,
)
from simulators.intersection.sim import Crossing, IntersectionSim, ScenarioConfig
from simulators.intersection.truth import LaneMinuteCounts

T0 = datetime(2026, 1, 5, tzinfo=UTC)
GROUPS = {f"{a}_{m}" for a in "NSEW" for m in ("through", "left", "right")}


def test_check_plan_accepts_a_good_plan_and_warns_about_groups_never_green() -> None:
    plan = default_plan("int-1", T0, 20, 40, plan_id="p2")
    assert check_plan(plan, "int-1", GROUPS) == []
    partial = plan.model_copy(
        update={
            "phases": [p.model_copy(update={"signal_groups": ["N_through"]}) for p in plan.phases]
        }
    )
    [warning] = check_plan(partial, "int-1", GROUPS)
    assert "S_through" in warning


@pytest.mark.parametrize(
    ("change", "msg"),
    [
        ({"intersection_id": "int-9"}, "this controller runs 'int-1'"),
        ({"cycle_s": 99.0}, "add up to 70 s but cycle_s is 99 s"),
    ],
)
def test_check_plan_refuses(change: dict[str, object], msg: str) -> None:
    plan = default_plan("int-1", T0).model_copy(update=change)
    with pytest.raises(SchemaError, match=msg):
        check_plan(plan, "int-1", GROUPS)


def test_check_plan_refuses_unknown_groups() -> None:
    plan = default_plan("int-1", T0)
    bad = plan.model_copy(
        update={
            "phases": [
                plan.phases[0].model_copy(update={"signal_groups": ["X_fly"]}),
                *plan.phases[1:],
            ]
        }
    )
    with pytest.raises(SchemaError, match="unknown signal groups \\['X_fly'\\]"):
        check_plan(bad, "int-1", GROUPS)


def test_lane_counts_count_stop_line_crossings_per_minute() -> None:
    c = LaneMinuteCounts(60)
    car, bike = VehicleClass.car, VehicleClass.motorbike
    t = T0.timestamp()
    assert c.add_step(t + 1, []) == []
    assert c.add_step(t + 2, [Crossing("a", car, "S_in_1")]) == []
    assert c.add_step(t + 3, [Crossing("b", bike, "S_in_2"), Crossing("e", car, "S_in_1")]) == []
    rows = c.add_step(t + 61, [Crossing("f", car, "S_in_1")])  # in the next window
    assert [(r["lane_id"], r["vehicle_class"], r["count"]) for r in rows] == [
        ("S_in_1", "car", 2),
        ("S_in_2", "motorbike", 1),
    ]
    assert {r["window_start"] for r in rows} == {T0.isoformat()} and rows[0]["approach"] == "S"
    last = c.flush(partial=True)
    assert [(r["count"], r["partial"]) for r in last] == [(1, True)] and c.flush() == []


def test_camera_row_places_the_camera_south_of_the_junction_looking_north() -> None:
    row = camera_row(VirtualCamera(width=640, height=360), Placement(lon=106.7, lat=10.77))
    assert row["lat"] < 10.77 and row["lon"] > 106.7  # 72 m south, 13 m east
    assert 340 < row["heading_deg"] < 350 and row["mount_height_m"] == 14.0
    assert (row["width"], row["height"]) == (640, 360)


def test_scenario_rates_scale() -> None:
    assert scenario_rates(0).speeding == 0 and scenario_rates(2).red_light == 40


def test_simulator_source_installs_a_plan_between_steps(tmp_path: Path) -> None:
    scenario = ScenarioConfig(seed=2, workdir=tmp_path, start=T0)
    scene = make_scene(scenario, 320, "cam-x")
    src = SimulatorSource(scene.sim, scene.renderer, fps=5, duration_s=12)
    src.open()
    try:
        frames = [src.read() for _ in range(10)]  # 0.1, 0.3, ... 1.9 s: 5 fps
        assert all(f is not None for f in frames)
        sf: SimFrame = frames[-1].extras  # type: ignore[union-attr]
        assert len(sf.steps) == 2 and frames[-1].media_t == pytest.approx(1.9)  # type: ignore[union-attr]
        assert frames[-1].image.shape == (180, 320, 3)  # type: ignore[union-attr]
        plan = default_plan("int-1", T0, 20, 40, plan_id="p-ew-first")
        src.request_plan(plan.model_copy(update={"phases": plan.phases[::-1]}))
        f = src.read()
        assert f is not None
        [switch] = f.extras.plan_switches
        assert switch.plan.plan_id == "p-ew-first" and switch.previous_plan_id == "fixed-1"
        assert f.extras.step.signals["E_through"] is SignalState.green
        assert f.extras.step.signals["S_through"] is SignalState.red
        n = 11
        while src.read() is not None:
            n += 1
        assert n == 61  # 0.1 ... 11.9 s at 5 fps, and the steps after the last frame get one
    finally:
        src.close()
    assert src.final_delay is not None


def _run(tmp: Path, seed: int) -> tuple[list[object], list[dict[str, object]]]:
    cfg = ServiceConfig(
        intersection_id="int-u",
        camera_id="cam-u",
        seed=seed,
        duration_s=8.0,
        speed=0.0,
        width=320,
        start=T0,
        publish=False,
        register=False,
        capture=tmp / "run.cap",
        progress_interval_s=0.0,
        workdir=tmp / "net",
    )
    assert IntersectionService(cfg, Settings()).run() == 0
    return list(read_capture(tmp / "run.cap")), read_truth(tmp / "run.cap")


def test_capture_and_truth_are_deterministic_and_consistent(tmp_path: Path) -> None:
    records, truth = _run(tmp_path / "a", seed=4)
    again, truth_again = _run(tmp_path / "b", seed=4)
    assert records == again and truth == truth_again
    frames = [r for r in records if r.topic == "camera.frames"]  # type: ignore[attr-defined]
    phases = [r for r in records if r.topic == "signal.phases"]  # type: ignore[attr-defined]
    assert len(frames) == 80 and phases
    codec = FrameCodec()
    headers = [codec.decode(r.value).header for r in frames]  # type: ignore[attr-defined]
    assert [h.seq for h in headers] == list(range(80))
    assert all(r.key == b"cam-u" for r in frames)  # type: ignore[attr-defined]
    assert headers[0].captured_at == datetime(2026, 1, 5, 0, 0, 0, 100000, tzinfo=UTC)
    assert frames[0].timestamp_ms == int(T0.timestamp() * 1000) + 100  # type: ignore[attr-defined]
    first = JsonCodec(SignalPhaseChange).decode(phases[0].value)  # type: ignore[attr-defined]
    assert first.intersection_id == "int-u" and phases[0].key == b"int-u"  # type: ignore[attr-defined]
    kinds = [t["kind"] for t in truth]
    assert kinds[0] == "meta" and kinds.count("frame") == 80 and kinds.count("phase") == len(phases)
    meta = truth[0]
    assert meta["camera_id"] == "cam-u" and meta["calibration"]["image_size"] == [320, 180]  # type: ignore[index]
    frame_truth = [t for t in truth if t["kind"] == "frame"]
    assert [t["seq"] for t in frame_truth] == list(range(80))
    objects = [o for t in frame_truth for o in t["objects"]]  # type: ignore[attr-defined]
    assert objects and all(0 <= o["bbox"][0] <= o["bbox"][2] < 320 for o in objects)
    assert kinds[-1] == "delay"
    discharge = {t["lane_id"]: t for t in truth if t["kind"] == "discharge"}
    assert {"N_in_0", "N_in_1", "S_in_0", "S_in_1", "S_in_2"} <= set(discharge)
    assert all(0 <= d["discharged_pcu"] <= d["pcu"] for d in discharge.values())  # type: ignore[operator]
    json.dumps(truth)  # plain JSON


def test_demand_is_scaled_over_the_arms_like_the_default() -> None:
    from simulators.intersection.service import scaled_demand
    from simulators.intersection.sim import ScenarioConfig

    base = dict(ScenarioConfig().demand_veh_h)
    got = dict(scaled_demand(4900))
    assert sum(got.values()) == pytest.approx(4900, abs=0.5)
    assert got["S"] / got["E"] == pytest.approx(base["S"] / base["E"], rel=1e-3)
    with pytest.raises(ValueError, match="demand"):
        scaled_demand(0)


def _warm_run(tmp: Path, warmup_s: float, violators: float = 1.0) -> list[dict[str, object]]:
    cfg = ServiceConfig(
        intersection_id="int-w",
        camera_id="cam-w",
        seed=3,
        duration_s=4.0,
        warmup_s=warmup_s,
        speed=0.0,
        fps=5.0,
        width=320,
        start=T0,
        violators=scenario_rates(violators),
        publish=False,
        register=False,
        capture=tmp / "run.cap",
        progress_interval_s=0.0,
        workdir=tmp / "net",
    )
    assert IntersectionService(cfg, Settings()).run() == 0
    return read_truth(tmp / "run.cap")


def _at(record: dict[str, object], field: str) -> datetime:
    return datetime.fromisoformat(str(record[field]))


def test_warmup_fills_the_junction_before_the_first_frame(tmp_path: Path) -> None:
    cold = _warm_run(tmp_path / "cold", 0.0)
    warm = _warm_run(tmp_path / "warm", 60.0, violators=20.0)
    first = {
        k: next(t for t in truth if t["kind"] == "frame")
        for k, truth in (("cold", cold), ("warm", warm))
    }
    assert first["cold"]["objects"] == []  # an empty junction: nothing in view yet
    assert len(first["warm"]["objects"]) >= 5  # type: ignore[arg-type]
    # the frames' clock is --start either way; the duration counts after the warm-up
    for truth in (cold, warm):
        frames = [t for t in truth if t["kind"] == "frame"]
        assert _at(frames[0], "captured_at") == T0 + timedelta(seconds=0.1)
        # 0.1, 0.3, ... 3.9 s, and the steps after the last one get a frame at 4.0 s
        assert len(frames) == 21 and _at(frames[-1], "captured_at") == T0 + timedelta(seconds=4)
    meta = warm[0]
    assert meta["kind"] == "meta" and meta["warmup_s"] == 60.0 and meta["start"] == T0.isoformat()


def test_warmup_truth_starts_at_the_first_frame(tmp_path: Path) -> None:
    # the premise: this traffic has violations during the 60 s the warm-up hides
    scenario = ScenarioConfig(
        intersection_id="int-w",
        seed=3,
        start=T0 - timedelta(seconds=60),
        violators=scenario_rates(20.0),
        workdir=tmp_path / "premise",
    )
    with IntersectionSim(scenario) as sim:
        for _ in sim.run(60.0):
            pass
        assert sim.truth and all(v.t < T0.timestamp() for v in sim.truth)
    truth = _warm_run(tmp_path / "a", 60.0, violators=20.0)
    first_frame = _at(next(t for t in truth if t["kind"] == "frame"), "captured_at")
    times = {
        "frame": "captured_at",
        "phase": "changed_at",
        "violation": "occurred_at",
        "plan_applied": "at",
    }
    for record in truth:
        field = times.get(str(record["kind"]))
        if field is not None:
            assert _at(record, field) >= first_frame, record
    windows = [_at(t, "window_start") for t in truth if t["kind"] == "lane_count"]
    assert all(w + timedelta(seconds=60) > first_frame for w in windows)
    # every signal group's state at the first frame, as one change each at its time
    groups = {f"{a}_{m}" for a in "NSEW" for m in ("through", "left", "right")}
    initial = [t for t in truth if t["kind"] == "phase" and _at(t, "changed_at") == first_frame]
    assert {t["signal_group"] for t in initial} == groups and len(initial) == len(groups)
    states = {t["signal_group"]: t["state"] for t in initial}
    assert states["N_through"] == states["S_through"] != states["E_through"]
    # ... and the same changes in the capture, ahead of the first frame
    records = read_capture(tmp_path / "a" / "run.cap")
    codec = JsonCodec(SignalPhaseChange)
    head = [codec.decode(r.value) for r in records[: len(groups)]]
    assert all(r.topic == "signal.phases" for r in records[: len(groups)])
    assert {(c.signal_group, str(c.state)) for c in head} == set(states.items())
    assert {c.changed_at for c in head} == {first_frame}
    assert records[len(groups)].topic == "camera.frames"


def test_warmup_is_deterministic(tmp_path: Path) -> None:
    a = _warm_run(tmp_path / "a", 30.0, violators=5.0)
    b = _warm_run(tmp_path / "b", 30.0, violators=5.0)
    assert a == b
    assert read_capture(tmp_path / "a" / "run.cap") == read_capture(tmp_path / "b" / "run.cap")


def test_warmup_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="warm-up"):
        IntersectionService(ServiceConfig(warmup_s=-1.0, publish=False), Settings())
