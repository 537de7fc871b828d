"""End-to-end energy benchmark: gateway batches -> MQTT -> bridge -> Kafka -> energy stages and
DB sink -> TimescaleDB, on a private stack it starts and tears down itself (loopback only).

1. starts Kafka, Mosquitto and TimescaleDB in a temporary state dir on free ports
   (``citystream.testing.start_stack``) and seeds a city of ``--meters`` (30,000);
2. starts the workers as subprocesses: the bridge (``python -m edge.bridge``), the energy
   router and aggregator, and the DB sink for ``meter.readings energy.load energy.alerts``;
3. per phase, publisher processes send ``MeterBatch`` messages (``--batch`` readings of
   consecutive meters of one district, as a data concentrator's meters sit on one feeder;
   ``--mixed-batches``: batches spanning districts, which the router must split) at QoS 1
   to ``city/hcm/meters/{gateway}/readings`` at ``--rate`` readings/s for ``--duration`` s.
   Every batch has its own reading ``ts`` = wall clock at publish (ms), so the DB is
   polled every ``--poll`` s for the batches whose rows are all visible: latency = first
   poll that sees the batch complete - ts (includes up to one poll interval).  Sustained
   readings/s = rows made visible per second after ``--warmup``;
   backlog = published but not yet visible when publishing stops (and after ``--drain``);
4. if the target rate is not sustained (visible < 95% of it, p99 >= 5 s or rows missing),
   the same phase runs again at ``--fallback-rate``;
5. baseline, same run, workers stopped: the same rows written straight into
   ``meter_readings`` with the sink's own writer (``CopyWriter``, same batch size): the
   ceiling of the last stage, which the whole pipeline is compared with.

CPU per process group (``/proc``, 100% = one core) and the 1-minute load average are
recorded per phase: the machine has few cores and other work may be running.  Prints a
table and writes ``bench/results/energy_e2e.json``.

examples:
  python bench/energy_e2e.py                                 # 50,000/s for 60 s (+ 20,000/s)
  python bench/energy_e2e.py --rate 20000 --duration 30 --fallback-rate 0
  python bench/energy_e2e.py --rate 5000 --duration 20 --batch 500 --publishers 2
  python bench/energy_e2e.py --rate 35000 --meters 3000 --mixed-batches   # session-2 shape
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing as mp
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from citystream.settings import Settings
from citystream.stack.private import free_port
from citystream.table import format_table
from citystream.testing import Stack, stack_settings, start_stack

ROOT = Path(__file__).resolve().parents[1]
TS_HOLE = b"\x00TS\x00"  # where the reading timestamp goes in a payload template
P99_AIM_S = 5.0


# --- payloads ------------------------------------------------------------------------------------


Template = tuple[str, list[bytes]]  # (gateway id, readings JSON pieces split at TS_HOLE)


def build_templates(
    n_meters: int, batch: int, seed: int, variants: int, *, mixed: bool = False
) -> list[Template]:
    """Gateway batches of ``batch`` readings: ``ts.join(pieces)`` is the readings JSON array.

    Each batch holds consecutive meters of one district, sent by the gateway of its first
    meter: as in a real city, where a data concentrator's meters sit on one feeder.  With
    ``mixed`` batches are plain chunks of the city's meters that may span districts and
    gateways round-robin (the router then splits every batch).  Values come from the
    simulator's clean energy at ``variants`` times of day, so each meter sees plausible,
    changing readings."""
    from simulators.meters import CityConfig, MeterSimulator, build_city, meter_id

    city = build_city(CityConfig(n_meters=n_meters, seed=seed))
    sim = MeterSimulator(city, seed=seed)
    district = city.district_of_feeder[city.feeder_idx]
    if mixed:
        spans = [(0, city.n_meters)]
    else:
        cuts = [0, *(np.flatnonzero(np.diff(district)) + 1).tolist(), city.n_meters]
        spans = list(itertools.pairwise(cuts))
    chunks = [lo for a, b in spans for lo in range(a, b - batch + 1, batch)]
    if not chunks:
        raise SystemExit(
            f"--batch {batch} is larger than a district of the city ({n_meters} meters): "
            "use more --meters, a smaller --batch or --mixed-batches"
        )
    t0 = int(datetime(2026, 3, 2, tzinfo=UTC).timestamp())
    out: list[Template] = []
    for v in range(variants):
        imp, exp = sim.true_energy(t0 + (v + 1) * 86400 // variants // 900 * 900)
        for n, lo in enumerate(chunks):
            parts = [
                b'{"meter_id":"%s","ts":"%s","interval_s":900,"import_kwh":%r,"export_kwh":%r}'
                % (meter_id(i).encode(), TS_HOLE, float(imp[i]), float(exp[i]))
                for i in range(lo, lo + batch)
            ]
            g = n % city.n_gateways if mixed else int(city.gateway_idx[lo])
            out.append((city.gateway_id(g), (b"[" + b",".join(parts) + b"]").split(TS_HOLE)))
    return out


def ts_text(ms: int) -> bytes:
    s, frac = divmod(ms, 1000)
    return b"%s.%03dZ" % (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)).encode(), frac)


def payload(gateway: str, seq: int, ms: int, pieces: list[bytes]) -> bytes:
    ts = ts_text(ms)
    return b'{"gateway_id":"%s","batch_seq":%d,"sent_at":"%s","readings":%s}' % (
        gateway.encode(), seq, ts, ts.join(pieces)
    )  # fmt: skip


# --- publishers (separate processes) -------------------------------------------------------------


def publisher(
    p: int,
    n_pub: int,
    host: str,
    port: int,
    templates: list[Template],
    batch: int,
    rate: float,
    duration: float,
    start_at: float,
    out: Any,
) -> None:
    """Publishes at ``rate`` readings/s from ``start_at`` (wall clock) for ``duration`` s; puts
    ``("pub", ts_ms, readings)`` per batch and ``("done", stats)`` on ``out``.  Its reading ts
    are unique: ``ts_ms % n_pub == p``."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    acked = [0]
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"e2e-pub-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.on_publish = lambda *a: acked.__setitem__(0, acked[0] + 1)
    client.connect(host, port)
    client.loop_start()
    per_s = rate / batch / n_pub
    sent, last_ms, k = 0, 0, 0
    seqs = dict.fromkeys((gw for gw, _ in templates), 0)
    behind = 0.0
    time.sleep(max(0.0, start_at - time.time()))
    t0 = time.monotonic()
    infos = []
    while True:
        due = t0 + k / per_s
        now = time.monotonic()
        if due - t0 >= duration:
            break
        if due > now:
            time.sleep(due - now)
        else:
            behind = max(behind, now - due)
        ms = max(int(time.time() * 1000), last_ms + 1)
        ms += (p - ms) % n_pub
        last_ms = ms
        gw, pieces = templates[(k * n_pub + p) % len(templates)]
        body = payload(gw, seqs[gw], ms, pieces)
        seqs[gw] += 1
        infos.append(client.publish(f"city/hcm/meters/{gw}/readings", body, qos=1))
        out.put(("pub", ms, batch))
        sent += 1
        k += 1
    publish_s = time.monotonic() - t0
    deadline = time.monotonic() + 60
    while acked[0] < sent and time.monotonic() < deadline:
        time.sleep(0.05)
    client.loop_stop()
    client.disconnect()
    out.put(("done", {"batches": sent, "acked": acked[0], "publish_s": publish_s,
                      "max_behind_s": behind}))  # fmt: skip


