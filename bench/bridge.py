"""Benchmark of the MQTT -> Kafka bridge on loopback, against the real Mosquitto and Kafka.

Publishes gateway batches (``MeterBatch``) with paho at QoS 1, runs the bridge as a
subprocess (``python -m edge.bridge``), and consumes ``meter.readings`` to measure:

* **burst**: everything published as fast as possible; messages/s and readings/s from the
  first publish to the last reading seen in Kafka;
* **paced**: published at ``--rate`` messages/s (default: half the burst throughput), so
  latency is not queueing: p50/p99 from MQTT publish to the message's last reading being
  readable in Kafka (wall clock, same machine), and the bridge's own receipt -> Kafka ack
  latency from its ``/metrics``;
* **baseline**: the same readings produced straight to Kafka with the same producer
  settings (no MQTT, no validation): the ceiling the bridge is compared with.

Needs a running stack (``citystream up``) or endpoints in ``CITYSTREAM_*`` variables.
Writes ``bench/results/bridge.json``.

examples:
  python bench/bridge.py                                  # 20,000 x 50 readings
  python bench/bridge.py --messages 2000 --readings 10    # quick check
  python bench/bridge.py --rate 500 --linger-ms 10
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from citystream.metrics import quantile
from citystream.settings import Settings, load_settings
from citystream.stack.private import free_port
from citystream.table import format_table
from schemas import messages as m

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 1, 1, tzinfo=UTC)
TOPIC = "meter.readings"


@dataclass
class Workload:
    """Pre-encoded batches; reading timestamps encode the message index."""

    tag: str
    gateways: int
    readings: int
    payloads: list[tuple[str, bytes]] = field(default_factory=list)
    ts_index: dict[bytes, int] = field(default_factory=dict)

    @classmethod
    def build(cls, tag: str, messages: int, gateways: int, readings: int) -> Workload:
        w = cls(tag, gateways, readings)
        for i in range(messages):
            g = i % gateways
            gw = f"gw-{tag}-{g}"
            ts = T0 + timedelta(minutes=15 * i)
            batch = m.MeterBatch(
                gateway_id=gw,
                batch_seq=i // gateways,
                sent_at=T0,
                readings=[
                    m.MeterReading(meter_id=f"m-{tag}-{g}-{j}", ts=ts, import_kwh=0.1 * j)
                    for j in range(readings)
                ],
            )
            w.payloads.append(
                (f"city/bench/meters/{gw}/readings", batch.model_dump_json().encode())
            )
            # pydantic renders UTC as ...Z; the index comes back from the raw bytes
            w.ts_index[ts.isoformat().replace("+00:00", "Z").encode()] = i
        return w


class Consumer(threading.Thread):
    """Reads ``meter.readings`` from the current end; notes when each message completes."""

    def __init__(self, settings: Settings, workload: Workload, messages: int) -> None:
        super().__init__(daemon=True)
        from kafka import KafkaConsumer, TopicPartition

        self.w = workload
        self.seen = [0] * messages
        self.done_at = [0.0] * messages
        self.records = 0
        self.complete = 0
        self.finished = threading.Event()
        self.stop = threading.Event()
        self.consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=10,
            max_poll_records=5000,
        )
        parts = [TopicPartition(TOPIC, p) for p in self.consumer.partitions_for_topic(TOPIC)]
        self.consumer.assign(parts)
        self.consumer.seek_to_end(*parts)
        for p in parts:
            self.consumer.position(p)  # resolve the end offsets now, before publishing
        self.prefix = f"gw-{workload.tag}-".encode()

    def run(self) -> None:
        need = 1  # one Kafka record carries a whole gateway batch
        while not self.stop.is_set() and self.complete < len(self.seen):
            polled = self.consumer.poll(timeout_ms=100)
            now = time.time()
            for batch in polled.values():
                for rec in batch:
                    value: bytes = rec.value
                    if rec.key is None or not rec.key.startswith(self.prefix):
                        continue
                    start = value.index(b'"ts":"') + 6
                    i = self.w.ts_index[value[start : value.index(b'"', start)]]
                    self.records += 1
                    self.seen[i] += 1
                    if self.seen[i] == need:
                        self.done_at[i] = now
                        self.complete += 1
        self.finished.set()
        self.consumer.close()


class BridgeProcess:
    def __init__(self, settings: Settings, args: argparse.Namespace, log_path: Path) -> None:
        self.metrics_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CITYSTREAM_")}
        env.update(
            CITYSTREAM_KAFKA__BOOTSTRAP_SERVERS=settings.kafka.bootstrap,
            CITYSTREAM_MQTT__HOST=settings.mqtt.host,
            CITYSTREAM_MQTT__PORT=str(settings.mqtt.port),
            CITYSTREAM_MQTT__SESSION_EXPIRY_S="60",
        )
        if settings.mqtt.username:
            env["CITYSTREAM_MQTT__USERNAME"] = settings.mqtt.username
            env["CITYSTREAM_MQTT__PASSWORD"] = settings.mqtt.password or ""
        self.log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge.bridge", "--client-id", f"bench-{uuid.uuid4().hex[:8]}",
             "--metrics-port", str(self.metrics_port), "--linger-ms", str(args.linger_ms),
             "--receive-maximum", str(args.receive_maximum), "--progress-interval", "5"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while self.metrics().get("citystream_bridge_mqtt_subscribed") != 1:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"bridge did not start; see {log_path}")
            time.sleep(0.2)

    def metrics(self) -> dict[str, float]:
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return {}
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.log.close()


def publish(settings: Settings, w: Workload, lo: int, hi: int, rate: float) -> list[float]:
    """Publish messages ``lo..hi`` at QoS 1 (``rate`` msg/s, 0: flat out); publish times."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex}")
    if settings.mqtt.username:
        client.username_pw_set(settings.mqtt.username, settings.mqtt.password)
    client.max_inflight_messages_set(1000)
    client.connect(settings.mqtt.host, settings.mqtt.port)
    client.loop_start()
    times = []
    infos = []
    start = time.monotonic()
    for k, i in enumerate(range(lo, hi)):
        if rate:
            delay = start + k / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        topic, payload = w.payloads[i]
        times.append(time.time())
        infos.append(client.publish(topic, payload, qos=1))
    for info in infos:
        info.wait_for_publish(120)
    client.loop_stop()
    client.disconnect()
    return times


