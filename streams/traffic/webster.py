"""Signal-timing advice: Webster's optimal cycle and green splits, and Webster's delay.

Demand comes per *stream*: an approach lane (or a whole signal group) with its flow q and
saturation flow s in PCU/h, which has green while any of its signal groups has.  Lanes are the
better unit: a shared through/left lane whose permitted left turners hold up the through
traffic behind them discharges at a fraction of its neighbours' rate, and only its own q/s
shows that.  For phases i with critical flow ratio y_i = max over the phase's streams of q/s,
Y = sum y_i and total lost time L (per phase: amber + all-red unless given)::

    C0 = (1.5 L + 5) / (1 - Y)                 clamped to [min_cycle_s, max_cycle_s]
    g_i = (C0 - L) * y_i / Y                   then bounded by [min_green_s, max_green_s]

Delay per stream (Webster 1958), with lambda = g/C and x = q / (lambda s)::

    d = C (1 - lambda)^2 / (2 (1 - lambda x)) + x^2 / (2 q (1 - x))
        - 0.65 (C / q^2)^(1/3) x^(2 + 5 lambda)

The formula holds for x < 1; beyond ``x_cap`` the delay at ``x_cap`` is used plus the
deterministic overflow delay of a queue growing for ``period_s`` (T/2 * (x - 1) / x).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from schemas.messages import PhaseTiming, SignalPlan, SignalRecommendation

DEFAULT_SATURATION_PCU_H = 1800.0


@dataclass(frozen=True)
class WebsterBounds:
    min_green_s: float = 7.0
    max_green_s: float = 90.0
    min_cycle_s: float = 30.0
    max_cycle_s: float = 150.0
    max_y: float = 0.9
    lost_time_per_phase_s: float | None = None  # default: amber + all-red of the phase


@dataclass(frozen=True)
class StreamDemand:
    """Measured flow and saturation flow (PCU/h) of one stream: a lane, or a signal group; it
    has green while any of ``signal_groups`` has."""

    signal_groups: tuple[str, ...]
    flow_pcu_h: float
    saturation_pcu_h: float = DEFAULT_SATURATION_PCU_H

    @property
    def y(self) -> float:
        """Flow ratio q/s."""
        return self.flow_pcu_h / self.saturation_pcu_h if self.saturation_pcu_h > 0 else 0.0


@dataclass(frozen=True)
class SaturationFlow:
    """A lane's saturation flow: measured from its queue discharges (PCU crossing the stop
    line while a queue stood on green, per hour of such green) where it had at least
    ``min_discharge_s`` of them (a few seconds say little about the rate), else
    ``default_pcu_h`` (also when nothing crossed: a queue held by a blocked exit says nothing
    about the rate at which the lane discharges)."""

    default_pcu_h: float = DEFAULT_SATURATION_PCU_H
    min_discharge_s: float = 60.0

    def measured(self, discharged_pcu: float, discharge_s: float) -> float | None:
        """The discharge rate (PCU/h of green), None where there is too little to tell."""
        if discharge_s < self.min_discharge_s or discharged_pcu <= 0:
            return None
        return discharged_pcu * 3600.0 / discharge_s

    def of(self, discharged_pcu: float, discharge_s: float) -> float:
        rate = self.measured(discharged_pcu, discharge_s)
        return self.default_pcu_h if rate is None else rate


def _lost(phase: PhaseTiming, bounds: WebsterBounds) -> float:
    if bounds.lost_time_per_phase_s is not None:
        return bounds.lost_time_per_phase_s
    return phase.amber_s + phase.all_red_s


def _y(phase: PhaseTiming, demand: Mapping[str, StreamDemand]) -> float:
    groups = set(phase.signal_groups)
    return max((d.y for d in demand.values() if groups.intersection(d.signal_groups)), default=0.0)


def _bounded_split(total: float, weights: list[float], lo: float, hi: float) -> list[float]:
    """Split ``total`` in proportion to ``weights`` with each share in [lo, hi]."""
    n = len(weights)
    fixed: dict[int, float] = {}
    for _ in range(n + 1):
        free = [i for i in range(n) if i not in fixed]
        left = total - sum(fixed.values())
        wsum = sum(weights[i] for i in free)
        share = {
            i: (left * weights[i] / wsum if wsum > 0 else left / max(len(free), 1)) for i in free
        }
        over = {i: hi for i, s in share.items() if s > hi}
        under = {i: lo for i, s in share.items() if s < lo}
        if not over and not under:
            return [fixed.get(i, share.get(i, 0.0)) for i in range(n)]
        fixed.update(under if under else over)
    return [fixed.get(i, lo) for i in range(n)]


def webster_plan(
    current: SignalPlan,
    demand: Mapping[str, StreamDemand],
    valid_from: datetime,
    bounds: WebsterBounds = WebsterBounds(),
    plan_id: str | None = None,
) -> SignalPlan:
    """A fixed-time plan with the current plan's phase order and intergreens, Webster's
    cycle and greens rounded to whole seconds."""
    phases = current.phases
    lost = sum(_lost(p, bounds) for p in phases)
    ys = [_y(p, demand) for p in phases]
    y_total = sum(ys)
    cycle = bounds.max_cycle_s if y_total >= bounds.max_y else (1.5 * lost + 5.0) / (1.0 - y_total)
    cycle = min(max(cycle, bounds.min_cycle_s), bounds.max_cycle_s)
    intergreen = sum(p.amber_s + p.all_red_s for p in phases)
    # greens in displayed seconds: lost time is taken as the intergreen, so effective green
    # = displayed green (start-up loss and amber use cancel out)
    total_green = max(cycle - intergreen, bounds.min_green_s * len(phases))
    greens = _bounded_split(
        total_green,
        ys if y_total > 0 else [1.0] * len(phases),
        bounds.min_green_s,
        bounds.max_green_s,
    )
    greens = [float(round(g)) for g in greens]
    new_phases = [p.model_copy(update={"green_s": g}) for p, g in zip(phases, greens, strict=True)]
    new_cycle = sum(g for g in greens) + intergreen
    return SignalPlan(
        intersection_id=current.intersection_id,
        plan_id=plan_id or f"webster-{int(new_cycle)}-" + "-".join(str(int(g)) for g in greens),
        cycle_s=new_cycle,
        offset_s=current.offset_s,
        phases=new_phases,
        valid_from=valid_from,
    )


def green_s(plan: SignalPlan, signal_groups: tuple[str, ...]) -> float:
    """Green of a stream over one cycle: every phase giving any of its groups green."""
    groups = set(signal_groups)
    return sum(p.green_s for p in plan.phases if groups.intersection(p.signal_groups))


def webster_delay_s(
    cycle_s: float,
    green_s: float,
    flow_veh_h: float,
    saturation_veh_h: float,
    x_cap: float = 0.95,
    period_s: float = 900.0,
) -> float:
    """Average delay per vehicle (s) of one signal group under Webster's formula."""
    if flow_veh_h <= 0:
        return 0.0
    lam = min(max(green_s / cycle_s, 1e-6), 1.0)
    q = flow_veh_h / 3600.0
    s = saturation_veh_h / 3600.0
    x_true = q / (lam * s)
    x = min(x_true, x_cap)
    d = (
        cycle_s * (1 - lam) ** 2 / (2 * (1 - lam * x))
        + x**2 / (2 * q * (1 - x))
        - 0.65 * (cycle_s / q**2) ** (1 / 3) * x ** (2 + 5 * lam)
    )
    if x_true > x_cap:
        d += period_s / 2 * (x_true - x_cap) / x_true
    return max(float(d), 0.0)


