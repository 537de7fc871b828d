"""Webster advice vs the fixed plan, measured in the simulator.

Both runs use the same seed and demand.  The fixed run keeps the default plan throughout.
The advised run measures flows per signal group (PCU, at the stop lines, like loop
detectors) during ``basis_s`` after a warm-up, asks :func:`streams.traffic.webster.recommend`
for a plan and applies it to SUMO's traffic light.  Average delay (SUMO time loss) is taken
over the vehicles that depart during the evaluation period in both runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import timedelta

from simulators.intersection.sim import IntersectionSim, ScenarioConfig, ViolatorRates
from streams.traffic.webster import GroupDemand, WebsterBounds, recommend


@dataclass(frozen=True)
class DelayResult:
    fixed_delay_s: float
    webster_delay_s: float
    fixed_vehicles: int
    webster_vehicles: int
    fixed_plan: str
    webster_plan: str
    predicted_fixed_s: float
    predicted_webster_s: float
    sim_seconds: float
    wall_seconds: float


def delay_experiment(
    config: ScenarioConfig | None = None,
    warmup_s: float = 300.0,
    basis_s: float = 900.0,
    eval_s: float = 1800.0,
    saturation_pcu_h_per_lane: float = 1800.0,
) -> DelayResult:
    cfg = replace(config or ScenarioConfig(), violators=ViolatorRates(0, 0, 0, 0, 0))
    total = warmup_s + basis_s + eval_s
    t0 = time.perf_counter()
    sim = IntersectionSim(cfg)
    try:
        for _ in sim.run(total):
            pass
        fixed_delay, n_fixed = sim.average_delay_s(warmup_s + basis_s)
        fixed_plan = sim.plan
    finally:
        sim.close()
    sim = IntersectionSim(cfg)
    try:
        for _ in sim.run(warmup_s):
            pass
        before = dict(sim.group_counts_pcu)
        for _ in sim.run(basis_s):
            pass
        lanes_per_group: dict[str, int] = {}
        for link in sim.links:
            lanes_per_group.setdefault(link.group, 0)
        for group in lanes_per_group:
            lanes_per_group[group] = len({k.in_lane for k in sim.links if k.group == group})
        demand = {
            g: GroupDemand(
                (sim.group_counts_pcu.get(g, 0.0) - before.get(g, 0.0)) * 3600.0 / basis_s,
                saturation_pcu_h_per_lane * lanes_per_group[g],
            )
            for g in lanes_per_group
        }
        start = cfg.start
        rec = recommend(
            sim.plan,
            demand,
            basis_start=start + timedelta(seconds=warmup_s),
            basis_end=start + timedelta(seconds=warmup_s + basis_s),
            issued_at=start + timedelta(seconds=warmup_s + basis_s),
            bounds=WebsterBounds(),
        )
        sim.apply_plan(rec.recommended)
        for _ in sim.run(eval_s):
            pass
        web_delay, n_web = sim.average_delay_s(warmup_s + basis_s)
    finally:
        sim.close()
    return DelayResult(
        round(fixed_delay, 2),
        round(web_delay, 2),
        n_fixed,
        n_web,
        f"{fixed_plan.plan_id} cycle {fixed_plan.cycle_s:g} s",
        f"{rec.recommended.plan_id} cycle {rec.recommended.cycle_s:g} s",
        rec.predicted_delay_current_s,
        rec.predicted_delay_recommended_s,
        2 * total,
        round(time.perf_counter() - t0, 2),
    )


if __name__ == "__main__":
    print(delay_experiment())