def run_phase(
    settings: Settings, w: Workload, consumer: Consumer, lo: int, hi: int, rate: float
) -> dict[str, Any]:
    t0 = time.time()
    times = publish(settings, w, lo, hi, rate)
    published_s = time.time() - t0
    deadline = time.monotonic() + 300
    while consumer.complete < hi and time.monotonic() < deadline:
        time.sleep(0.05)
    done = [consumer.done_at[i] for i in range(lo, hi)]
    missing = sum(1 for d in done if d == 0.0)
    last = max(done) if done else t0
    lat = sorted(d - p for d, p in zip(done, times, strict=True) if d)
    n = hi - lo
    return {
        "messages": n,
        "readings": n * w.readings,
        "missing_messages": missing,
        "publish_s": published_s,
        "elapsed_s": last - t0,
        "msgs_per_s": (n - missing) / max(last - t0, 1e-9),
        "readings_per_s": (n - missing) * w.readings / max(last - t0, 1e-9),
        "p50_ms": 1000 * quantile(lat, 0.5),
        "p99_ms": 1000 * quantile(lat, 0.99),
    }


def baseline(settings: Settings, w: Workload, messages: int, linger_ms: int) -> dict[str, Any]:
    """Produce the same readings straight to Kafka (acks=all, idempotent, same linger)."""
    from kafka import KafkaProducer

    from schemas.topics import mqtt_route_for

    records = []
    for topic, payload in w.payloads[:messages]:
        route = mqtt_route_for(topic)
        assert route is not None
        records.append(route.route(topic, payload))
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=linger_ms,
        batch_size=512 * 1024,
        metrics_enabled=False,
    )
    t0 = time.time()
    for topic, key, value in records:
        producer.send(topic, key=key, value=value)
    producer.flush()
    elapsed = time.time() - t0
    producer.close()
    return {
        "messages": messages,
        "readings": messages * w.readings,
        "elapsed_s": elapsed,
        "msgs_per_s": messages / elapsed,
        "readings_per_s": messages * w.readings / elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    head, _, examples = (__doc__ or "").partition("examples:")
    parser = argparse.ArgumentParser(
        description=head.strip(),
        epilog="examples:" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--messages", type=int, default=20_000, help="burst messages (%(default)s)")
    parser.add_argument("--readings", type=int, default=50, help="readings per batch (%(default)s)")
    parser.add_argument("--gateways", type=int, default=20, help="gateways/topics (%(default)s)")
    parser.add_argument("--paced", type=int, default=0, help="paced messages (0: messages/4)")
    parser.add_argument("--rate", type=float, default=0, help="paced msg/s (0: half the burst)")
    parser.add_argument("--linger-ms", type=int, default=5, help="producer linger (%(default)s)")
    parser.add_argument("--receive-maximum", type=int, default=1000, help="(%(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "bridge.json")
    args = parser.parse_args(argv)

    settings = load_settings()
    paced_n = args.paced or max(1, args.messages // 4)
    total = args.messages + paced_n
    tag = uuid.uuid4().hex[:6]
    print(f"building {total:,} batches x {args.readings} readings ...", flush=True)
    w = Workload.build(tag, total, args.gateways, args.readings)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    consumer = Consumer(settings, w, total)
    consumer.start()
    bridge = BridgeProcess(settings, args, args.out.with_suffix(".log"))
    try:
        print(f"burst: {args.messages:,} messages ...", flush=True)
        burst = run_phase(settings, w, consumer, 0, args.messages, 0)
        rate = args.rate or max(1.0, burst["msgs_per_s"] / 2)
        print(f"paced: {paced_n:,} messages at {rate:,.0f} msg/s ...", flush=True)
        before = bridge.metrics()
        paced = run_phase(settings, w, consumer, args.messages, total, rate)
        after = bridge.metrics()
    finally:
        consumer.stop.set()
        bridge.close()
    q = {
        k: 1000
        * after.get(f'citystream_bridge_ack_latency_seconds{{quantile="{k}"}}', float("nan"))
        for k in ("0.5", "0.99")
    }
    paced["bridge_ack_p50_ms"], paced["bridge_ack_p99_ms"] = q["0.5"], q["0.99"]
    stats = {
        k.removeprefix("citystream_bridge_"): after.get(k, 0) - before.get(k, 0)
        for k in after
        if k.endswith("_total")
    }
    print("baseline: direct produce ...", flush=True)
    base = baseline(settings, w, min(args.messages, 5000), args.linger_ms)

    rows = [
        ("bridge burst", burst["messages"], burst["msgs_per_s"], burst["readings_per_s"],
         burst["p50_ms"], burst["p99_ms"], burst["missing_messages"]),
        ("bridge paced", paced["messages"], paced["msgs_per_s"], paced["readings_per_s"],
         paced["p50_ms"], paced["p99_ms"], paced["missing_messages"]),
        ("direct produce (baseline)", base["messages"], base["msgs_per_s"],
         base["readings_per_s"], "-", "-", 0),
    ]  # fmt: skip
    print()
    print(format_table(
        ["run", "messages", "msgs/s", "readings/s", "p50 ms", "p99 ms", "missing"], rows
    ))  # fmt: skip
    print(
        f"\npaced: bridge receipt->Kafka ack p50 {q['0.5']:.1f} ms, p99 {q['0.99']:.1f} ms "
        f"(bridge /metrics); publish->readable-in-Kafka above"
    )
    result = {
        "benchmark": "bridge",
        "at": datetime.now(UTC).isoformat(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "cpus": os.cpu_count(),
        "burst": burst,
        "paced": paced | {"rate": rate},
        "baseline_direct_produce": base,
        "bridge_counters_paced": stats,
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    lost = burst["missing_messages"] + paced["missing_messages"]
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
