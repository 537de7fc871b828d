"""Each violation rule over hand-built tracks: positives, near misses, motorbikes."""

from __future__ import annotations

import numpy as np
import pytest

from schemas.messages import VehicleClass as V
from schemas.messages import ViolationKind
from streams.traffic.rules import (
    bus_lane,
    evaluate_all,
    illegal_stop,
    red_light,
    speeding,
    wrong_way,
)
from streams.traffic.rules.common import LENGTH_M
from streams.traffic.tracks import TrackHistory
from tests.unit.test_traffic_factories import (
    T0,
    cycle,
    make_calibration,
    path,
    rect,
    signals,
    straight,
)

CAL = make_calibration()


# --- red light: northbound in S_in_1 (x = 5), stop line at y = -10 -------------------------
# At 10 m/s from y = -40 the ground point crosses the line at t = 3.0 s; the camera sees the
# lane from behind, so the front crosses a class length earlier (a car 4.5 m: at 2.55 s).
@pytest.mark.parametrize(
    ("amber_at", "cls", "fires"),
    [
        (-10.0, V.car, True),  # red for 7 s already
        (-10.0, V.motorbike, True),  # motorbikes are vehicles too
        (-10.0, V.person, False),  # pedestrians are not
        (1.0, V.car, False),  # crossed on amber (amber 1..4 s)
        (-0.6, V.car, False),  # red since 2.4 s, front over at 2.55: within the 0.3 s grace
        (5.0, V.car, False),  # crossed on green
    ],
)
def test_red_light(amber_at: float, cls: V, fires: bool) -> None:
    tr = straight(5, -40, 0, 10, 6, cls=cls)
    got = red_light([tr], CAL, cycle(amber_at))
    assert bool(got) is fires
    if fires:
        v = got[0]
        assert v.kind is ViolationKind.red_light and v.details["lane_id"] == "S_in_1"
        lead = LENGTH_M[cls]
        assert v.details["front_lead_m"] == lead
        assert v.t - T0 == pytest.approx(3.0 - lead / 10)
        assert v.details["time_into_red_s"] == pytest.approx(10.0 - lead / 10)
        assert 0.5 <= v.confidence <= 1.0


def test_red_light_ignores_an_id_hopping_across_the_line() -> None:
    # waiting 1.5 m before the line on red; the id then hops to a vehicle 8 m further on
    # (340 km/h between two frames) which drives away: no vehicle crossed
    hop = path(
        [(k / 10, 5.0, -11.9) for k in range(30)]
        + [(3.0 + k / 10, 5.0, -3.9 + 0.5 * k) for k in range(20)]
    )
    assert red_light([hop], CAL, cycle(-10)) == []
    # cross traffic 4 m past the line (43 km/h) whose ground point dips over it and back
    dip = [(k / 10, -13.6 + 1.2 * k, -6.0 - max(0, 5 - abs(k - 15))) for k in range(30)]
    assert red_light([path(dip)], CAL, cycle(-10)) == []
    # the same crossing at a vehicle's pace fires
    creep = path([(k / 10, 5.0, -16.9 + 0.5 * k) for k in range(40)])
    assert len(red_light([creep], CAL, cycle(-10))) == 1
    # lost 2 m before the line (front 2.5 m past it) for 2 s, "found" driving on: the id
    # may have passed to another vehicle; and the same track seen throughout fires
    lost = [(k / 10, 5.0, -20.0 + 0.5 * k) for k in range(17)]
    found = [(3.6 + k / 10, 5.0, -2.0 + 0.5 * k) for k in range(10)]
    assert red_light([path(lost + found)], CAL, cycle(-10)) == []
    seen = [(k / 10, 5.0, -20.0 + 0.5 * k) for k in range(46)]
    assert len(red_light([path(seen)], CAL, cycle(-10))) == 1
    # queued at the line (its front jittering over it and back), then the id hops 3.8 m
    # on to a vehicle in the junction: a jump from standstill no vehicle makes
    queued = [(k / 10, 5.0, -14.6 + 0.3 * (k % 2)) for k in range(30)]
    hop = [(3.0 + k / 10, 5.0, -10.5 + 0.5 * k) for k in range(20)]
    assert red_light([path(queued + hop, cls=V.car)], CAL, cycle(-10)) == []


