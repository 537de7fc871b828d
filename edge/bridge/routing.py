"""The pure part of the bridge: one MQTT message in, the Kafka records to write out.

No broker is touched here.  :func:`plan` never raises: a payload that does not decode,
fails validation or speaks for another device becomes one
:class:`~schemas.messages.DeadLetter` record on the route's ``<kafka_topic>.dlq``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from schemas.codecs import dead_letter
from schemas.topics import DEAD_LETTER_CODEC, MQTT_ROUTES, TOPICS, KafkaRecord, MqttRoute

STAGE = "bridge"
_MAX_SOURCE_TOPIC = 249


def subscriptions(routes: Sequence[MqttRoute] = MQTT_ROUTES) -> list[str]:
    """The MQTT topic filters the bridge subscribes to (one per route)."""
    return [r.pattern for r in routes]


def route_for(mqtt_topic: str, routes: Sequence[MqttRoute] = MQTT_ROUTES) -> MqttRoute | None:
    return next((r for r in routes if r.matches(mqtt_topic)), None)


@dataclass(frozen=True)
class Plan:
    """What to write to Kafka for one MQTT message.

    ``records`` is never empty when ``route`` is set; ``error`` is the reason the payload
    was dead-lettered (then ``records`` holds exactly the DLQ record).  ``route is None``
    means no route matched: nothing to write (the bridge only subscribes to route patterns,
    so this only happens on misconfiguration).
    """

    route: MqttRoute | None
    records: list[KafkaRecord]
    error: BaseException | None = None

    @property
    def dead_lettered(self) -> bool:
        return self.error is not None


def dead_letter_record(
    route: MqttRoute, mqtt_topic: str, payload: bytes, error: BaseException, now: datetime | None
) -> KafkaRecord:
    """The DLQ record for a bad ``payload`` on ``mqtt_topic``; keyed by the MQTT topic."""
    letter = dead_letter(
        source_topic=mqtt_topic[:_MAX_SOURCE_TOPIC] or "?",
        payload=payload,
        error=error,
        stage=STAGE,
        now=now,
    )
    dlq = TOPICS[route.kafka_topic].dlq
    return (dlq, mqtt_topic.encode("utf-8", "replace"), DEAD_LETTER_CODEC.encode(letter))


def plan(
    mqtt_topic: str,
    payload: bytes,
    *,
    routes: Sequence[MqttRoute] = MQTT_ROUTES,
    now: datetime | None = None,
) -> Plan:
    """Route one MQTT message; bad payloads become a dead letter, never an exception."""
    route = route_for(mqtt_topic, routes)
    if route is None:
        return Plan(None, [])
    try:
        return Plan(route, [route.route(mqtt_topic, payload)])
    except Exception as exc:  # SchemaError expected; anything else is also the payload's fault
        return Plan(route, [dead_letter_record(route, mqtt_topic, payload, exc, now)], exc)
