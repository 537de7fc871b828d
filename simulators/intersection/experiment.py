"""Webster advice vs the fixed plan, measured in the simulator.

Every run uses the same seed and demand.  The fixed run keeps the default plan throughout.
Each advised run measures, per approach lane, the flow and the queue discharge at the stop
line (PCU, like loop detectors: :class:`~simulators.intersection.sim.StopLineDetector`)
during ``basis_s`` after a warm-up, asks :func:`streams.traffic.webster.recommend` for a plan
with the lane saturation flows its :class:`~streams.traffic.webster.SaturationFlow` gives
(measured where a lane discharged a queue long enough; ``SaturationFlow(min_discharge_s=inf)``
assumes the default everywhere) and applies it to SUMO's traffic light.  Average delay (SUMO
time loss) is taken over the vehicles that depart during the evaluation period in all runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta

from simulators.intersection.sim import IntersectionSim, ScenarioConfig, ViolatorRates
from streams.traffic.webster import SaturationFlow, StreamDemand, recommend

#: the advice with each lane's saturation flow measured, and with the default assumed
VARIANTS: dict[str, SaturationFlow] = {
    "measured": SaturationFlow(),
    "assumed": SaturationFlow(min_discharge_s=math.inf),
}


@dataclass(frozen=True)
class AdvisedRun:
    delay_s: float
    vehicles: int
    plan: str
    predicted_fixed_s: float
    predicted_s: float
    #: lane -> saturation flow used (PCU/h)
    saturation_pcu_h: dict[str, float]


@dataclass(frozen=True)
class DelayResult:
    fixed_delay_s: float
    fixed_vehicles: int
    fixed_plan: str
    advised: dict[str, AdvisedRun]
    sim_seconds: float
    wall_seconds: float


def delay_experiment(
    config: ScenarioConfig | None = None,
    variants: Mapping[str, SaturationFlow] = VARIANTS,
    warmup_s: float = 300.0,
    basis_s: float = 900.0,
    eval_s: float = 1800.0,
) -> DelayResult:
    cfg = replace(config or ScenarioConfig(), violators=ViolatorRates(0, 0, 0, 0, 0))
    total = warmup_s + basis_s + eval_s
    t0 = time.perf_counter()
    with IntersectionSim(cfg) as sim:
        for _ in sim.run(total):
            pass
        fixed_delay, n_fixed = sim.average_delay_s(warmup_s + basis_s)
        fixed_plan = sim.plan
    advised = {
        name: _advised_run(cfg, saturation, warmup_s, basis_s, eval_s)
        for name, saturation in variants.items()
    }
    return DelayResult(
        round(fixed_delay, 2),
        n_fixed,
        f"{fixed_plan.plan_id} cycle {fixed_plan.cycle_s:g} s",
        advised,
        (1 + len(advised)) * total,
        round(time.perf_counter() - t0, 2),
    )


def _advised_run(
    cfg: ScenarioConfig, saturation: SaturationFlow, warmup_s: float, basis_s: float, eval_s: float
) -> AdvisedRun:
    with IntersectionSim(cfg) as sim:
        for _ in sim.run(warmup_s):
            pass
        before = {lane: replace(d) for lane, d in sim.detectors.items()}
        for _ in sim.run(basis_s):
            pass
        demand = {}
        for lane, d in sim.detectors.items():
            b = before[lane]
            demand[lane] = StreamDemand(
                d.signal_groups,
                (d.pcu - b.pcu) * 3600.0 / basis_s,
                saturation.of(d.discharged_pcu - b.discharged_pcu, d.discharge_s - b.discharge_s),
            )
        basis_end = cfg.start + timedelta(seconds=warmup_s + basis_s)
        rec = recommend(
            sim.plan,
            demand,
            basis_start=cfg.start + timedelta(seconds=warmup_s),
            basis_end=basis_end,
            issued_at=basis_end,
        )
        sim.apply_plan(rec.recommended)
        for _ in sim.run(eval_s):
            pass
        delay, n = sim.average_delay_s(warmup_s + basis_s)
    return AdvisedRun(
        round(delay, 2),
        n,
        f"{rec.recommended.plan_id} cycle {rec.recommended.cycle_s:g} s",
        rec.predicted_delay_current_s,
        rec.predicted_delay_recommended_s,
        {lane: round(d.saturation_pcu_h) for lane, d in demand.items()},
    )


if __name__ == "__main__":
    print(delay_experiment())
