"""Load archetypes: hourly shapes per day type, cooling response to temperature, noise.

Shapes are fractions of a meter's rated base load, by local hour, interpolated to the interval
grid.  They follow published typical shapes for tropical Asian cities: households peak in the
evening (cooking, lighting, air conditioning) with a smaller morning peak; shops and offices run
in the daytime and close on Sundays and holidays; factories run three shifts with dips at shift
changes; street lighting is on from dusk to dawn (driven by the sun, not the clock).
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import numpy.typing as npt

from simulators.meters.calendar import N_DAY_TYPES, DayType

F64 = npt.NDArray[np.float64]


class Archetype(IntEnum):
    residential = 0
    commercial = 1
    industrial = 2
    street_lighting = 3


N_ARCHETYPES = len(Archetype)

# fmt: off
_RES_WD = [0.34, 0.30, 0.28, 0.27, 0.29, 0.42, 0.68, 0.74, 0.55, 0.45, 0.42, 0.45,
           0.50, 0.46, 0.42, 0.44, 0.52, 0.72, 0.93, 1.00, 0.97, 0.88, 0.68, 0.48]
_RES_WE = [0.40, 0.33, 0.30, 0.28, 0.28, 0.31, 0.44, 0.58, 0.68, 0.68, 0.66, 0.70,
           0.72, 0.66, 0.60, 0.60, 0.65, 0.80, 0.95, 1.00, 0.98, 0.90, 0.72, 0.52]
_COM_WD = [0.24, 0.23, 0.23, 0.23, 0.24, 0.27, 0.38, 0.62, 0.88, 0.97, 1.00, 1.00,
           0.96, 0.99, 1.00, 0.98, 0.95, 0.86, 0.72, 0.58, 0.46, 0.36, 0.29, 0.26]
_COM_SAT = [0.24, 0.23, 0.23, 0.23, 0.24, 0.26, 0.32, 0.48, 0.70, 0.80, 0.84, 0.85,
            0.82, 0.80, 0.78, 0.74, 0.70, 0.64, 0.58, 0.50, 0.42, 0.34, 0.28, 0.25]
_COM_SUN = [0.24, 0.23, 0.23, 0.23, 0.23, 0.24, 0.26, 0.30, 0.38, 0.44, 0.46, 0.47,
            0.46, 0.45, 0.44, 0.43, 0.42, 0.40, 0.38, 0.35, 0.31, 0.28, 0.26, 0.25]
_IND_WD = [0.86, 0.86, 0.85, 0.85, 0.85, 0.82, 0.66, 0.86, 0.95, 0.96, 0.96, 0.95,
           0.80, 0.94, 0.70, 0.90, 0.95, 0.95, 0.95, 0.94, 0.92, 0.88, 0.68, 0.85]
# fmt: on


def _shape(hourly: list[float], scale: float = 1.0) -> F64:
    return np.asarray(hourly, dtype=np.float64) * scale


def _hourly_table() -> F64:
    """(archetype, day type, 24) fractions of base load.  Street lighting is handled by the sun."""
    t = np.zeros((N_ARCHETYPES, N_DAY_TYPES, 24))
    res = Archetype.residential
    t[res, DayType.weekday] = _shape(_RES_WD)
    t[res, DayType.saturday] = _shape(_RES_WE, 0.98)
    t[res, DayType.sunday] = _shape(_RES_WE)
    t[res, DayType.holiday] = _shape(_RES_WE, 1.02)
    t[res, DayType.tet] = _shape(_RES_WE, 0.70)  # many residents go home for Tết
    com = Archetype.commercial
    t[com, DayType.weekday] = _shape(_COM_WD)
    t[com, DayType.saturday] = _shape(_COM_SAT)
    t[com, DayType.sunday] = _shape(_COM_SUN)
    t[com, DayType.holiday] = _shape(_COM_SUN, 0.95)
    t[com, DayType.tet] = _shape(_COM_SUN, 0.75)
    ind = Archetype.industrial
    t[ind, DayType.weekday] = _shape(_IND_WD)
    t[ind, DayType.saturday] = _shape(_IND_WD, 0.78)
    t[ind, DayType.sunday] = _shape(_IND_WD, 0.45)
    t[ind, DayType.holiday] = _shape(_IND_WD, 0.40)
    t[ind, DayType.tet] = _shape(_IND_WD, 0.18)
    return t


# Share of the meter's air-conditioning capacity that may run, by archetype/day type/hour.
# fmt: off
_RES_COOL = [0.9, 0.9, 0.9, 0.85, 0.8, 0.6, 0.3, 0.2, 0.15, 0.15, 0.2, 0.25,
             0.3, 0.3, 0.3, 0.3, 0.35, 0.45, 0.6, 0.7, 0.8, 0.85, 0.9, 0.9]
_COM_COOL = [0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.15, 0.5, 0.9, 1.0, 1.0, 1.0,
             1.0, 1.0, 1.0, 1.0, 1.0, 0.9, 0.7, 0.5, 0.35, 0.2, 0.1, 0.05]
# fmt: on


def _cooling_table() -> F64:
    t = np.zeros((N_ARCHETYPES, N_DAY_TYPES, 24))
    t[Archetype.residential, :] = _shape(_RES_COOL)
    t[Archetype.residential, DayType.tet] = _shape(_RES_COOL, 0.7)
    t[Archetype.commercial, DayType.weekday] = _shape(_COM_COOL)
    t[Archetype.commercial, DayType.saturday] = _shape(_COM_COOL, 0.8)
    for dt in (DayType.sunday, DayType.holiday, DayType.tet):
        t[Archetype.commercial, dt] = _shape(_COM_COOL, 0.35)
    t[Archetype.industrial, :] = 0.5
    t[Archetype.industrial, DayType.tet] = 0.1
    return t


HOURLY_SHAPE = _hourly_table()
COOLING_OCCUPANCY = _cooling_table()

#: Multiplicative noise (log-normal sigma) of one interval's load, per archetype.
NOISE_SIGMA = np.array([0.22, 0.10, 0.05, 0.015])
#: Day-to-day behaviour variation (log-normal sigma of a per-meter daily factor).
DAILY_SIGMA = np.array([0.12, 0.06, 0.04, 0.0])
#: Mean base load in kW (log-normal median) and its spread, per archetype.
BASE_KW_MEDIAN = np.array([0.55, 7.0, 140.0, 1.8])
BASE_KW_SIGMA = np.array([0.45, 0.8, 0.7, 0.35])
#: Probability that a meter has air conditioning, and its cooling kW relative to base load.
AC_PROB = np.array([0.65, 0.95, 0.6, 0.0])
AC_REL = np.array([1.2, 0.6, 0.15, 0.0])
#: Probability of rooftop solar and its peak kW relative to base load.
SOLAR_PROB = np.array([0.08, 0.15, 0.25, 0.0])
SOLAR_REL = np.array([(3.0, 8.0), (0.5, 2.0), (0.3, 1.2), (0.0, 0.0)])
#: Temperature at which cooling starts and at which it runs fully (degrees C).
COOL_START_C = 25.0
COOL_FULL_C = 34.0
#: Performance ratio of rooftop PV (inverter, temperature, soiling losses).
PV_PERFORMANCE = 0.78


def interval_fraction(hourly: F64, local_hour: float) -> F64:
    """Interpolate hourly (…, 24) shapes at a fractional local hour (hour centres at h + 0.5)."""
    x = local_hour - 0.5
    h0 = int(np.floor(x))
    frac = x - h0
    a = hourly[..., h0 % 24]
    b = hourly[..., (h0 + 1) % 24]
    return np.asarray(a * (1.0 - frac) + b * frac, dtype=np.float64)


def cooling_factor(temp_c: float) -> float:
    """0 below :data:`COOL_START_C`, 1 at :data:`COOL_FULL_C`, convex in between."""
    x = (temp_c - COOL_START_C) / (COOL_FULL_C - COOL_START_C)
    x = min(max(x, 0.0), 1.0)
    return float(x**1.3)
