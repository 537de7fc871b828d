"""The MQTT -> Kafka bridge: composition root and the two thin broker adapters.

Flow of one message::

    Mosquitto --PUBLISH(QoS 1)--> on_message (paho network thread)
        plan(): decode, check, split  --or-->  one DeadLetter on <kafka_topic>.dlq
        producer.send() for every record (acks=all, idempotent)
    Kafka ack --> _on_sent (producer IO thread)
        when every record of the message is acknowledged, and every message received
        before it is too, PUBACK it to Mosquitto (client.ack(mid, 1))

Guarantees:

* **At least once.** A message is PUBACKed only after Kafka acknowledged (acks=all) all
  of its records.  If Kafka fails, records are re-sent after a back-off, and the message
  stays un-acked; if the bridge dies, Mosquitto keeps the persistent session (fixed
  client id, ``clean_start=False``, session expiry) and redelivers on reconnect.
  Duplicates are possible after a crash, a reconnect or a re-send; consumers collapse
  them on natural keys (the DB writes ``ON CONFLICT DO NOTHING``).
* **Order.** Messages are sent to the producer in the order Mosquitto delivers them
  (in publish order per publisher and topic); the idempotent producer keeps that order
  per partition, i.e. per key (``meter_id``, ``intersection_id``), including its own
  internal retries.  Only a re-send after a failed delivery, or a redelivery after a
  reconnect, can put an older copy after newer records.  PUBACKs go out in receive order.
* **Bounded memory.** At most ``receive_maximum`` messages are un-acked (MQTT 5 Receive
  Maximum), so a Kafka outage turns into back-pressure on Mosquitto, which queues for us.
* **Bad input never stops it.** Undecodable or invalid payloads become a
  :class:`~schemas.messages.DeadLetter` on ``<kafka_topic>.dlq`` and are then acked.
* **A stuck producer is replaced.** A watchdog in the housekeeping loop notices when
  records are outstanding but Kafka has acknowledged none of them for ``stall_timeout_s``
  (a producer wedged after a broker crash, or failing every send).  It builds a new
  producer on a helper thread (bootstrapping blocks while the broker is unreachable) and,
  if the old one still has not recovered by then, swaps it in and re-sends every record
  not yet acknowledged (``producer_resets_total``).  Late answers of the old producer are
  ignored; a record it did deliver is then written twice, a duplicate that the natural
  keys downstream collapse.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from citystream.metrics import MetricsServer, Registry, serve
from citystream.settings import Settings
from edge.bridge.acks import AckTracker, OutstandingSends, Pending, StallWatch
from edge.bridge.routing import plan, subscriptions
from schemas.topics import MQTT_ROUTES, KafkaRecord, MqttRoute

log = logging.getLogger("citystream.bridge")


@dataclass(frozen=True)
class BridgeConfig:
    """Tuning of one bridge process (the endpoints come from :class:`Settings`)."""

    receive_maximum: int = 1000
    """Un-acked MQTT messages the broker may have in flight to us (MQTT 5 Receive Maximum)."""
    linger_ms: int = 5
    """How long the producer waits to fill a batch."""
    batch_size: int = 512 * 1024
    """Producer batch size per partition, bytes."""
    retry_backoff_s: float = 1.0
    """Pause before re-sending a record whose delivery failed."""
    progress_interval_s: float = 10.0
    """Seconds between progress log lines (0: none)."""
    keepalive_s: int = 30
    shutdown_timeout_s: float = 30.0
    """How long a graceful stop waits for Kafka to acknowledge what is in flight."""
    stall_timeout_s: float = 30.0
    """Replace the producer when records are outstanding and none was acknowledged for this
    long (0: never)."""
    reconnect_backoff_max_ms: int = 1000
    """Upper bound of the producer's reconnect back-off (kafka-python's default is 30 s)."""

    def __post_init__(self) -> None:
        if not 1 <= self.receive_maximum <= 65535:
            raise ValueError("receive_maximum must be within 1..65535")
        if self.linger_ms < 0 or self.batch_size < 1 or self.retry_backoff_s < 0:
            raise ValueError("linger_ms, batch_size and retry_backoff_s must be positive")
        if self.reconnect_backoff_max_ms < 1:
            raise ValueError("reconnect_backoff_max_ms must be >= 1")
        if self.stall_timeout_s and (
            self.stall_timeout_s < 1.0 or self.stall_timeout_s * 1000 < 2 * self.linger_ms
        ):
            # a batch lingers before it is sent: a shorter timeout would replace producers
            # that are merely batching, over and over
            raise ValueError("stall_timeout_s must be 0 (off) or >= 1 s and >= 2 x linger_ms")


class BridgeMetrics:
    """The bridge's counters, in their own registry (``citystream_bridge_*``)."""

    def __init__(self, registry: Registry | None = None) -> None:
        r = self.registry = registry or Registry(prefix="citystream_bridge")
        self.received = r.counter("messages_received_total", "MQTT messages received")
        self.routed = r.counter("messages_routed_total", "MQTT messages decoded and routed")
        self.dead_lettered = r.counter(
            "messages_dead_lettered_total", "MQTT messages written to a DLQ (bad payload)"
        )
        self.unrouted = r.counter(
            "messages_unrouted_total", "MQTT messages on a topic no route matches (acked)"
        )
        self.acked = r.counter("messages_acked_total", "MQTT messages acknowledged to the broker")
        self.stale = r.counter(
            "messages_ack_skipped_total",
            "Finished messages of an older MQTT connection, not acked (the broker redelivers)",
        )
        self.produced = r.counter("records_produced_total", "Kafka records acknowledged by Kafka")
        self.kafka_errors = r.counter(
            "kafka_errors_total", "Failed Kafka sends (re-sent after back-off)", labels=("error",)
        )
        self.in_flight = r.gauge("messages_in_flight", "MQTT messages waiting for Kafka acks")
        self.outstanding = r.gauge(
            "records_outstanding", "Kafka records sent and not yet acknowledged or failed"
        )
        self.producer_resets = r.counter(
            "producer_resets_total",
            "Kafka producers replaced by the stall watchdog (records re-sent)",
        )
        self.retrying = r.gauge("records_retrying", "Kafka records waiting to be re-sent")
        self.connected = r.gauge("mqtt_connected", "1 while connected to the MQTT broker")
        self.connects = r.counter("mqtt_connects_total", "Successful MQTT (re)connections")
        self.subscribed = r.gauge(
            "mqtt_subscribed", "1 once the broker confirmed the route subscriptions"
        )
        self.latency = r.summary(
            "ack_latency_seconds",
            "From MQTT receipt to the last Kafka ack of the message",
            quantiles=(0.5, 0.9, 0.99, 0.999),
        )


