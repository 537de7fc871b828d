"""Per-meter online anomaly detectors: outage, stuck, tamper drop, spike, reverse flow.

Each meter keeps a small, fixed-size state (about 2 KB): a robust baseline of its import per
(day class, local hour) — level and mean absolute deviation, updated by exponentially weighted
steps with clipped residuals so outliers barely move it — plus run counters and a 12-interval
ring for the tamper test.  Readings must come in event-time order per meter (deduplicated);
a reading not newer than the meter's last one is counted as ``stale`` and skipped (late data
still reaches the windowed aggregates, just not the online detectors).

Rules (defaults in :class:`DetectorConfig`):

* ``outage``: import and export both zero for ``outage_intervals`` consecutive intervals in
  which the meter normally draws power (its baseline for that hour is well above zero; the
  workday baseline of the hour stands in while the day class's own is still warming up).
* ``stuck``: the same non-zero reading repeated; the run needed adapts to how often the meter's
  readings repeat naturally (e.g. constant street lighting), so a false alarm needs a run whose
  natural probability is below ``stuck_false_alarm_prob``.
* ``tamper``: over the last ``tamper_intervals`` intervals, import sums to less than
  ``tamper_fraction`` of the meter's own baseline for the same hours and day class (night hours
  only for meters with solar, whose daytime import swings with the sun).
* ``spike``: import above ``level + spike_k * deviation`` and above ``spike_ratio * level``
  (night hours only for meters with solar), and isolated: when high readings keep coming
  (share above ``level_shift_share`` in a short EWMA) it is a level shift, which the baseline
  follows instead.
* ``reverse_flow``: export on a meter registered without solar.

Each finding is reported once per episode (the meter must look normal again to re-arm).
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, tzinfo
from enum import StrEnum
from zoneinfo import ZoneInfo

from schemas.messages import Alert, MeterReading, Severity

__all__ = [
    "AnomalyDetector",
    "AnomalyKind",
    "DetectorConfig",
    "Finding",
    "vn_day_class",
]


class AnomalyKind(StrEnum):
    outage = "outage"
    stuck = "stuck"
    tamper = "tamper"
    spike = "spike"
    reverse_flow = "reverse_flow"


SEVERITY = {
    AnomalyKind.outage: Severity.critical,
    AnomalyKind.tamper: Severity.warning,
    AnomalyKind.stuck: Severity.warning,
    AnomalyKind.reverse_flow: Severity.warning,
    AnomalyKind.spike: Severity.info,
}
_BIT = {k: 1 << i for i, k in enumerate(AnomalyKind)}
N_DAY_CLASSES = 3  # workday, Saturday, Sunday/holiday


@dataclass(frozen=True)
class DetectorConfig:
    outage_intervals: int = 3
    outage_min_kwh: float = 0.005
    outage_rel_level: float = 0.4
    stuck_min_repeats: int = 4
    stuck_false_alarm_prob: float = 1e-6
    resolution_kwh: float = 0.001
    tamper_fraction: float = 0.45
    tamper_intervals: int = 16
    spike_k: float = 10.0
    spike_ratio: float = 4.0
    spike_min_kwh: float = 0.05
    level_shift_share: float = 0.3
    reverse_min_kwh: float = 0.002
    baseline_alpha: float = 0.1
    baseline_clip: float = 3.0
    min_samples: int = 6
    local_tz: str = "Asia/Ho_Chi_Minh"


@dataclass(frozen=True, slots=True)
class Finding:
    """Alert-ready data of one detection; ``ts`` is the event time of the triggering reading."""

    meter_id: str
    kind: AnomalyKind
    ts: datetime
    severity: Severity
    message: str
    details: dict[str, float | int | str] = field(default_factory=dict)

    @property
    def alert_id(self) -> str:
        return f"{self.kind.value}-{self.meter_id}-{int(self.ts.timestamp())}"[:64]

    def to_alert(self) -> Alert:
        return Alert(
            alert_id=self.alert_id,
            kind=self.kind.value,
            severity=self.severity,
            source="energy",
            subject_id=self.meter_id,
            raised_at=self.ts,
            message=self.message,
            details=self.details,
        )


def vn_day_class(d: date) -> int:
    """0 workday, 1 Saturday, 2 Sunday or Vietnamese public holiday (incl. Tết)."""
    try:
        if d in _vn_holidays(d.year):
            return 2
    except ImportError:  # pragma: no cover - holidays is a declared dependency
        pass
    wd = d.weekday()
    return 2 if wd == 6 else (1 if wd == 5 else 0)


_HOLIDAY_CACHE: dict[int, frozenset[date]] = {}


def _vn_holidays(year: int) -> frozenset[date]:
    got = _HOLIDAY_CACHE.get(year)
    if got is None:
        import holidays

        got = _HOLIDAY_CACHE[year] = frozenset(holidays.country_holidays("VN", years=year))
    return got


class _MeterState:
    __slots__ = (
        "active",
        "count",
        "high",
        "last_exp",
        "last_imp",
        "last_ts",
        "level",
        "low_ring",
        "repeat_rate",
        "repeat_run",
        "ring_base",
        "ring_got",
        "scale",
        "typical",
        "typical_n",
        "zero_frac",
        "zero_run",
    )

    def __init__(self, ring: int) -> None:
        n = N_DAY_CLASSES * 24
        self.level = array("d", bytes(8 * n))
        self.scale = array("d", bytes(8 * n))
        self.count = bytearray(n)
        self.last_ts = -math.inf
        self.last_imp = -1.0
        self.last_exp = -1.0
        self.repeat_run = 0
        self.repeat_rate = 0.05
        self.zero_run = 0
        self.zero_frac = 0.0
        self.typical = 0.0
        self.typical_n = 0
        self.active = 0
        self.high = 0.0
        self.low_ring: deque[tuple[float, float]] = deque(maxlen=ring)
        self.ring_got = 0.0  # running sums over low_ring (import, baseline)
        self.ring_base = 0.0

    def ring_push(self, imp: float, level: float) -> None:
        ring = self.low_ring
        if len(ring) == ring.maxlen:
            old_imp, old_level = ring[0]
            self.ring_got -= old_imp
            self.ring_base -= old_level
        ring.append((imp, level))
        self.ring_got += imp
        self.ring_base += level

    def ring_clear(self) -> None:
        self.low_ring.clear()
        self.ring_got = self.ring_base = 0.0


class AnomalyDetector:
    """Online detectors over all meters; bounded state per meter."""

    def __init__(
        self,
        config: DetectorConfig | None = None,
        *,
        has_solar: Callable[[str], bool] | Collection[str] = (),
        day_class: Callable[[date], int] = vn_day_class,
    ) -> None:
        self.config = config or DetectorConfig()
        if callable(has_solar):
            self._has_solar: Callable[[str], bool] = has_solar
        else:
            solar = frozenset(has_solar)
            self._has_solar = solar.__contains__
        self._day_class = day_class
        self._tz: tzinfo = ZoneInfo(self.config.local_tz)
        self._meters: dict[str, _MeterState] = {}
        self._slot_cache: dict[float, tuple[int, int]] = {}
        self.stale = 0

    def __len__(self) -> int:
        return len(self._meters)

    def _slot(self, ts: float, interval_s: int) -> tuple[int, int]:
        got = self._slot_cache.get(ts)
        if got is None:
            local = datetime.fromtimestamp(ts - interval_s / 2.0, self._tz)
            got = (self._day_class(local.date()), local.hour)
            if len(self._slot_cache) > 4096:
                self._slot_cache.clear()
            self._slot_cache[ts] = got
        return got

    def observe(self, reading: MeterReading) -> list[Finding]:
        return self.observe_values(
            reading.meter_id,
            reading.ts.timestamp(),
            reading.interval_s,
            reading.import_kwh,
            reading.export_kwh,
        )

    def observe_values(
        self, meter_id: str, ts: float, interval_s: int, imp: float, exp: float
    ) -> list[Finding]:
        """Core of :meth:`observe` on plain values (epoch seconds)."""
        cfg = self.config
        st = self._meters.get(meter_id)
        if st is None:
            st = self._meters[meter_id] = _MeterState(cfg.tamper_intervals)
        if ts <= st.last_ts:
            self.stale += 1
            return []
        dclass, hour = self._slot(ts, interval_s)
        slot = dclass * 24 + hour
        level, scale, warm = st.level[slot], st.scale[slot], st.count[slot] >= cfg.min_samples
        out: list[Finding] = []
        suspicious = False

        # reverse flow
        if exp > cfg.reverse_min_kwh and not self._has_solar(meter_id):
            suspicious = True
            self._raise(
                st,
                out,
                AnomalyKind.reverse_flow,
                meter_id,
                ts,
                f"export of {exp:.3f} kWh on a meter without solar",
                {"export_kwh": exp},
            )
        else:
            st.active &= ~_BIT[AnomalyKind.reverse_flow]

        # outage
        zero = imp == 0.0 and exp == 0.0
        ref_slot = slot if warm else hour  # fall back to the workday baseline of this hour
        ref = st.level[ref_slot]
        expected = st.count[ref_slot] >= cfg.min_samples and ref >= max(
            cfg.outage_min_kwh, cfg.outage_rel_level * st.typical
        )
        if zero and expected:
            st.zero_run += 1
            suspicious = True
            if st.zero_run >= cfg.outage_intervals:
                self._raise(
                    st,
                    out,
                    AnomalyKind.outage,
                    meter_id,
                    ts,
                    f"no consumption for {st.zero_run} intervals where {ref:.3f} kWh is normal",
                    {"intervals": st.zero_run},
                )
        else:
            st.zero_run = 0
            if not zero:
                st.active &= ~_BIT[AnomalyKind.outage]

        # stuck
        if imp > 0.0 and imp == st.last_imp and exp == st.last_exp:
            st.repeat_run += 1
            # natural chance of a repeat: learned, and from the value's spread at the
            # register resolution (low, steady loads repeat more often)
            spread = max(st.scale[ref_slot], 1e-9)
            p = min(max(st.repeat_rate, cfg.resolution_kwh / (2.2 * spread)), 0.95)
            need = max(
                cfg.stuck_min_repeats, math.ceil(math.log(cfg.stuck_false_alarm_prob) / math.log(p))
            )
            if st.repeat_run >= need:
                suspicious = True
                self._raise(
                    st,
                    out,
                    AnomalyKind.stuck,
                    meter_id,
                    ts,
                    f"reading {imp:.3f} kWh repeated {st.repeat_run + 1} times",
                    {"value_kwh": imp, "repeats": st.repeat_run + 1},
                )
        else:
            if st.last_imp > 0.0:
                st.repeat_rate += 0.02 * ((1.0 if st.repeat_run > 0 else 0.0) - st.repeat_rate)
            st.repeat_run = 0
            st.active &= ~_BIT[AnomalyKind.stuck]

        # spike (night only on solar meters: their daytime import follows the clouds).  A run
        # of high readings is a level shift (e.g. a tampered meter repaired), not spikes: the
        # baseline then learns it instead.
        solar = self._has_solar(meter_id)
        daytime = 6 <= hour < 19
        high = (
            warm
            and imp > cfg.spike_min_kwh
            and imp > level + cfg.spike_k * scale
            and imp > cfg.spike_ratio * level
            and not (solar and daytime)
        )
        isolated = st.high < cfg.level_shift_share
        st.high += 0.25 * ((1.0 if high else 0.0) - st.high)
        if high and isolated and imp != st.last_imp:
            suspicious = True
            self._raise(
                st,
                out,
                AnomalyKind.spike,
                meter_id,
                ts,
                f"import {imp:.3f} kWh is {imp / max(level, 1e-9):.1f}x the usual {level:.3f} kWh",
                {"import_kwh": imp, "baseline_kwh": round(level, 4)},
            )
        else:
            st.active &= ~_BIT[AnomalyKind.spike]
        shifting = high and not isolated

        # tamper: rolling import against the baseline of the same hours
        usable = warm and imp > 0.0 and level > cfg.outage_min_kwh and not (solar and daytime)
        if usable:
            st.ring_push(imp, level)
            if len(st.low_ring) == st.low_ring.maxlen:
                got, base = st.ring_got, st.ring_base
                if got < cfg.tamper_fraction * base:
                    suspicious = True
                    self._raise(
                        st,
                        out,
                        AnomalyKind.tamper,
                        meter_id,
                        ts,
                        f"import at {got / base:.0%} of this meter's usual level for "
                        f"{len(st.low_ring)} intervals",
                        {"ratio": round(got / base, 3), "intervals": len(st.low_ring)},
                    )
                elif got > 0.8 * base:
                    st.active &= ~_BIT[AnomalyKind.tamper]
            if st.active & _BIT[AnomalyKind.tamper] or imp < cfg.tamper_fraction * level:
                suspicious = True
        elif not (solar and daytime):
            st.ring_clear()

        # baseline update: skipped while anything looks wrong, once the slot is warm
        if shifting:
            self._learn(st, slot, imp, fast=True)
        elif not st.active and not (suspicious and warm):
            self._learn(st, slot, imp)
        st.last_ts, st.last_imp, st.last_exp = ts, imp, exp
        return out

    def _learn(self, st: _MeterState, slot: int, v: float, *, fast: bool = False) -> None:
        cfg = self.config
        c = st.count[slot]
        if fast:  # level shift: follow without clipping
            st.level[slot] += 0.3 * (v - st.level[slot])
            st.scale[slot] += 0.3 * (abs(v - st.level[slot]) - st.scale[slot])
            return
        if c == 0:
            st.level[slot] = v
            st.scale[slot] = 0.25 * v
        else:
            alpha = max(1.0 / (c + 1), cfg.baseline_alpha)
            r = v - st.level[slot]
            lim = cfg.baseline_clip * max(st.scale[slot], 1e-3)
            if c >= cfg.min_samples:
                r = min(max(r, -lim), lim)
            st.level[slot] += alpha * r
            st.scale[slot] += alpha * (abs(r) - st.scale[slot])
        if c < 255:
            st.count[slot] = c + 1
        st.typical_n += 1
        a = max(1.0 / st.typical_n, 0.01)
        st.typical += a * (v - st.typical)
        st.zero_frac += a * ((1.0 if v == 0.0 else 0.0) - st.zero_frac)

    def _raise(
        self,
        st: _MeterState,
        out: list[Finding],
        kind: AnomalyKind,
        meter_id: str,
        ts: float,
        message: str,
        details: dict[str, float | int | str],
    ) -> None:
        bit = _BIT[kind]
        if st.active & bit:
            return
        st.active |= bit
        out.append(
            Finding(
                meter_id, kind, datetime.fromtimestamp(ts, UTC), SEVERITY[kind], message, details
            )
        )
