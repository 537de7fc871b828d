"""Lane counts, Webster advice and evidence bundles."""

from __future__ import annotations

import zipfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from schemas.messages import PhaseTiming, SignalPlan, SignalState, VehicleClass, ViolationKind
from streams.traffic.counts import LaneCounter, Observation, lane_flows
from streams.traffic.evidence import (
    Evidence,
    FrameRing,
    build_bundle,
    crop_jpeg,
    store_bundle,
    verify_bundle,
)
from streams.traffic.rules import RuleViolation
from streams.traffic.signals import SignalTimeline
from streams.traffic.webster import (
    SaturationFlow,
    StreamDemand,
    WebsterBounds,
    plan_delay_s,
    recommend,
    webster_delay_s,
    webster_plan,
)
from tests.unit.test_traffic_factories import T0, make_calibration, straight

CAL = make_calibration()
NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


# --- counts ------------------------------------------------------------------------------
def test_lane_counts_occupancy_and_queue() -> None:
    counter = LaneCounter(CAL, window_s=60)
    t0 = np.floor(T0 / 60) * 60
    rows = []
    for k in range(0, 650):  # 65 s at 10 fps
        t = t0 + k / 10
        obs = []
        # a motorbike every 10 s through lane S_in_1 (x=5), at 10 m/s, crossing y=-10
        for j in range(6):
            y = -30 + 10 * (t - (t0 + 10 * j))
            if -40 < y < 10:
                obs.append(Observation(100 + j, VehicleClass.motorbike, (5.0, y)))
        # a car queued at the line of S_in_0 for the whole time
        obs.append(Observation(1, VehicleClass.car, (2.0, -12.0), speed_kmh=0.0))
        rows += counter.add_frame(t, obs)
    first = [r for r in rows if r.window_start.timestamp() == t0]
    assert len(first) == 2 * 5  # 2 approach lanes x 5 classes
    by = {(r.lane_id, r.vehicle_class): r for r in first}
    assert by[("S_in_1", VehicleClass.motorbike)].count == 6
    assert by[("S_in_0", VehicleClass.car)].count == 0
    assert by[("S_in_0", VehicleClass.car)].occupancy == 1.0
    assert by[("S_in_0", VehicleClass.car)].queue_len == 1
    occ = by[("S_in_1", VehicleClass.motorbike)].occupancy
    assert occ == pytest.approx(6 * 0.5 / 60, abs=0.02)  # 0.5 s in the 5 m zone each
    flows = lane_flows(first, CAL)
    assert flows["S_in_1"].signal_group == "S_through"
    assert flows["S_in_1"].flow_pcu_h == pytest.approx(6 * 0.3 * 60)
    assert flows["S_in_0"].flow_pcu_h == 0.0
    assert all(r.discharged == 0 and r.discharge_s == 0 for r in first)  # no signal timeline
    assert counter.flush()  # the second, open window


def test_arrivals_on_red_follow_the_signal_at_the_arrival_line() -> None:
    t0 = float(np.floor(T0 / 60) * 60)
    signals = SignalTimeline()
    signals.add("S_through", t0, SignalState.green)
    signals.add("S_through", t0 + 20, SignalState.red)  # red from 20 s to 50 s
    signals.add("S_through", t0 + 50, SignalState.green)
    counter = LaneCounter(CAL, window_s=60, signals=signals, arrival_m=30.0)
    rows = []
    for k in range(0, 620):
        t = t0 + k / 10
        obs = []
        # a car every 10 s through S_in_1 at 10 m/s from y=-58: it crosses the arrival
        # line (y=-40, 30 m before the stop line at -10) 1.8 s after it appears
        for j in range(6):
            y = -58 + 10 * (t - (t0 + 10 * j))
            if -59 < y < -11:
                obs.append(Observation(200 + j, VehicleClass.car, (5.0, y)))
        # a motorbike that appears already past the arrival line is not an arrival
        obs.append(Observation(300, VehicleClass.motorbike, (5.5, -35.0 + 0.001 * k)))
        # a car on the exit lane going the other way crosses nothing that counts
        obs.append(Observation(301, VehicleClass.car, (-3.0, -11 - 0.1 * k)))
        rows += counter.add_frame(t, obs)
    by = {(r.lane_id, r.vehicle_class): r for r in rows}
    cars = by[("S_in_1", VehicleClass.car)]
    # arrivals at 1.8, 11.8, 21.8, 31.8, 41.8, 51.8 s: three of them in the red (20-50 s)
    assert (cars.arrivals, cars.arrivals_on_red) == (6, 3)
    assert by[("S_in_1", VehicleClass.motorbike)].arrivals == 0
    assert by[("S_in_0", VehicleClass.car)].arrivals == 0
    # without a signal timeline arrivals are still counted, none on red
    plain = LaneCounter(CAL, window_s=60)
    out = []
    for k in range(0, 620):
        t = t0 + k / 10
        y = -58 + 10 * (t - t0)
        out += plain.add_frame(t, [Observation(9, VehicleClass.bus, (5.0, y))] if y < -11 else [])
    bus = next(r for r in out if r.lane_id == "S_in_1" and r.vehicle_class is VehicleClass.bus)
    assert (bus.arrivals, bus.arrivals_on_red) == (1, 0)