class Bridge:
    """One MQTT -> Kafka bridge.  ``run()`` blocks until ``stop()``; both are thread-safe.

    Construction does no I/O; ``start()`` connects (retrying until the brokers are up).
    """

    def __init__(
        self,
        settings: Settings,
        config: BridgeConfig | None = None,
        *,
        routes: Sequence[MqttRoute] = MQTT_ROUTES,
        metrics: BridgeMetrics | None = None,
        metrics_port: int | None = None,
    ) -> None:
        self.settings = settings
        self.config = config or BridgeConfig()
        self.routes = tuple(routes)
        self.metrics = metrics or BridgeMetrics()
        self.metrics_port = settings.metrics_port if metrics_port is None else metrics_port
        self.metrics_server: MetricsServer | None = None
        self._tracker = AckTracker()
        self._ack_lock = threading.Lock()
        self._retries: deque[tuple[float, Pending, KafkaRecord]] = deque()
        self._stop = threading.Event()
        self._receiving = threading.Event()
        self._client: Any = None
        self._producer: Any = None
        self._bad_logged = 0.0
        # Records the producer owes an answer for; _send_lock pairs the producer with its
        # generation in _outstanding while the watchdog swaps it.
        self._send_lock = threading.Lock()
        self._outstanding = OutstandingSends()
        self._watch = StallWatch(self.config.stall_timeout_s, time.monotonic())
        self._builder: threading.Thread | None = None
        self._fresh: Any = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Connect to Kafka (retrying) and start the MQTT network thread."""
        if self.metrics_port:
            self.metrics_server = serve(self.metrics.registry, port=self.metrics_port)
            log.info("metrics on http://0.0.0.0:%d/metrics", self.metrics_server.port)
        self._producer = self._connect_kafka()
        if self._producer is None:
            return  # stopped while waiting
        self._client = self._make_mqtt_client()
        self._receiving.set()
        mqtt = self.settings.mqtt
        self._client.connect_async(
            mqtt.host,
            mqtt.port,
            keepalive=self.config.keepalive_s,
            clean_start=False,
            properties=self._connect_properties(),
        )
        self._client.loop_start()
        log.info(
            "bridge started: mqtt %s:%d (client id %r) -> kafka %s; routes: %s",
            mqtt.host,
            mqtt.port,
            mqtt.bridge_client_id,
            self.settings.kafka.bootstrap,
            ", ".join(f"{r.pattern} -> {r.kafka_topic}" for r in self.routes),
        )

    def run(self) -> None:
        """Start, then do housekeeping (re-sends, progress lines) until :meth:`stop`."""
        self.start()
        try:
            last_t, last_recv, last_prod = time.monotonic(), 0.0, 0.0
            while not self._stop.wait(0.1):
                self._resend_due()
                now = time.monotonic()
                self._watch_stall(now)
                interval = self.config.progress_interval_s
                if interval and now - last_t >= interval:
                    m = self.metrics
                    dt = now - last_t
                    log.info(
                        "bridge: %.0f msg/s %.0f rec/s | received=%d produced=%d dlq=%d "
                        "acked=%d kafka_errors=%d in_flight=%d retrying=%d",
                        (m.received.value - last_recv) / dt,
                        (m.produced.value - last_prod) / dt,
                        m.received.value,
                        m.produced.value,
                        m.dead_lettered.value,
                        m.acked.value,
                        m.kafka_errors.total,
                        len(self._tracker),
                        len(self._retries),
                    )
                    last_t, last_recv, last_prod = now, m.received.value, m.produced.value
        finally:
            self.close()

    def stop(self) -> None:
        """Ask :meth:`run` to return (safe from signal handlers and other threads)."""
        self._stop.set()

    def close(self) -> None:
        """Graceful stop: take no new messages, let Kafka ack what is in flight, PUBACK it,
        disconnect.  Messages not acked by then are redelivered to the next run."""
        self._stop.set()
        self._receiving.clear()
        deadline = time.monotonic() + self.config.shutdown_timeout_s
        if self._producer is not None:
            while self._tracker.unfinished and time.monotonic() < deadline:
                self._resend_due(force=True)
                try:
                    self._producer.flush(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
                except Exception as exc:  # KafkaTimeoutError: keep waiting until the deadline
                    log.debug("flush: %s", exc)
            left = self._tracker.unfinished
            if left:
                log.warning(
                    "%d messages not acknowledged by Kafka; Mosquitto redelivers them", left
                )
        if self._client is not None:
            with self._ack_lock:
                self._client.disconnect()
            self._client.loop_stop()
        if self._producer is not None:
            self._producer.close(timeout=5)
        if self._fresh is not None:  # built by the watchdog, never used
            self._close_producer(self._fresh)
        if self.metrics_server is not None:
            self.metrics_server.close()
        m = self.metrics
        log.info(
            "bridge stopped: received=%d produced=%d dlq=%d acked=%d",
            m.received.value,
            m.produced.value,
            m.dead_lettered.value,
            m.acked.value,
        )

    # --- adapters --------------------------------------------------------------------------

    def _new_producer(self) -> Any:
        from kafka import KafkaProducer

        return KafkaProducer(
            bootstrap_servers=self.settings.kafka.bootstrap.split(","),
            client_id=f"{self.settings.mqtt.bridge_client_id}-producer",
            acks="all",
            enable_idempotence=True,
            max_in_flight_requests_per_connection=5,
            linger_ms=self.config.linger_ms,
            batch_size=self.config.batch_size,
            max_block_ms=10_000,
            reconnect_backoff_max_ms=self.config.reconnect_backoff_max_ms,
            metrics_enabled=False,
        )

    def _connect_kafka(self) -> Any:
        from kafka.errors import KafkaError

        delay = 0.5
        while not self._stop.is_set():
            try:
                return self._new_producer()
            except KafkaError as exc:
                log.warning(
                    "Kafka %s not reachable (%s); retrying", self.settings.kafka.bootstrap, exc
                )
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
        return None

    def _connect_properties(self) -> Any:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.settings.mqtt.session_expiry_s
        props.ReceiveMaximum = self.config.receive_maximum
        return props

    def _make_mqtt_client(self) -> Any:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        settings = self.settings.mqtt
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.bridge_client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if settings.username:
            client.username_pw_set(settings.username, settings.password)
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.enable_logger(logging.getLogger("citystream.bridge.mqtt"))
        return client

    # --- MQTT side (paho network thread) ---------------------------------------------------

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            log.warning("MQTT connect refused: %s", reason_code)
            return
        from paho.mqtt.subscribeoptions import SubscribeOptions

        generation = self._tracker.new_generation()
        self.metrics.connects.inc()
        self.metrics.connected.set(1)
        # retainHandling=1: retained messages only for a new subscription, not on every resume
        opts = SubscribeOptions(qos=1, retainHandling=1)
        client.subscribe([(p, opts) for p in subscriptions(self.routes)])
        log.info(
            "MQTT connected (session present: %s, connection %d); subscribed to %s",
            getattr(flags, "session_present", "?"),
            generation,
            ", ".join(subscriptions(self.routes)),
        )

    def _on_subscribe(
        self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any
    ) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            log.error("MQTT subscription refused: %s", ", ".join(failed))
            return
        self.metrics.subscribed.set(1)

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        self._tracker.new_generation()
        self.metrics.connected.set(0)
        self.metrics.subscribed.set(0)
        if not self._stop.is_set():
            log.warning("MQTT disconnected (%s); reconnecting", reason_code)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        if not self._receiving.is_set():
            return  # shutting down: not acked, Mosquitto redelivers it to the next run
        m = self.metrics
        m.received.inc()
        try:
            mqtt_topic = msg.topic
        except UnicodeDecodeError:
            mqtt_topic = "<invalid utf-8>"
        result = plan(mqtt_topic, msg.payload, routes=self.routes)
        if result.route is None:
            m.unrouted.inc()
            log.warning("no route for MQTT topic %r; acked and dropped", mqtt_topic)
        elif result.error is not None:
            m.dead_lettered.inc()
            self._log_bad(mqtt_topic, result.error)
        else:
            m.routed.inc()
        pending = self._tracker.add(
            msg.mid, msg.qos, len(result.records), msg.timestamp, result.error is not None
        )
        m.in_flight.set(len(self._tracker))
        if not result.records:
            self._record_done(pending, 0)
        for record in result.records:
            self._send(pending, record)

    def _log_bad(self, mqtt_topic: str, error: BaseException) -> None:
        now = time.monotonic()
        if now - self._bad_logged >= 1.0:  # at most one line a second
            self._bad_logged = now
            log.warning("dead-lettered a message on %r: %s", mqtt_topic, error)

    # --- Kafka side ------------------------------------------------------------------------

    def _send(self, pending: Pending, record: KafkaRecord) -> None:
        topic, key, value = record
        with self._send_lock:
            sid, gen = self._outstanding.add(pending, record)
            producer = self._producer
        self.metrics.outstanding.set(len(self._outstanding))
        try:
            future = producer.send(topic, key=key, value=value)
        except Exception as exc:  # buffer full / no metadata within max_block_ms
            self._on_failed(sid, gen, exc)
            return
        future.add_callback(self._on_sent, sid, gen)
        future.add_errback(self._on_failed, sid, gen)

    def _on_sent(self, sid: int, gen: int, metadata: Any) -> None:
        item = self._outstanding.take(sid, gen)
        if item is None:
            return  # answer of a replaced producer: the record was re-sent
        self._watch.progress(time.monotonic())
        self.metrics.outstanding.set(len(self._outstanding))
        self.metrics.produced.inc()
        self._record_done(item[0], 1)

    def _on_failed(self, sid: int, gen: int, exc: BaseException) -> None:
        item = self._outstanding.take(sid, gen)
        if item is None:
            return
        self.metrics.outstanding.set(len(self._outstanding))
        pending, record = item
        self.metrics.kafka_errors.labels(type(exc).__name__).inc()
        log.warning("Kafka send to %s failed (%s); re-sending", record[0], exc)
        self._retries.append((time.monotonic() + self.config.retry_backoff_s, pending, record))
        self.metrics.retrying.set(len(self._retries))

    def _watch_stall(self, now: float) -> None:
        """Replace the producer when records are outstanding and none was acknowledged for
        ``stall_timeout_s`` (see the module docstring).  Runs on the housekeeping thread."""
        if self._builder is not None:
            if self._builder.is_alive():
                return
            self._builder, fresh, self._fresh = None, self._fresh, None
            if fresh is not None:
                self._swap(fresh, now)
            return
        busy = bool(len(self._outstanding) or self._retries)
        if self._producer is None or not self._watch.stalled(now, busy):
            return
        self._builder = threading.Thread(
            target=self._build_producer, name="producer-builder", daemon=True
        )
        self._builder.start()

    def _build_producer(self) -> None:
        from kafka.errors import KafkaError

        try:
            self._fresh = self._new_producer()
        except KafkaError as exc:
            self._watch.progress(time.monotonic())  # try again after another timeout
            log.warning("the Kafka producer stalled; a new one cannot connect yet (%s)", exc)

    def _swap(self, fresh: Any, now: float) -> None:
        """Put ``fresh`` in place of the stalled producer, unless the old one recovered
        while ``fresh`` was being built; re-send what the old one still owes."""
        if not self._watch.stalled(now, bool(len(self._outstanding) or self._retries)):
            self._close_producer(fresh)  # the old one answered meanwhile: keep it
            return
        with self._send_lock:
            old, self._producer = self._producer, fresh
            stranded = self._outstanding.replace()
        stalled_for = now - self._watch.last_progress
        self._watch.progress(now)
        self.metrics.producer_resets.inc()
        log.error(
            "no Kafka acknowledgement for %.1f s: producer replaced; re-sending %d "
            "outstanding records (%d more wait to be re-sent)",
            stalled_for,
            len(stranded),
            len(self._retries),
        )
        # A wedged producer may not close promptly: let it go on its own thread.
        threading.Thread(
            target=self._close_producer, args=(old,), name="close-stalled", daemon=True
        ).start()
        for pending, record in stranded:
            self._send(pending, record)
        self._resend_due(force=True)

    @staticmethod
    def _close_producer(producer: Any) -> None:
        try:
            producer.close(timeout=0)
        except Exception as exc:  # it is being discarded; nothing more to do with it
            log.debug("closing a discarded producer: %s", exc)

    def _record_done(self, pending: Pending, records: int) -> None:
        with self._ack_lock:  # one releaser at a time keeps PUBACKs in receive order
            released = self._tracker.done(pending, records)
            now = time.monotonic()
            for p in released:
                self.metrics.latency.observe(now - p.received_at)
                if p.qos == 0:
                    continue
                if self._tracker.is_current(p):
                    self._client.ack(p.mid, p.qos)
                    self.metrics.acked.inc()
                else:
                    self.metrics.stale.inc()
        if released:
            self.metrics.in_flight.set(len(self._tracker))

    def _resend_due(self, force: bool = False) -> None:
        now = time.monotonic()
        for _ in range(len(self._retries)):
            due, pending, record = self._retries[0]
            if due > now and not force:
                break
            self._retries.popleft()
            self._send(pending, record)
        self.metrics.retrying.set(len(self._retries))


def create_bridge(
    settings: Settings,
    config: BridgeConfig | None = None,
    *,
    metrics_port: int | None = None,
) -> Bridge:
    """The composition root: a bridge wired to the configured brokers (no I/O yet)."""
    return Bridge(settings, config, metrics_port=metrics_port)
