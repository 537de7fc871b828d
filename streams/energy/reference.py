"""Reference data the energy stages need: which feeder and district each meter is on."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MeterPlace:
    feeder_id: str
    district_id: str
    has_solar: bool


@dataclass(frozen=True)
class Directory:
    """Meters → place, and feeders' rated capacity.  Immutable; reload to refresh."""

    meters: dict[str, MeterPlace] = field(default_factory=dict)
    feeder_rated_kw: dict[str, float] = field(default_factory=dict)
    feeder_district: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_rows(
        cls,
        meters: Iterable[tuple[str, str, str, bool]],
        feeders: Iterable[tuple[str, str, float]],
    ) -> Directory:
        """``meters``: (meter_id, feeder_id, district_id, has_solar);
        ``feeders``: (feeder_id, district_id, rated_kw)."""
        feeder_rows = list(feeders)
        return cls(
            meters={m: MeterPlace(f, d, bool(s)) for m, f, d, s in meters},
            feeder_rated_kw={f: float(kw) for f, _, kw in feeder_rows},
            feeder_district={f: d for f, d, _ in feeder_rows},
        )

    def place(self, meter_id: str) -> MeterPlace | None:
        return self.meters.get(meter_id)

    def has_solar(self, meter_id: str) -> bool:
        p = self.meters.get(meter_id)
        return p is not None and p.has_solar


def load_directory(conn: Any) -> Directory:
    """Read the directory from the reference tables (``meters``, ``feeders``)."""
    meters = conn.execute(
        "SELECT m.id, m.feeder_id, f.district_id, m.has_solar "
        "FROM meters m JOIN feeders f ON f.id = m.feeder_id"
    ).fetchall()
    feeders = conn.execute("SELECT id, district_id, rated_kw FROM feeders").fetchall()
    return Directory.from_rows(meters, feeders)
