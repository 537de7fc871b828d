"""Meter simulator: determinism, shapes, scale, faults and their ground truth, exports."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from simulators.meters import (
    Archetype,
    City,
    CityConfig,
    DirtConfig,
    DirtKind,
    MeterSimulator,
    ReadingBlock,
    build_city,
    day_range,
    gateway_batches,
    paced,
    replay_feeder,
    taylor_feeder_kw,
    to_readings,
)
from simulators.meters.weather import WeatherYear

DAY = datetime(2026, 6, 2, tzinfo=UTC)  # a Tuesday


@pytest.fixture(scope="module")
def weather() -> WeatherYear:
    return WeatherYear.load()


@pytest.fixture(scope="module")
def city() -> City:
    return build_city(CityConfig(n_meters=600, seed=3))


def _local_ts(day: datetime, hour: float) -> int:
    """Epoch of the interval end whose middle is at local ``hour`` on ``day``'s local date."""
    start, _ = day_range(day)
    return int(start.timestamp() + hour * 3600 + 450)


def _run(sim: MeterSimulator, days: int = 1) -> ReadingBlock:
    start, end = day_range(DAY, days)
    return ReadingBlock.concat(list(sim.run(start, end)))


def test_same_seed_same_output_and_truth(city: City, weather: WeatherYear) -> None:
    dirt = DirtConfig().scaled(20)
    a = MeterSimulator(city, seed=5, dirt=dirt, weather=weather)
    b = MeterSimulator(city, seed=5, dirt=dirt, weather=weather)
    ra, rb = _run(a), _run(b)
    for col in ("meter", "ts", "import_kwh", "export_kwh", "arrival", "duplicate"):
        assert np.array_equal(getattr(ra, col), getattr(rb, col)), col
    assert a.truth == b.truth and len(a.truth) > 0
    c = MeterSimulator(city, seed=6, dirt=dirt, weather=weather)
    assert not np.array_equal(_run(c).import_kwh[:500], ra.import_kwh[:500])


def test_values_do_not_depend_on_run_start(city: City, weather: WeatherYear) -> None:
    ts = _local_ts(DAY, 19.5)
    a = MeterSimulator(city, seed=1, weather=weather).true_energy(ts)
    sim = MeterSimulator(city, seed=1, weather=weather)
    sim.true_energy(ts - 86400)  # other state first
    b = sim.true_energy(ts)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_archetype_shapes(city: City, weather: WeatherYear) -> None:
    sim = MeterSimulator(city, seed=2, weather=weather)
    arch = city.archetype

    def mean_import(kind: Archetype, day: datetime, hour: float) -> float:
        imp, _ = sim.true_energy(_local_ts(day, hour))
        return float(imp[arch == kind].mean())

    res = Archetype.residential
    assert mean_import(res, DAY, 19.5) > 2.0 * mean_import(res, DAY, 3.0)
    assert mean_import(res, DAY, 7.0) > mean_import(res, DAY, 3.0)  # morning peak
    com = Archetype.commercial
    assert mean_import(com, DAY, 3.0) < 0.5 * mean_import(com, DAY, 20.0) * 2
    sunday = DAY + timedelta(days=5)
    assert mean_import(com, sunday, 11.0) < 0.75 * mean_import(com, DAY, 11.0)
    light = Archetype.street_lighting
    assert mean_import(light, DAY, 12.0) == 0.0
    assert mean_import(light, DAY, 23.0) > 0.0
    tet = datetime(2026, 2, 17, tzinfo=UTC)  # first day of Tết 2026
    before = datetime(2026, 2, 3, tzinfo=UTC)
    ind = Archetype.industrial
    assert mean_import(ind, tet, 10.0) < 0.4 * mean_import(ind, before, 10.0)


def test_rooftop_solar_exports_at_noon_only(city: City, weather: WeatherYear) -> None:
    sim = MeterSimulator(city, seed=2, weather=weather)
    solar = city.pv_kwp > 0
    assert solar.any() and not solar.all()
    _, exp_noon = sim.true_energy(_local_ts(DAY, 12.0))
    _, exp_night = sim.true_energy(_local_ts(DAY, 22.0))
    assert exp_noon[solar].sum() > 0 and exp_noon[~solar].sum() == 0
    assert exp_night.sum() == 0


def test_large_city_step_is_vectorised() -> None:
    big = build_city(CityConfig(n_meters=100_000, seed=1))
    sim = MeterSimulator(big, seed=1, record_truth=False)
    gen = sim.run(DAY, DAY + timedelta(hours=1), drain=False)
    first = next(gen)  # one interval, generated without per-reading objects
    assert 99_000 < len(first) <= 100_000
    assert first.import_kwh.dtype == np.float64
    assert np.all(np.diff(first.arrival) >= 0)


