"""A corridor of two simulated junctions on the real stack: vehicles leaving one by its east
arm drive into the other by its west arm, through Kafka ``sim.handoffs``; handoffs that do
not decode or come from a junction that is not the arm's neighbour are dead-lettered."""

from __future__ import annotations

import json
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("libsumo")

from citystream.testing import Stack, wait_until
from schemas.messages import DeadLetter, VehicleClass, VehicleHandoff
from schemas.topics import DEAD_LETTER_CODEC, TOPICS

HANDOFFS = TOPICS["sim.handoffs"]
TAG = uuid.uuid4().hex[:6]
A, B = f"cor-a-{TAG}", f"cor-b-{TAG}"


def junction(
    stack: Stack, tmp: Path, iid: str, neighbour: str, seconds: int
) -> subprocess.Popen[bytes]:
    return stack.spawn(
        tmp / f"{iid}.log",
        *("-m", "citystream.cli", "sim", "intersection", "--intersection-id", iid),
        *("--neighbour", neighbour, "--no-register", "--violators", "0"),
        *("--duration", str(seconds), "--speed", "5", "--fps", "1", "--width", "320"),
        *("--truth", str(tmp / f"{iid}.truth.jsonl"), "--log-level", "INFO"),
    )


def truth(tmp: Path, iid: str, kind: str) -> list[dict[str, Any]]:
    lines = (tmp / f"{iid}.truth.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_vehicles_drive_from_one_junction_to_the_next(stack: Stack, tmp_path: Path) -> None:
    # B listens first and runs on for a while after A has finished (both 5x real time)
    b = junction(stack, tmp_path, B, f"W={A}", 500)
    try:
        wait_until(
            lambda: "admits vehicles from" in (tmp_path / f"{B}.log").read_text(),
            60,
            "the second junction to listen for handoffs",
        )
        stranger = VehicleHandoff(
            vehicle_ref="h.stranger.1",
            from_intersection="cor-x",
            to_intersection=B,
            arm="W",
            vehicle_class=VehicleClass.car,
            speed_mps=10.0,
            left_at=datetime(2026, 1, 5, tzinfo=UTC),
        )
        stack.produce(HANDOFFS.name, B.encode(), b"{not json")
        stack.produce(HANDOFFS.name, B.encode(), HANDOFFS.codec.encode(stranger))
        a = junction(stack, tmp_path, A, f"E={B}", 300)
        assert a.wait(timeout=300) == 0, (tmp_path / f"{A}.log").read_text()[-3000:]
        assert b.wait(timeout=300) == 0, (tmp_path / f"{B}.log").read_text()[-3000:]
    finally:
        for proc in (b, *([a] if "a" in locals() else [])):
            if proc.poll() is None:
                proc.kill()
    sent = [r["vehicle_ref"] for r in truth(tmp_path, A, "handoff_out")]
    assert len(sent) >= 20  # five minutes of the east exit's traffic
    assert {r["to_intersection"] for r in truth(tmp_path, A, "handoff_out")} == {B}
    came = truth(tmp_path, B, "handoff_in")
    assert [r["vehicle_ref"] for r in came] == sent  # each once, in order
    assert {r["arm"] for r in came} == {"W"} and {r["from_intersection"] for r in came} == {A}
    assert {r["vehicle_class"] for r in came} <= {"motorbike", "car", "bus", "truck"}
    letters = [
        DEAD_LETTER_CODEC.decode(r.value)
        for r in stack.read_topic(HANDOFFS.dlq, where=lambda r: r.key == B.encode())
    ]
    reasons = sorted(d.reason for d in letters if isinstance(d, DeadLetter))
    assert len(reasons) == 2, reasons
    assert any(f"faces {A}, not cor-x" in r for r in reasons), reasons
    assert any("json" in r.lower() for r in reasons), reasons
