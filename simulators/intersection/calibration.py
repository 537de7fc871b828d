"""The camera's calibration file, generated from the same geometry the simulator uses."""

from __future__ import annotations

import numpy as np
import sumolib

from simulators.intersection.camera import VirtualCamera
from simulators.intersection.plan import read_links
from simulators.intersection.sim import ScenarioConfig
from streams.traffic.calibration import Calibration
from streams.traffic.geometry import polyline_to_polygon


def build_calibration(
    config: ScenarioConfig,
    camera: VirtualCamera,
    net_file: str,
    camera_id: str = "cam-s-1",
    version: str = "sim-1",
) -> Calibration:
    """Lanes of the south arm (approach lanes with stop lines and signal groups, exit lanes),
    the bus lane and no-stopping zones, the image->ground homography and the speed limit."""
    net = sumolib.net.readNet(net_file)
    group_of: dict[str, tuple[str, str]] = {}
    for link in read_links(net_file):
        # a lane with several movements: through wins, then right, then left
        rank = {"through": 0, "right": 1, "left": 2, "u_turn": 3}
        cur = group_of.get(link.in_lane)
        if cur is None or rank[link.movement] < rank[cur[1]]:
            group_of[link.in_lane] = (link.group, link.movement)
    lanes: list[dict[str, object]] = []
    zones: list[dict[str, object]] = []
    xs: list[float] = []  # across the south arm's lanes
    for edge_id in ("S_in", "S_out"):
        for lane in net.getEdge(edge_id).getLanes():
            shape = np.array(lane.getShape(), dtype=np.float64)
            width = lane.getWidth()
            d = shape[-1] - shape[0]
            d /= np.linalg.norm(d)
            poly = polyline_to_polygon(shape, width)
            xs += [float(x) for x, _ in poly]
            entry: dict[str, object] = {
                "lane_id": lane.getID(),
                "approach": "S",
                "direction": [float(d[0]), float(d[1])],
                "polygon": [[round(float(x), 3), round(float(y), 3)] for x, y in poly],
            }
            if edge_id == "S_in":
                n = np.array([-d[1], d[0]]) * width / 2
                end = shape[-1]
                group, movement = group_of[lane.getID()]
                entry |= {
                    "movement": movement,
                    "signal_group": group,
                    "stop_line": [[float(v) for v in end + n], [float(v) for v in end - n]],
                }
                if not lane.allows("passenger"):
                    zones.append(
                        {
                            "zone_id": "S_bus_lane",
                            "kind": "bus_lane",
                            "polygon": entry["polygon"],
                            "allowed_classes": ["bus"],
                        }
                    )
            lanes.append(entry)
    # the enforcement section for speeds: every south-arm lane, s0..s1 m before the junction
    s0, s1 = config.speed_zone_m
    y_edge = net.getEdge("S_out").getLanes()[0].getShape()[0][1]
    zones.append(
        {
            "zone_id": "S_speed",
            "kind": "speed",
            "polygon": [
                [min(xs), y_edge - s0],
                [max(xs), y_edge - s0],
                [max(xs), y_edge - s1],
                [min(xs), y_edge - s1],
            ],
        }
    )
    # the no-stopping zone: the kerb lane of the exit, z0..z1 m past the junction
    exit_lane = net.getEdge("S_out").getLanes()[0]
    start = np.array(exit_lane.getShape()[0])
    z0, z1 = config.no_stop_zone_m
    w = exit_lane.getWidth()
    x0 = start[0]
    y0 = start[1]
    zones.append(
        {
            "zone_id": "S_out_no_stopping",
            "kind": "no_stopping",
            "polygon": [
                [x0 - w / 2, y0 - z0],
                [x0 + w / 2, y0 - z0],
                [x0 + w / 2, y0 - z1],
                [x0 - w / 2, y0 - z1],
            ],
            "max_dwell_s": config.no_stop_max_dwell_s,
        }
    )
    return Calibration.from_dict(
        {
            "camera_id": camera_id,
            "intersection_id": config.intersection_id,
            "calibration_version": version,
            "image_size": [camera.width, camera.height],
            "homography": camera.image_to_ground.tolist(),
            "speed_limit_kmh": config.network.speed_limit_kmh,
            "lanes": lanes,
            "zones": zones,
        }
    )
