"""Violation rules: pure functions over ground-plane track histories.

Each rule takes track histories, the camera's :class:`~streams.traffic.calibration.Calibration`
(and, for red light, the :class:`~streams.traffic.signals.SignalTimeline`) and returns
:class:`RuleViolation` records, at most one per track and lane/zone.
"""

from streams.traffic.rules.bus_lane import BusLaneParams, bus_lane
from streams.traffic.rules.common import RuleViolation, evaluate_all
from streams.traffic.rules.illegal_stop import IllegalStopParams, illegal_stop
from streams.traffic.rules.red_light import RedLightParams, red_light
from streams.traffic.rules.speeding import SpeedingParams, speeding
from streams.traffic.rules.wrong_way import WrongWayParams, wrong_way

__all__ = [
    "BusLaneParams",
    "IllegalStopParams",
    "RedLightParams",
    "RuleViolation",
    "SpeedingParams",
    "WrongWayParams",
    "bus_lane",
    "evaluate_all",
    "illegal_stop",
    "red_light",
    "speeding",
    "wrong_way",
]