# --- workers and their metrics -------------------------------------------------------------------


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen[bytes]
    metrics_port: int
    log: Path

    def metrics(self) -> dict[str, float]:
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return {}
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def tail(self, n: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def child_env(stack: Stack) -> dict[str, str]:
    """``Stack.env()`` without any other CITYSTREAM_* of ours (it keeps e.g. a
    CITYSTREAM_KAFKA__BOOTSTRAP_SERVERS pointing elsewhere, which would win over the port)."""
    stack_keys = {"STATE_DIR", "KAFKA__PORT", "KAFKA__CONTROLLER_PORT", "MQTT__PORT", "DB__PORT"}
    env = {
        k: v
        for k, v in stack.env().items()
        if not k.startswith("CITYSTREAM_") or k.removeprefix("CITYSTREAM_") in stack_keys
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_workers(stack: Stack, logs: Path, tag: str) -> dict[str, Worker]:
    py = sys.executable
    commands = {
        "bridge": [py, "-m", "edge.bridge", "--client-id", f"e2e-bridge-{tag}",
                   "--progress-interval", "10"],
        "router": [py, "-m", "citystream.cli", "energy", "stage", "router",
                   "--group-id", f"e2e-router-{tag}"],
        "aggregator": [py, "-m", "citystream.cli", "energy", "stage", "aggregator",
                       "--group-id", f"e2e-aggregator-{tag}"],
        "sink": [py, "-m", "citystream.cli", "sink", "--topics", "meter.readings", "energy.load",
                 "energy.alerts", "--group-id", f"e2e-sink-{tag}"],
    }  # fmt: skip
    env = child_env(stack)
    workers = {}
    for name, cmd in commands.items():
        port = free_port()
        log = logs / f"{name}.log"
        with log.open("wb") as f:
            proc = subprocess.Popen(
                [*cmd, "--metrics-port", str(port)], cwd=ROOT, env=env, stdout=f,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        workers[name] = Worker(name, proc, port, log)
    deadline = time.monotonic() + 90
    for w in workers.values():
        while not w.metrics():
            if w.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{w.name} did not start:\n{w.tail()}")
            time.sleep(0.3)
    while workers["bridge"].metrics().get("citystream_bridge_mqtt_subscribed") != 1:
        if time.monotonic() > deadline:
            raise SystemExit(f"bridge did not subscribe:\n{workers['bridge'].tail()}")
        time.sleep(0.2)
    return workers


def stop_workers(workers: dict[str, Worker]) -> None:
    for w in workers.values():
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)
    for w in workers.values():
        try:
            w.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait()


def counters(workers: dict[str, Worker]) -> dict[str, float]:
    """Cumulative stage counters (readings or records) from the workers' /metrics."""
    b, r = workers["bridge"].metrics(), workers["router"].metrics()
    a, s = workers["aggregator"].metrics(), workers["sink"].metrics()
    return {
        "bridge_messages_received": b.get("citystream_bridge_messages_received_total", 0.0),
        "bridge_messages_acked": b.get("citystream_bridge_messages_acked_total", 0.0),
        "router_readings_routed": r.get("citystream_energy_router_readings_routed_total", 0.0),
        "aggregator_records": sum(v for k, v in a.items() if k.startswith(
            "citystream_energy_aggregator_records_total")),
        "sink_rows_inserted_meter_readings": s.get(
            'citystream_sink_rows_inserted_total{table="meter_readings"}', 0.0),
    }  # fmt: skip


# --- CPU per process group from /proc ------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime + stime ticks) of every process."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            raw = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        rest = raw[raw.rindex(")") + 2 :].split()
        out[int(d)] = (int(rest[1]), int(rest[11]) + int(rest[12]))
    return out


@dataclass(frozen=True)
class CpuSnapshot:
    at: float  # monotonic
    machine: int  # busy ticks of all CPUs (/proc/stat)
    pids: dict[int, tuple[str, int]]  # pid -> (group, ticks)


def cpu_snapshot(roots: dict[str, int]) -> CpuSnapshot:
    """Ticks of every process, grouped: each root pid with all its descendants."""
    table = _proc_table()
    by_root = {pid: name for name, pid in roots.items()}
    pids = {}
    for pid, (_ppid, t) in table.items():
        cur, group, hops = pid, "other", 0
        while cur > 1 and hops < 64:
            if cur in by_root:
                group = by_root[cur]
                break
            cur = table.get(cur, (0, 0))[0]
            hops += 1
        pids[pid] = (group, t)
    cpu = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    busy = sum(int(x) for i, x in enumerate(cpu) if i not in (3, 4))  # all but idle, iowait
    return CpuSnapshot(time.monotonic(), busy, pids)


def cpu_percent(a: CpuSnapshot, b: CpuSnapshot) -> dict[str, float]:
    """CPU % per group between two snapshots (100 = one core); ``other`` is the rest of the
    machine's busy time (other work, exited processes, the kernel)."""
    hz = os.sysconf("SC_CLK_TCK")
    dt = max(b.at - a.at, 1e-9)
    ticks: dict[str, int] = {}
    for pid, (group, t) in b.pids.items():
        if group != "other":
            ticks[group] = ticks.get(group, 0) + t - a.pids.get(pid, (group, 0))[1]
    out = {k: round(100.0 * v / hz / dt, 1) for k, v in ticks.items()}
    machine = 100.0 * (b.machine - a.machine) / hz / dt
    out["other"] = round(max(0.0, machine - sum(out.values())), 1)
    out["machine"] = round(machine, 1)
    return out


# --- the DB poller -------------------------------------------------------------------------------


@dataclass
class Tracker:
    """Batches published (from the publishers' queue) and when each became visible in the DB."""

    dsn: str
    batch: int
    poll_s: float
    published: dict[int, float] = field(default_factory=dict)  # ts_ms -> readings
    visible_at: dict[int, float] = field(default_factory=dict)  # ts_ms -> wall clock
    pending: set[int] = field(default_factory=set)
    polls: int = 0
    poll_ms_max: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def add(self, ms: int, readings: int) -> None:
        with self.lock:
            self.published[ms] = readings
            self.pending.add(ms)

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                started = time.monotonic()
                with self.lock:
                    want = sorted(self.pending)
                if want:
                    stamps = [datetime.fromtimestamp(ms / 1000, UTC) for ms in want]
                    rows = conn.execute(
                        "SELECT ts, count(*) FROM meter_readings WHERE ts = ANY(%s) GROUP BY ts",
                        (stamps,),
                    ).fetchall()
                    now = time.time()
                    with self.lock:
                        for ts, n in rows:
                            ms = round(ts.timestamp() * 1000)
                            if n >= self.published.get(ms, self.batch) and ms in self.pending:
                                self.pending.discard(ms)
                                self.visible_at[ms] = now
                self.polls += 1
                took = time.monotonic() - started
                self.poll_ms_max = max(self.poll_ms_max, 1000 * took)
                self.stop.wait(max(0.0, self.poll_s - took))

    def visible_readings(self, lo_ms: int, hi_ms: int, by: float | None = None) -> float:
        with self.lock:
            return sum(
                self.published[ms]
                for ms, at in self.visible_at.items()
                if lo_ms <= ms < hi_ms and (by is None or at <= by)
            )


def pct(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (inf when it falls on a batch never seen)."""
    if not sorted_values:
        return math.nan
    return sorted_values[min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1)]


# --- one phase -----------------------------------------------------------------------------------


def run_phase(
    stack: Stack,
    workers: dict[str, Worker],
    tracker: Tracker,
    templates: list[Template],
    args: argparse.Namespace,
    rate: float,
    roots: dict[str, int],
) -> dict[str, Any]:
    from citystream.testing import consumer_lag

    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    start_at = time.time() + 3.0  # publishers import paho meanwhile
    pubs = [
        ctx.Process(target=publisher, args=(p, args.publishers, stack.settings.mqtt.host,
                    stack.settings.mqtt.port, templates, args.batch, rate,
                    args.duration, start_at, events), daemon=True)
        for p in range(args.publishers)
    ]  # fmt: skip
    for proc in pubs:
        proc.start()
    roots = roots | {f"publisher{i}": proc.pid for i, proc in enumerate(pubs) if proc.pid}
    backlog_before = len(tracker.pending)
    before = counters(workers)
    cpu0 = cpu_snapshot(roots)
    lo_ms = int(start_at * 1000) - 1000
    stats: list[dict[str, Any]] = []
    print(f"  publishing {rate:,.0f} readings/s for {args.duration:.0f} s ...", flush=True)
    deadline = start_at + args.duration + 90
    while len(stats) < len(pubs) and time.time() < deadline:
        try:
            kind, *rest = events.get(timeout=0.5)
        except queue.Empty:
            continue
        if kind == "pub":
            tracker.add(rest[0], rest[1])
        else:
            stats.append(rest[0])
    cpu1 = cpu_snapshot(roots)
    load1 = os.getloadavg()[0]
    after = counters(workers)
    hi_ms = int(time.time() * 1000) + 1
    with tracker.lock:
        phase_ms = sorted(ms for ms in tracker.published if lo_ms <= ms < hi_ms)
    published = sum(tracker.published[ms] for ms in phase_ms)
    first_s = phase_ms[0] / 1000 if phase_ms else start_at  # the actual publishing window
    end_wall = phase_ms[-1] / 1000 if phase_ms else start_at + args.duration
    visible_at_end = tracker.visible_readings(lo_ms, hi_ms, by=end_wall)
    groups = {f"e2e-{n}-{args.tag}": [t] for n, t in (
        ("router", "meter.readings"), ("aggregator", "energy.district-readings"),
        ("sink", "meter.readings"))}  # fmt: skip
    try:
        lag = {g: sum(v.values()) for g, v in consumer_lag(stack, groups).items()}
    except Exception as exc:  # lag is informative only
        lag = {"error": str(exc)}
    print(f"  draining (up to {args.drain:.0f} s) ...", flush=True)
    drain_deadline = time.time() + args.drain
    while time.time() < drain_deadline:
        with tracker.lock:
            left = any(lo_ms <= ms < hi_ms for ms in tracker.pending)
        if not left:
            break
        time.sleep(0.2)
    drained_at = time.time()
    for proc in pubs:
        proc.join(timeout=10)
    # sustained: rows made visible per second over the steady part of publishing
    w0, w1 = first_s + args.warmup, end_wall
    with tracker.lock:
        vis = sorted(at for ms, at in tracker.visible_at.items() if lo_ms <= ms < hi_ms)
        lat = sorted(
            (tracker.visible_at[ms] - ms / 1000 if ms in tracker.visible_at else math.inf)
            for ms in phase_ms
            if ms >= w0 * 1000
        )
    in_window = sum(1 for at in vis if w0 <= at < w1) * args.batch
    sustained = in_window / max(w1 - w0, 1e-9)
    missing = sum(1 for x in lat if x == math.inf)
    seen = [x for x in lat if x != math.inf]
    delta = {k: after[k] - before[k] for k in after}
    span = max(end_wall - first_s, 1e-9)
    stage_rates = {
        "bridge_in": round(delta["bridge_messages_received"] * args.batch / span),
        "router": round(delta["router_readings_routed"] / span),
        "sink_meter_readings": round(delta["sink_rows_inserted_meter_readings"] / span),
    }
    last_visible = vis[-1] if vis else first_s
    total_visible = len(vis) * args.batch
    return {
        "target_rate": rate,
        "published_readings": published,
        # batches over the time between the first and the last publish: n - 1 intervals
        "achieved_publish_rate": max(len(phase_ms) - 1, 0) * args.batch / span,
        "publisher_stats": stats,
        "publish_acked_batches": sum(s["acked"] for s in stats),
        "sustained_readings_per_s": sustained,
        "overall_readings_per_s": total_visible / max(last_visible - first_s, 1e-9),
        "latency_p50_s": pct(lat, 0.50),
        "latency_p99_s": pct(lat, 0.99),
        "latency_max_s": lat[-1] if lat else math.nan,
        "latency_batches": len(lat),
        "latency_seen_p50_s": pct(seen, 0.50),
        "latency_seen_p99_s": pct(seen, 0.99),
        "stage_readings_per_s": stage_rates,
        "backlog_at_end_readings": published - visible_at_end,
        "backlog_after_drain_readings": published - total_visible,
        "backlog_before_phase_batches": backlog_before,
        "drain_s": drained_at - end_wall,
        "missing_batches_after_drain": missing,
        "kafka_lag_at_end_records": lag,
        "stage_counters_delta": delta,
        "cpu_percent": cpu_percent(cpu0, cpu1),
        "loadavg_1m_at_end": round(load1, 2),
        "db_poll_max_ms": round(tracker.poll_ms_max, 1),
    }


def finite(x: Any) -> Any:
    """JSON-safe copy: inf/NaN (a batch never seen) become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite(v) for v in x]
    return x


def sustained_ok(r: dict[str, Any]) -> bool:
    return (
        r["sustained_readings_per_s"] >= 0.95 * r["target_rate"]
        and r["latency_p99_s"] < P99_AIM_S
        and r["missing_batches_after_drain"] == 0
    )


# --- baseline ------------------------------------------------------------------------------------


def baseline(dsn: str, templates: list[Template], rows: int, batch_size: int) -> dict[str, Any]:
    """The same readings written straight to meter_readings with the sink's CopyWriter."""
    from citystream.db.copy_writer import CopyWriter
    from citystream.db.tables import METER_READINGS

    t0 = datetime(2020, 1, 6, tzinfo=UTC)
    parsed = [json.loads(b"1970-01-01T00:00:00Z".join(t)) for _, t in templates]
    data: list[tuple[Any, ...]] = []
    k = 0
    while len(data) < rows:
        ts = t0 + timedelta(milliseconds=k)
        data.extend(
            (r["meter_id"], ts, 900, r["import_kwh"], r["export_kwh"], None)
            for r in parsed[k % len(parsed)]
        )
        k += 1
    data = data[:rows]
    with CopyWriter(dsn, METER_READINGS, batch_size=batch_size) as writer:
        started = time.monotonic()
        result = writer.add_many(data).plus(writer.flush())
        elapsed = time.monotonic() - started
    return {"rows": rows, "inserted": result.inserted, "batch_size": batch_size,
            "elapsed_s": elapsed, "rows_per_s": rows / elapsed}  # fmt: skip


# --- main ----------------------------------------------------------------------------------------


def pipeline_run(
    args: argparse.Namespace, rate: float, templates: list[Template], *, baseline_after: bool
) -> tuple[dict[str, Any], float, dict[str, Any]]:
    """On a fresh private stack: seed, start the workers, prime, run one phase at ``rate``
    (none when 0), stop the workers; then the baseline if asked.  Tears the stack down."""
    from citystream.stack.supervisor import down, status
    from simulators.meters import CityConfig, build_city
    from simulators.meters.seed import seed_reference

    state = Path(tempfile.mkdtemp(prefix="citystream-e2e-"))
    settings: Settings = stack_settings(state)
    tag = uuid.uuid4().hex[:6]
    args = argparse.Namespace(**{**vars(args), "tag": tag})
    workers: dict[str, Worker] = {}
    tracker = Tracker(settings.db.dsn, args.batch, args.poll)
    poller = threading.Thread(target=tracker.run, daemon=True)
    result: dict[str, Any] = {}
    prime_s = math.nan
    base: dict[str, Any] = {}
    print(f"  load average {os.getloadavg()}; state dir {state}", flush=True)
    try:
        stack = start_stack(settings)
        city = build_city(CityConfig(n_meters=args.meters, seed=args.seed))
        with stack.db() as conn:
            print(f"  seeded {seed_reference(conn, city)}", flush=True)
        if rate:
            logs = state / "bench-logs"
            logs.mkdir()
            workers = start_workers(stack, logs, tag)
            roots = {"bench": os.getpid()} | {w.name: w.proc.pid for w in workers.values()}
            roots |= {s.name: s.pid for s in status(settings) if s.pid}
            poller.start()
            print("  workers up; priming (one batch end to end) ...", flush=True)
            once = argparse.Namespace(
                **{**vars(args), "duration": 1.0, "drain": 120.0, "warmup": 0.0, "publishers": 1}
            )
            prime = run_phase(stack, workers, tracker, templates, once, args.batch, roots)
            if prime["missing_batches_after_drain"]:
                tails = "\n".join(f"--- {w.name}\n{w.tail()}" for w in workers.values())
                raise SystemExit(f"the pipeline did not deliver the priming batch:\n{tails}")
            prime_s = prime["latency_max_s"]
            print(f"  primed: first batch visible after {prime_s:.1f} s", flush=True)
            result = run_phase(stack, workers, tracker, templates, args, rate, roots)
            tracker.stop.set()
            poller.join(timeout=5)
            stop_workers(workers)
        if baseline_after:
            print(f"  baseline: {args.baseline_rows:,} rows into meter_readings ...", flush=True)
            base = baseline(settings.db.dsn, templates, args.baseline_rows, 80_000)
            base["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    finally:
        tracker.stop.set()
        stop_workers(workers)
        down(settings)
        if args.keep:
            print(f"  kept {state}")
        else:
            shutil.rmtree(state, ignore_errors=True)
    return result, prime_s, base


def main(argv: list[str] | None = None) -> int:
    head, _, examples = (__doc__ or "").partition("examples:")
    parser = argparse.ArgumentParser(
        description=head.strip(),
        epilog="examples:" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = parser.add_argument
    a("--rate", type=float, default=50_000, help="target readings/s (%(default)s)")
    a(
        "--fallback-rate",
        type=float,
        default=20_000,
        help="readings/s tried too when --rate is not sustained (0: don't) (%(default)s)",
    )
    a("--duration", type=float, default=60, help="seconds of publishing per phase (%(default)s)")
    a("--warmup", type=float, default=10, help="seconds left out of the steady part (%(default)s)")
    a(
        "--drain",
        type=float,
        default=45,
        help="max seconds to wait for the DB after a phase (%(default)s)",
    )
    a("--batch", type=int, default=1000, help="readings per MeterBatch (%(default)s)")
    a("--publishers", type=int, default=1, help="publisher processes (%(default)s)")
    a("--meters", type=int, default=30_000, help="meters of the seeded city (%(default)s)")
    a(
        "--mixed-batches",
        action="store_true",
        help="batches span districts (the router splits each) instead of one district each",
    )
    a("--seed", type=int, default=0, help="city seed (%(default)s)")
    a("--poll", type=float, default=0.2, help="DB poll interval, s (%(default)s)")
    a("--baseline-rows", type=int, default=1_000_000, help="rows of the baseline (%(default)s)")
    a("--keep", action="store_true", help="keep the temporary state dir and worker logs")
    a("--out", type=Path, default=ROOT / "bench" / "results" / "energy_e2e.json")
    args = parser.parse_args(argv)  # fmt: skip
    wall0 = time.monotonic()
    templates = build_templates(
        args.meters, args.batch, args.seed, variants=8, mixed=args.mixed_batches
    )
    phases: list[dict[str, Any]] = []
    primes: list[float] = []
    base: dict[str, Any] = {}
    rates = [r for r in (args.rate, args.fallback_rate) if r]
    for i, rate in enumerate(rates):
        print(f"phase {rate:,.0f} readings/s (fresh stack)", flush=True)
        # the baseline runs on the first phase's stack once its workers are stopped
        r, prime_s, b = pipeline_run(args, rate, templates, baseline_after=i == 0)
        phases.append(r)
        primes.append(prime_s)
        base = base or b
        p99 = r["latency_p99_s"]
        print(f"  sustained {r['sustained_readings_per_s']:,.0f}/s, p99 {p99:.2f} s", flush=True)
        if sustained_ok(r):
            break

    def fmt_s(x: float) -> str:
        return f">{args.drain:.0f} (not all seen)" if x == math.inf else f"{x:.2f}"

    rows: list[list[object]] = [
        [f"pipeline @ {r['target_rate']:,.0f}/s", r["achieved_publish_rate"],
         r["sustained_readings_per_s"], fmt_s(r["latency_p50_s"]), fmt_s(r["latency_p99_s"]),
         r["backlog_at_end_readings"], r["backlog_after_drain_readings"],
         "yes" if sustained_ok(r) else "no", r["loadavg_1m_at_end"]]
        for r in phases
    ]  # fmt: skip
    rows.append(["direct CopyWriter (baseline)", "-", base["rows_per_s"], "-", "-", "-", "-",
                 "-", base["loadavg_1m_at_end"]])  # fmt: skip
    print()
    headers = ["run", "published/s", "visible/s (steady)", "p50 s", "p99 s", "backlog@end",
               "backlog after drain", "sustained", "load1"]  # fmt: skip
    print(format_table(headers, rows))
    for r in phases:
        by_use = sorted(r["cpu_percent"].items(), key=lambda kv: -kv[1])
        cpu = ", ".join(f"{k} {v:.0f}%" for k, v in by_use if v >= 1 and k != "machine")
        cpu += f" (machine {r['cpu_percent']['machine']:.0f}% of {100 * (os.cpu_count() or 1)}%)"
        print(f"\n@{r['target_rate']:,.0f}/s CPU (100% = 1 core; other: outside this bench): {cpu}")
        print(f"  kafka lag at end of publishing: {r['kafka_lag_at_end_records']}")
        print(f"  stage throughput while publishing, readings/s: {r['stage_readings_per_s']}")
        print(
            f"  latency of the batches seen: p50 {r['latency_seen_p50_s']:.2f} s, "
            f"p99 {r['latency_seen_p99_s']:.2f} s; {r['missing_batches_after_drain']} of "
            f"{r['latency_batches']} batches not visible {args.drain:.0f} s after publishing"
        )
    result = {
        "benchmark": "energy_e2e",
        "at": datetime.now(UTC).isoformat(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "cpus": os.cpu_count(),
        "aim": {"readings_per_s": 50_000, "p99_s": P99_AIM_S},
        "priming_first_batch_latency_s": primes,
        "phases": phases,
        "baseline_direct_copywriter": base,
        "wall_s": time.monotonic() - wall0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(finite(result), indent=2, default=str))
    print(f"\nwrote {args.out} ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
