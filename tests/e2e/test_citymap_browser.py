"""The web map in headless Chromium (Debian's /usr/bin/chromium driven by Playwright) against
the real stack: seeded TimescaleDB, live Kafka tail, Mosquitto.

Screenshots are written to ``tests/e2e/artifacts/`` (or ``$CITYMAP_E2E_ARTIFACTS``).
"""

from __future__ import annotations

import os
import queue
import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from citymap.seed import CitySize, make_violation, seed
from citymap.testing import TEST_TOKENS, MapServer, map_settings, scratch_database
from citystream.testing import Stack
from schemas import messages as m
from schemas.topics import TOPICS

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(os.environ.get("CITYMAP_E2E_ARTIFACTS", Path(__file__).parent / "artifacts"))


@pytest.fixture(scope="module")
def server(stack: Stack) -> Iterator[MapServer]:
    with scratch_database(stack.settings.db) as db:
        seed(db.dsn, CitySize(days=7, violations_per_day=150))
        srv = MapServer(map_settings(stack.settings, db)).start()
        try:
            yield srv
        finally:
            srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def open_map(
    browser: Any,
    server: MapServer,
    role: str,
    size: tuple[int, int] = (1440, 900),
    scale: float = 1,
) -> Any:
    page = browser.new_page(
        viewport={"width": size[0], "height": size[1]}, device_scale_factor=scale
    )
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server.url}/#token={TEST_TOKENS[role]}")
    page.wait_for_selector("body[data-ready='1']", timeout=20_000)
    page.wait_for_selector("#live.on", timeout=10_000)
    assert not errors, errors
    return page


def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")
    return path


def test_map_loads_with_its_layers(browser: Any, server: MapServer) -> None:
    page = open_map(browser, server, "operator")
    layers = page.evaluate("window.citymap.layers")
    assert layers["districts"] == 6 and layers["intersections"] == 12
    assert layers["feeders"] == 24 and layers["violations"] > 0
    assert layers["roads"] == 12 * 8  # the SUMO junction network at every intersection
    assert page.locator("path.leaflet-interactive").count() >= 6 + 12 + 96
    assert "vehicles/h" in page.inner_text("#summary")
    overlays = page.locator(".leaflet-control-layers-overlays label").all_inner_texts()
    assert len(overlays) == 6 and "Roads" in overlays[0]
    shot(page, "01-overview-operator")
    page.close()


def test_a_live_violation_appears(browser: Any, server: MapServer, stack: Stack) -> None:
    page = open_map(browser, server, "operator")
    v = make_violation(777_001, "i021", datetime.now(UTC), random.Random(3))
    stack.produce("traffic.violations", b"i021", TOPICS["traffic.violations"].codec.encode(v))
    page.wait_for_selector(f"#feed li[data-violation-id='{v.violation_id}']", timeout=2_000)
    assert str(v.details["plate"]) in page.inner_text(
        f"#feed li[data-violation-id='{v.violation_id}']"
    )
    a = m.Alert(
        alert_id="e2e-alert",
        kind="peak_load",
        severity=m.Severity.critical,
        source="energy",
        subject_id="d02-f1",
        raised_at=datetime.now(UTC),
        message="Feeder d02-f1 at 104% of rated capacity",
    )
    stack.produce("energy.alerts", b"d02-f1", TOPICS["energy.alerts"].codec.encode(a))
    page.wait_for_selector("#feed li[data-alert-id='e2e-alert']", timeout=2_000)
    shot(page, "02-live-violation-and-alert")
    page.close()


def test_operator_approves_a_plan_and_it_arrives_on_mqtt(browser: Any, server: MapServer) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got: queue.Queue[tuple[str, bytes]] = queue.Queue()
    subscribed = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="e2e-controller")
    sub.on_connect = lambda c, *a: c.subscribe("city/hcm/signals/+/plan", qos=1)
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_message = lambda c, u, msg: got.put((msg.topic, msg.payload))
    sub.connect(server.settings.mqtt.host, server.settings.mqtt.port)
    sub.loop_start()
    try:
        assert subscribed.wait(10)
        page = open_map(browser, server, "operator")
        page.evaluate("window.citymap.intersections.get('i031').marker.fire('click')")
        page.wait_for_selector("#approve-plan", timeout=10_000)
        page.wait_for_selector("#violation-queue .evidence a", timeout=10_000)
        assert "Predicted delay" in page.inner_text("#plans")
        shot(page, "03-intersection-panel-operator")
        page.click("#approve-plan")
        topic, payload = got.get(timeout=10)
        assert topic == "city/hcm/signals/i031/plan"
        plan = m.SignalPlan.model_validate_json(payload)
        assert plan.plan_id == "plan-b" and plan.intersection_id == "i031"
        page.wait_for_selector("#plans:has-text('No new recommendation')", timeout=10_000)
        shot(page, "04-plan-approved")
        page.close()
    finally:
        sub.loop_stop()
        sub.disconnect()


def test_viewer_cannot_see_evidence(browser: Any, server: MapServer, stack: Stack) -> None:
    page = open_map(browser, server, "viewer")
    page.evaluate("window.citymap.intersections.get('i041').marker.fire('click')")
    page.wait_for_selector("#violation-queue", timeout=10_000)
    assert page.locator("#approve-plan").count() == 0
    assert page.locator("#violation-queue .evidence, #violation-queue .plate").count() == 0
    v = make_violation(777_002, "i041", datetime.now(UTC), random.Random(4))
    stack.produce("traffic.violations", b"i041", TOPICS["traffic.violations"].codec.encode(v))
    page.wait_for_selector(
        f"#feed li[data-violation-id='{v.violation_id}']", state="attached", timeout=2_000
    )
    html = page.content()
    assert str(v.details["plate"]) not in html and "evidence" not in page.inner_text("body").lower()
    events = page.evaluate("window.citymap.events")
    assert all(
        "evidence_uri" not in e[1] and "plate" not in e[1].get("details", {}) for e in events
    )
    shot(page, "05-viewer-intersection")
    page.close()


def test_district_panel_and_wall_display(browser: Any, server: MapServer) -> None:
    page = open_map(browser, server, "utility", size=(1920, 1080), scale=2)  # 4K wall
    assert page.evaluate("window.citymap.layers.intersections") == 12
    assert page.evaluate("window.citymap.layers.violations") is None  # utility sees none
    page.locator(".leaflet-districts-pane path").first.click(position={"x": 15, "y": 15})
    page.wait_for_selector("#c-load canvas", timeout=10_000)
    page.wait_for_selector("#acc table", timeout=10_000)
    assert "MAPE" in page.inner_text("#acc")
    href = page.get_attribute("#csv", "href")
    assert href and "loads.csv" in href
    shot(page, "06-district-panel-wall-4k")
    page.close()
