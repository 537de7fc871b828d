"""The synthetic city: districts -> feeders -> gateways -> meters, as numpy columns.

Meters are stored column-wise (archetype, base load, air conditioning, rooftop PV, position) and
sorted by feeder and gateway, so a feeder or a gateway is a contiguous index range.  A million
meters take about 40 MB.  Identifiers are derived from indexes (``mt0000042``), never stored.

Everything exports as plain data (``dict``/``list``, GeoJSON polygons in lon/lat) for seeding the
database and drawing the map.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from simulators.meters import profiles as P
from simulators.meters.profiles import Archetype

F32 = npt.NDArray[np.float32]
I32 = npt.NDArray[np.int32]
I8 = npt.NDArray[np.int8]

#: Ho Chi Minh City centre (Ben Thanh), lat / lon.
HCMC_CENTER = (10.7725, 106.6980)
DISTRICT_NAMES = (
    "Quận 1",
    "Bình Thạnh",
    "Phú Nhuận",
    "Quận 3",
    "Quận 4",
    "Quận 5",
    "Quận 7",
    "Quận 10",
    "Gò Vấp",
    "Tân Bình",
    "Tân Phú",
    "Quận 8",
    "Quận 6",
    "Quận 11",
    "Quận 12",
    "Thủ Đức",
)
#: Archetype mix (residential, commercial, industrial, street lighting) by district kind.
DISTRICT_MIX: dict[str, tuple[float, float, float, float]] = {
    "central": (0.55, 0.38, 0.01, 0.06),
    "residential": (0.86, 0.10, 0.01, 0.03),
    "industrial": (0.52, 0.10, 0.33, 0.05),
}


@dataclass(frozen=True)
class District:
    district_id: str
    name: str
    kind: str
    polygon: list[tuple[float, float]]  # closed ring of (lon, lat)

    def feature(self) -> dict[str, Any]:
        return {
            "type": "Feature",
            "id": self.district_id,
            "properties": {"district_id": self.district_id, "name": self.name, "kind": self.kind},
            "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in self.polygon]]},
        }


@dataclass(frozen=True)
class Feeder:
    feeder_id: str
    district_id: str
    rated_kw: float
    lon: float
    lat: float
    meter_start: int
    meter_stop: int


@dataclass(frozen=True)
class CityConfig:
    n_meters: int = 3000
    n_districts: int = 8
    meters_per_feeder: int = 150
    meters_per_gateway: int = 50
    center: tuple[float, float] = HCMC_CENTER
    district_size_deg: float = 0.03
    seed: int = 0


class City:
    """Topology and per-meter attributes of the synthetic city."""

    def __init__(
        self,
        config: CityConfig,
        districts: list[District],
        feeders: list[Feeder],
        *,
        archetype: I8,
        feeder_idx: I32,
        gateway_idx: I32,
        gateway_feeder: I32,
        gateway_start: I32,
        base_kw: F32,
        ac_kw: F32,
        pv_kwp: F32,
        lon: F32,
        lat: F32,
    ) -> None:
        self.config = config
        self.districts = districts
        self.feeders = feeders
        self.archetype = archetype
        self.feeder_idx = feeder_idx
        self.gateway_idx = gateway_idx
        self.gateway_feeder = gateway_feeder
        self.gateway_start = gateway_start
        self.base_kw = base_kw
        self.ac_kw = ac_kw
        self.pv_kwp = pv_kwp
        self.lon = lon
        self.lat = lat
        self.district_of_feeder = np.array(
            [int(f.district_id[1:]) - 1 for f in feeders], dtype=np.int32
        )
        self._feeder_pos = {f.feeder_id: i for i, f in enumerate(feeders)}

    @property
    def n_meters(self) -> int:
        return int(self.archetype.shape[0])

    @property
    def n_gateways(self) -> int:
        return int(self.gateway_start.shape[0])

    @property
    def has_solar(self) -> npt.NDArray[np.bool_]:
        return self.pv_kwp > 0

    # --- identifiers ----------------------------------------------------------------------
    @staticmethod
    def meter_id(i: int) -> str:
        return f"mt{i:07d}"

    @staticmethod
    def meter_index(meter_id: str) -> int:
        return int(meter_id[2:])

    @staticmethod
    def gateway_id(g: int) -> str:
        return f"gw{g:06d}"

    def meter_ids(self, idx: npt.NDArray[np.int64] | None = None) -> list[str]:
        rng = range(self.n_meters) if idx is None else idx.tolist()
        return [f"mt{i:07d}" for i in rng]

    def feeder_of(self, meter_id: str) -> Feeder:
        return self.feeders[int(self.feeder_idx[self.meter_index(meter_id)])]

    def feeder(self, feeder_id: str) -> Feeder:
        return self.feeders[self._feeder_pos[feeder_id]]

    def solar_meter_ids(self) -> set[str]:
        return set(self.meter_ids(np.flatnonzero(self.pv_kwp > 0)))

    # --- plain-data export ---------------------------------------------------------------
    def districts_geojson(self) -> dict[str, Any]:
        return {"type": "FeatureCollection", "features": [d.feature() for d in self.districts]}

    def feeder_records(self) -> list[dict[str, Any]]:
        return [
            {
                "feeder_id": f.feeder_id,
                "district_id": f.district_id,
                "rated_kw": f.rated_kw,
                "lon": f.lon,
                "lat": f.lat,
                "n_meters": f.meter_stop - f.meter_start,
            }
            for f in self.feeders
        ]

    def gateway_records(self) -> list[dict[str, Any]]:
        stops = np.append(self.gateway_start[1:], self.n_meters)
        return [
            {
                "gateway_id": self.gateway_id(g),
                "feeder_id": self.feeders[int(self.gateway_feeder[g])].feeder_id,
                "meter_start": int(self.gateway_start[g]),
                "meter_stop": int(stops[g]),
            }
            for g in range(self.n_gateways)
        ]

    def meter_records(self) -> Iterator[dict[str, Any]]:
        """One dict per meter, generated lazily (a million meters need not sit in memory)."""
        names = [a.name for a in Archetype]
        for i in range(self.n_meters):
            f = self.feeders[int(self.feeder_idx[i])]
            yield {
                "meter_id": self.meter_id(i),
                "feeder_id": f.feeder_id,
                "district_id": f.district_id,
                "gateway_id": self.gateway_id(int(self.gateway_idx[i])),
                "archetype": names[int(self.archetype[i])],
                "has_solar": bool(self.pv_kwp[i] > 0),
                "pv_kwp": round(float(self.pv_kwp[i]), 3),
                "lon": round(float(self.lon[i]), 6),
                "lat": round(float(self.lat[i]), 6),
            }

    def to_plain(self, *, include_meters: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "districts": [
                {
                    "district_id": d.district_id,
                    "name": d.name,
                    "kind": d.kind,
                    "geojson": d.feature()["geometry"],
                }
                for d in self.districts
            ],
            "feeders": self.feeder_records(),
            "gateways": self.gateway_records(),
        }
        if include_meters:
            out["meters"] = list(self.meter_records())
        return out


def _district_grid(cfg: CityConfig, rng: np.random.Generator) -> list[District]:
    nd = cfg.n_districts
    cols = math.ceil(math.sqrt(nd))
    rows = math.ceil(nd / cols)
    lat0, lon0 = cfg.center
    s = cfg.district_size_deg
    # shared, jittered grid vertices -> neighbouring districts share edges exactly
    vx = lon0 + (np.arange(cols + 1) - cols / 2.0) * s
    vy = lat0 + (np.arange(rows + 1) - rows / 2.0) * s
    jitter = rng.uniform(-0.18 * s, 0.18 * s, size=(rows + 1, cols + 1, 2))
    jitter[[0, -1], :, 1] = 0.0  # keep the outer boundary straight-ish
    jitter[:, [0, -1], 0] = 0.0
    out: list[District] = []
    for k in range(nd):
        r, c = divmod(k, cols)
        corners = [(r, c), (r, c + 1), (r + 1, c + 1), (r + 1, c), (r, c)]
        ring = [
            (
                round(float(vx[cc] + jitter[rr, cc, 0]), 6),
                round(float(vy[rr] + jitter[rr, cc, 1]), 6),
            )
            for rr, cc in corners
        ]
        kind = "central" if k == 0 else ("industrial" if k == nd - 1 and nd > 2 else "residential")
        name = DISTRICT_NAMES[k] if k < len(DISTRICT_NAMES) else f"District {k + 1}"
        out.append(District(f"d{k + 1:02d}", name, kind, ring))
    return out


def build_city(config: CityConfig | None = None) -> City:
    """Build the city deterministically from ``config.seed``."""
    cfg = config or CityConfig()
    rng = np.random.default_rng([cfg.seed, 101])
    districts = _district_grid(cfg, rng)
    n, _nd = cfg.n_meters, len(districts)
    # meters per district: roughly equal, residential districts a bit denser
    weights = np.array([1.0 if d.kind != "industrial" else 0.7 for d in districts])
    per_district = np.floor(n * weights / weights.sum()).astype(np.int64)
    per_district[: n - int(per_district.sum())] += 1

    arche_parts: list[npt.NDArray[np.int8]] = []
    feeders: list[Feeder] = []
    feeder_sizes: list[int] = []
    lon_parts: list[npt.NDArray[np.float64]] = []
    lat_parts: list[npt.NDArray[np.float64]] = []
    start = 0
    for d, nm in zip(districts, per_district.tolist(), strict=True):
        mix = np.asarray(DISTRICT_MIX[d.kind])
        arche_parts.append(rng.choice(len(mix), size=nm, p=mix / mix.sum()).astype(np.int8))
        xs = [p[0] for p in d.polygon[:-1]]
        ys = [p[1] for p in d.polygon[:-1]]
        cx, cy = float(np.mean(xs)), float(np.mean(ys))
        hw, hh = (max(xs) - min(xs)) * 0.38, (max(ys) - min(ys)) * 0.38
        n_f = max(1, math.ceil(nm / cfg.meters_per_feeder))
        sizes = np.full(n_f, nm // n_f)
        sizes[: nm - int(sizes.sum())] += 1
        fx = cx + rng.uniform(-hw, hw, n_f)
        fy = cy + rng.uniform(-hh, hh, n_f)
        for j, size in enumerate(sizes.tolist()):
            fid = f"fd{len(feeders) + 1:05d}"
            feeders.append(
                Feeder(
                    fid,
                    d.district_id,
                    0.0,
                    round(float(fx[j]), 6),
                    round(float(fy[j]), 6),
                    start,
                    start + size,
                )
            )
            feeder_sizes.append(size)
            lon_parts.append(
                np.clip(fx[j] + rng.normal(0, hw / 3, size), cx - hw * 1.2, cx + hw * 1.2)
            )
            lat_parts.append(
                np.clip(fy[j] + rng.normal(0, hh / 3, size), cy - hh * 1.2, cy + hh * 1.2)
            )
            start += size
    archetype = np.concatenate(arche_parts)
    feeder_idx = np.repeat(np.arange(len(feeders), dtype=np.int32), feeder_sizes)

    a = archetype.astype(np.int64)
    base = P.BASE_KW_MEDIAN[a] * np.exp(rng.normal(0.0, 1.0, n) * P.BASE_KW_SIGMA[a])
    has_ac = rng.random(n) < P.AC_PROB[a]
    ac = np.where(has_ac, base * P.AC_REL[a] * rng.uniform(0.6, 1.4, n), 0.0)
    has_pv = rng.random(n) < P.SOLAR_PROB[a]
    lo, hi = P.SOLAR_REL[a, 0], P.SOLAR_REL[a, 1]
    pv = np.where(has_pv, base * rng.uniform(lo, hi), 0.0)

    # gateways: contiguous chunks of each feeder
    g_feeder: list[int] = []
    g_start: list[int] = []
    for fi, f in enumerate(feeders):
        for s0 in range(f.meter_start, f.meter_stop, cfg.meters_per_gateway):
            g_feeder.append(fi)
            g_start.append(s0)
    gateway_start = np.asarray(g_start, dtype=np.int32)
    gateway_idx = (np.searchsorted(gateway_start, np.arange(n), side="right") - 1).astype(np.int32)

    # rated capacity: diversified design peak (hot weekday evening / afternoon) with headroom
    peak_frac = P.HOURLY_SHAPE[a, 0].max(axis=1)
    design = base * peak_frac + ac * 0.8
    fsum = np.bincount(feeder_idx, weights=design, minlength=len(feeders))
    headroom = rng.uniform(0.85, 1.15, len(feeders))
    feeders = [
        Feeder(
            f.feeder_id,
            f.district_id,
            round(float(fsum[i] * 0.8 * headroom[i]), 1),
            f.lon,
            f.lat,
            f.meter_start,
            f.meter_stop,
        )
        for i, f in enumerate(feeders)
    ]
    return City(
        cfg,
        districts,
        feeders,
        archetype=archetype,
        feeder_idx=feeder_idx,
        gateway_idx=gateway_idx,
        gateway_feeder=np.asarray(g_feeder, dtype=np.int32),
        gateway_start=gateway_start,
        base_kw=base.astype(np.float32),
        ac_kw=ac.astype(np.float32),
        pv_kwp=pv.astype(np.float32),
        lon=np.concatenate(lon_parts).astype(np.float32),
        lat=np.concatenate(lat_parts).astype(np.float32),
    )
