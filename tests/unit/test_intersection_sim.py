"""The SUMO intersection: determinism, signal plans, truth, calibration and rendering."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("libsumo")
cv2 = pytest.importorskip("cv2")

from schemas.messages import SignalState, VehicleClass  # noqa: E402
from simulators.intersection.calibration import build_calibration  # noqa: E402
from simulators.intersection.camera import VirtualCamera  # noqa: E402
from simulators.intersection.plan import default_plan  # noqa: E402
from simulators.intersection.render import Renderer  # noqa: E402
from simulators.intersection.sim import IntersectionSim, ScenarioConfig, ViolatorRates  # noqa: E402
from streams.traffic.counts import PCU  # noqa: E402

HOT = ViolatorRates(red_light=200, speeding=200, wrong_way=100, illegal_stop=100, bus_lane=200)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("isim")


def _fingerprint(cfg: ScenarioConfig, seconds: float) -> list[tuple[str, float, float]]:
    with IntersectionSim(cfg) as sim:
        steps = list(sim.run(seconds))
        return sorted((v.vehicle_id, round(v.x, 3), round(v.y, 3)) for v in steps[-1].vehicles)


def test_deterministic_by_seed(workdir: Path) -> None:
    cfg = ScenarioConfig(seed=3, workdir=workdir, violators=HOT)
    a = _fingerprint(cfg, 60)
    assert a and a == _fingerprint(cfg, 60)
    assert a != _fingerprint(replace(cfg, seed=4), 60)


def test_violators_truth_phases_and_plans(workdir: Path) -> None:
    cfg = ScenarioConfig(seed=2, workdir=workdir, violators=HOT)
    with IntersectionSim(cfg) as sim:
        steps = list(sim.run(240))
        changes = [c for s in steps for c in s.phase_changes]
        s_through = [c.state for c in changes if c.signal_group == "S_through"]
        assert s_through[:4] == [
            SignalState.green,
            SignalState.amber,
            SignalState.red,
            SignalState.green,
        ]
        kinds = Counter(t.kind for t in sim.truth)
        for kind in ("speeding", "bus_lane", "wrong_way", "illegal_stop"):
            assert kinds[kind] >= 1, kinds
        assert all(t.injected for t in sim.truth if t.kind != "red_light")
        # a new plan takes effect at once: EW gets green first
        plan = default_plan(
            cfg.intersection_id, datetime(2026, 1, 5, tzinfo=UTC), 20, 40, plan_id="p2"
        )
        new_phases = plan.model_copy(update={"phases": plan.phases[::-1]})
        sim.apply_plan(new_phases)
        step = sim.step()
        assert step.signals["E_through"] is SignalState.green
        assert step.signals["S_through"] is SignalState.red


def test_calibration_and_render_agree(workdir: Path) -> None:
    cfg = ScenarioConfig(seed=1, workdir=workdir, violators=ViolatorRates(0, 0, 0, 0, 0))
    cam = VirtualCamera(width=640, height=360)
    with IntersectionSim(cfg) as sim:
        cal = build_calibration(cfg, cam, str(sim.net_file))
        renderer = Renderer(cam, str(sim.net_file), cal)
        step = list(sim.run(60))[-1]
        img, truth = renderer.render(step)
    assert img.shape == (360, 640, 3) and truth
    assert {lane.lane_id for lane in cal.approach_lanes} == {"S_in_0", "S_in_1", "S_in_2"}
    assert cal.lane("S_in_1").signal_group == "S_through"
    assert [z.kind for z in cal.zones] == ["bus_lane", "speed", "no_stopping"]
    # the calibration's homography maps projected ground points back to the ground
    ground = np.array([[4.8, -20.0], [-4.8, -50.0], [8.0, -11.0]])
    assert np.allclose(cal.view.to_ground(cam.ground_to_pixels(ground)), ground, atol=1e-6)
    for g in truth:
        x1, y1, x2, y2 = g.bbox
        assert 0 <= x1 <= x2 < 640 and 0 <= y1 <= y2 < 360
    jpeg = renderer.encode(img)
    assert jpeg[:2] == b"\xff\xd8"


def test_a_fed_arm_takes_its_traffic_from_admissions(workdir: Path) -> None:
    """The west arm fed by a neighbour: no own demand on it, admitted vehicles drive in on
    it (a repeated handover once), and vehicles leaving by an outgoing edge are reported
    with the arm, their class and speed, for the next junction."""
    cfg = ScenarioConfig(
        seed=4, workdir=workdir, violators=ViolatorRates(0, 0, 0, 0, 0), fed_arms=frozenset("W")
    )
    with IntersectionSim(cfg) as sim:
        classes = ["motorbike", "car", "bus", "truck", "motorbike"]
        admitted = [
            sim.admit(f"h.int-0.{k}", "W", VehicleClass(c), 12.0) for k, c in enumerate(classes)
        ]
        again = sim.admit("h.int-0.0", "W", VehicleClass.motorbike, 12.0)
        seen_on_w: set[str] = set()
        exits = []
        for step in sim.run(150):
            seen_on_w |= {v.vehicle_id for v in step.vehicles if v.lane_id.startswith("W_in")}
            exits += step.exits
    assert admitted == [True] * 5 and again is False
    assert seen_on_w == {f"h.int-0.{k}" for k in range(5)}  # and nobody else
    arms = Counter(e.arm for e in exits)
    assert set(arms) <= {"N", "E", "S", "W"} and arms["E"] > 0 and arms["N"] > 0
    left = {e.vehicle_id: e for e in exits if e.vehicle_id.startswith("h.")}
    assert len(left) == 5  # all of them drove through and left
    assert {str(e.vehicle_class) for e in left.values()} == {"motorbike", "car", "bus", "truck"}
    assert all(0 < e.speed_mps < 20 for e in exits)


def test_stop_line_detectors_measure_flow_and_queue_discharge(workdir: Path) -> None:
    """Per approach lane: PCU over the stop line, and the queue discharge (crossings while a
    queue stood on green); the shared through/left lane, held by permitted left turners,
    discharges slower than its through/right neighbour."""
    cfg = ScenarioConfig(seed=1, workdir=workdir, violators=ViolatorRates(0, 0, 0, 0, 0))
    with IntersectionSim(cfg) as sim:
        green_s = {lane: 0.0 for lane in sim.detectors}
        crossed: dict[str, float] = {}
        for step in sim.run(600):
            for c in step.crossings:
                crossed[c.lane_id] = crossed.get(c.lane_id, 0.0) + PCU[c.vehicle_class]
            for lane, det in sim.detectors.items():
                if any(step.signals[g] is SignalState.green for g in det.signal_groups):
                    green_s[lane] += cfg.step_s
        dets = sim.detectors
    # every crossing is a vehicle leaving an approach lane, the one its detector counted
    assert crossed == pytest.approx({k: d.pcu for k, d in dets.items() if d.pcu})
    assert dets["N_in_1"].signal_groups == ("N_left", "N_through")
    assert dets["N_in_0"].signal_groups == ("N_right", "N_through")
    for lane, d in dets.items():
        assert 0 <= d.discharged_pcu <= d.pcu and 0 <= d.discharge_s <= green_s[lane] + 0.1
    rate = {k: d.discharged_pcu * 3600 / d.discharge_s for k, d in dets.items() if d.discharge_s}
    assert rate["N_in_1"] < 0.7 * rate["N_in_0"], rate
    assert rate["S_in_2"] < 0.7 * rate["S_in_1"], rate
