"""The bridge's pure routing never raises: every MQTT message becomes records or one DLQ record."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.bridge.routing import plan
from schemas.topics import DEAD_LETTER_CODEC, TOPICS
from tests.fuzz.samples import SAMPLES

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = datetime(2026, 2, 1, tzinfo=UTC)
levels = st.one_of(
    st.sampled_from(["city", "hcm", "meters", "signals", "readings", "phase", "+", "#", ""]),
    st.text(max_size=12),
)
topics = st.one_of(
    st.lists(levels, min_size=1, max_size=7).map("/".join),
    st.builds(
        lambda c, g: f"city/{c}/meters/{g}/readings", st.text(max_size=10), st.text(max_size=70)
    ),
    st.builds(
        lambda c, i: f"city/{c}/signals/{i}/phase", st.text(max_size=10), st.text(max_size=70)
    ),
)
batch = json.dumps(SAMPLES["meter_batch"]).encode()
payloads = st.one_of(
    st.binary(max_size=300),
    st.just(batch),
    st.integers(min_value=0, max_value=len(batch)).map(lambda n: batch[:n]),
    st.just(json.dumps(SAMPLES["signal_phase_change"]).encode()),
)


def check(topic: str, payload: bytes) -> None:
    p = plan(topic, payload, now=NOW)
    if p.route is None:
        assert p.records == [] and p.error is None
        return
    assert len(p.records) == 1
    out_topic, key, value = p.records[0]
    target = TOPICS[p.route.kafka_topic]
    if p.dead_lettered:
        assert out_topic == target.dlq
        letter = DEAD_LETTER_CODEC.decode(value)
        assert letter.reason and letter.stage == "bridge"
        assert (
            base64.b64decode(letter.payload_b64)
            == payload[: len(base64.b64decode(letter.payload_b64))]
        )
        assert letter.payload_size == len(payload)
    else:
        assert out_topic == target.name
        message = target.codec.decode(value)
        assert key == target.key_of(message)
        assert topic.split("/")[p.route.id_level] == getattr(message, p.route.id_field)


@FAST
@given(topic=topics, payload=payloads)
def test_plan_never_raises(topic: str, payload: bytes) -> None:
    check(topic, payload)


@FAST
@given(gateway=st.text(max_size=70).filter(lambda g: "/" not in g))
def test_gateway_must_match_topic(gateway: str) -> None:
    p = plan(f"city/hcm/meters/{gateway}/readings", batch, now=NOW)
    if gateway == "gw000001":
        assert not p.dead_lettered
    else:
        assert p.dead_lettered and p.records[0][0] == "meter.readings.dlq"


def test_huge_payload_is_dead_lettered_with_truncated_copy() -> None:
    huge = b'{"x":"' + b"a" * (5 * 1024 * 1024) + b'"}'
    p = plan("city/hcm/meters/gw000001/readings", huge, now=NOW)
    assert p.dead_lettered and "exceeds" in str(p.error)
    letter = DEAD_LETTER_CODEC.decode(p.records[0][2])
    assert letter.payload_size == len(huge) and len(p.records[0][2]) < 1024 * 1024
