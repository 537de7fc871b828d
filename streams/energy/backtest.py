"""``citystream energy backtest``: day-ahead backtest of our forecaster against the baselines.

The lead's CLI wires it as::

    p = sub.add_parser("backtest", ...)
    streams.energy.backtest.add_arguments(p)
    p.set_defaults(handler=lambda args, settings: streams.energy.backtest.run(args))
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

from citystream.errors import CityStreamError

EPILOG = """examples:
  citystream energy backtest --dataset taylor
  citystream energy backtest --dataset sim --days 14 --json
  citystream energy backtest --csv feeder12.csv --time-col ts --load-col kw --freq 15min
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the backtest options to ``parser``."""
    parser.add_argument(
        "--dataset",
        choices=("taylor", "sim", "csv"),
        default=None,
        help="taylor: England & Wales half-hourly demand (summer 2000, shipped in pmdarima); "
        "sim: a district of the simulated city (15-min, with temperature, includes Tet); "
        "csv: your own history (--csv FILE). Default: csv if --csv is given, else taylor",
    )
    parser.add_argument("--csv", metavar="FILE", help="CSV with a timestamp and a load column")
    parser.add_argument(
        "--freq", help="resolution of the CSV, e.g. 15min, 30min, 1h (default: inferred)"
    )
    parser.add_argument("--time-col", help="timestamp column (default: guessed, else the first)")
    parser.add_argument("--load-col", help="load column (default: guessed, else first numeric)")
    parser.add_argument("--temp-col", help="temperature column (optional; default: guessed)")
    parser.add_argument(
        "--tz",
        default=None,
        help="local time zone for naive CSV timestamps, midnights and calendar "
        "(default: UTC; taylor Europe/London, sim Asia/Ho_Chi_Minh)",
    )
    parser.add_argument(
        "--country",
        default=None,
        help="holiday calendar, ISO code such as VN or GB (default: none)",
    )
    parser.add_argument(
        "--days", type=int, default=28, help="number of day-ahead origins (default 28)"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def _progress(quiet: bool) -> Callable[[str], None]:
    last = [0.0]

    def report(msg: str) -> None:
        now = time.monotonic()
        if quiet or (now - last[0] < 0.5 and "/" in msg and "failed" not in msg):
            return
        last[0] = now
        print(f"\r\033[K{msg}", end="", file=sys.stderr, flush=True)

    return report


def format_table(result: object) -> str:
    """The human-readable table: method, MAPE %, MAE, pinball, coverage %."""
    from streams.energy.forecasting.backtest import OURS, BacktestResult

    assert isinstance(result, BacktestResult)
    lines = [
        f"day-ahead backtest: {len(result.origins)} origins "
        f"{result.origins[0]:%Y-%m-%d %H:%M}Z .. {result.origins[-1]:%Y-%m-%d %H:%M}Z, "
        f"{result.horizon_steps} steps of {result.step_s // 60} min, {result.seconds:.1f}s",
        f"{'method':<15} {'MAPE %':>8} {'MAE':>12} {'pinball':>12} {'coverage %':>11} {'fit s':>7}",
    ]
    for s in result.scores:
        mark = " *" if s.method == OURS else ""
        fail = f"  ({s.failed_origins} origins failed)" if s.failed_origins else ""
        lines.append(
            f"{s.method:<15} {s.mape:>8.2f} {s.mae:>12.4g} {s.pinball:>12.4g} "
            f"{s.coverage:>11.1f} {s.seconds:>7.1f}{mark}{fail}"
        )
    lines.append("coverage: share of actuals inside P10..P90 (ideal 80%); * ours")
    return "\n".join(lines)


def run(args: argparse.Namespace, settings: object = None) -> int:
    """Run the backtest described by ``args``; 0 on success, 2 on bad input."""
    from streams.energy.forecasting.backtest import run_backtest
    from streams.energy.forecasting.data import load_csv, load_taylor, simulated_dataset

    dataset = args.dataset or ("csv" if args.csv else "taylor")
    progress = _progress(args.quiet)
    try:
        if dataset == "csv":
            if not args.csv:
                raise CityStreamError("--dataset csv needs --csv FILE")
            data = load_csv(
                args.csv,
                time_col=args.time_col,
                load_col=args.load_col,
                temp_col=args.temp_col,
                freq=args.freq,
                tz=args.tz or "UTC",
                country=args.country,
            )
        elif dataset == "sim":
            if not args.quiet:
                print("simulating the city...", file=sys.stderr)
            data = simulated_dataset()
        else:
            data = load_taylor()
        tz = args.tz or data.tz
        country = args.country or data.country
        result = run_backtest(
            data.load,
            None,
            data.temperature,
            args.days,
            tz=tz,
            country=country,
            progress=progress,
        )
    except CityStreamError as exc:
        if not args.quiet:
            print(file=sys.stderr)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print("\r\033[K", end="", file=sys.stderr, flush=True)
    out = result.to_dict()
    out["dataset"] = data.name
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(format_table(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m streams.energy.backtest``)."""
    parser = argparse.ArgumentParser(
        prog="citystream energy backtest",
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
