"""The bridge's pure part: MQTT message in, Kafka records (or a dead letter) out."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from edge.bridge.routing import STAGE, plan, subscriptions
from schemas import messages as m
from schemas.codecs import DLQ_PAYLOAD_LIMIT
from schemas.topics import DEAD_LETTER_CODEC, MQTT_ROUTES, TOPICS
from tests.unit.factories import make_batch, make_phase

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
METER_TOPIC = "city/hcm/meters/gw-1/readings"
SIGNAL_TOPIC = "city/hcm/signals/int-1/phase"


def test_subscribes_to_every_route_pattern() -> None:
    assert subscriptions() == [r.pattern for r in MQTT_ROUTES]
    assert "city/+/meters/+/readings" in subscriptions()


def test_batch_is_one_record_keyed_by_gateway() -> None:
    batch = make_batch("gw-1", n=4)
    result = plan(METER_TOPIC, batch.model_dump_json().encode(), now=NOW)
    assert result.error is None and not result.dead_lettered
    [(topic, key, value)] = result.records
    assert (topic, key) == ("meter.readings", b"gw-1")
    assert TOPICS["meter.readings"].codec.decode(value) == batch


def test_valid_payload_is_forwarded_as_sent() -> None:
    """No re-encoding on the hot path: the validated bytes go on, local offsets included."""
    raw = (
        b'{"gateway_id": "gw-1", "batch_seq": 7, "sent_at": "2026-03-02T08:00:00+07:00",'
        b' "readings": [{"meter_id": "m-1", "ts": "2026-03-02T07:45:00+07:00",'
        b' "import_kwh": 0.25}]}'
    )
    [(topic, key, value)] = plan(METER_TOPIC, raw, now=NOW).records
    assert (topic, key, value) == ("meter.readings", b"gw-1", raw)
    decoded = TOPICS["meter.readings"].codec.decode(value)
    assert decoded.readings[0].ts == datetime(2026, 3, 2, 0, 45, tzinfo=UTC)
    assert decoded.readings[0].ts.utcoffset() == timedelta(0)


def test_phase_change_is_one_record_keyed_by_intersection() -> None:
    result = plan(SIGNAL_TOPIC, make_phase("int-1").model_dump_json().encode(), now=NOW)
    assert result.records == [
        ("signal.phases", b"int-1", TOPICS["signal.phases"].codec.encode(make_phase("int-1")))
    ]


GOOD = make_batch("gw-1", n=2).model_dump_json().encode()
WRONG_TYPE = json.loads(GOOD)
WRONG_TYPE["readings"][0]["import_kwh"] = "lots"


@pytest.mark.parametrize(
    ("mqtt_topic", "payload", "reason_part"),
    [
        (METER_TOPIC, GOOD[: len(GOOD) // 2], "MeterBatch"),  # truncated JSON
        (METER_TOPIC, json.dumps(WRONG_TYPE).encode(), "readings.0.import_kwh"),
        ("city/hcm/meters/gw-2/readings", GOOD, "does not match 'gw-2'"),  # speaks for another
        (METER_TOPIC, b"", "empty payload"),
        (METER_TOPIC, b"\xff\xfe\x00garbage", "MeterBatch"),
        (SIGNAL_TOPIC, GOOD, "SignalPhaseChange"),  # right JSON, wrong route
    ],
)
def test_bad_payloads_become_one_dead_letter_on_the_route_dlq(
    mqtt_topic: str, payload: bytes, reason_part: str
) -> None:
    result = plan(mqtt_topic, payload, now=NOW)
    assert result.dead_lettered
    assert len(result.records) == 1
    topic, key, value = result.records[0]
    route_topic = "signal.phases" if "signals" in mqtt_topic else "meter.readings"
    assert topic == route_topic + ".dlq"
    assert key == mqtt_topic.encode()
    letter = DEAD_LETTER_CODEC.decode(value)
    assert isinstance(letter, m.DeadLetter)
    assert letter.source_topic == mqtt_topic
    assert letter.stage == STAGE
    assert letter.failed_at == NOW
    assert reason_part in letter.reason
    assert letter.error_type == "SchemaError"
    assert base64.b64decode(letter.payload_b64) == payload
    assert letter.payload_size == len(payload)


def test_huge_payload_is_truncated_in_the_dead_letter() -> None:
    payload = b"{" + b" " * 600_000
    letter = DEAD_LETTER_CODEC.decode(plan(METER_TOPIC, payload, now=NOW).records[0][2])
    assert letter.payload_size == len(payload)
    assert len(base64.b64decode(letter.payload_b64)) == DLQ_PAYLOAD_LIMIT


def test_unrouted_topic_plans_nothing() -> None:
    result = plan("city/hcm/weather/x/temp", GOOD, now=NOW)
    assert result.route is None and result.records == [] and not result.dead_lettered


def test_long_mqtt_topic_still_yields_a_valid_dead_letter() -> None:
    long_id = "g" * 300
    result = plan(f"city/hcm/meters/{long_id}/readings", GOOD, now=NOW)
    letter = DEAD_LETTER_CODEC.decode(result.records[0][2])
    assert len(letter.source_topic) == 249
