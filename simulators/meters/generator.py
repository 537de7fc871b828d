"""The meter simulator: per interval, vectorised over all meters; faults and ground truth.

Values depend only on ``(seed, interval)`` and the city, never on where a run starts: the
random streams are keyed by the absolute interval number.  Faults are stateful spans, so they
are deterministic for a given ``(seed, start)``.  Nothing per reading is kept beyond the block
being yielded and the small set of delayed readings still in flight.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from citystream.errors import ConfigError
from simulators.meters import profiles as P
from simulators.meters.block import ReadingBlock, meter_id
from simulators.meters.calendar import DayType, day_type
from simulators.meters.dirt import DirtConfig, DirtKind, TruthEvent
from simulators.meters.profiles import Archetype
from simulators.meters.topology import City
from simulators.meters.weather import WeatherYear, ghi_w_m2, solar_elevation_deg

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

LOCAL_TZ = ZoneInfo("Asia/Ho_Chi_Minh")
_EV_NONE, _EV_OUTAGE, _EV_STUCK, _EV_TAMPER, _EV_REVERSE = 0, 1, 2, 3, 4
_EV_KIND = {
    _EV_OUTAGE: DirtKind.outage,
    _EV_STUCK: DirtKind.stuck,
    _EV_TAMPER: DirtKind.tamper,
    _EV_REVERSE: DirtKind.reverse_flow,
}
_GATEWAY_DELAY_S = (2.0, 90.0)


def _utc(epoch_s: int) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


class MeterSimulator:
    """Generates the city's readings for ``[start, end)`` as arrival-ordered columnar blocks."""

    def __init__(
        self,
        city: City,
        *,
        seed: int = 0,
        interval_s: int = 900,
        dirt: DirtConfig | None = None,
        weather: WeatherYear | None = None,
        record_truth: bool = True,
    ) -> None:
        if interval_s <= 0 or 86400 % interval_s:
            raise ConfigError(f"interval_s must divide a day, got {interval_s}")
        self.city = city
        self.seed = seed
        self.interval_s = interval_s
        self.dirt = dirt if dirt is not None else DirtConfig()
        self.weather = weather or WeatherYear.load()
        self.record_truth = record_truth
        self.truth: list[TruthEvent] = []
        n = city.n_meters
        self._a = city.archetype.astype(np.int64)
        self._sigma = P.NOISE_SIGMA[self._a].astype(np.float32)
        self._daily_sigma = P.DAILY_SIGMA[self._a].astype(np.float32)
        self._base = city.base_kw.astype(np.float64)
        self._ac = city.ac_kw.astype(np.float64)
        self._pv = city.pv_kwp.astype(np.float64)
        self._has_pv = self._pv > 0
        self._is_light = self._a == Archetype.street_lighting
        self._gw_sizes = np.diff(np.append(city.gateway_start, n)).astype(np.int64)
        self._daily_cache: tuple[int, npt.NDArray[np.float32]] | None = None
        # fault state
        self._ev = np.zeros(n, np.int8)
        self._ev_until = np.zeros(n, np.int64)
        self._ev_val = np.zeros((n, 2), np.float64)
        self._tamper = np.ones(n, np.float64)
        self._skew = np.zeros(n, np.int64)
        self._skew_until = np.zeros(n, np.int64)

    # --- the clean physics ------------------------------------------------------------------
    def conditions(self, ts: int) -> tuple[float, DayType, float, float, float]:
        """(local hour, day type, temperature C, GHI W/m2, solar elevation deg) at the middle of
        the interval ending at epoch ``ts``."""
        mid = ts - self.interval_s / 2.0
        local = datetime.fromtimestamp(mid, LOCAL_TZ)
        hour = local.hour + local.minute / 60.0 + local.second / 3600.0
        doy = min(local.timetuple().tm_yday, 365) - 1
        hoy = np.array([doy * 24 + hour])
        temp = float(self.weather.temperature(hoy)[0])
        kt = float(self.weather.clearness_at(hoy)[0])
        lat, lon = self.city.config.center
        ghi = float(ghi_w_m2(mid, kt, lat, lon))
        elev = float(solar_elevation_deg(mid, lat, lon))
        return hour, day_type(local.date()), temp, ghi, elev

    def _daily_factor(self, ts: int) -> npt.NDArray[np.float32]:
        day = datetime.fromtimestamp(ts - self.interval_s / 2.0, LOCAL_TZ).date().toordinal()
        if self._daily_cache is None or self._daily_cache[0] != day:
            rng = np.random.default_rng([self.seed, 7, day])
            z = rng.standard_normal(self.city.n_meters, dtype=np.float32)
            self._daily_cache = (day, np.exp(z * self._daily_sigma))
        return self._daily_cache[1]

    def true_energy(self, ts: int) -> tuple[F64, F64]:
        """Clean ``(import_kwh, export_kwh)`` of every meter for the interval ending at ``ts``."""
        hour, dt, temp, ghi, elev = self.conditions(ts)
        frac = P.interval_fraction(P.HOURLY_SHAPE[:, dt, :], hour)
        frac[Archetype.street_lighting] = 1.0 if elev < -1.0 else 0.0
        cool = P.interval_fraction(P.COOLING_OCCUPANCY[:, dt, :], hour) * P.cooling_factor(temp)
        rng = np.random.default_rng([self.seed, 11, ts // self.interval_s])
        noise = np.exp(rng.standard_normal(self.city.n_meters, dtype=np.float32) * self._sigma)
        kw = (self._base * frac[self._a] + self._ac * cool[self._a]) * (
            noise * self._daily_factor(ts)
        )
        hours = self.interval_s / 3600.0
        load = kw * hours
        if ghi > 0:
            pv_kw = self._pv * (ghi / 1000.0 * P.PV_PERFORMANCE)
            pv_kw *= 1.0 + 0.03 * rng.standard_normal(self.city.n_meters)
            pv = np.maximum(pv_kw, 0.0) * hours
            imp = np.maximum(load - pv, 0.0)
            exp = np.maximum(pv - load, 0.0)
        else:
            imp, exp = load, np.zeros_like(load)
        return np.round(imp, 3), np.round(exp, 3)

    # --- faults -----------------------------------------------------------------------------
    def _truth(
        self,
        idx: I64,
        kind: DirtKind,
        start: int,
        end: I64 | int,
        details: dict[str, F64 | I64] | None = None,
    ) -> None:
        if not self.record_truth or idx.size == 0:
            return
        ends = np.broadcast_to(np.asarray(end, dtype=np.int64), idx.shape)
        st = _utc(start)
        for j, (m, e) in enumerate(zip(idx.tolist(), ends.tolist(), strict=True)):
            det: dict[str, float | int | str] = {}
            for key, arr in (details or {}).items():
                det[key] = arr[j].item()
            self.truth.append(TruthEvent(meter_id(m), kind, st, _utc(e), det))

    def _pick(self, rng: np.random.Generator, per_day: float) -> I64:
        p = per_day * self.interval_s / 86400.0
        if p <= 0:
            return np.empty(0, np.int64)
        count = int(rng.binomial(self.city.n_meters, min(p, 1.0)))
        return np.unique(rng.integers(0, self.city.n_meters, count))

    def _apply_value_faults(
        self, k: int, ts: int, imp: F64, exp: F64, rng: np.random.Generator, last_ts: int
    ) -> None:
        d, iv = self.dirt, self.interval_s
        active = self._ev != _EV_NONE
        done = active & (self._ev_until < k)
        self._ev[done] = _EV_NONE
        self._tamper[done] = 1.0
        for code, per_day, span in (
            (_EV_OUTAGE, d.outage_per_meter_day, d.outage_intervals),
            (_EV_STUCK, d.stuck_per_meter_day, d.stuck_intervals),
            (_EV_TAMPER, d.tamper_per_meter_day, d.tamper_intervals),
            (_EV_REVERSE, d.reverse_flow_per_meter_day, d.reverse_flow_intervals),
        ):
            idx = self._pick(rng, per_day)
            idx = idx[self._ev[idx] == _EV_NONE]
            if code == _EV_STUCK:
                idx = idx[imp[idx] > 0.0]
            elif code == _EV_TAMPER:
                idx = idx[~self._is_light[idx] & (imp[idx] > 0.0)]
            elif code == _EV_REVERSE:
                idx = idx[~self._has_pv[idx] & (imp[idx] > 0.0)]
            if idx.size == 0:
                continue
            dur = rng.integers(span[0], span[1] + 1, idx.size)
            self._ev[idx] = code
            self._ev_until[idx] = k + dur - 1
            self._ev_val[idx, 0] = imp[idx]
            self._ev_val[idx, 1] = exp[idx]
            details: dict[str, F64 | I64] = {"intervals": dur}
            if code == _EV_TAMPER:
                f = rng.uniform(*d.tamper_fraction, idx.size)
                self._tamper[idx] = f
                details["fraction"] = np.round(f, 3)
            if code == _EV_STUCK:
                details["value_kwh"] = imp[idx]
            end = np.minimum(ts + (dur - 1) * iv, last_ts)
            self._truth(idx, _EV_KIND[code], ts, end, details)
        ev = self._ev
        m = ev == _EV_OUTAGE
        imp[m] = 0.0
        exp[m] = 0.0
        m = ev == _EV_STUCK
        imp[m] = self._ev_val[m, 0]
        exp[m] = self._ev_val[m, 1]
        m = ev == _EV_TAMPER
        imp[m] = np.round(imp[m] * self._tamper[m], 3)
        m = ev == _EV_REVERSE
        exp[m] = imp[m]
        imp[m] = 0.0
        # spikes: one interval, any meter drawing power and not in another fault
        idx = self._pick(rng, d.spike_per_meter_day)
        idx = idx[(self._ev[idx] == _EV_NONE) & (imp[idx] > 0.0)]
        if idx.size:
            factor = rng.uniform(*d.spike_factor, idx.size)
            imp[idx] = np.round(imp[idx] * factor + 0.5 * self._base[idx] * iv / 3600.0, 3)
            self._truth(idx, DirtKind.spike, ts, ts, {"factor": np.round(factor, 2)})

    def _clock_skew(self, k: int, ts: int, rng: np.random.Generator, last_ts: int) -> None:
        d = self.dirt
        self._skew[self._skew_until < k] = 0
        idx = self._pick(rng, d.clock_skew_per_meter_day)
        idx = idx[self._skew[idx] == 0]
        if idx.size:
            dur = rng.integers(d.clock_skew_intervals[0], d.clock_skew_intervals[1] + 1, idx.size)
            off = rng.integers(d.clock_skew_s[0], d.clock_skew_s[1] + 1, idx.size)
            off = off * rng.choice(np.array([-1, 1]), idx.size)
            self._skew[idx] = off
            self._skew_until[idx] = k + dur - 1
            end = np.minimum(ts + (dur - 1) * self.interval_s, last_ts)
            self._truth(idx, DirtKind.clock_skew, ts, end, {"offset_s": off})

    # --- a run ------------------------------------------------------------------------------
    def run(self, start: datetime, end: datetime, *, drain: bool = True) -> Iterator[ReadingBlock]:
        """Blocks of readings for the intervals that start in ``[start, end)``.

        Block ``k`` holds every reading that *arrives* during the interval after the one ending
        at ``ts_k``: the on-time readings of ``ts_k`` (ordered by gateway upload time) plus
        delayed ones (duplicates, out-of-order, late) now due.  With ``drain`` the run continues
        past ``end`` until every delayed reading has been delivered.
        """
        iv = self.interval_s
        t0, t1 = int(start.timestamp()), int(end.timestamp())
        if start.tzinfo is None or end.tzinfo is None:
            raise ConfigError("start and end must be timezone-aware")
        if t0 % iv or t1 % iv or t1 <= t0:
            raise ConfigError(f"start/end must be aligned to {iv} s and start < end")
        last_ts = t1  # interval ending at t1 is the last one
        pending = ReadingBlock.empty(iv)
        k = t0 // iv + 1
        while True:
            ts = k * iv
            parts = [ReadingBlock.empty(iv)]
            if ts <= last_ts:
                parts[0], delayed = self._split_delayed(self._step(k, ts, last_ts), k)
                if len(delayed):
                    pending = ReadingBlock.concat([pending, delayed], iv)
            elif not drain or len(pending) == 0:
                return
            due = pending.arrival < ts + iv
            if due.any():
                parts.append(pending.take(due))
                pending = pending.take(~due)
            block = _merge_by_arrival(parts, iv)
            if len(block):
                yield block
            k += 1

    def _step(self, k: int, ts: int, last_ts: int) -> ReadingBlock:
        imp, exp = self.true_energy(ts)
        rng = np.random.default_rng([self.seed, 13, k])
        self._apply_value_faults(k, ts, imp, exp, rng, last_ts)
        self._clock_skew(k, ts, rng, last_ts)
        # gateway upload delay; meters of a gateway share it -> order by gateway in O(n)
        n_gw = self.city.n_gateways
        gw_delay = rng.uniform(*_GATEWAY_DELAY_S, n_gw)
        order = np.argsort(gw_delay, kind="stable")
        sizes = self._gw_sizes[order]
        starts = self.city.gateway_start.astype(np.int64)[order]
        offsets = np.cumsum(sizes) - sizes
        perm = np.repeat(starts - offsets, sizes) + np.arange(self.city.n_meters, dtype=np.int64)
        arrival = (ts + gw_delay[self.city.gateway_idx[perm]]).astype(np.float64)
        reported = ts + self._skew[perm]
        return ReadingBlock(
            perm,
            reported,
            imp[perm],
            exp[perm],
            arrival,
            np.zeros(perm.shape[0], np.bool_),
            self.interval_s,
        )

    def _split_delayed(self, block: ReadingBlock, k: int) -> tuple[ReadingBlock, ReadingBlock]:
        """Drop missing readings; move duplicates' copies, out-of-order and late ones aside."""
        d = self.dirt
        rates = np.array([d.missing, d.duplicate, d.out_of_order, d.late])
        total = float(rates.sum())
        n = len(block)
        if total <= 0 or n == 0:
            return block, ReadingBlock.empty(self.interval_s)
        rng = np.random.default_rng([self.seed, 17, k])
        count = int(rng.binomial(n, min(total, 1.0)))
        rows = rng.choice(n, size=count, replace=False)
        kinds = rng.choice(4, size=count, p=rates / total)
        ts_true = k * self.interval_s
        keep = np.ones(n, np.bool_)
        delayed: list[ReadingBlock] = []
        for code, kind, delay in (
            (0, DirtKind.missing, None),
            (1, DirtKind.duplicate, d.duplicate_delay_s),
            (2, DirtKind.out_of_order, d.out_of_order_delay_s),
            (3, DirtKind.late, d.late_delay_s),
        ):
            r = rows[kinds == code]
            if r.size == 0:
                continue
            details: dict[str, F64 | I64] = {"reported_ts": block.ts[r]}
            if delay is not None:
                extra = rng.uniform(*delay, r.size)
                moved = block.take(r)
                moved = ReadingBlock(
                    moved.meter,
                    moved.ts,
                    moved.import_kwh,
                    moved.export_kwh,
                    moved.arrival + extra,
                    np.full(r.size, code == 1),
                    self.interval_s,
                )
                delayed.append(moved)
                details["delay_s"] = np.round(extra, 1)
            if code != 1:
                keep[r] = False
            self._truth(block.meter[r], kind, ts_true, ts_true, details)
        return block.take(keep), ReadingBlock.concat(delayed, self.interval_s)


def _merge_by_arrival(parts: list[ReadingBlock], iv: int) -> ReadingBlock:
    if len(parts) == 1:
        return parts[0]
    main, extra = parts[0], ReadingBlock.concat(parts[1:], iv).sorted_by_arrival()
    if len(extra) == 0:
        return main
    pos = np.searchsorted(main.arrival, extra.arrival, side="right")
    return ReadingBlock(
        np.insert(main.meter, pos, extra.meter),
        np.insert(main.ts, pos, extra.ts),
        np.insert(main.import_kwh, pos, extra.import_kwh),
        np.insert(main.export_kwh, pos, extra.export_kwh),
        np.insert(main.arrival, pos, extra.arrival),
        np.insert(main.duplicate, pos, extra.duplicate),
        iv,
    )


def day_range(day: datetime, days: int = 1) -> tuple[datetime, datetime]:
    """``[local midnight, +days)`` of the local (Asia/Ho_Chi_Minh) date of ``day``, in UTC."""
    local = day.astimezone(LOCAL_TZ).replace(hour=0, minute=0, second=0, microsecond=0)
    return local.astimezone(UTC), (local + timedelta(days=days)).astimezone(UTC)
