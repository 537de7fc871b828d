"""Signal-timing advice: average delay under Webster's plan against the fixed plan, in SUMO.

    python bench/signal_advice.py [--seeds 1 2 3] [--demand 1800 2450 3000] [--json PATH]

For each seed and total demand, :func:`simulators.intersection.experiment.delay_experiment`
runs the intersection three times with the same traffic: once under the default fixed plan,
and twice with the plan :func:`streams.traffic.webster.recommend` makes from what stop-line
detectors counted during 15 minutes (after a 5-minute warm-up), installed for the next 30
minutes: once with each lane's saturation flow measured from its queue discharges
("measured", what the traffic worker does), once with 1,800 PCU/h per lane assumed
("assumed").  The delay is SUMO's time loss per vehicle over the vehicles departing in those
30 minutes, the baseline (fixed plan) measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from citystream.table import format_table  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="examples:\n"
        "  python bench/signal_advice.py\n"
        "  python bench/signal_advice.py --seeds 1 --demand 2000 2450 3000 --json advice.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument(
        "--demand",
        type=float,
        nargs="+",
        default=[1800.0, 2450.0, 3000.0],
        metavar="VEH_PER_HOUR",
        help="total demand over the four arms (default: light, the scenario's 2,450 veh/h, "
        "and near capacity)",
    )
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "signal_advice.json")
    a = p.parse_args(argv)
    from simulators.intersection.experiment import VARIANTS, delay_experiment
    from simulators.intersection.service import scaled_demand
    from simulators.intersection.sim import ScenarioConfig

    rows, results = [], []
    for demand in a.demand:
        for seed in a.seeds:
            cfg = replace(ScenarioConfig(seed=seed), demand_veh_h=scaled_demand(demand))
            r = delay_experiment(cfg)
            row: list[object] = [seed, f"{demand:,.0f}", r.fixed_plan, r.fixed_delay_s]
            result = {"seed": seed, "demand_veh_h": demand, **asdict(r)}
            for name, run in r.advised.items():
                cut = 1 - run.delay_s / r.fixed_delay_s
                result[f"cut_{name}"] = cut
                row += [run.plan, run.delay_s, f"{cut:.0%}"]
            results.append(result)
            rows.append(row)
            print(f"seed {seed}, {demand:g} veh/h: done in {r.wall_seconds} s", file=sys.stderr)
    headers = ["seed", "veh/h", "fixed plan", "delay s"]
    for name in VARIANTS:
        headers += [f"Webster, {name}", "delay s", "cut"]
    print(format_table(headers, rows))
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(results, indent=2))
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
