"""Synthetic smart-meter city: topology, load physics, faults with ground truth, replay.

Typical use::

    city = build_city(CityConfig(n_meters=3000, seed=1))
    sim = MeterSimulator(city, seed=1)
    for block in sim.run(start, end):          # time-warp: as fast as numpy goes
        readings = to_readings(block)          # or gateway_batches(block, city.gateway_idx, seq)
    sim.truth                                  # every injected fault, labelled

``paced(sim.run(...), speed=1.0)`` releases the same blocks in real time (or ``speed`` x).
"""

from simulators.meters.block import ReadingBlock, gateway_batches, meter_id, to_dicts, to_readings
from simulators.meters.calendar import DayType, day_type
from simulators.meters.dirt import VALUE_KINDS, DirtConfig, DirtKind, TruthEvent
from simulators.meters.generator import LOCAL_TZ, MeterSimulator, day_range
from simulators.meters.pacing import paced
from simulators.meters.profiles import Archetype
from simulators.meters.realdata import replay_feeder, taylor_feeder_kw
from simulators.meters.topology import City, CityConfig, District, Feeder, build_city
from simulators.meters.weather import WeatherYear

__all__ = [
    "LOCAL_TZ",
    "VALUE_KINDS",
    "Archetype",
    "City",
    "CityConfig",
    "DayType",
    "DirtConfig",
    "DirtKind",
    "District",
    "Feeder",
    "MeterSimulator",
    "ReadingBlock",
    "TruthEvent",
    "WeatherYear",
    "build_city",
    "day_range",
    "day_type",
    "gateway_batches",
    "meter_id",
    "paced",
    "replay_feeder",
    "taylor_feeder_kw",
    "to_dicts",
    "to_readings",
]
