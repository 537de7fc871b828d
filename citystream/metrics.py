"""A tiny, dependency-free metrics registry rendered in the Prometheus text format.

Three kinds, all thread-safe, with optional labels::

    reg = Registry(prefix="citystream_bridge")
    received = reg.counter("messages_received_total", "MQTT messages received")
    received.inc()
    inflight = reg.gauge("in_flight", "Messages waiting for Kafka acks")
    inflight.set(3)
    latency = reg.summary("ack_latency_seconds", "Receive to Kafka ack")
    latency.observe(0.004)
    errors = reg.counter("kafka_errors_total", "Kafka send failures", labels=("kind",))
    errors.labels("timeout").inc()
    print(reg.render())

:class:`Summary` keeps ``count`` and ``sum`` exactly and computes quantiles over a
bounded window of the most recent observations (a ring buffer), which is what a
dashboard wants from a live process.  :func:`serve` exposes ``GET /metrics`` with the
standard library's HTTP server on a daemon thread.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Generic, TypeVar

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_QUANTILES = (0.5, 0.9, 0.99)


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _label_str(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, linear interpolation; NaN if empty."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within [0, 1], got {q}")
    if not sorted_values:
        return math.nan
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return sorted_values[lo] * (1 - frac) + sorted_values[hi] * frac


class CounterChild:
    """A monotonically increasing value."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter can only increase")
        with self._lock:
            self._value += amount

    @property
    def value(self) -> float:
        return self._value


