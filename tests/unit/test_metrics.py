"""The dependency-free metrics registry and its /metrics endpoint."""

from __future__ import annotations

import math
import threading
import urllib.request

import pytest

from citystream.metrics import Registry, quantile, serve


def test_render_counter_gauge_and_labels() -> None:
    reg = Registry(prefix="cs")
    c = reg.counter("events_total", "Events seen")
    g = reg.gauge("depth", "Queue depth")
    e = reg.counter("errors_total", 'Errors "by" kind', labels=("kind",))
    c.inc()
    c.inc(2)
    g.set(5)
    g.dec(1.5)
    e.labels("timeout").inc()
    e.labels('we"ird\n').inc(3)
    text = reg.render()
    assert "# HELP cs_events_total Events seen\n# TYPE cs_events_total counter\n" in text
    assert "\ncs_events_total 3\n" in text
    assert "\ncs_depth 3.5\n" in text
    assert '\ncs_errors_total{kind="timeout"} 1\n' in text
    assert '\ncs_errors_total{kind="we\\"ird\\n"} 3\n' in text
    assert 'Errors \\"by\\" kind' in text
    assert e.total == 4
    assert text.endswith("\n")


def test_summary_quantiles_count_and_sum() -> None:
    reg = Registry()
    s = reg.summary("latency_seconds", "Latency", quantiles=(0.5, 0.99))
    for i in range(1, 101):
        s.observe(i / 100)
    q = s.quantiles()
    assert q[0.5] == pytest.approx(0.505)
    assert q[0.99] == pytest.approx(0.9901)
    text = reg.render()
    assert 'latency_seconds{quantile="0.5"} 0.505' in text
    assert "latency_seconds_count 100\n" in text
    assert "latency_seconds_sum 50.5" in text
    assert "# TYPE latency_seconds summary" in text


def test_summary_window_keeps_only_recent_observations() -> None:
    s = Registry().summary("x", "x", window=10, quantiles=(0.0, 1.0))
    for i in range(100):
        s.observe(i)
    assert s.quantiles() == {0.0: 90, 1.0: 99}
    assert s.count == 100


def test_empty_summary_renders_nan() -> None:
    reg = Registry()
    reg.summary("idle", "nothing yet")
    assert 'idle{quantile="0.5"} NaN' in reg.render()
    assert math.isnan(quantile([], 0.5))


@pytest.mark.parametrize("bad", ["1abc", "with space", "dash-ed"])
def test_invalid_names_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid metric name"):
        Registry().counter(bad, "x")


def test_misuse_is_rejected() -> None:
    reg = Registry()
    c = reg.counter("a_total", "a")
    with pytest.raises(ValueError, match="already registered"):
        reg.counter("a_total", "a")
    with pytest.raises(ValueError, match="only increase"):
        c.inc(-1)
    labelled = reg.counter("b_total", "b", labels=("kind",))
    with pytest.raises(ValueError, match=r"use \.labels"):
        labelled.inc()
    with pytest.raises(ValueError, match="takes labels"):
        labelled.labels("x", "y")


def test_counter_is_thread_safe() -> None:
    c = Registry().counter("n_total", "n")

    def bump() -> None:
        for _ in range(10_000):
            c.inc()

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.value == 80_000


def test_http_endpoint_serves_the_registries() -> None:
    a, b = Registry(prefix="a"), Registry(prefix="b")
    a.counter("x_total", "x").inc(7)
    b.gauge("y", "y").set(2)
    server = serve(a, b, port=0, host="127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            body = r.read().decode()
        assert "a_x_total 7\n" in body and "b_y 2\n" in body
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/nope", timeout=5)
        assert info.value.code == 404
    finally:
        server.close()
