"""Builders for traffic tests: a small calibrated approach and hand-built tracks.

Layout (ground metres, stop line at y = -10, intersection box beyond it)::

    x: -7 ........ 0 ........ 3.5 ........ 7
       S_out (southbound exit) | S_in_0 (bus lane) | S_in_1  (northbound, stop line y=-10)
       no-stopping zone: x in [-7, 0], y in [-40, -20]
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from schemas.messages import SignalState, VehicleClass
from streams.traffic.calibration import Calibration
from streams.traffic.signals import SignalTimeline
from streams.traffic.tracks import TrackHistory

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC).timestamp()


def rect(x1: float, y1: float, x2: float, y2: float) -> list[tuple[float, float]]:
    return [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]


def make_calibration(**kw: object) -> Calibration:
    data: dict[str, object] = {
        "camera_id": "cam-1",
        "intersection_id": "int-1",
        "calibration_version": "test-1",
        "image_size": [1280, 720],
        "homography": [[0.05, 0, -32], [0, -0.1, 10], [0, 0, 1]],
        "speed_limit_kmh": 50,
        "class_speed_limits_kmh": {"motorbike": 40, "truck": 40},
        "lanes": [
            {
                "lane_id": "S_in_0",
                "approach": "S",
                "movement": "right",
                "signal_group": "S_right",
                "direction": [0, 1],
                "polygon": rect(0, -60, 3.5, -10),
                "stop_line": [[0, -10], [3.5, -10]],
            },
            {
                "lane_id": "S_in_1",
                "approach": "S",
                "movement": "through",
                "signal_group": "S_through",
                "direction": [0, 1],
                "polygon": rect(3.5, -60, 7, -10),
                "stop_line": [[3.5, -10], [7, -10]],
            },
            {
                "lane_id": "S_out",
                "approach": "S",
                "direction": [0, -1],
                "polygon": rect(-7, -60, 0, -10),
            },
        ],
        "zones": [
            {
                "zone_id": "S_nostop",
                "kind": "no_stopping",
                "polygon": rect(-7, -40, 0, -20),
                "max_dwell_s": 30,
            },
            {"zone_id": "S_bus", "kind": "bus_lane", "polygon": rect(0, -60, 3.5, -10)},
        ],
    }
    data.update(kw)
    return Calibration.from_dict(data)


def straight(
    x0: float,
    y0: float,
    vx: float,
    vy: float,
    seconds: float,
    fps: float = 10,
    t0: float = T0,
    cls: VehicleClass = VehicleClass.car,
    track_id: int = 1,
) -> TrackHistory:
    """Constant velocity (m/s) from (x0, y0) for ``seconds``."""
    n = int(seconds * fps) + 1
    pts = [(t0 + k / fps, x0 + vx * k / fps, y0 + vy * k / fps) for k in range(n)]
    return TrackHistory.from_points(pts, cls, track_id=track_id)


def path(
    points: Sequence[tuple[float, float, float]],
    cls: VehicleClass = VehicleClass.car,
    track_id: int = 1,
) -> TrackHistory:
    """From (seconds after T0, x, y)."""
    return TrackHistory.from_points([(T0 + t, x, y) for t, x, y in points], cls, track_id=track_id)


def signals(*changes: tuple[str, float, str]) -> SignalTimeline:
    """From (group, seconds after T0, state)."""
    tl = SignalTimeline()
    for group, t, state in changes:
        tl.add(group, T0 + t, SignalState(state))
    return tl


def cycle(green_until: float, amber_s: float = 3.0, group: str = "S_through") -> SignalTimeline:
    """Green from -100 s, amber at ``green_until``, red ``amber_s`` later."""
    return signals(
        (group, -100, "green"), (group, green_until, "amber"), (group, green_until + amber_s, "red")
    )
