"""Score anomaly findings against the simulator's ground truth; run sim -> detectors -> score."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from simulators.meters.block import meter_id as _meter_id
from simulators.meters.dirt import VALUE_KINDS, DirtConfig, DirtKind, TruthEvent
from simulators.meters.generator import MeterSimulator
from simulators.meters.topology import CityConfig, build_city
from streams.energy.anomalies import AnomalyDetector, DetectorConfig, Finding


@dataclass(frozen=True)
class KindScore:
    kind: str
    truth_events: int
    detected_events: int
    alerts: int
    true_alerts: int

    @property
    def precision(self) -> float:
        return self.true_alerts / self.alerts if self.alerts else 1.0

    @property
    def recall(self) -> float:
        return self.detected_events / self.truth_events if self.truth_events else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "truth_events": self.truth_events,
            "detected_events": self.detected_events,
            "alerts": self.alerts,
            "true_alerts": self.true_alerts,
            "precision": round(self.precision, 3),
            "recall": round(self.recall, 3),
        }


def score_findings(
    findings: Iterable[Finding],
    truth: Iterable[TruthEvent],
    *,
    kinds: Sequence[DirtKind] = VALUE_KINDS,
    since: datetime | None = None,
    tolerance: timedelta = timedelta(minutes=15),
) -> dict[str, KindScore]:
    """Precision and recall per kind.

    A finding is true when the same meter has a truth event of the same kind whose span
    ``[start - tolerance, end + tolerance]`` contains the finding's time; an event is detected
    when at least one finding matches it.  With ``since``, only events starting and findings
    raised at or after it count (detectors warm up before).
    """
    by_key: dict[tuple[str, str], list[TruthEvent]] = defaultdict(list)
    for ev in truth:
        if ev.kind in kinds and (since is None or ev.start >= since):
            by_key[(ev.meter_id, ev.kind.value)].append(ev)
    detected: set[int] = set()
    alerts: dict[str, int] = defaultdict(int)
    true_alerts: dict[str, int] = defaultdict(int)
    for f in findings:
        if since is not None and f.ts < since:
            continue
        k = f.kind.value
        alerts[k] += 1
        hit = False
        for ev in by_key.get((f.meter_id, k), ()):
            if ev.start - tolerance <= f.ts <= ev.end + tolerance:
                detected.add(id(ev))
                hit = True
        if hit:
            true_alerts[k] += 1
    out: dict[str, KindScore] = {}
    for kind in kinds:
        events = [ev for (_, k), evs in by_key.items() if k == kind.value for ev in evs]
        out[kind.value] = KindScore(
            kind.value,
            len(events),
            sum(1 for ev in events if id(ev) in detected),
            alerts[kind.value],
            true_alerts[kind.value],
        )
    return out


@dataclass(frozen=True)
class Evaluation:
    scores: dict[str, KindScore]
    readings: int
    findings: int
    stale: int

    def table(self) -> list[dict[str, Any]]:
        return [s.as_dict() for s in self.scores.values()]


def evaluate_detectors(
    *,
    city: CityConfig | None = None,
    seed: int = 0,
    start: datetime = datetime(2026, 6, 1, 17, 0, tzinfo=UTC),  # local midnight, a Tuesday
    warmup_days: int = 7,
    eval_days: int = 1,
    dirt: DirtConfig | None = None,
    detector: DetectorConfig | None = None,
) -> Evaluation:
    """Simulate ``warmup_days + eval_days`` with faults, feed every reading in arrival order to
    the detectors (first copy of each ``(meter, ts)`` only, as after dedup), and score the
    findings of the last ``eval_days`` against the ground truth."""
    c = build_city(city)
    sim = MeterSimulator(c, seed=seed, dirt=dirt)
    det = AnomalyDetector(detector, has_solar=c.solar_meter_ids())
    end = start + timedelta(days=warmup_days + eval_days)
    since = start + timedelta(days=warmup_days)
    findings: list[Finding] = []
    n = 0
    interval = sim.interval_s
    ids = [_meter_id(i) for i in range(c.n_meters)]
    for block in sim.run(start, end):
        keep = ~block.duplicate
        for m, t, imp, exp in zip(
            block.meter[keep].tolist(),
            block.ts[keep].tolist(),
            block.import_kwh[keep].tolist(),
            block.export_kwh[keep].tolist(),
            strict=True,
        ):
            found = det.observe_values(ids[m], float(t), interval, imp, exp)
            if found:
                findings.extend(found)
        n += int(keep.sum())
    scores = score_findings(findings, sim.truth, since=since)
    return Evaluation(scores, n, len(findings), det.stale)
