"""Benchmark: day-ahead forecast backtest, ours against the baselines in the same run.

Prints the table and writes ``bench/results/forecast_backtest_<dataset>.json``.

    python bench/forecast_backtest.py            # taylor
    python bench/forecast_backtest.py sim 14     # dataset, days
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from streams.energy.backtest import format_table
from streams.energy.forecasting import load_taylor, run_backtest, simulated_dataset


def main(argv: list[str]) -> int:
    name = argv[0] if argv else "taylor"
    days = int(argv[1]) if len(argv) > 1 else 28
    data = simulated_dataset() if name == "sim" else load_taylor()
    result = run_backtest(
        data.load,
        None,
        data.temperature,
        days,
        tz=data.tz,
        country=data.country,
        progress=lambda m: print(f"\r\033[K{m}", end="", file=sys.stderr, flush=True),
    )
    print("\r\033[K", end="", file=sys.stderr)
    print(format_table(result))
    best = result.best_baseline()
    ours = result.score("lgbm_quantile")
    print(f"ours vs best baseline ({best.method}): MAPE {ours.mape:.2f}% vs {best.mape:.2f}%")
    out = Path(__file__).parent / "results" / f"forecast_backtest_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"dataset": name, **result.to_dict()}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
