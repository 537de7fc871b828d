"""Forecast benchmark: retrain and forecast every feeder and district of the default city.

Builds ``--days`` days of 15-minute load history per feeder and per district from the
simulator's clean (fault-free) energy (``MeterSimulator.true_energy``, summed per feeder with
``numpy.bincount``: vectorised over meters), then times the forecaster's own per-scope code,
``ForecastJob.forecast(scope, scope_id, series)``, on those pandas series:

* ``retrain + forecast``: a fresh job, so every scope fits its LightGBM quantile model
  (P10/P50/P90, conformal calibration) and issues a 48 h forecast, as on a retrain cycle;
* ``update only``: the next cycle, one 15-minute window later (history slid by one step):
  no refit, the models take the new history and forecast again;
* ``seasonal naive (baseline)``: the fallback a utility would otherwise use, fitted and
  forecast for every scope in the same run.

No stack is needed: the series are handed over directly, so the DB read of ``feeder_load``
and the Kafka publish of a real cycle (``ForecastJob.run_once``) are not in these times.
Peak alerts (P90 over a feeder's rated kW) are computed as the job does.  Prints a table
and writes ``bench/results/forecast_city.json``.

examples:
  python bench/forecast_city.py                      # default city (3,000 meters), 84 days
  python bench/forecast_city.py --days 28            # short history
  python bench/forecast_city.py --meters 30000 --meters-per-feeder 500
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from citystream.table import format_table

ROOT = Path(__file__).resolve().parents[1]
#: 2026-02-23 00:00 local (UTC+7): the last four weeks hold Tết, like ``--dataset sim``.
DEFAULT_END = datetime(2026, 2, 22, 17, 0, tzinfo=UTC)


def build_history(
    n_meters: int, meters_per_feeder: int, seed: int, days: int, end: datetime, extra: int
) -> tuple[dict[tuple[str, str], pd.Series], dict[str, float]]:
    """Average kW per 15-min window of every feeder and district (index: window start, UTC,
    ``days`` days up to ``end`` plus ``extra`` windows after it), and the feeders' rated kW."""
    from simulators.meters import CityConfig, MeterSimulator, build_city

    city = build_city(CityConfig(n_meters=n_meters, meters_per_feeder=meters_per_feeder, seed=seed))
    sim = MeterSimulator(city, seed=seed, record_truth=False)
    iv = sim.interval_s
    n = days * 86400 // iv + extra
    t0 = int(end.timestamp()) - days * 86400
    n_feeders, n_districts = len(city.feeders), len(city.districts)
    feeder_kw = np.empty((n, n_feeders))
    feeder_of_meter = city.feeder_idx.astype(np.int64)
    for k in range(n):
        imp, exp = sim.true_energy(t0 + (k + 1) * iv)  # readings stamped with the interval end
        feeder_kw[k] = np.bincount(feeder_of_meter, weights=imp - exp, minlength=n_feeders)
    feeder_kw *= 3600.0 / iv
    district_kw = np.zeros((n, n_districts))
    for f, d in enumerate(city.district_of_feeder.tolist()):
        district_kw[:, d] += feeder_kw[:, f]
    index = pd.date_range(datetime.fromtimestamp(t0, UTC), periods=n, freq=timedelta(seconds=iv))
    series: dict[tuple[str, str], pd.Series] = {}
    for f, feeder in enumerate(city.feeders):
        series[("feeder", feeder.feeder_id)] = pd.Series(feeder_kw[:, f], index, name="avg_kw")
    for d, district in enumerate(city.districts):
        series[("district", district.district_id)] = pd.Series(
            district_kw[:, d], index, name="avg_kw"
        )
    return series, {f.feeder_id: f.rated_kw for f in city.feeders}


