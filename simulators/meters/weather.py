"""A real hourly weather year for the simulated city, read offline from pvlib's bundled TMY2 file.

The default file is ``12839.tm2`` (Miami, typical meteorological year: hot and humid, the closest
climate to Ho Chi Minh City among pvlib's bundled files).  Its hours are mapped by local clock time:
the weather observed at Miami's local hour *h* of day *d* is the weather at Ho Chi Minh City's
local hour *h* of day *d* in every simulated year.  Temperature is used as is.  Irradiance keeps
the file's real cloudiness (clearness index ``GHI / ETR`` per hour) and is re-applied to the sun's
geometry over the simulated city, so sunrise, sunset and solar noon are those of the city.

Miami's winter is cooler than Ho Chi Minh City's, so by default each month's temperatures are
shifted (smoothly, by day of year) so that the monthly means match Ho Chi Minh City's climate
normals (:data:`HCMC_MONTHLY_MEAN_C`); the day-to-day and hour-to-hour variation stays the real
one from the file.  ``WeatherYear.load(adjust_to_hcmc=False)`` uses the file unchanged.

The file is parsed directly (fixed-width TMY2 columns), which avoids importing pvlib and pandas at
run time: only the data file of the installed pvlib distribution is read.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from citystream.errors import ConfigError

F64 = npt.NDArray[np.float64]

SOLAR_CONSTANT_W_M2 = 1367.0
DEFAULT_TMY2 = "12839.tm2"
#: Monthly mean air temperature of Ho Chi Minh City (Tan Son Nhat), degrees C, Jan..Dec.
HCMC_MONTHLY_MEAN_C = (26.0, 26.8, 28.0, 29.2, 28.8, 27.8, 27.4, 27.3, 27.1, 26.9, 26.6, 25.9)
_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def pvlib_data_file(name: str = DEFAULT_TMY2) -> Path:
    """Path of a data file shipped inside the installed ``pvlib`` package (not imported)."""
    spec = importlib.util.find_spec("pvlib")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("pvlib is not installed; `pip install pvlib` (its data files are needed)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    if not path.is_file():
        raise ConfigError(f"pvlib data file {name!r} not found at {path}")
    return path


def parse_tmy2(path: Path) -> tuple[F64, F64, F64]:
    """Hourly (8760) arrays ``temp_c``, ``ghi_w_m2``, ``etr_w_m2`` in file order (Jan 1 01:00 ...).

    Row ``i`` is the hour *ending* at local standard hour ``hour`` (TMY2 convention, 1..24).
    """
    lines = path.read_text(encoding="ascii").splitlines()[1:]
    if len(lines) < 8760:
        raise ConfigError(f"{path}: expected 8760 hourly rows, found {len(lines)}")
    lines = lines[:8760]
    etr = np.array([float(ln[9:13]) for ln in lines])
    ghi = np.array([float(ln[17:21]) for ln in lines])
    temp = np.array([float(ln[67:71]) / 10.0 for ln in lines])
    return temp, ghi, etr


def solar_elevation_deg(epoch_s: F64 | float, lat_deg: float, lon_deg: float) -> F64:
    """Approximate solar elevation (degrees) at UTC epoch seconds; accurate to ~0.5 degree."""
    t = np.asarray(epoch_s, dtype=np.float64)
    days = t / 86400.0
    doy = np.floor(days - np.floor(days / 365.2425) * 365.2425)  # good enough for geometry
    gamma = 2.0 * math.pi / 365.0 * doy
    decl = (
        0.006918
        - 0.399912 * np.cos(gamma)
        + 0.070257 * np.sin(gamma)
        - 0.006758 * np.cos(2 * gamma)
        + 0.000907 * np.sin(2 * gamma)
    )
    eot_min = 229.18 * (
        0.000075
        + 0.001868 * np.cos(gamma)
        - 0.032077 * np.sin(gamma)
        - 0.014615 * np.cos(2 * gamma)
        - 0.040849 * np.sin(2 * gamma)
    )
    utc_min = (t % 86400.0) / 60.0
    solar_time_min = utc_min + eot_min + 4.0 * lon_deg
    hour_angle = np.radians(solar_time_min / 4.0 - 180.0)
    lat = math.radians(lat_deg)
    sin_el = math.sin(lat) * np.sin(decl) + math.cos(lat) * np.cos(decl) * np.cos(hour_angle)
    return np.degrees(np.arcsin(np.clip(sin_el, -1.0, 1.0)))


@dataclass(frozen=True)
class WeatherYear:
    """Hourly temperature and clearness index of a typical year, indexed by local hour of year."""

    temp_c: F64
    clearness: F64
    source: str

    @classmethod
    def load(cls, path: Path | None = None, *, adjust_to_hcmc: bool = True) -> WeatherYear:
        path = path or pvlib_data_file()
        temp, ghi, etr = parse_tmy2(path)
        if adjust_to_hcmc:
            temp = temp + _monthly_offsets(temp)
        with np.errstate(divide="ignore", invalid="ignore"):
            kt = np.where(etr > 20.0, ghi / np.maximum(etr, 1.0), 0.0)
        # Hours at sunrise/sunset have unreliable ratios; bound them to physical values.
        kt = np.clip(kt, 0.0, 0.85)
        return cls(temp_c=temp, clearness=kt, source=path.name)

    def _interp(self, values: F64, local_hour_of_year: F64) -> F64:
        # Row i is centred at local hour-of-year i + 0.5; interpolate periodically.
        x = np.asarray(local_hour_of_year, dtype=np.float64) - 0.5
        n = values.shape[0]
        i0 = np.floor(x).astype(np.int64)
        frac = x - i0
        out = values[i0 % n] * (1.0 - frac) + values[(i0 + 1) % n] * frac
        return np.asarray(out, dtype=np.float64)

    def temperature(self, local_hour_of_year: F64) -> F64:
        return self._interp(self.temp_c, local_hour_of_year)

    def clearness_at(self, local_hour_of_year: F64) -> F64:
        return self._interp(self.clearness, local_hour_of_year)


def ghi_w_m2(epoch_s: F64 | float, clearness: F64 | float, lat_deg: float, lon_deg: float) -> F64:
    """Global horizontal irradiance from clearness index and the city's sun geometry."""
    el = solar_elevation_deg(epoch_s, lat_deg, lon_deg)
    return np.asarray(
        clearness * SOLAR_CONSTANT_W_M2 * np.clip(np.sin(np.radians(el)), 0.0, None),
        dtype=np.float64,
    )


def _monthly_offsets(temp: F64) -> F64:
    """Per-hour offsets that move each month's mean to HCMC's, interpolated between mid-months."""
    bounds = np.cumsum((0, *_MONTH_DAYS)) * 24
    means = np.array([temp[bounds[i] : bounds[i + 1]].mean() for i in range(12)])
    delta = np.array(HCMC_MONTHLY_MEAN_C) - means
    mids = (bounds[:-1] + bounds[1:]) / 2.0
    hours = np.arange(temp.shape[0], dtype=np.float64)
    # periodic interpolation across the year end
    xp = np.concatenate(([mids[-1] - 8760.0], mids, [mids[0] + 8760.0]))
    fp = np.concatenate(([delta[-1]], delta, [delta[0]]))
    return np.asarray(np.interp(hours, xp, fp), dtype=np.float64)