def plan_delay_s(plan: SignalPlan, demand: Mapping[str, StreamDemand]) -> float:
    """Flow-weighted average delay (s/veh) of the plan under the given demand."""
    total = weighted = 0.0
    for dm in demand.values():
        green = green_s(plan, dm.signal_groups)
        if green <= 0 or dm.flow_pcu_h <= 0:
            continue
        d = webster_delay_s(plan.cycle_s, green, dm.flow_pcu_h, dm.saturation_pcu_h)
        weighted += d * dm.flow_pcu_h
        total += dm.flow_pcu_h
    return weighted / total if total > 0 else 0.0


def recommend(
    current: SignalPlan,
    demand: Mapping[str, StreamDemand],
    *,
    basis_start: datetime,
    basis_end: datetime,
    issued_at: datetime,
    bounds: WebsterBounds = WebsterBounds(),
) -> SignalRecommendation:
    """The advice message: Webster's plan and the predicted delay of both plans."""
    plan = webster_plan(current, demand, valid_from=issued_at, bounds=bounds)
    return SignalRecommendation(
        intersection_id=current.intersection_id,
        issued_at=issued_at,
        basis_start=basis_start,
        basis_end=basis_end,
        current_plan_id=current.plan_id,
        recommended=plan,
        predicted_delay_current_s=round(plan_delay_s(current, demand), 2),
        predicted_delay_recommended_s=round(plan_delay_s(plan, demand), 2),
    )