def timed_cycle(
    name: str,
    history: dict[tuple[str, str], pd.Series],
    forecast: Any,
    rated: dict[str, float],
) -> dict[str, Any]:
    """Run ``forecast(scope, scope_id, series)`` for every scope; per-scope seconds."""
    from streams.energy.forecast_job import peak_alert

    per_scope: dict[str, float] = {}
    methods: dict[str, int] = {}
    peaks = 0
    started = time.perf_counter()
    for (scope, scope_id), series in history.items():
        t = time.perf_counter()
        fc = forecast(scope, scope_id, series)
        if fc is not None and scope == "feeder" and scope_id in rated:
            peaks += peak_alert(fc, rated[scope_id]) is not None
        per_scope[f"{scope}:{scope_id}"] = time.perf_counter() - t
        if fc is None:
            raise SystemExit(f"{name}: no forecast for {scope} {scope_id}")
        if len(fc.points) == 0 or any(not (p.p10 <= p.p50 <= p.p90) for p in fc.points):
            raise SystemExit(f"{name}: bad forecast for {scope} {scope_id}")
        methods[fc.model] = methods.get(fc.model, 0) + 1
    total = time.perf_counter() - started
    times = sorted(per_scope.values())
    return {
        "phase": name,
        "scopes": len(per_scope),
        "total_s": total,
        "mean_per_scope_s": total / len(per_scope),
        "p50_per_scope_s": times[len(times) // 2],
        "max_per_scope_s": times[-1],
        "models": methods,
        "peak_alerts": peaks,
        "per_scope_s": per_scope,
    }


def main(argv: list[str] | None = None) -> int:
    head, _, examples = (__doc__ or "").partition("examples:")
    parser = argparse.ArgumentParser(
        description=head.strip(),
        epilog="examples:" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--meters", type=int, default=3000, help="meters (%(default)s)")
    parser.add_argument(
        "--meters-per-feeder", type=int, default=150, help="city layout (%(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="city and simulator seed")
    parser.add_argument("--days", type=int, default=84, help="days of history (%(default)s)")
    parser.add_argument(
        "--end",
        type=datetime.fromisoformat,
        default=DEFAULT_END,
        help="end of the history, ISO with offset (default: %(default)s)",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "forecast_city.json"
    )
    args = parser.parse_args(argv)
    if args.end.tzinfo is None:
        parser.error("--end needs a UTC offset")

    from citystream.settings import Settings
    from streams.energy.forecast_job import ForecastConfig, ForecastJob
    from streams.energy.forecasting.base import to_forecast
    from streams.energy.forecasting.baselines import SeasonalNaive

    load0 = os.getloadavg()
    print(f"load average at start: {load0}", flush=True)
    t = time.perf_counter()
    full, rated = build_history(
        args.meters, args.meters_per_feeder, args.seed, args.days, args.end, extra=1
    )
    build_s = time.perf_counter() - t
    steps = len(next(iter(full.values())))
    print(
        f"history: {len(full)} scopes x {steps - 1:,} windows of 15 min in {build_s:.1f} s",
        flush=True,
    )
    now = {key: s.iloc[:-1] for key, s in full.items()}  # up to --end
    later = {key: s.iloc[1:] for key, s in full.items()}  # the next cycle: one window later

    config = ForecastConfig()
    job = ForecastJob(Settings(), config)
    print("retrain + forecast every scope ...", flush=True)
    retrain = timed_cycle("retrain + forecast", now, job.forecast, rated)
    fits_after_retrain = job.fits.value
    print(f"  {retrain['total_s']:.1f} s", flush=True)
    print("update only (next 15-min cycle, no refit) ...", flush=True)
    update = timed_cycle("update only (no refit)", later, job.forecast, rated)
    refits = job.fits.value - fits_after_retrain
    print(f"  {update['total_s']:.1f} s", flush=True)

    def naive(scope: str, scope_id: str, series: pd.Series) -> Any:
        issued_at = series.index[-1].to_pydatetime() + timedelta(seconds=config.step_s)
        model = SeasonalNaive(tz=config.tz, country=config.country).fit(series)
        points = model.predict(issued_at, config.horizon_steps)
        return to_forecast(
            points,
            scope=scope,
            scope_id=scope_id,
            issued_at=issued_at,
            model=model.name,
            step_s=config.step_s,
        )

    print("seasonal naive (baseline) ...", flush=True)
    base = timed_cycle("seasonal naive (baseline)", now, naive, rated)
    load1 = os.getloadavg()

    rows = [
        (r["phase"], r["scopes"], r["total_s"], r["mean_per_scope_s"], r["max_per_scope_s"],
         ", ".join(f"{k} x{v}" for k, v in r["models"].items()))
        for r in (retrain, update, base)
    ]  # fmt: skip
    print()
    print(
        format_table(["phase", "scopes", "total s", "mean s/scope", "max s/scope", "models"], rows)
    )
    print(
        f"\nhistory build {build_s:.1f} s ({steps - 1:,} windows x {args.meters:,} meters); "
        f"refits during update: {refits:.0f}; peak alerts: {retrain['peak_alerts']}; "
        f"retrain / naive: {retrain['total_s'] / base['total_s']:,.0f}x; "
        f"load average {load0[0]:.2f} -> {load1[0]:.2f} ({os.cpu_count()} CPUs)"
    )
    result = {
        "benchmark": "forecast_city",
        "at": datetime.now(UTC).isoformat(),
        "config": {
            k: str(v) if isinstance(v, Path | datetime) else v for k, v in vars(args).items()
        }
        | {"forecast": {k: getattr(config, k) for k in config.__dataclass_fields__}},
        "cpus": os.cpu_count(),
        "loadavg_start": load0,
        "loadavg_end": load1,
        "history": {"scopes": len(full), "windows": steps - 1, "build_s": build_s},
        "retrain_forecast": retrain,
        "update_only": update | {"refits": refits},
        "baseline_seasonal_naive": base,
        "note": "ForecastJob.forecast per scope on in-memory series; DB read and Kafka publish "
        "of run_once are not timed",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
