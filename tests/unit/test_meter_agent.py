"""Pure parts of the meter gateway agent: batch payload, backoff, config checks."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from edge.meter.agent import AgentConfig, Backoff, batch_payload
from schemas.codecs import JsonCodec
from schemas.messages import MeterBatch, MeterReading
from schemas.topics import mqtt_route_for


def test_batch_payload_is_a_valid_meter_batch_the_bridge_routes() -> None:
    t0 = datetime(2026, 1, 5, tzinfo=UTC)
    readings = [
        MeterReading(meter_id=f"m{i}", ts=t0 + timedelta(minutes=15 * i), import_kwh=0.5 * i)
        for i in range(3)
    ]
    payload = batch_payload("gw-7", 42, t0, [r.model_dump_json().encode() for r in readings])
    batch = JsonCodec(MeterBatch).decode(payload)
    assert batch == MeterBatch(gateway_id="gw-7", batch_seq=42, sent_at=t0, readings=readings)
    cfg = AgentConfig(gateway_id="gw-7", city="hcm")
    route = mqtt_route_for(cfg.topic)
    assert route is not None and len(route.route(cfg.topic, payload)) == 3


def test_backoff_grows_exponentially_with_jitter_and_is_bounded() -> None:
    b = Backoff(0.5, 8.0, random.Random(1))
    delays = [b.next() for _ in range(10)]
    caps = [min(8.0, 0.5 * 2**n) for n in range(10)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, caps, strict=True))
    assert len(set(delays)) == 10  # jittered
    b.reset()
    assert b.next() <= 0.5


@pytest.mark.parametrize(
    ("gateway_id", "city"), [("gw/1", "hcm"), ("gw-1", "h+m"), ("", "hcm"), ("gw 1", "hcm")]
)
def test_config_rejects_ids_that_break_the_topic(gateway_id: str, city: str) -> None:
    with pytest.raises(ValueError):
        AgentConfig(gateway_id=gateway_id, city=city)
