"""One valid wire message (as a JSON-ready dict) per message type, for the fuzzers to mutate."""

from __future__ import annotations

from typing import Any

T = "2026-02-01T10:15:00Z"
SHA = "ab" * 32
PLAN: dict[str, Any] = {
    "intersection_id": "int-1",
    "plan_id": "p1",
    "cycle_s": 90.0,
    "offset_s": 0.0,
    "phases": [
        {
            "name": "ns",
            "signal_groups": ["N_through"],
            "green_s": 30.0,
            "amber_s": 3.0,
            "all_red_s": 1.0,
        }
    ],
    "valid_from": T,
}
TRACK = {
    "track_id": 3,
    "vehicle_class": "car",
    "confidence": 0.9,
    "bbox": {"x1": 1.0, "y1": 2.0, "x2": 30.0, "y2": 40.0},
    "ground_xy": [1.5, -2.0],
    "speed_kmh": 42.0,
}

SAMPLES: dict[str, dict[str, Any]] = {
    "frame_header": {"camera_id": "cam-1", "seq": 7, "captured_at": T, "width": 640, "height": 480},
    "track_batch": {
        "camera_id": "cam-1",
        "frame_seq": 7,
        "captured_at": T,
        "model_version": "yolo11n",
        "tracks": [TRACK],
    },
    "violation": {
        "violation_id": "v-1",
        "kind": "red_light",
        "camera_id": "cam-1",
        "intersection_id": "int-1",
        "track_id": 3,
        "vehicle_class": "car",
        "occurred_at": T,
        "confidence": 0.8,
        "evidence_uri": "file:///evidence/v-1.jpg",
        "evidence_sha256": SHA,
        "details": {"speed_kmh": 50.0},
    },
    "lane_count": {
        "intersection_id": "int-1",
        "camera_id": "cam-1",
        "lane_id": "N1",
        "movement": "through",
        "vehicle_class": "car",
        "window_start": T,
        "window_s": 60,
        "count": 12,
        "occupancy": 0.3,
        "queue_len": 2,
    },
    "signal_phase_change": {
        "intersection_id": "int-1",
        "signal_group": "N_through",
        "state": "red",
        "changed_at": T,
    },
    "signal_plan": PLAN,
    "vehicle_handoff": {
        "vehicle_ref": "h.int-1.f_W_through.7",
        "from_intersection": "int-1",
        "to_intersection": "int-2",
        "arm": "W",
        "vehicle_class": "motorbike",
        "speed_mps": 11.5,
        "left_at": T,
    },
    "signal_recommendation": {
        "intersection_id": "int-1",
        "issued_at": T,
        "basis_start": T,
        "basis_end": T,
        "current_plan_id": "p1",
        "recommended": PLAN,
        "predicted_delay_current_s": 30.0,
        "predicted_delay_recommended_s": 25.0,
    },
    "meter_reading": {"meter_id": "mt0000001", "ts": T, "import_kwh": 0.25},
    "meter_batch": {
        "gateway_id": "gw000001",
        "batch_seq": 4,
        "sent_at": T,
        "readings": [{"meter_id": "mt0000001", "ts": T, "import_kwh": 0.25, "export_kwh": 0.1}],
    },
    "feeder_load": {
        "scope": "feeder",
        "scope_id": "f01",
        "window_start": T,
        "energy_kwh": 120.5,
        "avg_kw": 482.0,
        "meters_reporting": 150,
    },
    "forecast": {
        "scope": "district",
        "scope_id": "d01",
        "issued_at": T,
        "model": "lgbm",
        "points": [{"target": T, "p10": 1.0, "p50": 2.0, "p90": 3.0}],
    },
    "alert": {
        "alert_id": "a-1",
        "kind": "meter_outage",
        "severity": "warning",
        "source": "energy",
        "subject_id": "mt0000001",
        "raised_at": T,
        "message": "no readings for 2 h",
    },
    "dead_letter": {
        "source_topic": "meter.readings",
        "payload_b64": "e30=",
        "payload_size": 2,
        "reason": "bad",
        "error_type": "SchemaError",
        "stage": "bridge",
        "failed_at": T,
    },
}