def test_red_light_judges_the_front_of_a_vehicle_seen_from_behind() -> None:
    """A car entering at 5 km/h on the last of amber: its front crosses on amber, its ground
    point (the rear, 4.5 m back) 3.2 s later, on red.  Not a violation; a car that crosses
    as slowly once red has begun is."""
    slow = path([(k / 10, 5.0, -15.0 + 0.14 * k) for k in range(120)])  # front over at 0.36 s
    assert red_light([slow], CAL, cycle(-2.6)) == []  # red from 0.4 s
    assert len(red_light([slow], CAL, cycle(-3.2))) == 1  # red from -0.2 s


def test_red_light_near_misses() -> None:
    red = cycle(-10)
    # stops 0.8 m past the line on red, waits, then goes when it turns green at 20 s
    creep = path(
        [(0, 5, -30), (2, 5, -12), (3, 5, -9.2), (19.9, 5, -9.2), (20.5, 5, -7), (22, 5, 5)]
    )
    tl = signals(("S_through", -100, "red"), ("S_through", 20, "green"))
    assert red_light([creep], CAL, tl) == []
    # a track that ends right at the line (no evidence it entered the junction)
    assert red_light([straight(5, -30, 0, 10, 2.05)], CAL, red) == []
    # the right-turn lane has its own group, which is green
    right = straight(2, -40, 0, 10, 6)
    assert red_light([right], CAL, red) == []
    # unknown signal state: never fire
    assert red_light([straight(5, -40, 0, 10, 6)], CAL, signals()) == []


# --- speeding ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "kmh", "fires"),
    [
        (V.car, 54.0, False),  # limit 50 + 5 tolerance
        (V.car, 58.0, True),
        (V.motorbike, 44.0, False),  # motorbike limit 40
        (V.motorbike, 47.0, True),
        (V.truck, 47.0, True),
        (V.bus, 47.0, False),
    ],
)
def test_speeding(cls: V, kmh: float, fires: bool) -> None:
    tr = straight(5, -60, 0, kmh / 3.6, 3.0, cls=cls)
    got = speeding([tr], CAL)
    assert bool(got) is fires
    if fires:
        assert got[0].details["speed_kmh"] == pytest.approx(kmh, abs=0.1)


def test_speeding_with_position_noise_and_short_tracks() -> None:
    rng = np.random.default_rng(1)
    t = T0 + np.arange(40) / 10
    xy = np.stack([np.full(40, 5.0), -60 + 50 / 3.6 * (t - T0)], axis=1)
    noisy = TrackHistory("cam-1", 1, V.car, t, xy + rng.normal(0, 0.2, xy.shape), np.full(40, 0.9))
    assert speeding([noisy], CAL) == []  # 50 km/h with 20 cm jitter: no false alarm
    short = straight(5, -60, 0, 80 / 3.6, 0.5)  # 11 m: too short to judge
    assert speeding([short], CAL) == []


def test_speeding_with_camera_grade_jitter_at_range() -> None:
    """A far vehicle's ground position jitters by a metre (a pixel or two of box): a normal
    car must not become a speeder, a real speeder is still measured within a few km/h."""
    rng = np.random.default_rng(7)
    t = T0 + np.arange(50) / 10  # 5 s at 10 fps

    def track(kmh: float, tid: int) -> TrackHistory:
        xy = np.stack([np.full(50, 5.0), -90 + kmh / 3.6 * (t - T0)], axis=1)
        return TrackHistory(
            "cam-1", tid, V.car, t, xy + rng.normal(0, 1.0, xy.shape), np.full(50, 0.9)
        )

    assert speeding([track(46.0, k) for k in range(40)], CAL) == []
    got = speeding([track(75.0, 99)], CAL)
    assert len(got) == 1 and got[0].details["speed_kmh"] == pytest.approx(75.0, abs=8.0)