def test_queue_discharge_measures_the_lane_saturation_flow() -> None:
    """Seconds of green with a queue standing, and the vehicles crossing in them: a queue
    of 8 cars starts 2 s apart from the green at 20 s; cars that meet no queue, or cross on
    red, are counted but not as a discharge."""
    t0 = float(np.floor(T0 / 60) * 60)
    signals = SignalTimeline()
    signals.add("S_through", t0, SignalState.red)
    signals.add("S_through", t0 + 20, SignalState.green)
    signals.add("S_through", t0 + 45, SignalState.red)
    counter = LaneCounter(CAL, window_s=60, signals=signals)
    rows = []
    for k in range(0, 620):
        t = t0 + k / 10
        obs = []
        for j in range(8):  # car j waits 6 m per place behind the line (y=-10)
            go = t0 + 20 + 2 * j  # starts at 10 m/s; crosses 0.6 j s later
            y = -11 - 6 * j + (10 * (t - go) if t > go else 0.0)
            if y < 10:
                obs.append(Observation(10 + j, VehicleClass.car, (5.0, y)))
        # a motorbike on the empty lane S_in_0 crossing on green, and one running the red
        for tid, cross in ((30, t0 + 30), (31, t0 + 50)):
            y = -10 + 10 * (t - cross)
            if -30 < y < 10:
                obs.append(Observation(tid, VehicleClass.motorbike, (2.0, y)))
        rows += counter.add_frame(t, obs)
    by = {(r.lane_id, r.vehicle_class): r for r in rows}
    cars = by[("S_in_1", VehicleClass.car)]
    # the queue stands from the green (20 s) until the last car moves off (34 s, + the
    # frame interval that shows it): 14.1 s; cars cross at 20.1 + 2.6 j s, so 6 meanwhile
    assert cars.discharge_s == pytest.approx(14.1)
    assert cars.count == 8 and cars.discharged == 6
    assert all(r.discharge_s == cars.discharge_s for r in rows if r.lane_id == "S_in_1")
    bikes = by[("S_in_0", VehicleClass.motorbike)]
    assert bikes.count == 2 and bikes.discharged == 0 and bikes.discharge_s == 0
    flow = lane_flows(rows, CAL)["S_in_1"]
    assert flow.discharged_pcu == 6.0 and flow.discharge_s == pytest.approx(14.1)
    # 6 cars in 14.1 s: 1,532 PCU/h, once there is enough of it to trust
    sat = SaturationFlow(min_discharge_s=10).of(flow.discharged_pcu, flow.discharge_s)
    assert sat == pytest.approx(6 * 3600 / 14.1)
    assert SaturationFlow(default_pcu_h=1500).of(flow.discharged_pcu, flow.discharge_s) == 1500


# --- Webster -----------------------------------------------------------------------------
def plan(g1: float = 30, g2: float = 30) -> SignalPlan:
    return SignalPlan(
        intersection_id="int-1",
        plan_id="fixed-1",
        cycle_s=g1 + g2 + 10,
        phases=[
            PhaseTiming(
                name="NS",
                signal_groups=["N_through", "S_through"],
                green_s=g1,
                amber_s=3,
                all_red_s=2,
            ),
            PhaseTiming(
                name="EW",
                signal_groups=["E_through", "W_through"],
                green_s=g2,
                amber_s=3,
                all_red_s=2,
            ),
        ],
        valid_from=NOW,
    )


def test_webster_cycle_and_splits() -> None:
    demand = {
        "N_through": StreamDemand(("N_through",), 900),
        "S_through": StreamDemand(("S_through",), 720),
        "E_through": StreamDemand(("E_through",), 360),
        "W_through": StreamDemand(("W_through",), 300),
    }
    # y = 0.5 and 0.2: Y = 0.7, L = 10 -> C0 = 20 / 0.3 = 66.7; greens 56.7 * 5/7, 2/7
    p = webster_plan(plan(), demand, valid_from=NOW)
    assert [ph.green_s for ph in p.phases] == [40.0, 16.0]
    assert p.cycle_s == 66.0
    assert plan_delay_s(p, demand) < plan_delay_s(plan(), demand)


def test_webster_bounds() -> None:
    light = {
        "N_through": StreamDemand(("N_through",), 900),
        "E_through": StreamDemand(("E_through",), 10),
    }
    p = webster_plan(plan(), light, valid_from=NOW, bounds=WebsterBounds(min_green_s=12))
    assert p.phases[1].green_s == 12.0
    heavy = {
        "N_through": StreamDemand(("N_through",), 1700),
        "E_through": StreamDemand(("E_through",), 1000),
    }
    p = webster_plan(plan(), heavy, valid_from=NOW, bounds=WebsterBounds(max_green_s=80))
    assert p.cycle_s <= 150 + 1e-9 and max(ph.green_s for ph in p.phases) <= 80


