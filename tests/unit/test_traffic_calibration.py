"""Calibration files, the homography (ground speed from pixels) and signal timelines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from citystream.errors import ConfigError
from schemas.messages import SignalPhaseChange, SignalState, VehicleClass
from streams.traffic.calibration import Calibration, ViewTransformer
from streams.traffic.signals import SignalTimeline
from streams.traffic.tracks import TrackHistory, to_datetime, window_speeds
from tests.unit.test_traffic_factories import T0, make_calibration


def test_round_trip_and_errors(tmp_path: Path) -> None:
    cal = make_calibration()
    cal.save(tmp_path / "c.json")
    again = Calibration.load(tmp_path / "c.json")
    assert again == cal and again.to_json() == cal.to_json()
    assert cal.lane("S_in_1").dir.tolist() == [0.0, 1.0]
    assert cal.speed_limit_for(VehicleClass.motorbike) == 40
    assert cal.speed_limit_for(VehicleClass.car) == 50
    with pytest.raises(ConfigError):
        make_calibration(homography=[[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    with pytest.raises(ConfigError):
        make_calibration(lanes=[{"lane_id": "x", "direction": [0, 0], "polygon": [[0, 0]] * 3}])
    with pytest.raises(ConfigError):
        Calibration.load(tmp_path / "missing.json")


def test_view_transformer_fit_and_round_trip() -> None:
    truth = np.array([[0.04, 0.01, -20], [0.002, -0.12, 40], [0.0001, 0.002, 1]])
    vt = ViewTransformer(truth)
    img = np.array([[100, 600], [1200, 650], [700, 300], [300, 250], [640, 400]], float)
    fitted = ViewTransformer.from_points(img, vt.to_ground(img))
    probe = np.array([[10, 20], [900, 500]], float)
    assert np.allclose(fitted.to_ground(probe), vt.to_ground(probe), atol=1e-6)
    assert np.allclose(vt.to_image(vt.to_ground(probe)), probe, atol=1e-6)


def test_homography_speed() -> None:
    """A car at 36 km/h on the ground, seen through a perspective camera."""
    h_ground_to_img = np.array([[20.0, 2.0, 640], [0.0, -4.0, 400], [0.0, 0.02, 1.0]])
    vt = ViewTransformer(np.linalg.inv(h_ground_to_img))
    t = T0 + np.arange(30) / 10
    ground = np.stack([np.full(30, 2.0), 10.0 * (t - T0)], axis=1)  # 10 m/s north
    pixels = vt.to_image(ground)  # what the tracker sees (non-uniform in pixels)
    back = vt.to_ground(pixels)
    v = window_speeds(t, back, 10.0)
    assert np.nanmax(v) * 3.6 == pytest.approx(36.0, abs=0.01)
    assert np.nanmin(v) * 3.6 == pytest.approx(36.0, abs=0.01)


def test_track_history_validation() -> None:
    with pytest.raises(ValueError):
        TrackHistory.from_points([(T0, 0, 0), (T0, 1, 0)])
    tr = TrackHistory.from_points([(T0, 0, 0), (T0 + 1, 10, 0)])
    assert tr.at(T0 + 0.5).tolist() == [5.0, 0.0] and tr.path_length_m == 10


def test_signal_timeline() -> None:
    changes = [
        SignalPhaseChange(
            intersection_id="i",
            signal_group="N",
            state=SignalState(s),
            changed_at=to_datetime(T0 + t),
        )
        for t, s in [(10, "amber"), (0, "green"), (13, "red")]
    ]
    tl = SignalTimeline.from_changes(changes)
    assert tl.state_at("N", T0 - 1) is None
    assert tl.state_at("N", T0 + 5) is SignalState.green
    assert tl.since("N", T0 + 20) == (SignalState.red, T0 + 13)
    tl.prune(T0 + 11)
    assert tl.state_at("N", T0 + 12) is SignalState.amber


def test_away_from_camera_is_up_the_image_on_the_ground() -> None:
    """The test view maps image rows to northings (y = 10 - 0.1 v): up the image is north,
    so the camera sees northbound traffic from behind."""
    cal = make_calibration()
    assert np.allclose(cal.away_from_camera((5.0, -10.0)), (0.0, 1.0))
    # a tilted view: the ground directions of image-up differ from point to point
    h = [[0.05, 0.01, -32], [0, -0.1, 10], [0, 0, 1]]
    tilted = Calibration.model_validate({**cal.model_dump(), "homography": h})
    way = tilted.away_from_camera((5.0, -10.0))
    assert np.hypot(*way) == pytest.approx(1.0) and way[1] > 0.99 and way[0] < 0
