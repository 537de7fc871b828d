"""Day types of the simulated city: weekday, Saturday, Sunday, public holiday, Tết.

Vietnamese public holidays come from the ``holidays`` package (computed offline, lunar dates
included).  Tết is the Lunar New Year holiday block; the working days right around it
(:data:`TET_SHOULDER_DAYS` either side) count as ``tet`` too, because factories and offices in
Ho Chi Minh City run far below normal and many residents travel to their home provinces.
"""

from __future__ import annotations

from datetime import date, timedelta
from enum import IntEnum
from functools import lru_cache


class DayType(IntEnum):
    weekday = 0
    saturday = 1
    sunday = 2
    holiday = 3
    tet = 4


N_DAY_TYPES = len(DayType)
TET_SHOULDER_DAYS = 3


@lru_cache(maxsize=64)
def _vn_holidays(year: int) -> dict[date, str]:
    import holidays  # lazy: only needed when a calendar is built

    return dict(holidays.country_holidays("VN", years=year).items())


@lru_cache(maxsize=64)
def _tet_days(year: int) -> frozenset[date]:
    core = {d for d, name in _vn_holidays(year).items() if "Lunar New Year" in name}
    if not core:
        return frozenset()
    first, last = min(core), max(core)
    span = (last - first).days + 2 * TET_SHOULDER_DAYS
    start = first - timedelta(days=TET_SHOULDER_DAYS)
    return frozenset(start + timedelta(days=i) for i in range(span + 1))


def day_type(d: date) -> DayType:
    """Day type of a local calendar date in Vietnam."""
    if d in _tet_days(d.year) or d in _tet_days(d.year + 1):
        return DayType.tet
    if d in _vn_holidays(d.year):
        return DayType.holiday
    wd = d.weekday()
    if wd == 6:
        return DayType.sunday
    if wd == 5:
        return DayType.saturday
    return DayType.weekday


def holiday_name(d: date) -> str | None:
    return _vn_holidays(d.year).get(d)