def test_webster_takes_the_phase_critical_lane() -> None:
    """A shared through/left lane that discharges slowly (permitted left turners hold it)
    is the critical stream of its phase although its signal groups' flows are small."""
    balanced = {
        "N_in_0": StreamDemand(("N_through", "N_right"), 450),
        "N_in_1": StreamDemand(("N_through", "N_left"), 230),
        "E_in_0": StreamDemand(("E_through",), 450),
    }
    p = webster_plan(plan(), balanced, valid_from=NOW)
    assert p.phases[0].green_s == p.phases[1].green_s  # y 0.25 and 0.25
    slow = {**balanced, "N_in_1": StreamDemand(("N_through", "N_left"), 230, 500)}
    q = webster_plan(plan(), slow, valid_from=NOW)  # y 0.46 and 0.25
    assert q.phases[0].green_s > 1.5 * q.phases[1].green_s and q.cycle_s > p.cycle_s
    assert plan_delay_s(q, slow) < plan_delay_s(p, slow)


def test_webster_delay_formula_and_recommendation() -> None:
    # by hand: C=60, g=27 (lambda 0.45), q=600 veh/h, s=1800 -> x = 0.7407;
    # 13.61 (uniform) + 6.35 (random) - 2.35 (correction) = 17.61 s
    d = webster_delay_s(60, 27, 600, 1800)
    assert d == pytest.approx(17.61, abs=0.01)
    assert webster_delay_s(60, 10, 1500, 1800) > 300  # oversaturated: overflow term
    demand = {
        "N_through": StreamDemand(("N_through",), 900),
        "E_through": StreamDemand(("E_through",), 300),
    }
    rec = recommend(plan(), demand, basis_start=NOW, basis_end=NOW, issued_at=NOW)
    assert rec.predicted_delay_recommended_s < rec.predicted_delay_current_s
    assert rec.current_plan_id == "fixed-1" and rec.recommended.intersection_id == "int-1"


# --- evidence ----------------------------------------------------------------------------
def _jpeg(value: int) -> bytes:
    import cv2

    img = np.full((72, 128, 3), value, np.uint8)
    img[20:50, 40:80] = 255 - value
    return bytes(cv2.imencode(".jpg", img)[1])


def _evidence() -> Evidence:
    tr = straight(5, -40, 0, 10, 2, track_id=3, cls=VehicleClass.motorbike)
    v = RuleViolation(
        ViolationKind.red_light,
        "cam-1",
        3,
        VehicleClass.motorbike,
        T0 + 1,
        0.9,
        (5.0, -30.0),
        {"signal_group": "S_through"},
    )
    ring = FrameRing(seconds=5)
    for k in range(20):
        ring.add(T0 + k / 10, _jpeg(k * 10))
    before, after = ring.around(v.t, 2, 2)
    crop = crop_jpeg(before[-1].jpeg, (40, 20, 80, 50))
    return Evidence(v, tr, CAL, "yolo11n-sim-1", before, after, crop, {"state": "red"})


def test_latency_is_measured_from_the_last_evidence_frame(tmp_path: Path) -> None:
    from streams.traffic.evaluate import last_evidence_frame, violation_latencies

    ev = _evidence()
    stored = store_bundle(tmp_path, ev)
    last = last_evidence_frame(stored.path)
    assert last == pytest.approx(ev.frames_after[-1].t) and last > ev.violation.t
    assert last_evidence_frame(tmp_path / "missing.zip") is None
    vid = ev.violation.violation_id
    arrived = {round(T0 + k / 10, 3): 5000.0 + k / 10 for k in range(20)}  # wall clock
    seen = {vid: 5000.0 + (last - T0) + 0.8, "never-bundled": 1.0}
    # a row seen 0.8 s after its last frame arrived; a violation whose frame never arrived
    # and one whose row was never seen are left out
    lat = violation_latencies(seen, {vid: last, "frame-lost": T0 + 99, "unseen": T0}, arrived)
    assert lat == [pytest.approx(0.8)]


def test_evidence_is_deterministic_and_verifiable(tmp_path: Path) -> None:
    ev = _evidence()
    assert len(ev.frames_before) == 2 and ev.frames_after[0].t > ev.violation.t
    assert build_bundle(ev) == build_bundle(_evidence())
    stored = store_bundle(tmp_path, ev)
    assert stored.uri == f"cam-1/{ev.violation.violation_id}.zip"
    assert verify_bundle(stored.path, stored.sha256)
    names = zipfile.ZipFile(stored.path).namelist()
    assert names == sorted(names) and "crop.jpg" in names and "manifest.json" in names
    # tampering: a changed byte is caught by the hash
    data = bytearray(stored.path.read_bytes())
    data[200] ^= 1
    stored.path.write_bytes(bytes(data))
    assert not verify_bundle(stored.path, stored.sha256)
    assert not verify_bundle(tmp_path / "nope.zip", stored.sha256)
    with pytest.raises(ValueError):
        crop_jpeg(ev.frames_before[0].jpeg, (500, 500, 600, 600))
