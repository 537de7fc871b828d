"""The topic registry: every Kafka topic and MQTT route of CityStream, in one place.

The stack creates topics from :data:`TOPICS`; producers and consumers look up the
codec and partition key here; the MQTT bridge routes by :data:`MQTT_ROUTES`.
Every topic has a dead-letter topic ``<name>.dlq`` holding
:class:`~schemas.messages.DeadLetter` records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from citystream.errors import SchemaError
from schemas import messages as m
from schemas.codecs import FrameCodec, JsonCodec

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True)
class Topic:
    """A Kafka topic: its name, partition key, size, retention and wire schema."""

    name: str
    key: str
    partitions: int
    retention_ms: int
    schema: str
    codec: Any = field(compare=False, repr=False)
    description: str = ""
    #: Internal to one app (a repartition): its key is looked up, not a message field,
    #: and the DB sink does not store it.
    internal: bool = False

    @property
    def dlq(self) -> str:
        return self.name + DLQ_SUFFIX

    def key_of(self, message: Any) -> bytes:
        """The partition key of ``message`` (the value of its key field), as bytes."""
        if isinstance(message, m.Message):
            return str(getattr(message, self.key)).encode()
        header = getattr(message, "header", None)  # Frame
        return str(getattr(header, self.key)).encode()


def _json(name: str, key: str, partitions: int, retention_ms: int, schema: str, desc: str) -> Topic:
    return Topic(
        name, key, partitions, retention_ms, schema, JsonCodec(m.MESSAGE_TYPES[schema]), desc
    )


TOPICS: dict[str, Topic] = {
    t.name: t
    for t in (
        Topic(
            "camera.frames",
            "camera_id",
            6,
            2 * HOUR_MS,
            "frame",
            FrameCodec(),
            "JPEG frames from edge camera agents",
        ),
        _json(
            "traffic.tracks",
            "camera_id",
            6,
            DAY_MS,
            "track_batch",
            "Tracked objects per frame from the vision workers",
        ),
        _json(
            "traffic.violations",
            "intersection_id",
            3,
            30 * DAY_MS,
            "violation",
            "Detected violations with evidence pointers",
        ),
        _json(
            "traffic.counts",
            "intersection_id",
            3,
            7 * DAY_MS,
            "lane_count",
            "Per-lane counts, occupancy and queues per window",
        ),
        _json(
            "traffic.alerts",
            "subject_id",
            1,
            30 * DAY_MS,
            "alert",
            "Camera health and traffic alerts",
        ),
        _json(
            "signal.phases",
            "intersection_id",
            3,
            7 * DAY_MS,
            "signal_phase_change",
            "Signal colour changes reported by controllers",
        ),
        _json(
            "signal.plans",
            "intersection_id",
            3,
            90 * DAY_MS,
            "signal_plan",
            "Signal plans in force (approved by operators)",
        ),
        _json(
            "signal.recommendations",
            "intersection_id",
            3,
            30 * DAY_MS,
            "signal_recommendation",
            "Signal timing advice from measured flows",
        ),
        Topic(
            "sim.handoffs",
            "to_intersection",
            1,
            DAY_MS,
            "vehicle_handoff",
            JsonCodec(m.VehicleHandoff),
            "Simulated vehicles driving from one junction of a corridor to the next "
            "(between simulator processes)",
            internal=True,
        ),
        _json(
            "meter.readings",
            "gateway_id",
            6,
            7 * DAY_MS,
            "meter_batch",
            "Smart-meter readings as gateway batches, one record per MQTT message; "
            "the energy app repartitions by district",
        ),
        Topic(
            "energy.district-readings",
            "district_id",
            6,
            DAY_MS,
            "meter_batch",
            JsonCodec(m.MeterBatch),
            "meter.readings repartitioned by district (internal to the energy app)",
            internal=True,
        ),
        Topic(
            "energy.late-readings",
            "district_id",
            3,
            30 * DAY_MS,
            "meter_batch",
            JsonCodec(m.MeterBatch),
            "Readings that arrived after their window closed (beyond the allowed lateness): "
            "stored raw by the sink from meter.readings, left out of energy.load totals",
            internal=True,
        ),
        _json(
            "energy.load",
            "scope_id",
            3,
            30 * DAY_MS,
            "feeder_load",
            "Feeder and district load per 15-minute window",
        ),
        _json(
            "energy.forecasts",
            "scope_id",
            3,
            30 * DAY_MS,
            "forecast",
            "Load forecasts with P10/P50/P90 and their issue time",
        ),
        _json(
            "energy.alerts",
            "subject_id",
            3,
            30 * DAY_MS,
            "alert",
            "Meter anomalies and peak warnings",
        ),
    )
}

DEAD_LETTER_CODEC = JsonCodec(m.DeadLetter)


def topic(name: str) -> Topic:
    """The registered topic ``name``; a clear error for an unknown one."""
    try:
        return TOPICS[name]
    except KeyError:
        known = ", ".join(sorted(TOPICS))
        raise KeyError(f"unknown topic {name!r}; registered topics: {known}") from None


def all_topic_specs() -> list[tuple[str, int, int]]:
    """(name, partitions, retention_ms) of every topic and every DLQ, for topic creation."""
    specs = []
    for t in TOPICS.values():
        specs.append((t.name, t.partitions, t.retention_ms))
        specs.append((t.dlq, 1, 30 * DAY_MS))
    return specs


# --- MQTT routes ---------------------------------------------------------------------------

#: A routed Kafka record: (topic, key, value).
KafkaRecord = tuple[str, bytes, bytes]


@dataclass(frozen=True)
class MqttRoute:
    """How messages on an MQTT topic filter become a Kafka record.

    The payload must be a valid message of the Kafka topic's schema; ``id_level`` is the
    index of the MQTT topic level that must equal the payload's ``id_field`` (a device
    cannot speak for another).  The record carries the payload's bytes as they came:
    validated, not re-encoded (consumers decode with the same codec, which normalises times
    to UTC).
    """

    pattern: str
    kafka_topic: str
    id_level: int
    id_field: str

    def matches(self, mqtt_topic: str) -> bool:
        want, got = self.pattern.split("/"), mqtt_topic.split("/")
        return len(want) == len(got) and all(w in ("+", g) for w, g in zip(want, got, strict=True))

    def route(self, mqtt_topic: str, payload: bytes) -> KafkaRecord:
        """Decode and check ``payload``; raises :class:`SchemaError` when bad."""
        target = TOPICS[self.kafka_topic]
        message = target.codec.decode(payload)
        topic_id = mqtt_topic.split("/")[self.id_level]
        payload_id = getattr(message, self.id_field)
        if payload_id != topic_id:
            raise SchemaError(
                f"{self.id_field} {payload_id!r} in the payload does not match {topic_id!r} "
                f"in the MQTT topic {mqtt_topic!r}"
            )
        # The payload passed validation: forward its bytes rather than re-encoding them (the
        # bridge carries every reading of the city; consumers validate again on decode).
        return (target.name, target.key_of(message), payload)


MQTT_ROUTES: tuple[MqttRoute, ...] = (
    MqttRoute("city/+/meters/+/readings", "meter.readings", id_level=3, id_field="gateway_id"),
    MqttRoute("city/+/signals/+/phase", "signal.phases", id_level=3, id_field="intersection_id"),
    # the plan a controller runs now (after an approved plan was installed, and at start)
    MqttRoute(
        "city/+/signals/+/plan-applied", "signal.plans", id_level=3, id_field="intersection_id"
    ),
    # the delay a controller measured before and after a plan was installed (an Alert)
    MqttRoute("city/+/signals/+/outcome", "traffic.alerts", id_level=3, id_field="subject_id"),
)


def mqtt_route_for(mqtt_topic: str) -> MqttRoute | None:
    return next((r for r in MQTT_ROUTES if r.matches(mqtt_topic)), None)
