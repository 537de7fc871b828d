"""Calendar features in the local time of the place being forecast.

Timestamps are UTC everywhere; weekday, step of day and public holidays are taken
in ``tz`` (e.g. ``Asia/Ho_Chi_Minh``) because that is the clock people live by.
Holidays come from the ``holidays`` package (offline, ships Vietnam incl. Tết).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from functools import lru_cache

import numpy as np
import numpy.typing as npt
import pandas as pd

from streams.energy.forecasting.errors import ForecastDataError


@lru_cache(maxsize=32)
def holiday_dates(country: str, years: tuple[int, ...]) -> frozenset[date]:
    """Public holidays of ``country`` (ISO code, e.g. ``VN``, ``GB``) in ``years``."""
    import holidays  # imported lazily: only needed when a country is set

    try:
        cal = holidays.country_holidays(country, years=list(years))
    except NotImplementedError as exc:
        raise ForecastDataError(f"no holiday calendar for country {country!r}") from exc
    return frozenset(cal.keys())


@dataclass(frozen=True)
class Calendar:
    """Calendar arrays aligned with a UTC index (one value per step)."""

    step_of_day: npt.NDArray[np.float64]
    weekday: npt.NDArray[np.float64]
    weekend: npt.NDArray[np.float64]
    holiday: npt.NDArray[np.float64]
    local_midnight: npt.NDArray[np.bool_]


def calendar_for(index: pd.DatetimeIndex, tz: str = "UTC", country: str | None = None) -> Calendar:
    """Calendar features for every timestamp of ``index`` (tz-aware) in local time ``tz``."""
    if index.tz is None:
        raise ForecastDataError("the index must be timezone-aware (UTC)")
    local = index.tz_convert(tz)
    minutes = np.asarray(local.hour * 60 + local.minute, dtype=np.float64)
    weekday = np.asarray(local.day_of_week, dtype=np.float64)
    hol = np.zeros(len(index), dtype=np.float64)
    if country and len(index):
        years = tuple(range(int(local.year.min()), int(local.year.max()) + 1))
        dates = pd.DatetimeIndex(sorted(holiday_dates(country, years)))
        days = local.normalize().tz_localize(None)
        hol = np.asarray(days.isin(dates), dtype=np.float64)
    return Calendar(
        step_of_day=minutes,
        weekday=weekday,
        weekend=(weekday >= 5).astype(np.float64),
        holiday=hol,
        local_midnight=np.asarray(minutes == 0, dtype=np.bool_),
    )