def test_every_fault_kind_appears_and_is_labelled(city: City, weather: WeatherYear) -> None:
    sim = MeterSimulator(city, seed=9, dirt=DirtConfig().scaled(30), weather=weather)
    start, end = day_range(DAY, 2)
    blocks = list(sim.run(start, end))
    data = ReadingBlock.concat(blocks)
    kinds = Counter(ev.kind for ev in sim.truth)
    assert set(kinds) == set(DirtKind), kinds
    iv = sim.interval_s
    clean = MeterSimulator(city, seed=9, dirt=DirtConfig.clean(), weather=weather)
    # index reported rows by (meter, ts) -> list of rows
    rows: dict[tuple[int, int], list[int]] = {}
    for i, (m, t) in enumerate(zip(data.meter.tolist(), data.ts.tolist(), strict=True)):
        rows.setdefault((m, t), []).append(i)

    def check(
        kind: DirtKind, limit: int = 8
    ) -> list[tuple[int, int, int, dict[str, float | int | str]]]:
        out = []
        for ev in [e for e in sim.truth if e.kind == kind][:limit]:
            out.append(
                (
                    int(ev.meter_id[2:]),
                    int(ev.start.timestamp()),
                    int(ev.end.timestamp()),
                    dict(ev.details),
                )
            )
        return out

    for m, _, _, det in check(DirtKind.missing):
        assert (m, int(det["reported_ts"])) not in rows
    for m, _, _, det in check(DirtKind.duplicate):
        assert len(rows[(m, int(det["reported_ts"]))]) == 2
    for m, t, _, det in check(DirtKind.late):
        (i,) = rows[(m, int(det["reported_ts"]))]
        assert data.arrival[i] - t >= 7200
    for m, t, _, det in check(DirtKind.out_of_order):
        (i,) = rows[(m, int(det["reported_ts"]))]
        nxt = [j for j in range(len(data)) if data.meter[j] == m and data.ts[j] > t]
        assert nxt and min(nxt) < i  # a later reading of the meter arrived first
    for m, t, _, det in check(DirtKind.clock_skew):
        assert (m, t + int(det["offset_s"])) in rows or (m, t) not in rows
    truth_by = {k: check(k) for k in DirtKind}
    for m, t, e, _ in truth_by[DirtKind.outage]:
        vals = [
            data.import_kwh[i] + data.export_kwh[i]
            for tt in range(t, e + 1, iv)
            for i in rows.get((m, tt), [])
        ]
        assert vals and max(vals) == 0.0
    for m, t, e, _ in truth_by[DirtKind.stuck]:
        seen = {data.import_kwh[i] for tt in range(t, e + 1, iv) for i in rows.get((m, tt), [])}
        assert len(seen) == 1
    for m, t, _, _ in truth_by[DirtKind.spike]:
        true_imp = clean.true_energy(t)[0][m]
        got = [data.import_kwh[i] for i in rows.get((m, t), [])]
        assert not got or got[0] >= 4 * true_imp
    for m, t, _, _ in truth_by[DirtKind.tamper]:
        true_imp = clean.true_energy(t)[0][m]
        got = [data.import_kwh[i] for i in rows.get((m, t), [])]
        assert not got or got[0] <= 0.41 * true_imp + 0.001
    for m, t, _, _ in truth_by[DirtKind.reverse_flow]:
        assert city.pv_kwp[m] == 0
        got = [data.export_kwh[i] for i in rows.get((m, t), [])]
        assert not got or got[0] > 0


def test_gateway_batches_and_readings_are_valid(city: City, weather: WeatherYear) -> None:
    sim = MeterSimulator(city, seed=1, weather=weather)
    block = next(sim.run(DAY, DAY + timedelta(hours=1)))
    seq: dict[int, int] = {}
    batches = gateway_batches(block, city.gateway_idx, seq)
    assert sum(len(b.readings) for b in batches) == len(block)
    assert len(batches) == city.n_gateways
    for b in batches:
        g = int(b.gateway_id[2:])
        assert all(city.gateway_idx[int(r.meter_id[2:])] == g for r in b.readings)
    again = gateway_batches(block, city.gateway_idx, seq)
    assert {b.batch_seq for b in again} == {1}
    fast = to_readings(block, validate=False)
    assert fast[:5] == to_readings(block)[:5]


def test_topology_exports_plain_data(city: City) -> None:
    plain = city.to_plain()
    json.dumps(plain)
    assert len(plain["meters"]) == city.n_meters
    for d in plain["districts"]:
        ring = d["geojson"]["coordinates"][0]
        assert ring[0] == ring[-1] and len(ring) == 5
        lon, lat = ring[0]
        assert 106.5 < lon < 106.9 and 10.6 < lat < 10.95
    assert all(f["rated_kw"] > 0 for f in plain["feeders"])
    for f in city.feeders:
        assert np.all(city.feeder_idx[f.meter_start : f.meter_stop] == city.feeders.index(f))
    assert city.districts_geojson()["type"] == "FeatureCollection"


def test_paced_releases_on_a_fake_clock(city: City, weather: WeatherYear) -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    sim = MeterSimulator(city, seed=1, weather=weather)
    blocks = list(sim.run(DAY, DAY + timedelta(minutes=30), drain=False))
    out = list(paced(blocks, speed=60.0, granularity_s=10.0, clock=lambda: now[0], sleep=sleep))
    assert sum(len(b) for b in out) == sum(len(b) for b in blocks)
    span = float(blocks[-1].arrival[-1] - blocks[0].arrival[0])
    assert now[0] == pytest.approx(span / 60.0, rel=0.05)


def test_real_data_replay_sums_to_scaled_series(city: City) -> None:
    f = city.feeders[0]
    kw = taylor_feeder_kw(f.rated_kw)
    blocks = []
    for i, b in enumerate(replay_feeder(city, f.feeder_id)):
        blocks.append(b)
        if i == 95:
            break
    energy = np.array([b.import_kwh.sum() for b in blocks])
    expect = np.repeat(kw[:48] * 0.25, 2)
    assert np.allclose(energy, expect, atol=0.001 * len(blocks[0]))
    assert set(blocks[0].meter.tolist()) == set(range(f.meter_start, f.meter_stop))
