"""Real-data mode: replay a real demand series as one feeder's load, split across its meters.

The series is ``pmdarima.datasets.load_taylor()``: half-hourly electricity demand of England and
Wales (MW), Monday 5 June to Sunday 27 August 2000, 4,032 values, shipped inside pmdarima.
It is scaled so its peak is ``peak_fraction`` of the feeder's rated capacity, interpolated to
the meter interval (each half-hour's energy split evenly), and split across the feeder's meters
by their base load with small per-interval noise; the meters' readings sum to the feeder's load
exactly (to register resolution).
"""

from __future__ import annotations

import ast
import importlib.util
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt

from simulators.meters.block import ReadingBlock
from simulators.meters.topology import City

F64 = npt.NDArray[np.float64]

#: First half-hour of Taylor's series (local time London, BST = UTC+1), as UTC.
TAYLOR_START = datetime(2000, 6, 4, 23, 0, tzinfo=UTC)
TAYLOR_STEP_S = 1800
TAYLOR_LEN = 4032


def load_taylor_mw() -> F64:
    """The 4,032 half-hourly values (MW).

    Read from the installed ``pmdarima/datasets/taylor.py`` source, where the data is inline,
    without importing pmdarima (whose import pulls scikit-learn and statsmodels: seconds);
    falls back to ``pmdarima.datasets.load_taylor()``.
    """
    spec = importlib.util.find_spec("pmdarima")
    if spec is not None and spec.submodule_search_locations:
        src = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "taylor.py"
        if src.is_file():
            text = src.read_text(encoding="utf-8")
            m = re.search(r"np\.array\(\s*(\[[\d,\s]+\])", text)
            if m:
                values = ast.literal_eval(m.group(1))
                if len(values) == TAYLOR_LEN:
                    return np.asarray(values, dtype=np.float64)
    from pmdarima.datasets import load_taylor

    return np.asarray(load_taylor(), dtype=np.float64)


def taylor_feeder_kw(rated_kw: float, peak_fraction: float = 0.85) -> F64:
    """Taylor's series scaled to a feeder: half-hourly average kW."""
    mw = load_taylor_mw()
    return np.asarray(mw / mw.max() * rated_kw * peak_fraction, dtype=np.float64)


def replay_feeder(
    city: City,
    feeder_id: str,
    *,
    start: datetime | None = None,
    interval_s: int = 900,
    seed: int = 0,
    peak_fraction: float = 0.85,
) -> Iterator[ReadingBlock]:
    """Blocks (one per interval, on-time, no faults) replaying Taylor's series on one feeder.

    ``start`` defaults to the series' own start (:data:`TAYLOR_START`); any other start keeps
    the order of the data (it is a relabelling of time; pick a Monday to keep weekdays).
    """
    if TAYLOR_STEP_S % interval_s:
        raise ValueError(f"interval_s must divide {TAYLOR_STEP_S}")
    f = city.feeder(feeder_id)
    kw = taylor_feeder_kw(f.rated_kw, peak_fraction)
    per = TAYLOR_STEP_S // interval_s
    energy = np.repeat(kw * (interval_s / 3600.0), per)  # kWh per interval
    meters = np.arange(f.meter_start, f.meter_stop, dtype=np.int64)
    share = city.base_kw[meters].astype(np.float64)
    share /= share.sum()
    t0 = int((start or TAYLOR_START).timestamp())
    rng = np.random.default_rng([seed, 23])
    for k, total in enumerate(energy.tolist()):
        w = share * np.exp(0.1 * rng.standard_normal(meters.size))
        vals = np.round(total * w / w.sum(), 3)
        ts = t0 + (k + 1) * interval_s
        yield ReadingBlock(
            meters,
            np.full(meters.size, ts, np.int64),
            vals,
            np.zeros(meters.size),
            np.full(meters.size, ts + 5.0),
            np.zeros(meters.size, np.bool_),
            interval_s,
        )


def taylor_span(interval_s: int = 900) -> tuple[datetime, datetime, int]:
    """(first interval start, end, number of intervals) of the replay at its own dates."""
    n = TAYLOR_LEN * (TAYLOR_STEP_S // interval_s)
    return TAYLOR_START, TAYLOR_START + timedelta(seconds=n * interval_s), n