class GaugeChild:
    """A value that goes up and down."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0.0

    def set(self, value: float) -> None:
        with self._lock:
            self._value = float(value)

    def inc(self, amount: float = 1.0) -> None:
        with self._lock:
            self._value += amount

    def dec(self, amount: float = 1.0) -> None:
        with self._lock:
            self._value -= amount

    @property
    def value(self) -> float:
        return self._value


class SummaryChild:
    """Exact count and sum, quantiles over the last ``window`` observations."""

    def __init__(self, window: int) -> None:
        self._lock = threading.Lock()
        self._ring: list[float] = []
        self._window = window
        self._next = 0
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        with self._lock:
            self.count += 1
            self.sum += value
            if len(self._ring) < self._window:
                self._ring.append(value)
            else:
                self._ring[self._next] = value
                self._next = (self._next + 1) % self._window

    def quantiles(self, qs: Iterable[float]) -> dict[float, float]:
        with self._lock:
            values = sorted(self._ring)
        return {q: quantile(values, q) for q in qs}


C = TypeVar("C", CounterChild, GaugeChild, SummaryChild)


class _Metric(Generic[C]):
    kind = ""

    def __init__(self, name: str, help: str, labels: Sequence[str]) -> None:
        if not _NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labels:
            if not _LABEL.match(label) or label == "quantile":
                raise ValueError(f"invalid label name {label!r} of metric {name!r}")
        self.name = name
        self.help = help
        self.label_names = tuple(labels)
        self._children: dict[tuple[str, ...], C] = {}
        self._lock = threading.Lock()
        if not self.label_names:
            self._children[()] = self._new_child()

    def _new_child(self) -> C:
        raise NotImplementedError

    def labels(self, *values: str) -> C:
        """The child for these label values (created on first use)."""
        if len(values) != len(self.label_names):
            raise ValueError(
                f"{self.name} takes labels {self.label_names}, got {len(values)} values"
            )
        key = tuple(str(v) for v in values)
        with self._lock:
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self._new_child()
            return child

    def _only(self) -> C:
        if self.label_names:
            raise ValueError(f"{self.name} has labels {self.label_names}; use .labels(...)")
        return self._children[()]

    def _items(self) -> list[tuple[tuple[str, ...], C]]:
        with self._lock:
            return sorted(self._children.items())

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {_escape(self.help)}", f"# TYPE {self.name} {self.kind}"]
        for key, child in self._items():
            lines.extend(self._render_child(key, child))
        return lines

    def _render_child(self, key: tuple[str, ...], child: C) -> list[str]:
        raise NotImplementedError


class Counter(_Metric[CounterChild]):
    kind = "counter"

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def inc(self, amount: float = 1.0) -> None:
        self._only().inc(amount)

    @property
    def value(self) -> float:
        return self._only().value

    @property
    def total(self) -> float:
        """Sum over all label values."""
        return sum(child.value for _, child in self._items())

    def _render_child(self, key: tuple[str, ...], child: CounterChild) -> list[str]:
        return [f"{self.name}{_label_str(self.label_names, key)} {_fmt(child.value)}"]


class Gauge(_Metric[GaugeChild]):
    kind = "gauge"

    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def set(self, value: float) -> None:
        self._only().set(value)

    def inc(self, amount: float = 1.0) -> None:
        self._only().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._only().dec(amount)

    @property
    def value(self) -> float:
        return self._only().value

    def _render_child(self, key: tuple[str, ...], child: GaugeChild) -> list[str]:
        return [f"{self.name}{_label_str(self.label_names, key)} {_fmt(child.value)}"]


class Summary(_Metric[SummaryChild]):
    kind = "summary"

    def __init__(
        self,
        name: str,
        help: str,
        labels: Sequence[str],
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        window: int = 10_000,
    ) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        for q in quantiles:
            if not 0.0 <= q <= 1.0:
                raise ValueError(f"quantile must be within [0, 1], got {q}")
        self.window = window
        self.quantile_levels = tuple(quantiles)
        super().__init__(name, help, labels)

    def _new_child(self) -> SummaryChild:
        return SummaryChild(self.window)

    def observe(self, value: float) -> None:
        self._only().observe(value)

    def quantiles(self) -> dict[float, float]:
        return self._only().quantiles(self.quantile_levels)

    @property
    def count(self) -> int:
        return self._only().count

    def _render_child(self, key: tuple[str, ...], child: SummaryChild) -> list[str]:
        lines = []
        for q, v in child.quantiles(self.quantile_levels).items():
            labels = _label_str(self.label_names, key, f'quantile="{_fmt(q)}"')
            lines.append(f"{self.name}{labels} {_fmt(v)}")
        plain = _label_str(self.label_names, key)
        lines.append(f"{self.name}_sum{plain} {_fmt(child.sum)}")
        lines.append(f"{self.name}_count{plain} {child.count}")
        return lines


class Registry:
    """A named set of metrics; ``prefix`` (e.g. ``citystream_bridge``) is joined with ``_``."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self._metrics: dict[str, Counter | Gauge | Summary] = {}
        self._lock = threading.Lock()

    def _full(self, name: str) -> str:
        return f"{self.prefix}_{name}" if self.prefix else name

    def _add(self, metric: Counter | Gauge | Summary) -> None:
        with self._lock:
            if metric.name in self._metrics:
                raise ValueError(f"metric {metric.name!r} is already registered")
            self._metrics[metric.name] = metric

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        metric = Counter(self._full(name), help, labels)
        self._add(metric)
        return metric

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> Gauge:
        metric = Gauge(self._full(name), help, labels)
        self._add(metric)
        return metric

    def summary(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        window: int = 10_000,
    ) -> Summary:
        metric = Summary(self._full(name), help, labels, quantiles, window)
        self._add(metric)
        return metric

    def get(self, name: str) -> Counter | Gauge | Summary:
        """A registered metric by its full name (with prefix) or short name."""
        with self._lock:
            return self._metrics.get(name) or self._metrics[self._full(name)]

    def render(self) -> str:
        """All metrics in the Prometheus text exposition format (version 0.0.4)."""
        with self._lock:
            metrics = list(self._metrics.values())
        lines: list[str] = []
        for metric in metrics:
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


class MetricsServer:
    """``GET /metrics`` on a daemon thread; ``port=0`` picks a free port (see :attr:`port`)."""

    def __init__(self, registries: Sequence[Registry], host: str = "0.0.0.0", port: int = 0):
        regs = tuple(registries)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                    self.send_error(404, "try /metrics")
                    return
                body = "".join(r.render() for r in regs).encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"metrics-http-{self.port}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve(*registries: Registry, port: int, host: str = "0.0.0.0") -> MetricsServer:
    """Start serving ``registries`` on ``host:port``; call ``close()`` on the result to stop."""
    return MetricsServer(registries, host=host, port=port)
