"""The city map's API against the real stack: TimescaleDB (seeded scratch database), Kafka
(live tail -> SSE) and Mosquitto (approved plans)."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from citymap.seed import CitySize, make_violation, seed
from citymap.testing import TEST_TOKENS, MapServer, map_settings, scratch_database
from citystream.testing import Stack
from schemas import messages as m
from schemas.topics import TOPICS

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)
SIZE = CitySize(days=7, violations_per_day=100)


@pytest.fixture(scope="module")
def server(stack: Stack) -> Iterator[MapServer]:
    with scratch_database(stack.settings.db) as db:
        seed(db.dsn, SIZE, now=NOW)
        srv = MapServer(map_settings(stack.settings, db)).start()
        try:
            yield srv
        finally:
            srv.stop()


def client(server: MapServer, role: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {TEST_TOKENS[role]}"} if role else {}
    return httpx.Client(base_url=server.url + "/api/v1", headers=headers, timeout=15)


@pytest.fixture(scope="module")
def op(server: MapServer) -> httpx.Client:
    return client(server, "operator")


@pytest.fixture(scope="module")
def ut(server: MapServer) -> httpx.Client:
    return client(server, "utility")


@pytest.fixture(scope="module")
def vw(server: MapServer) -> httpx.Client:
    return client(server, "viewer")


# --- auth --------------------------------------------------------------------------------


def test_openapi_document_lists_the_endpoints(server: MapServer) -> None:
    doc = httpx.get(server.url + "/api/v1/openapi.json").json()
    for path in (
        "/api/v1/violations",
        "/api/v1/intersections/{intersection_id}/counts",
        "/api/v1/forecasts",
        "/api/v1/live",
        "/api/v1/alerts/{alert_id}/ack",
    ):
        assert path in doc["paths"]


def test_requests_without_or_with_a_wrong_token_are_refused(server: MapServer) -> None:
    r = client(server, None).get("/intersections")
    assert r.status_code == 401 and "Bearer" in r.json()["detail"]
    r = httpx.get(server.url + "/api/v1/intersections", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json()["detail"] == "unknown token"
    r = httpx.get(server.url + "/api/v1/me", params={"access_token": TEST_TOKENS["viewer"]})
    assert r.json()["role"] == "viewer"


@pytest.mark.parametrize(
    ("role", "method", "path", "status"),
    [
        ("utility", "GET", "/violations", 403),
        ("viewer", "GET", "/audit", 403),
        ("viewer", "POST", "/violations/x/review", 403),
        ("utility", "POST", "/violations/x/review", 403),
        ("viewer", "POST", "/intersections/i011/plans/plan-b/approve", 403),
        ("utility", "POST", "/intersections/i011/plans/plan-b/approve", 403),
        ("viewer", "POST", "/alerts/a-1/ack", 403),
        ("viewer", "GET", "/violations/v-i011-0/evidence", 403),
        ("utility", "GET", "/districts", 200),
        ("viewer", "GET", "/districts", 200),
        ("operator", "GET", "/audit", 200),
    ],
)
def test_role_matrix(server: MapServer, role: str, method: str, path: str, status: int) -> None:
    r = client(server, role).request(method, path, json={"decision": "confirm"})
    assert r.status_code == status, r.text
    if status == 403:
        assert f"role {role} may not" in r.json()["detail"]


# --- traffic -----------------------------------------------------------------------------


def test_intersections_carry_live_flow_and_queue(vw: httpx.Client) -> None:
    rows = vw.get("/intersections", params={"window_min": 60}).json()
    assert len(rows) == 12
    first = rows[0]
    assert first["id"] == "i011" and first["cameras"] == 1
    assert first["flow_vph"] > 0 and first["queue"] >= 0 and first["has_recommendation"]
    one = vw.get("/intersections/i011").json()
    assert one["camera_list"][0]["id"] == "i011-cam1"
    assert vw.get("/intersections/nowhere").status_code == 404


def test_road_network_is_the_simulators_net_placed_at_each_intersection(
    vw: httpx.Client,
) -> None:
    fc = vw.get("/roads").json()
    # 12 intersections x 8 edges (4 arms, in and out) of the SUMO junction network
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 96
    one = vw.get("/roads", params={"intersection_id": "i011"}).json()["features"]
    assert {f["properties"]["edge"] for f in one} == {
        f"{arm}_{d}" for arm in "NESW" for d in ("in", "out")
    }
    site = vw.get("/intersections/i011").json()
    s_in = next(f for f in one if f["properties"]["edge"] == "S_in")
    assert s_in["properties"]["bus_lanes"] == 1 and s_in["properties"]["lanes"] == 3
    (lon0, lat0), (_, lat1) = (
        s_in["geometry"]["coordinates"][0],
        s_in["geometry"]["coordinates"][-1],
    )
    # the south approach runs north, from ~150 m south of the junction up to its stop line
    assert lat0 < lat1 <= site["lat"] and 140 < (site["lat"] - lat0) * 111_195 < 155
    assert abs(lon0 - site["lon"]) < 1e-4
    assert vw.get("/roads", params={"intersection_id": "bad id!"}).status_code == 422


def test_violations_are_paged_and_filtered(op: httpx.Client) -> None:
    page = op.get("/violations", params={"limit": 10}).json()
    assert len(page["items"]) == 10 and page["next_offset"] == 10
    times = [v["occurred_at"] for v in page["items"]]
    assert times == sorted(times, reverse=True)
    page2 = op.get("/violations", params={"limit": 10, "offset": 10}).json()
    assert not {v["violation_id"] for v in page["items"]} & {
        v["violation_id"] for v in page2["items"]
    }
    only = op.get(
        "/violations", params={"kind": "red_light", "intersection_id": "i021", "limit": 500}
    ).json()["items"]
    assert only and all(v["kind"] == "red_light" and v["intersection_id"] == "i021" for v in only)
    since = (NOW - timedelta(hours=6)).isoformat()
    recent = op.get("/violations", params={"since": since, "limit": 500}).json()["items"]
    assert recent and all(v["occurred_at"] >= since for v in recent)
    total = op.get(
        "/violations", params={"since": (NOW - timedelta(days=8)).isoformat(), "limit": 500}
    ).json()
    assert total["next_offset"] == 500  # 700 seeded


def test_viewer_sees_no_plates_or_evidence(op: httpx.Client, vw: httpx.Client) -> None:
    full = op.get("/violations", params={"limit": 5}).json()["items"]
    assert all(v["evidence_uri"].startswith("file://") and "plate" in v["details"] for v in full)
    redacted = vw.get("/violations", params={"limit": 5}).json()["items"]
    assert [v["violation_id"] for v in redacted] == [v["violation_id"] for v in full]
    for v in redacted:
        assert "evidence_uri" not in v and "evidence_sha256" not in v
        assert "plate" not in v["details"] and "speed_kmh" in v["details"]
        assert "plate" not in json.dumps(v) and "evidence" not in json.dumps(v)


def test_operator_gets_the_traffic_workers_evidence_bundle(
    op: httpx.Client, vw: httpx.Client, server: MapServer
) -> None:
    from psycopg.types.json import Jsonb

    from citystream.db import rows
    from streams.traffic.evidence import store_bundle, verify_bundle
    from tests.unit.test_traffic_analytics import _evidence

    ev = _evidence()
    stored = store_bundle(server.settings.state_dir / "evidence", ev)  # as the worker does
    msg = ev.violation.to_message("i011", stored.uri, stored.sha256)
    with psycopg.connect(server.settings.db.dsn, autocommit=True) as conn:
        row = tuple(Jsonb(x) if isinstance(x, dict) else x for x in rows.violation_row(msg))
        conn.execute(
            "INSERT INTO violations (violation_id, occurred_at, kind, camera_id, "
            "intersection_id, track_id, vehicle_class, confidence, evidence_uri, "
            "evidence_sha256, details) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
            "ON CONFLICT DO NOTHING",
            row,
        )
        conn.execute(
            "INSERT INTO violations (violation_id, occurred_at, kind, camera_id, "
            "intersection_id, track_id, vehicle_class, confidence, evidence_uri, "
            "evidence_sha256, details) VALUES ('v-escape', now(), 'red_light', 'c', 'i011', "
            "1, 'car', 0.9, '../../../etc/passwd', %s, '{}') ON CONFLICT DO NOTHING",
            ("0" * 64,),
        )
    url = f"/violations/{msg.violation_id}/evidence"
    crop = op.get(url)
    assert crop.status_code == 200 and crop.headers["content-type"] == "image/jpeg"
    assert crop.content == ev.crop
    frame = op.get(url, params={"part": "frames/after_00.jpg"})
    assert frame.status_code == 200 and frame.content[:2] == b"\xff\xd8"
    bundle = op.get(url, params={"part": "bundle"})
    assert bundle.headers["content-type"] == "application/zip"
    got = server.settings.state_dir / "downloaded.zip"
    got.write_bytes(bundle.content)
    assert verify_bundle(got, msg.evidence_sha256)  # the hash in the DB row proves it intact
    assert op.get(url, params={"part": "../x"}).status_code == 422
    assert op.get(url, params={"part": "frames/after_99.jpg"}).status_code == 404
    assert vw.get(url).status_code == 403
    assert op.get("/violations/v-escape/evidence").status_code == 404


def test_operator_reviews_a_violation_once_and_it_is_audited(op: httpx.Client) -> None:
    vid = op.get("/violations", params={"review_state": "pending", "limit": 1}).json()["items"][0][
        "violation_id"
    ]
    r = op.post(f"/violations/{vid}/review", json={"decision": "reject", "note": "glare"})
    assert r.status_code == 200 and r.json()["review_state"] == "rejected"
    assert r.json()["reviewed_by"] == "test-operator"
    again = op.post(f"/violations/{vid}/review", json={"decision": "confirm"})
    assert again.status_code == 409 and "already rejected" in again.json()["detail"]
    assert op.post("/violations/nope/review", json={"decision": "confirm"}).status_code == 404
    bad = op.post(f"/violations/{vid}/review", json={"decision": "maybe"})
    assert bad.status_code == 422 and "decision" in bad.json()["detail"]
    entries = op.get("/audit").json()["items"]
    assert any(
        e["action"] == "violation.reject"
        and e["subject"] == vid
        and e["actor"] == "test-operator"
        and e["details"]["note"] == "glare"
        for e in entries
    )
    rejected = op.get("/violations", params={"review_state": "rejected"}).json()["items"]
    assert vid in {v["violation_id"] for v in rejected}


def test_counts_are_time_bucketed_at_the_chosen_resolution(
    vw: httpx.Client, server: MapServer
) -> None:
    since = (NOW - timedelta(hours=6)).replace(minute=0, second=0, microsecond=0)
    until = since + timedelta(hours=4)
    params = {"resolution": "1h", "since": since.isoformat(), "until": until.isoformat()}
    rows = vw.get("/intersections/i011/counts", params=params).json()
    assert {r["key"] for r in rows} == {"through", "left", "right"}
    assert len({r["bucket"] for r in rows}) == 4
    with psycopg.connect(server.settings.db.dsn) as conn:
        want = conn.execute(
            "SELECT sum(count) FROM traffic_counts WHERE intersection_id='i011' "
            "AND window_start >= %s AND window_start < %s",
            (since, until),
        ).fetchone()[0]
    assert sum(r["vehicles"] for r in rows) == want
    assert all(0 <= r["arrivals_on_red"] <= r["arrivals"] for r in rows)
    assert sum(r["arrivals_on_red"] for r in rows) > 0
    by_lane = vw.get("/intersections/i011/counts", params={**params, "by": "lane"}).json()
    assert {r["key"] for r in by_lane} == {"Nt", "Nl", "Nr", "St", "Sl", "Sr"}
    q = vw.get("/intersections/i011/queues", params={**params, "resolution": "30m"}).json()
    assert len({r["bucket"] for r in q}) == 8 and all(r["max_queue"] >= r["avg_queue"] for r in q)


@pytest.mark.parametrize(
    ("path", "params", "status", "says"),
    [
        ("/intersections/i011/counts", {"resolution": "7x"}, 400, "resolution '7x'"),
        ("/intersections/i011/counts", {"resolution": "1s"}, 400, "between 10s and 7d"),
        (
            "/intersections/i011/counts",
            {"resolution": "30s", "since": "2026-01-01T00:00:00Z", "until": "2026-03-01T00:00:00Z"},
            400,
            "buckets",
        ),
        ("/intersections/i011/counts", {"since": "2026-01-01T00:00:00"}, 400, "no timezone"),
        (
            "/intersections/i011/counts",
            {"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
            400,
            "before until",
        ),
        ("/intersections/i011/counts", {"by": "colour"}, 422, "query.by"),
        ("/intersections/nowhere/counts", {}, 404, "no intersection"),
        ("/intersections/bad%20id/counts", {}, 422, "path.intersection_id"),
        ("/violations", {"limit": 0}, 422, "query.limit"),
        ("/violations", {"limit": 501}, 422, "less than or equal to 500"),
        ("/violations", {"kind": "jaywalking"}, 422, "query.kind"),
        ("/violations", {"since": "yesterday"}, 422, "query.since"),
        ("/violations", {"since": "2020-01-01T00:00:00Z"}, 400, "longer than"),
        ("/loads", {"scope": "city", "scope_id": "d01"}, 422, "query.scope"),
        ("/loads", {"scope": "district"}, 422, "query.scope_id"),
        ("/loads", {"scope": "district", "scope_id": "d99"}, 404, "no district"),
        (
            "/forecasts",
            {"scope": "district", "scope_id": "d01", "vintage": "2026-01-01T00:00"},
            400,
            "no timezone",
        ),
    ],
)
def test_bad_parameters_get_a_4xx_saying_what_is_wrong(
    op: httpx.Client, path: str, params: dict[str, Any], status: int, says: str
) -> None:
    r = op.get(path, params=params)
    assert r.status_code == status, r.text
    assert says in r.json()["detail"], r.json()


# --- signal plans ------------------------------------------------------------------------


def _subscribe(server: MapServer, topic: str) -> tuple[Any, queue.Queue[tuple[str, bytes, int]]]:
    import paho.mqtt.client as mqtt

    got: queue.Queue[tuple[str, bytes, int]] = queue.Queue()
    ready = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-plan-sub")
    c.on_connect = lambda cl, *a: cl.subscribe(topic, qos=1)
    c.on_subscribe = lambda *a: ready.set()
    c.on_message = lambda cl, ud, msg: got.put((msg.topic, msg.payload, msg.qos))
    c.connect(server.settings.mqtt.host, server.settings.mqtt.port)
    c.loop_start()
    assert ready.wait(10)
    return c, got


def test_plans_current_recommended_history(vw: httpx.Client) -> None:
    p = vw.get("/intersections/i012/plans").json()
    assert p["current"]["plan_id"] == "plan-a" and p["current"]["kind"] == "current"
    rec = p["recommended"]
    assert rec["plan_id"] == "plan-b" and rec["predicted_delay_recommended_s"] == 31.2
    assert rec["plan"]["phases"][0]["green_s"] == 46
    assert len(p["history"]) == 2


def test_operator_approves_a_plan_and_it_arrives_on_mqtt(
    server: MapServer, op: httpx.Client
) -> None:
    sub, got = _subscribe(server, "city/+/signals/+/plan")
    try:
        r = op.post("/intersections/i011/plans/plan-b/approve", json={"note": "peak"})
        assert r.status_code == 200, r.text
        assert r.json()["mqtt_topic"] == "city/hcm/signals/i011/plan"
        topic, payload, qos = got.get(timeout=10)
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert topic == "city/hcm/signals/i011/plan" and qos == 1
    plan = m.SignalPlan.model_validate_json(payload)
    assert plan.intersection_id == "i011" and plan.plan_id == "plan-b"
    assert [ph.green_s for ph in plan.phases] == [46, 24]
    p = op.get("/intersections/i011/plans").json()
    assert p["current"]["plan_id"] == "plan-b" and p["recommended"] is None
    assert any(
        h["review_state"] == "approved" and h["reviewed_by"] == "test-operator"
        for h in p["history"]
    )
    again = op.post("/intersections/i011/plans/plan-b/approve")
    assert again.status_code == 409 and "already approved" in again.json()["detail"]
    audit = op.get("/audit").json()["items"]
    assert any(e["action"] == "plan.approve" and e["subject"] == "i011/plan-b" for e in audit)
    assert op.post("/intersections/i011/plans/plan-z/approve").status_code == 404


def test_operator_rejects_a_plan(op: httpx.Client) -> None:
    r = op.post("/intersections/i021/plans/plan-b/reject", json={"note": "school event"})
    assert r.status_code == 200 and r.json()["review_state"] == "rejected"
    assert op.get("/intersections/i021/plans").json()["current"]["plan_id"] == "plan-a"


# --- energy ------------------------------------------------------------------------------


def test_districts_are_geojson_coloured_by_load_against_forecast(ut: httpx.Client) -> None:
    fc = ut.get("/districts").json()
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 6
    f = fc["features"][0]
    assert f["geometry"]["type"] == "Polygon"
    props = f["properties"]
    assert props["status"] in ("above", "below", "as_forecast")
    assert props["avg_kw"] > 0 and props["p10"] <= props["p50"] <= props["p90"]
    feeders = ut.get("/feeders", params={"district_id": "d01"}).json()
    assert len(feeders) == 4 and all(0 < f["utilisation"] < 1 for f in feeders)


def test_loads_forecasts_vintages_accuracy_and_csv(ut: httpx.Client) -> None:
    loads = ut.get(
        "/loads", params={"scope": "district", "scope_id": "d01", "resolution": "1h"}
    ).json()
    assert 24 * 7 - 2 <= len(loads) <= 24 * 7 + 1
    vint = ut.get("/forecasts/vintages", params={"scope": "district", "scope_id": "d01"}).json()
    assert len(vint) >= 7 and vint[0]["points"] == 192
    latest = ut.get("/forecasts", params={"scope": "district", "scope_id": "d01"}).json()
    assert latest["issued_at"] == vint[0]["issued_at"].replace("+00:00", "Z") or latest[
        "issued_at"
    ].startswith(vint[0]["issued_at"][:19])
    older = ut.get(
        "/forecasts",
        params={"scope": "district", "scope_id": "d01", "vintage": vint[2]["issued_at"]},
    ).json()
    assert older["issued_at"][:19] == vint[2]["issued_at"][:19] and len(older["points"]) == 192
    acc = ut.get("/forecasts/accuracy", params={"scope": "district", "scope_id": "d01"}).json()
    assert acc["n"] > 500 and 0 < acc["mape_pct"] < 20 and acc["coverage_p10_p90_pct"] > 50
    csv = ut.get("/loads.csv", params={"scope": "feeder", "scope_id": "d01-f1"})
    assert csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.strip().splitlines()
    assert lines[0].startswith("time_utc,actual_kw,forecast_p10_kw")
    assert len(lines) > 7 * 96 and lines[-1].split(",")[1] == ""  # ends in the forecast


def test_alerts_and_acknowledgement_by_the_right_role(op: httpx.Client, ut: httpx.Client) -> None:
    energy = ut.get("/alerts", params={"source": "energy"}).json()["items"]
    camera = op.get("/alerts", params={"source": "camera"}).json()["items"]
    assert energy and camera
    r = op.post(f"/alerts/{energy[0]['alert_id']}/ack")
    assert r.status_code == 403 and "acknowledged by utility" in r.json()["detail"]
    r = ut.post(f"/alerts/{energy[0]['alert_id']}/ack")
    assert r.status_code == 200 and r.json()["acknowledged_by"] == "test-utility"
    assert ut.post(f"/alerts/{camera[0]['alert_id']}/ack").status_code == 403
    assert op.post(f"/alerts/{camera[0]['alert_id']}/ack").status_code == 200
    acked = ut.get("/alerts", params={"acknowledged": "true"}).json()["items"]
    assert {a["alert_id"] for a in acked} == {energy[0]["alert_id"], camera[0]["alert_id"]}
    assert ut.post("/alerts/nope/ack").status_code == 404


# --- live --------------------------------------------------------------------------------


class SseReader:
    """Reads an SSE stream on a thread; events land in a queue as (name, data, t)."""

    def __init__(self, url: str, token: str) -> None:
        self.events: queue.Queue[tuple[str, dict[str, Any], float]] = queue.Queue()
        self.opened = threading.Event()
        self._client = httpx.Client(timeout=httpx.Timeout(5, read=60))
        self._thread = threading.Thread(target=self._run, args=(url, token), daemon=True)
        self._thread.start()
        assert self.opened.wait(10)

    def _run(self, url: str, token: str) -> None:
        try:
            with self._client.stream("GET", url, params={"access_token": token}) as r:
                name = ""
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: "):
                        data = json.loads(line[6:])
                        if name == "hello":
                            self.opened.set()
                        self.events.put((name, data, time.monotonic()))
        except httpx.HTTPError:
            pass

    def wait_for(self, name: str, pred: Any, timeout_s: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                n, data, _ = self.events.get(timeout=left)
            except queue.Empty:
                return None
            if n == name and pred(data):
                return data
        return None

    def close(self) -> None:
        self._client.close()


def test_a_new_violation_and_alert_reach_every_open_map_within_2_s(
    server: MapServer, stack: Stack
) -> None:
    url = server.url + "/api/v1/live"
    readers = {role: SseReader(url, TEST_TOKENS[role]) for role in TEST_TOKENS}
    try:
        import random

        v = make_violation(99_999, "i011", datetime.now(UTC), random.Random(1))
        t0 = time.monotonic()
        stack.produce("traffic.violations", b"i011", TOPICS["traffic.violations"].codec.encode(v))
        seen_op = readers["operator"].wait_for(
            "violation", lambda d: d["violation_id"] == v.violation_id, 2.0
        )
        assert seen_op is not None and time.monotonic() - t0 < 2.0
        assert seen_op["details"]["plate"] == v.details["plate"]
        seen_vw = readers["viewer"].wait_for(
            "violation", lambda d: d["violation_id"] == v.violation_id, 2.0
        )
        assert seen_vw is not None and "evidence_uri" not in seen_vw
        assert "plate" not in seen_vw["details"]

        a = m.Alert(
            alert_id="live-1",
            kind="peak_load",
            severity=m.Severity.critical,
            source="energy",
            subject_id="d01-f1",
            raised_at=datetime.now(UTC),
            message="d01-f1 at 104% of rated capacity",
        )
        t0 = time.monotonic()
        stack.produce("energy.alerts", b"d01-f1", TOPICS["energy.alerts"].codec.encode(a))
        for role in TEST_TOKENS:
            got = readers[role].wait_for("alert", lambda d: d["alert_id"] == "live-1", 2.0)
            assert got is not None, role
        assert time.monotonic() - t0 < 2.0
        # utility never receives violations
        assert readers["utility"].wait_for("violation", lambda d: True, 0.5) is None
    finally:
        for r in readers.values():
            r.close()
