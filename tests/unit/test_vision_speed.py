"""The speed filter: follows the current speed (no chord lag), resists position noise, weighs
each position by its own noise, and survives a snapshot exactly; the ground span of a pixel
that sets that noise."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from schemas.messages import VehicleClass
from streams.vision.detections import Detections
from streams.vision.processor import VisionProcessor, pixel_spans
from streams.vision.speed import STATE_SIZE, SpeedConfig, SpeedFilter
from tests.unit.test_traffic_factories import make_calibration

FPS = 10.0


def drive(v0: float, accel: float, seconds: float, noise_m: float, seed: int = 0) -> list[tuple]:
    """(t, x, y, true km/h) along a diagonal at 10 fps; speed v0 + accel*t, floored at 0."""
    rng = np.random.default_rng(seed)
    out, s = [], 0.0
    for k in range(int(seconds * FPS)):
        t = k / FPS
        v = max(v0 + accel * t, 0.0)
        s += v / FPS
        x, y = s / math.sqrt(2) + rng.normal(0, noise_m), s / math.sqrt(2) + rng.normal(0, noise_m)
        out.append((1000.0 + t, x, y, v * 3.6))
    return out


def filtered(
    points: list[tuple], config: SpeedConfig | None = None, noise_m: float | None = None
) -> list[float | None]:
    cfg = config or SpeedConfig()
    f = SpeedFilter(cfg, *points[0][:3], noise_m=noise_m)
    return [f.speed_kmh, *(f.update(*p[:3], noise_m=noise_m) for p in points[1:])]


def chord(points: list[tuple], window_s: float = 2.0) -> list[float | None]:
    out: list[float | None] = []
    for i, (t, x, y, _) in enumerate(points):
        j = next(k for k in range(i + 1) if points[k][0] >= t - window_s)
        t0, x0, y0, _ = points[j]
        out.append(math.hypot(x - x0, y - y0) / (t - t0) * 3.6 if t - t0 >= 0.5 else None)
    return out


def mae(points: list[tuple], speeds: list[float | None], after_s: float = 2.0) -> float:
    errs = [
        abs(s - p[3])
        for p, s in zip(points, speeds, strict=True)
        if s is not None and p[0] - points[0][0] >= after_s
    ]
    return sum(errs) / len(errs)


def test_no_speed_until_min_age_then_a_steady_speed_through_noise() -> None:
    points = drive(50 / 3.6, 0.0, 10.0, noise_m=0.5)
    speeds = filtered(points, noise_m=0.5)
    assert speeds[:5] == [None] * 5 and speeds[5] is not None  # 0.5 s at 10 fps
    assert mae(points, speeds) < 3.0


def test_a_far_noisy_vehicle_is_smoothed_by_its_own_noise() -> None:
    # 1.5 m of position noise: a vehicle far from the camera, where a pixel spans metres
    points = drive(40 / 3.6, 0.0, 10.0, noise_m=1.5, seed=5)
    told, untold = mae(points, filtered(points, noise_m=1.5)), mae(points, filtered(points))
    assert told < untold / 1.5, (told, untold)
    assert told < 4.0, told


def test_pixel_spans_follow_the_homography() -> None:
    flat = make_calibration()  # 1280x720: x = 0.05 u - 32, y = -0.1 v + 10
    # a 640x360 frame's pixel is two calibration pixels: 0.1 m across, 0.2 m along
    assert pixel_spans(flat, 640, 360, np.array([[320.0, 300.0]])) == pytest.approx([0.2])
    assert pixel_spans(flat, 640, 360, np.zeros((0, 2))).shape == (0,)
    # a camera looking down a street: a pixel spans more the farther up the image it is
    tilted = make_calibration(
        image_size=[640, 360],
        homography=[[-0.302, -0.300, 150.7], [-0.0785, 1.628, -204.8], [0.0, -0.02152, 1.0]],
    )
    near, mid, far = pixel_spans(tilted, 640, 360, np.array([[320, 350], [320, 200], [320, 60]]))
    assert near < 0.1 < mid < far and far > 1.0, (near, mid, far)


def test_follows_braking_where_a_chord_lags() -> None:
    # from 50 km/h braking at 2.5 m/s² to a stop, positions with 0.3 m of noise
    points = drive(50 / 3.6, -2.5, 8.0, noise_m=0.3)
    ours = mae(points, filtered(points, noise_m=0.3))
    lagging = mae(points, chord(points))
    assert ours < 3.0, ours
    assert ours < lagging / 2, (ours, lagging)


def test_a_restored_filter_goes_on_exactly() -> None:
    points = drive(40 / 3.6, 1.0, 6.0, noise_m=0.5, seed=3)
    cfg = SpeedConfig()
    f = SpeedFilter(cfg, *points[0][:3])
    for p in points[1:30]:
        f.update(*p[:3])
    g = SpeedFilter.from_state(cfg, f.state())
    assert f.state().shape == (STATE_SIZE,)
    assert [f.update(*p[:3]) for p in points[30:]] == [g.update(*p[:3]) for p in points[30:]]


def test_stale_points_are_ignored() -> None:
    f = SpeedFilter(SpeedConfig(min_age_s=0.0), 10.0, 0.0, 0.0)
    f.update(11.0, 10.0, 0.0)
    before = f.state()
    assert f.update(10.5, 50.0, 50.0) == f.speed_kmh
    assert np.array_equal(f.state(), before)


@pytest.mark.parametrize(
    "state",
    [np.zeros(STATE_SIZE - 1), np.full(STATE_SIZE, np.nan), np.array([5.0, 4.0, *[0.0] * 7])],
)
def test_a_bad_state_is_refused(state: np.ndarray) -> None:
    with pytest.raises(ValueError):
        SpeedFilter.from_state(SpeedConfig(), state)


def test_config_is_checked() -> None:
    with pytest.raises(ValueError):
        SpeedConfig(position_std=0.0)
    with pytest.raises(ValueError):
        SpeedConfig(pixel_std=-1.0)
    assert SpeedConfig().noise_m(0.01) == SpeedConfig().position_std
    assert SpeedConfig(pixel_std=2.0).noise_m(1.5) == 3.0
    with pytest.raises(ValueError):
        SpeedConfig(min_age_s=-1.0)


class _TwoCars:
    """Two cars at 1 m per frame (36 km/h at 10 fps): one drives right, whole in view; one
    drives down the image, towards the camera, until the frame's bottom edge cuts its box
    off (from frame 10 its bottom edge stays at the frame's, as a detector's box does)."""

    model_version = "two-cars-1"
    classes = (VehicleClass.car,)
    device = "cpu"

    def detect_jpegs(self, jpegs: Sequence[bytes]) -> list[Detections]:
        out = []
        for j in jpegs:
            k = int(j[8:-2])
            x = 40.0 + 10 * k  # 10 frame pixels across = 1 m on the test calibration
            top = 260.0 + 5 * k  # 5 frame pixels down = 1 m
            boxes = [[x, 100, x + 40, 140], [400, top, 440, min(top + 50, 360.0)]]
            out.append(Detections(np.array(boxes), np.full(2, 0.9), np.zeros(2, dtype=int)))
        return out


def test_a_box_cut_off_by_the_frame_edge_does_not_move_the_speed() -> None:
    pytest.importorskip("cv2")  # the processor samples camera health with it
    from tests.unit.test_vision_checkpoint import info, work  # frames at 10 fps

    proc = VisionProcessor(_TwoCars())
    speeds: dict[int, list[float | None]] = {}
    for k in range(20):
        (outcome,) = proc.process([work(k, info())])
        assert outcome.batch is not None
        for obs in sorted(outcome.batch.tracks, key=lambda o: o.bbox.y1):
            speeds.setdefault(obs.track_id, []).append(obs.speed_kmh)
    across, down = speeds.values()
    assert all(s is not None and abs(s - 36) < 3 for s in across[8:])
    # the cut-off box's bottom edge stands still; the car's last whole speed stands with it
    whole = down[-11]
    assert whole is not None and abs(whole - 36) < 4 and down[-10:] == [whole] * 10
