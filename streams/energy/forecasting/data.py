"""Datasets for the backtest: Taylor's real demand, any utility CSV, the meter simulator.

Every loader returns a :class:`Dataset`: the load on a UTC index plus the local time zone
and holiday country its calendar features should use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from streams.energy.forecasting.errors import ForecastDataError
from streams.energy.forecasting.features import infer_step, regularize

_TIME_NAMES = ("timestamp", "time", "datetime", "date_time", "ts", "window_start", "date")
_LOAD_NAMES = ("load", "demand", "avg_kw", "kw", "mw", "energy_kwh", "value")
_TEMP_NAMES = ("temperature", "temp", "temp_c", "t2m")


@dataclass(frozen=True)
class Dataset:
    """A load series (tz-aware UTC index, regular grid) ready for :func:`run_backtest`."""

    name: str
    load: pd.Series
    temperature: pd.Series | None = None
    tz: str = "UTC"
    country: str | None = None

    @property
    def step(self) -> pd.Timedelta:
        return pd.Timedelta(self.load.index[1] - self.load.index[0])


def load_taylor() -> Dataset:
    """Half-hourly electricity demand of England and Wales (MW), Mon 5 Jun - Sun 27 Aug 2000.

    Shipped inside ``pmdarima``.  The values are read as UK clock time (BST the whole
    span, no DST change inside it) and put on a UTC index: the first value is
    2000-06-04 23:00 UTC = 00:00 local.
    """
    try:
        from pmdarima.datasets import load_taylor as _load
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ForecastDataError("the taylor dataset needs pmdarima: pip install pmdarima") from exc
    values = np.asarray(_load(), dtype=np.float64)
    start = pd.Timestamp("2000-06-05 00:00", tz="Europe/London")
    index = pd.date_range(start, periods=len(values), freq="30min").tz_convert("UTC")
    return Dataset("taylor", pd.Series(values, index, name="load"), None, "Europe/London", "GB")


def _pick(columns: list[str], wanted: str | None, names: tuple[str, ...], what: str) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise ForecastDataError(f"no {what} column {wanted!r}; columns are {columns}")
        return wanted
    lower = {c.lower().strip(): c for c in columns}
    for n in names:
        if n in lower:
            return lower[n]
    return None


def load_csv(
    path: str | Path,
    *,
    time_col: str | None = None,
    load_col: str | None = None,
    temp_col: str | None = None,
    freq: str | None = None,
    tz: str = "UTC",
    country: str | None = None,
) -> Dataset:
    """Read a utility's history: a timestamp column and a load column (+ temperature).

    Column names are guessed when not given (``timestamp``/``time``/..., ``load``/``demand``/
    ..., ``temperature``/``temp``); otherwise the first column is the time and the first
    other numeric column the load.  Naive timestamps are local time in ``tz``.  The
    resolution is inferred unless ``freq`` (e.g. ``15min``) is given; missing steps become
    gaps, duplicate timestamps keep the last value.
    """
    p = Path(path)
    if not p.is_file():
        raise ForecastDataError(f"CSV file not found: {p}")
    try:
        df = pd.read_csv(p)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ForecastDataError(f"{p}: not a readable CSV file ({exc})") from exc
    if df.empty or df.shape[1] < 2:
        raise ForecastDataError(f"{p}: needs a header and at least two columns (time, load)")
    cols = [str(c) for c in df.columns]
    df.columns = cols
    tcol = _pick(cols, time_col, _TIME_NAMES, "time") or cols[0]
    temp = _pick(cols, temp_col, _TEMP_NAMES, "temperature")
    lcol = _pick(cols, load_col, _LOAD_NAMES, "load")
    if lcol is None:
        rest = [c for c in cols if c not in (tcol, temp)]
        numeric = [c for c in rest if pd.to_numeric(df[c], errors="coerce").notna().mean() > 0.9]
        if not numeric:
            raise ForecastDataError(
                f"{p}: no numeric load column; columns are {cols}; use --load-col"
            )
        lcol = numeric[0]
    try:
        ts = pd.to_datetime(df[tcol], errors="raise", utc=False, format="mixed")
    except (ValueError, TypeError) as exc:
        raise ForecastDataError(
            f"{p}: column {tcol!r} has values that are not timestamps ({exc})"
        ) from exc
    if ts.isna().any():
        row = int(np.flatnonzero(ts.isna().to_numpy())[0])
        raise ForecastDataError(f"{p}: empty timestamp in column {tcol!r} at data row {row + 1}")
    idx = pd.DatetimeIndex(ts)
    try:
        idx = idx.tz_localize(tz, ambiguous="NaT", nonexistent="NaT") if idx.tz is None else idx
    except Exception as exc:
        raise ForecastDataError(
            f"{p}: cannot place timestamps in time zone {tz!r} ({exc})"
        ) from exc
    idx = idx.tz_convert("UTC")
    load = pd.to_numeric(df[lcol], errors="coerce")
    bad = load.isna() & df[lcol].notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ForecastDataError(
            f"{p}: column {lcol!r} has non-numeric values, first {df[lcol].iloc[row]!r} "
            f"at data row {row + 1}"
        )
    keep = np.asarray(~np.asarray(idx.isna()), dtype=bool)
    series = pd.Series(load.to_numpy(dtype=np.float64)[keep], idx[keep], name="load")
    if len(series) < 3:
        raise ForecastDataError(f"{p}: only {len(series)} rows; need a history")
    try:
        step = pd.Timedelta(freq) if freq else None
    except ValueError as exc:
        raise ForecastDataError(f"{p}: bad --freq {freq!r} ({exc})") from exc
    if step is None:
        try:
            step = infer_step(pd.DatetimeIndex(series.sort_index().index))
        except ForecastDataError as exc:
            raise ForecastDataError(f"{p}: {exc}") from exc
    if step <= pd.Timedelta(0) or pd.Timedelta(days=1) % step != pd.Timedelta(0):
        raise ForecastDataError(f"{p}: resolution {step} must divide a day")
    series = regularize(series, step)
    temperature = None
    if temp is not None:
        tv = pd.to_numeric(df[temp], errors="coerce").to_numpy(dtype=np.float64)[keep]
        temperature = regularize(pd.Series(tv, idx[keep], name="temperature"), step)
    return Dataset(p.stem, series, temperature, tz, country)


def dataset_from_frame(
    frame: pd.DataFrame | pd.Series,
    *,
    name: str = "sim",
    tz: str = "UTC",
    country: str | None = None,
) -> Dataset:
    """A dataset from a Series, or a DataFrame with ``load`` (+ ``temperature``) columns, on a
    tz-aware index (what a simulator or the DB hands over)."""
    if isinstance(frame, pd.Series):
        return Dataset(name, regularize(frame.rename("load")), None, tz, country)
    if "load" not in frame.columns:
        raise ForecastDataError(f"the frame needs a 'load' column; has {list(frame.columns)}")
    load = regularize(frame["load"])
    temp = (
        regularize(frame["temperature"], pd.Timedelta(load.index[1] - load.index[0]))
        if "temperature" in frame
        else None
    )
    return Dataset(name, load, temp, tz, country)


def simulated_dataset(
    *,
    n_meters: int = 600,
    seed: int = 0,
    days: int = 84,
    end: datetime | None = None,
    district: int | None = 0,
    source: Callable[[], pd.DataFrame] | None = None,
) -> Dataset:
    """Clean (fault-free) load of one simulated district, 15-min steps, with temperature.

    Uses ``simulators.meters`` (the synthetic Vietnamese city): by default the ``days``
    days up to 2026-02-23 local, so the last four weeks hold Tết (17 Feb 2026).  ``source``
    may supply the frame instead (a callable returning ``load``/``temperature`` columns).
    """
    if source is not None:
        return dataset_from_frame(source(), name="sim", tz="Asia/Ho_Chi_Minh", country="VN")
    try:
        from simulators.meters import CityConfig, MeterSimulator, build_city
    except ImportError as exc:
        raise ForecastDataError("the sim dataset needs simulators.meters") from exc
    city = build_city(CityConfig(n_meters=n_meters, seed=seed))
    sim = MeterSimulator(city, seed=seed)
    members = np.ones(city.n_meters, dtype=bool)
    if district is not None:
        fd = city.district_of_feeder[city.feeder_idx]
        members = fd == district if (fd == district).any() else members
    iv = sim.interval_s
    end = end or datetime(2026, 2, 22, 17, 0, tzinfo=UTC)  # 2026-02-23 00:00 local (UTC+7)
    n = days * 86400 // iv
    t0 = int(end.timestamp()) - n * iv
    load = np.empty(n)
    temp = np.empty(n)
    for k in range(n):
        ts = t0 + (k + 1) * iv  # readings are stamped with the interval end
        imp, exp = sim.true_energy(ts)
        load[k] = float(imp[members].sum() - exp[members].sum()) * 3600.0 / iv  # kW
        temp[k] = sim.conditions(ts)[2]
    index = pd.date_range(datetime.fromtimestamp(t0, UTC), periods=n, freq=timedelta(seconds=iv))
    return Dataset(
        "sim",
        pd.Series(load, index, name="load"),
        pd.Series(temp, index, name="temperature"),
        "Asia/Ho_Chi_Minh",
        "VN",
    )
