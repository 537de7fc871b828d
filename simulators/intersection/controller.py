"""The signal controller's MQTT side: phase changes out, plans in, the applied plan out.

Topics (``{city}``, ``{intersection_id}`` filled in)::

    city/{city}/signals/{intersection_id}/phase         SignalPhaseChange, QoS 1 (out)
    city/{city}/signals/{intersection_id}/plan          SignalPlan, QoS 1 (in; the city map)
    city/{city}/signals/{intersection_id}/plan-applied  SignalPlan now running, QoS 1, retained
    city/{city}/signals/{intersection_id}/outcome       Alert: measured delay before/after a plan

A plan is checked (:func:`check_plan`) as a field controller would before it is installed.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from citystream.errors import SchemaError
from citystream.metrics import Registry
from citystream.settings import MqttSettings
from schemas.codecs import JsonCodec
from schemas.messages import Alert, SignalPhaseChange, SignalPlan

log = logging.getLogger("citystream.sim.intersection")

PHASE_TOPIC = "city/{city}/signals/{intersection_id}/phase"
PLAN_TOPIC = "city/{city}/signals/{intersection_id}/plan"
APPLIED_TOPIC = "city/{city}/signals/{intersection_id}/plan-applied"
OUTCOME_TOPIC = "city/{city}/signals/{intersection_id}/outcome"
_ALERT_CODEC = JsonCodec(Alert)
_PLAN_CODEC = JsonCodec(SignalPlan)
_PHASE_CODEC = JsonCodec(SignalPhaseChange)


def check_plan(plan: SignalPlan, intersection_id: str, known_groups: set[str]) -> list[str]:
    """Raise :class:`SchemaError` when a controller must refuse ``plan``; return warnings."""
    if plan.intersection_id != intersection_id:
        raise SchemaError(
            f"plan {plan.plan_id} is for intersection {plan.intersection_id!r}, "
            f"this controller runs {intersection_id!r}"
        )
    unknown = sorted({g for p in plan.phases for g in p.signal_groups} - known_groups)
    if unknown:
        raise SchemaError(
            f"plan {plan.plan_id} names unknown signal groups {unknown}; "
            f"known: {sorted(known_groups)}"
        )
    total = sum(p.green_s + p.amber_s + p.all_red_s for p in plan.phases)
    if abs(total - plan.cycle_s) > 1.0:
        raise SchemaError(
            f"plan {plan.plan_id}: phases add up to {total:g} s but cycle_s is {plan.cycle_s:g} s"
        )
    never = sorted(known_groups - {g for p in plan.phases for g in p.signal_groups})
    return [f"signal groups never green under {plan.plan_id}: {never}"] if never else []


class SignalController:
    """MQTT as a field controller speaks it: phase changes out, plans in, applied plan out.

    paho's network thread reconnects on its own (1..30 s backoff); QoS 1 messages published
    while disconnected are queued (up to ``max_queued``) and sent after the reconnect.
    ``on_plan`` is called on paho's thread with every plan that passed ``check``.
    """

    def __init__(
        self,
        mqtt: MqttSettings,
        city: str,
        intersection_id: str,
        registry: Registry,
        on_plan: Callable[[SignalPlan], None],
        check: Callable[[SignalPlan], list[str]],
        on_invalid: Callable[[str, bytes, Exception], None] | None = None,
        max_queued: int = 100_000,
    ) -> None:
        self.mqtt = mqtt
        fmt = {"city": city, "intersection_id": intersection_id}
        self.phase_topic = PHASE_TOPIC.format(**fmt)
        self.plan_topic = PLAN_TOPIC.format(**fmt)
        self.applied_topic = APPLIED_TOPIC.format(**fmt)
        self.outcome_topic = OUTCOME_TOPIC.format(**fmt)
        self.on_plan = on_plan
        self.check = check
        self.on_invalid = on_invalid
        self.max_queued = max_queued
        r = registry
        self.phases_published = r.counter("phases_published_total", "Phase changes published")
        self.phases_acked = r.counter("phases_acked_total", "Phase changes the broker acked")
        self.phases_dropped = r.counter(
            "phases_dropped_total", "Phase changes not queued (MQTT queue full)"
        )
        self.plans_received = r.counter("plans_received_total", "Plan messages received")
        self.plans_invalid = r.counter(
            "plans_invalid_total", "Plan messages refused (undecodable or not for this junction)"
        )
        self.connected = r.gauge("mqtt_connected", "1 while connected to the MQTT broker")
        self.subscribed = r.gauge("mqtt_subscribed", "1 once subscribed to the plan topic")
        self._client: Any = None
        self._pending: set[int] = set()
        self._lock = threading.Lock()
        self._client_id = f"citystream-sim-{intersection_id}-{uuid.uuid4().hex[:6]}"

    def start(self) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self._client_id, protocol=mqtt.MQTTv311
        )
        if self.mqtt.username:
            client.username_pw_set(self.mqtt.username, self.mqtt.password)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_queued_messages_set(self.max_queued)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.connect_async(self.mqtt.host, self.mqtt.port, keepalive=30)
        client.loop_start()
        self._client = client
        log.info(
            "controller: phases -> %s, plans <- %s on %s:%d",
            self.phase_topic,
            self.plan_topic,
            self.mqtt.host,
            self.mqtt.port,
        )

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            log.warning("MQTT connect refused: %s", rc)
            return
        self.connected.set(1)
        client.subscribe(self.plan_topic, qos=1)
        log.info("MQTT connected; subscribing to %s", self.plan_topic)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        if all(not rc.is_failure for rc in rcs):
            self.subscribed.set(1)
        else:
            log.error("subscription to %s refused: %s", self.plan_topic, rcs)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connected.set(0)
        self.subscribed.set(0)
        log.warning("MQTT disconnected (%s); paho reconnects", rc)

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        with self._lock:
            if mid in self._pending:
                self._pending.discard(mid)
                self.phases_acked.inc()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.plans_received.inc()
        try:
            plan = _PLAN_CODEC.decode(msg.payload)
            for warning in self.check(plan):
                log.warning("%s", warning)
        except (SchemaError, ValueError) as exc:
            self.plans_invalid.inc()
            log.warning("refused a plan on %s (%d bytes): %s", msg.topic, len(msg.payload), exc)
            if self.on_invalid is not None:
                self.on_invalid(msg.topic, msg.payload, exc)
            return
        log.info("plan %s received (cycle %g s); installing", plan.plan_id, plan.cycle_s)
        self.on_plan(plan)

    def publish_phase(self, change: SignalPhaseChange) -> None:
        import paho.mqtt.client as mqtt

        info = self._client.publish(self.phase_topic, _PHASE_CODEC.encode(change), qos=1)
        if info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):  # NO_CONN: queued
            with self._lock:
                self._pending.add(info.mid)
            self.phases_published.inc()
        else:
            self.phases_dropped.inc()
            log.warning("phase change not queued: %s", mqtt.error_string(info.rc))

    def publish_applied(self, plan: SignalPlan) -> None:
        self._client.publish(self.applied_topic, _PLAN_CODEC.encode(plan), qos=1, retain=True)

    def publish_outcome(self, alert: Alert) -> None:
        self._client.publish(self.outcome_topic, _ALERT_CODEC.encode(alert), qos=1)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Wait (bounded) for the broker's acks of what was published, then disconnect."""
        client, self._client = self._client, None
        if client is None:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    break
            time.sleep(0.05)
        with self._lock:
            if self._pending:
                log.warning("%d phase changes not acknowledged by the broker", len(self._pending))
        client.disconnect()
        client.loop_stop()
