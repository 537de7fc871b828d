"""Scoring against ground truth: violation matching, lane count error, track association."""

from __future__ import annotations

import pytest

from streams.traffic.scoring import (
    Box,
    Discharge,
    Event,
    associate_tracks,
    count_errors,
    match_violations,
    saturation_errors,
    speed_errors,
)
from streams.traffic.webster import SaturationFlow


def test_violations_match_by_kind_within_tolerance_one_to_one() -> None:
    truth = [Event("red_light", 10.0), Event("red_light", 50.0), Event("speeding", 20.0)]
    detected = [
        Event("red_light", 11.0),  # matches 10.0
        Event("red_light", 11.5),  # duplicate detection of the same event: false positive
        Event("speeding", 30.0),  # too late: false positive, and the speeder is missed
        Event("wrong_way", 5.0),  # a kind with no truth at all
    ]
    s = match_violations(truth, detected, tolerance_s=3.0)
    assert (s["red_light"].matched, s["red_light"].precision, s["red_light"].recall) == (
        1,
        0.5,
        0.5,
    )
    assert s["speeding"].matched == 0 and s["speeding"].recall == 0.0
    assert s["wrong_way"].precision == 0.0 and s["wrong_way"].recall is None


def test_closest_pairs_win() -> None:
    truth = [Event("bus_lane", 10.0), Event("bus_lane", 12.0)]
    detected = [Event("bus_lane", 11.9), Event("bus_lane", 10.2)]
    s = match_violations(truth, detected, tolerance_s=3.0)["bus_lane"]
    assert s.matched == 2 and s.precision == s.recall == 1.0


def test_count_errors_per_lane() -> None:
    errs = {e.lane_id: e for e in count_errors({"S1": 100, "S2": 50}, {"S1": 96, "S3": 4})}
    assert errs["S1"].error == pytest.approx(0.04)
    assert errs["S2"].error == 1.0 and errs["S3"].error is None


def test_tracks_are_associated_by_overlap_votes_and_speed_errors_use_them() -> None:
    frames = []
    for k in range(10):
        x = 10.0 * k
        truth = [Box(7, (x, 0, x + 20, 20), 40.0), Box(8, (300, 0, 320, 20), 0.0)]
        # detector track 1 follows vehicle 7; in one frame it overlaps nothing
        det = [Box(1, (x + 1, 1, x + 21, 21), 43.0 if k < 9 else None)]
        det.append(Box(2, (301, 0, 321, 20), 2.0))
        if k == 5:
            det[0] = Box(1, (500, 500, 520, 520), 99.0)
        frames.append((truth, det))
    mapping = associate_tracks(frames)
    assert mapping == {1: 7, 2: 8}
    errors = speed_errors(frames, mapping)
    # frame 5's box is wrong but still belongs to track 1 (99 vs 40); vehicle 8 is at rest
    assert sorted(errors) == [3.0] * 8 + [59.0]
    # split: measured on the vehicle, and off it (frame 5's box overlaps nothing)
    assert sorted(speed_errors(frames, mapping, on_vehicle=True)) == [3.0] * 8
    assert speed_errors(frames, mapping, on_vehicle=False) == [59.0]


def test_the_same_vehicle_matches_whenever_the_rule_dated_it() -> None:
    truth = [Event("wrong_way", 100.0, track_id=7), Event("wrong_way", 100.0, track_id=8)]
    # track 31 is vehicle 7, judged 15 s after the simulator dated the offence; track 32 is
    # vehicle 9 (no offence), at the very time of vehicle 8's: not a match
    detected = [Event("wrong_way", 115.0, track_id=31), Event("wrong_way", 100.0, track_id=32)]
    s = match_violations(truth, detected, tolerance_s=3.0, vehicle_of={31: 7, 32: 9})
    assert (s["wrong_way"].matched, s["wrong_way"].precision) == (1, 0.5)
    # a track that was never associated falls back to the time tolerance
    s = match_violations(truth, [Event("wrong_way", 101.0, track_id=40)], 3.0, {31: 7})
    assert s["wrong_way"].matched == 1


def test_saturation_flow_errors_need_enough_discharge_on_both_sides() -> None:
    truth = {"S_in_1": Discharge(30.0, 120.0), "S_in_2": Discharge(5.0, 40.0)}
    measured = {"S_in_1": Discharge(27.0, 120.0), "S_in_2": Discharge(5.0, 40.0)}
    by = {e.lane_id: e for e in saturation_errors(truth, measured, SaturationFlow())}
    assert (by["S_in_1"].true_pcu_h, by["S_in_1"].measured_pcu_h) == (900.0, 810.0)
    assert by["S_in_1"].error == pytest.approx(0.1)
    assert by["S_in_2"].error is None  # 40 s of discharge: no rate to compare
    lax = saturation_errors(truth, measured, SaturationFlow(min_discharge_s=30))
    assert lax[1].error == 0.0  # S_in_2's 450 PCU/h on both sides
    only_true = saturation_errors({"S_in_0": Discharge(10.0, 100.0)}, {})
    assert only_true[0].measured.seconds == 0 and only_true[0].error is None
