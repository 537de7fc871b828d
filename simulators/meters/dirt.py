"""Realistic faults of metering data and their ground truth.

Value faults change what a meter reports over a span of intervals (``outage``: zeros,
``stuck``: the same value repeated, ``tamper``: a sustained drop to a fraction of the real load,
``reverse_flow``: import reported as export on a meter without solar, ``spike``: one absurd
value).  Delivery faults change whether and when a reading arrives or which time it carries
(``missing``, ``duplicate``, ``out_of_order``: arrives after the meter's next reading but within
the usual allowance, ``late``: hours late, ``clock_skew``: the meter's clock is off by minutes).
Each injected fault becomes one :class:`TruthEvent`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from enum import StrEnum


class DirtKind(StrEnum):
    outage = "outage"
    stuck = "stuck"
    tamper = "tamper"
    reverse_flow = "reverse_flow"
    spike = "spike"
    missing = "missing"
    duplicate = "duplicate"
    out_of_order = "out_of_order"
    late = "late"
    clock_skew = "clock_skew"


#: Value faults that the anomaly detectors are expected to find.
VALUE_KINDS = (
    DirtKind.outage,
    DirtKind.stuck,
    DirtKind.tamper,
    DirtKind.reverse_flow,
    DirtKind.spike,
)


@dataclass(frozen=True)
class TruthEvent:
    """One injected fault: ``start``/``end`` are the true interval-end times of the first and
    last affected readings (inclusive)."""

    meter_id: str
    kind: DirtKind
    start: datetime
    end: datetime
    details: dict[str, float | int | str] = field(default_factory=dict)


@dataclass(frozen=True)
class DirtConfig:
    """Fault rates.  Span and spike faults are per meter-day; delivery faults per reading."""

    outage_per_meter_day: float = 0.002
    stuck_per_meter_day: float = 0.001
    tamper_per_meter_day: float = 0.0005
    reverse_flow_per_meter_day: float = 0.0005
    spike_per_meter_day: float = 0.003
    clock_skew_per_meter_day: float = 0.001
    missing: float = 0.001
    duplicate: float = 0.001
    out_of_order: float = 0.001
    late: float = 0.0005
    outage_intervals: tuple[int, int] = (4, 24)
    stuck_intervals: tuple[int, int] = (8, 48)
    tamper_intervals: tuple[int, int] = (96, 384)
    reverse_flow_intervals: tuple[int, int] = (8, 96)
    clock_skew_intervals: tuple[int, int] = (16, 192)
    clock_skew_s: tuple[int, int] = (60, 600)
    tamper_fraction: tuple[float, float] = (0.1, 0.4)
    spike_factor: tuple[float, float] = (5.0, 12.0)
    duplicate_delay_s: tuple[float, float] = (5.0, 1800.0)
    out_of_order_delay_s: tuple[float, float] = (960.0, 2700.0)
    late_delay_s: tuple[float, float] = (7200.0, 43200.0)

    @classmethod
    def clean(cls) -> DirtConfig:
        """No faults at all."""
        return cls().scaled(0.0)

    def scaled(self, factor: float) -> DirtConfig:
        """All rates multiplied by ``factor`` (durations unchanged)."""
        rates = {
            f.name: getattr(self, f.name) * factor
            for f in fields(self)
            if isinstance(getattr(self, f.name), float)
        }
        return replace(self, **rates)
