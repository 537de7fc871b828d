"""Signal-timing advice from measured lane counts (pure, no I/O).

The traffic worker reads ``traffic.counts`` back (keyed by intersection, so all cameras of an
intersection meet in one worker) into an :class:`AdviceAggregator`.  Counts are grouped in
periods of ``period_s`` (``traffic.recommend_every_s``) of event time; a period is complete
when the intersection's count windows have reached its end plus ``lateness_s`` (so slower
cameras get in), or when the worker forces it after a quiet spell.  For a complete period
:func:`advise` turns the counts into PCU/h per lane, each lane with the saturation flow its
queue discharges show where it had enough of them (``LaneCount.discharge_s``), compares with
the plan in force (:class:`PlanBook`, from ``signal.plans``) and asks Webster
(:func:`~streams.traffic.webster.recommend`) for a cycle and green splits within the min/max
greens.  A plan phase whose signal groups no camera counts gets no advice (it would get the
minimum green for lack of data).

Everything is keyed by event time: a replay yields the same recommendations with the same
``issued_at`` (= the period's end), so the sink stores each once.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from schemas.messages import LaneCount, SignalPlan, SignalRecommendation
from streams.traffic.calibration import Calibration
from streams.traffic.counts import lane_flows
from streams.traffic.webster import SaturationFlow, StreamDemand, WebsterBounds, recommend

CountKey = tuple[str, str, str, str, str, float]


def count_key(c: LaneCount) -> CountKey:
    return (
        c.intersection_id,
        c.camera_id,
        c.lane_id,
        c.movement,
        str(c.vehicle_class),
        c.window_start.timestamp(),
    )


@dataclass
class _Period:
    counts: dict[CountKey, LaneCount] = field(default_factory=dict)
    #: partition -> first offset of a count in this period
    first_offset: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DuePeriod:
    intersection_id: str
    start: float
    end: float
    counts: tuple[LaneCount, ...]


class AdviceAggregator:
    """Lane counts per intersection and period, until the period is complete."""

    def __init__(self, period_s: int, lateness_s: float) -> None:
        self.period_s = period_s
        self.lateness_s = lateness_s
        self._open: dict[tuple[str, float], _Period] = {}
        self._watermark: dict[str, float] = {}
        self._done_until: dict[str, float] = {}
        self.late = 0
        self.duplicates = 0

    def add(self, count: LaneCount, partition: int, offset: int) -> bool:
        """Keep ``count`` (first one per key wins); False when its period is already done."""
        ws = count.window_start.timestamp()
        start = math.floor(ws / self.period_s) * self.period_s
        iid = count.intersection_id
        if start < self._done_until.get(iid, -math.inf):
            self.late += 1
            return False
        period = self._open.setdefault((iid, start), _Period())
        key = count_key(count)
        if key in period.counts:
            self.duplicates += 1
            return True
        period.counts[key] = count
        period.first_offset.setdefault(partition, offset)
        end = ws + count.window_s
        self._watermark[iid] = max(self._watermark.get(iid, -math.inf), end)
        return True

    def due(self, *, force: bool = False) -> list[DuePeriod]:
        """Complete periods (every open one with ``force``), oldest first; forgets them."""
        out = []
        for iid, start in sorted(self._open, key=lambda k: (k[1], k[0])):
            end = start + self.period_s
            if force or self._watermark.get(iid, -math.inf) >= end + self.lateness_s:
                period = self._open.pop((iid, start))
                self._done_until[iid] = max(self._done_until.get(iid, -math.inf), end)
                counts = sorted(period.counts.values(), key=count_key)
                out.append(DuePeriod(iid, start, end, tuple(counts)))
        return out

    @property
    def done_until(self) -> dict[str, float]:
        """Intersection -> end of its last finished period (kept across restarts)."""
        return {k: v for k, v in self._done_until.items() if math.isfinite(v)}

    def restore(self, done_until: Mapping[str, float]) -> None:
        for iid, end in done_until.items():
            self._done_until[iid] = max(self._done_until.get(iid, -math.inf), end)

    def open_offsets(self) -> dict[int, int]:
        """Partition -> first offset of a count in a period still open (commit no further)."""
        out: dict[int, int] = {}
        for period in self._open.values():
            for p, o in period.first_offset.items():
                out[p] = min(out.get(p, o), o)
        return out

    @property
    def open_periods(self) -> int:
        return len(self._open)


class PlanBook:
    """The signal plans received per intersection; the one in force at a time."""

    def __init__(self) -> None:
        self._plans: dict[str, list[tuple[float, str, SignalPlan]]] = {}

    def add(self, plan: SignalPlan) -> None:
        lst = self._plans.setdefault(plan.intersection_id, [])
        item = (plan.valid_from.timestamp(), plan.plan_id, plan)
        if not any(p[0] == item[0] and p[1] == item[1] for p in lst):
            bisect.insort(lst, item, key=lambda p: (p[0], p[1]))

    def in_force(self, intersection_id: str, t: float) -> SignalPlan | None:
        lst = self._plans.get(intersection_id, [])
        i = bisect.bisect_right(lst, t, key=lambda p: p[0]) - 1
        return lst[i][2] if i >= 0 else None


def demand_by_lane(
    counts: Iterable[LaneCount],
    calibrations: Mapping[str, Calibration],
    saturation: SaturationFlow | None = None,
) -> dict[str, StreamDemand]:
    """Measured flow (PCU/h) and saturation flow of each counted signalled lane (key
    ``camera/lane``)."""
    sat = saturation or SaturationFlow()
    by_camera: dict[str, list[LaneCount]] = {}
    for c in counts:
        by_camera.setdefault(c.camera_id, []).append(c)
    out: dict[str, StreamDemand] = {}
    for cam, rows in sorted(by_camera.items()):
        cal = calibrations.get(cam)
        if cal is None:
            continue
        for lane, f in lane_flows(rows, cal).items():
            out[f"{cam}/{lane}"] = StreamDemand(
                (f.signal_group,), f.flow_pcu_h, sat.of(f.discharged_pcu, f.discharge_s)
            )
    return out


def advise(
    period: DuePeriod,
    plan: SignalPlan,
    calibrations: Mapping[str, Calibration],
    bounds: WebsterBounds | None = None,
    saturation: SaturationFlow | None = None,
) -> SignalRecommendation | str:
    """Webster's advice for the period, or the reason there is none."""
    demand = demand_by_lane(period.counts, calibrations, saturation)
    if not demand:
        return "no counts of calibrated approach lanes in the period"
    counted = {g for d in demand.values() for g in d.signal_groups}
    blind = [p.name for p in plan.phases if counted.isdisjoint(p.signal_groups)]
    if blind:
        return f"no camera counts the signal groups of phase(s) {', '.join(blind)}"
    end = datetime.fromtimestamp(period.end, tz=UTC)
    return recommend(
        plan,
        demand,
        basis_start=datetime.fromtimestamp(period.start, tz=UTC),
        basis_end=end,
        issued_at=end,
        bounds=bounds or WebsterBounds(),
    )


def advise_due(
    aggregator: AdviceAggregator,
    plans: PlanBook,
    calibrations_of: Callable[[str], Mapping[str, Calibration]],
    *,
    force: bool = False,
    saturation: SaturationFlow | None = None,
) -> tuple[list[SignalRecommendation], list[tuple[str, str]]]:
    """Advice for every complete period, and (intersection, reason) of those without; a
    reason starts with its kind (``no_plan:``, ``unobserved_phases:``, ``no_counts:``)."""
    recs: list[SignalRecommendation] = []
    skipped: list[tuple[str, str]] = []
    for period in aggregator.due(force=force):
        iid = period.intersection_id
        plan = plans.in_force(iid, period.end)
        if plan is None:
            skipped.append((iid, "no_plan: no signal plan known for the period"))
            continue
        rec = advise(period, plan, calibrations_of(iid), saturation=saturation)
        if isinstance(rec, str):
            kind = "unobserved_phases" if "phase" in rec else "no_counts"
            skipped.append((iid, f"{kind}: {rec}"))
        else:
            recs.append(rec)
    return recs, skipped
