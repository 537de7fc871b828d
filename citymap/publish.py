"""Signal plans to the intersection controller over MQTT (QoS 1, acknowledged)."""

from __future__ import annotations

import uuid

from citystream.errors import SinkError
from citystream.settings import MqttSettings
from schemas.messages import SignalPlan

PLAN_TOPIC = "city/{city}/signals/{intersection_id}/plan"


def plan_topic(city: str, intersection_id: str) -> str:
    return PLAN_TOPIC.format(city=city, intersection_id=intersection_id)


class PlanPublisher:
    """Publishes one plan per call on a short-lived connection and waits for the PUBACK."""

    def __init__(self, mqtt: MqttSettings, city: str, timeout_s: float = 5.0) -> None:
        self.mqtt = mqtt
        self.city = city
        self.timeout_s = timeout_s

    def publish(self, plan: SignalPlan) -> str:
        """Blocking; returns the topic. Raises :class:`SinkError` when not acknowledged."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        topic = plan_topic(self.city, plan.intersection_id)
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"citymap-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv311,
        )
        if self.mqtt.username:
            client.username_pw_set(self.mqtt.username, self.mqtt.password)
        try:
            client.connect(self.mqtt.host, self.mqtt.port, keepalive=30)
            client.loop_start()
            info = client.publish(topic, plan.model_dump_json().encode(), qos=1)
            info.wait_for_publish(timeout=self.timeout_s)
            if not info.is_published():
                raise SinkError(f"MQTT broker did not acknowledge the plan on {topic}")
        except (OSError, ValueError, RuntimeError) as exc:
            if isinstance(exc, SinkError):
                raise
            raise SinkError(
                f"cannot publish to MQTT {self.mqtt.host}:{self.mqtt.port}: {exc}"
            ) from exc
        finally:
            client.loop_stop()
            client.disconnect()
        return topic