def test_speeding_is_measured_inside_the_speed_zone_only() -> None:
    """With an enforcement section (y from -50 to -10) the part of a track outside it does
    not count: fast far away and slow in the section is no speeder; fast in it is."""
    zone = {"zone_id": "S_speed", "kind": "speed", "polygon": rect(-7, -50, 7, -10)}
    cal = make_calibration(zones=[zone])
    # 80 km/h from y = -150 to -50 (outside), then 40 km/h through the section
    t = T0 + np.arange(0, 9.0, 0.1)
    y = np.where(t - T0 < 4.5, -150 + 80 / 3.6 * (t - T0), -50 + 40 / 3.6 * (t - T0 - 4.5))
    xy = np.stack([np.full(len(t), 5.0), y], axis=1)
    far_fast = TrackHistory("cam-1", 1, V.car, t, xy, np.full(len(t), 0.9))
    assert speeding([far_fast], CAL)  # the whole track: the 80 km/h part counts
    assert speeding([far_fast], cal) == []  # the section: 40 km/h
    inside = straight(5, -50, 0, 70 / 3.6, 2.0, cls=V.car)  # 70 km/h through the section
    [v] = speeding([inside], cal)
    assert v.details["speed_kmh"] == pytest.approx(70.0, abs=0.1)
    assert -50 <= v.ground_xy[1] <= -10


def test_speeding_after_waiting_at_the_light() -> None:
    """Stopped for 20 s at the line, then away at 80 km/h: a speeder, although most of the
    track is slow (the speed is the highest sustained one, not an average)."""
    t = T0 + np.arange(0, 28, 0.1)
    y = np.where(t - T0 < 20, -12.0, -12.0 + 80 / 3.6 * (t - T0 - 20))
    xy = np.stack([np.full(len(t), 5.0), y], axis=1)
    got = speeding([TrackHistory("cam-1", 5, V.car, t, xy, np.full(len(t), 0.9))], CAL)
    assert len(got) == 1 and got[0].details["speed_kmh"] == pytest.approx(80.0, abs=1.0)


# --- wrong way ---------------------------------------------------------------------------
def test_wrong_way() -> None:
    # a motorbike riding south in the northbound lane
    against = straight(5, -15, 0, -5, 4, cls=V.motorbike)
    got = wrong_way([against], CAL)
    assert len(got) == 1 and got[0].details["lane_id"] == "S_in_1"
    assert got[0].vehicle_class is V.motorbike
    assert wrong_way([straight(5, -50, 0, 5, 4)], CAL) == []  # right way
    assert wrong_way([straight(-3, -15, 0, -5, 4)], CAL) == []  # southbound in the exit lane
    # reversing 4 m to get out of a box: under the 8 m minimum
    assert wrong_way([straight(5, -15, 0, -2, 2)], CAL) == []
    # cutting across both approach lanes sideways
    assert wrong_way([straight(-2, -30, 3, -0.5, 4)], CAL) == []


