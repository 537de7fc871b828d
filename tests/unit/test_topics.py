from __future__ import annotations

import json
from pathlib import Path

import pytest

from citystream.errors import SchemaError
from schemas import messages as m
from schemas.export import export_json_schemas
from schemas.topics import MQTT_ROUTES, TOPICS, all_topic_specs, mqtt_route_for, topic
from tests.unit.factories import make_batch, make_phase


def test_every_topic_has_a_dlq_and_a_key_field_of_its_schema() -> None:
    names = {name for name, _, _ in all_topic_specs()}
    for t in TOPICS.values():
        assert t.dlq in names
        if t.schema != "frame" and not t.internal:
            assert t.key in m.MESSAGE_TYPES[t.schema].model_fields, t.name
    assert len(names) == 2 * len(TOPICS)


def test_unknown_topic_error_lists_known_ones() -> None:
    with pytest.raises(KeyError, match=r"meter\.readings"):
        topic("meter.reading")


@pytest.mark.parametrize(
    ("mqtt_topic", "kafka_topic"),
    [
        ("city/hcm/meters/gw-1/readings", "meter.readings"),
        ("city/hcm/signals/int-1/phase", "signal.phases"),
        ("city/hcm/meters/gw-1/readings/extra", None),
        ("city/hcm/meters/readings", None),
        ("other/hcm/signals/int-1/phase", None),
    ],
)
def test_mqtt_route_matching(mqtt_topic: str, kafka_topic: str | None) -> None:
    route = mqtt_route_for(mqtt_topic)
    assert (route.kafka_topic if route else None) == kafka_topic


def test_meter_batch_is_forwarded_whole_keyed_by_gateway() -> None:
    batch = make_batch("gw-1", n=4)
    route = mqtt_route_for("city/hcm/meters/gw-1/readings")
    assert route is not None
    topic_name, key, value = route.route(
        "city/hcm/meters/gw-1/readings", batch.model_dump_json().encode()
    )
    assert (topic_name, key) == ("meter.readings", b"gw-1")
    assert TOPICS["meter.readings"].codec.decode(value) == batch


def test_route_refuses_payload_for_another_device() -> None:
    route = mqtt_route_for("city/hcm/signals/int-2/phase")
    assert route is not None
    with pytest.raises(SchemaError, match="does not match"):
        route.route("city/hcm/signals/int-2/phase", make_phase("int-1").model_dump_json().encode())


def test_routes_target_registered_topics() -> None:
    assert all(r.kafka_topic in TOPICS for r in MQTT_ROUTES)


def test_json_schema_export(tmp_path: Path) -> None:
    paths = export_json_schemas(tmp_path)
    assert {p.name for p in paths} == {f"{n}.schema.json" for n in m.MESSAGE_TYPES}
    reading = json.loads((tmp_path / "meter_reading.schema.json").read_text())
    assert reading["properties"]["import_kwh"]["minimum"] == 0
    assert "meter_id" in reading["required"]


def test_kafka_python_checks_crcs_with_the_c_implementation() -> None:
    """kafka-python silently falls back to a pure-Python CRC-32C (~10 ms per 64 KB batch,
    most of a worker's CPU at pipeline rates) when the ``crc32c`` package is missing."""
    import crc32c
    from kafka.record import util

    assert util.calc_crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert util.calc_crc32c.__defaults__ == (crc32c.crc32c,)
