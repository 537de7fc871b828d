"""Builders of valid wire messages for tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from schemas import messages as m

T0 = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)


def make_reading(meter_id: str = "m-0001", step: int = 1, **kw: Any) -> m.MeterReading:
    fields: dict[str, Any] = {
        "meter_id": meter_id,
        "ts": T0 + timedelta(minutes=15 * step),
        "import_kwh": 0.25,
    }
    fields.update(kw)
    return m.MeterReading(**fields)


def make_batch(gateway_id: str = "gw-1", n: int = 3, seq: int = 0) -> m.MeterBatch:
    return m.MeterBatch(
        gateway_id=gateway_id,
        batch_seq=seq,
        sent_at=T0 + timedelta(hours=1),
        readings=[make_reading(f"m-{i:04d}", step=seq + 1) for i in range(n)],
    )


def make_phase(intersection_id: str = "int-1", state: str = "red") -> m.SignalPhaseChange:
    return m.SignalPhaseChange(
        intersection_id=intersection_id,
        signal_group="N_through",
        state=m.SignalState(state),
        changed_at=T0,
    )