def test_wrong_way_on_a_track_that_turns_back() -> None:
    # 30 m south against the lane, then (its id handed to a northbound car) 28 m north: the
    # run's net displacement is 2 m, the stretch against the lane 30 m
    there = [(k / 10, 5.0, -15.0 - 0.5 * k) for k in range(61)]
    back = [(6.0 + k / 10, 5.0, -45.0 + 0.5 * k) for k in range(1, 57)]
    got = wrong_way([path(there + back, cls=V.motorbike)], CAL)
    assert len(got) == 1 and got[0].details["against_m"] == pytest.approx(30.0)
    assert got[0].t == pytest.approx(T0 + 1.6)  # 8 m against the lane
    # a stopped car whose position jitters by up to 1.5 m for a minute: no stretch of 8 m
    rng = np.random.default_rng(4)
    jitter = [(k / 10, 5.0 + rng.normal(0, 0.3), -20.0 + rng.normal(0, 0.6)) for k in range(600)]
    assert wrong_way([path(jitter)], CAL) == []
    # the right way, a 5 m reverse out of the box, the right way again: under 8 m against
    fwd = [(k / 10, 5.0, -40.0 + 0.5 * k) for k in range(41)]
    rev = [(4.0 + k / 10, 5.0, -20.0 - 0.25 * k) for k in range(1, 21)]
    on = [(6.0 + k / 10, 5.0, -25.0 + 0.5 * k) for k in range(1, 21)]
    assert wrong_way([path(fwd + rev + on)], CAL) == []
    # a queue waiting at the light whose track id hops 6 m back to the car behind, twice
    queue = [(k / 10, 5.0, -20.0 - 6.0 * ((k >= 20) + (k >= 40))) for k in range(80)]
    assert wrong_way([path(queue)], CAL) == []
    # a queued track lost for 2.1 s and found 10 m further back (5 m/s: under the speed
    # check): the id may have passed to a vehicle behind
    lost = [(k / 10, 5.0, -18.0 + 0.1 * k) for k in range(20)]
    found = [(4.0 + k / 10, 5.0, -26.3 + 0.05 * k) for k in range(20)]
    assert wrong_way([path(lost + found)], CAL) == []


# --- illegal stop --------------------------------------------------------------------------
def test_illegal_stop() -> None:
    rng = np.random.default_rng(2)
    pts = [(k / 2, -3 + rng.normal(0, 0.3), -30 + rng.normal(0, 0.3)) for k in range(80)]
    got = illegal_stop([path(pts, V.car)], CAL)  # 39.5 s stopped in the zone
    assert len(got) == 1 and got[0].details["dwell_s"] == pytest.approx(39.5)
    assert got[0].t == pytest.approx(T0 + 30)
    short = [(k / 2, -3, -30) for k in range(40)]  # 19.5 s: allowed
    assert illegal_stop([path(short, V.motorbike)], CAL) == []
    outside = [(k / 2, -3, -50) for k in range(80)]  # stopped outside the zone
    assert illegal_stop([path(outside)], CAL) == []
    # crawling through the zone in a jam (always moving > 2 m per 30 s): not a stop
    crawl = straight(-3, -45, 0, 0.5, 60)
    assert illegal_stop([crawl], CAL) == []


def test_illegal_stop_motorbike() -> None:
    pts = [(k, -5, -25) for k in range(45)]
    assert len(illegal_stop([path(pts, V.motorbike)], CAL)) == 1


# --- bus lane ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "fires"), [(V.car, True), (V.motorbike, True), (V.bus, False), (V.person, False)]
)
def test_bus_lane_driving_along(cls: V, fires: bool) -> None:
    tr = straight(2, -55, 0, 8, 5, cls=cls)  # 40 m along the bus lane
    assert bool(bus_lane([tr], CAL)) is fires


def test_bus_lane_crossing_and_queueing() -> None:
    crossing = straight(5, -40, -3, 6, 3)  # from S_in_1 across the bus lane to turn right
    assert bus_lane([crossing], CAL) == []
    queued = path([(k, 2, -20 + 0.1 * k) for k in range(15)])  # 14 s waiting in it
    got = bus_lane([queued], CAL)
    assert len(got) == 1 and got[0].details["time_s"] == pytest.approx(14)


def test_evaluate_all_and_message() -> None:
    tl = cycle(-10)
    runner = straight(5, -40, 0, 20, 3, track_id=7)  # 72 km/h through a red
    found = evaluate_all([runner], CAL, tl)
    assert [v.kind for v in found] == [ViolationKind.speeding, ViolationKind.red_light]
    msg = found[1].to_message("int-1", "evidence/cam-1/x.zip", "0" * 64)
    assert msg.violation_id == found[1].violation_id and msg.track_id == 7
    assert msg.details["signal_group"] == "S_through"
