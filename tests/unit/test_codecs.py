from __future__ import annotations

import base64
import json
import struct

import pytest

from citystream.errors import SchemaError
from schemas import messages as m
from schemas.codecs import FRAME_MAGIC, Frame, FrameCodec, JsonCodec, dead_letter
from tests.unit.factories import T0, make_batch, make_reading

JPEG = b"\xff\xd8\xff\xe0" + b"x" * 100 + b"\xff\xd9"


def test_json_roundtrip_normalises_time_to_utc() -> None:
    codec = JsonCodec(m.MeterReading)
    raw = json.dumps(
        {"v": 1, "meter_id": "m1", "ts": "2026-01-05T07:15:00+07:00", "import_kwh": 1.5}
    ).encode()
    reading = codec.decode(raw)
    assert reading.ts == T0.replace(minute=15)
    assert reading.ts.utcoffset() is not None and reading.ts.utcoffset().total_seconds() == 0
    assert codec.decode(codec.encode(reading)) == reading


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty payload"),
        (b'{"v": 1, "meter_id": "m1", "ts": "2026-01-05T00:15:00Z", "import_kwh"', "Invalid JSON"),
        (b'{"v": 2, "meter_id": "m1", "ts": "2026-01-05T00:15:00Z", "import_kwh": 1}', "v:"),
        (b'{"v": 1, "meter_id": "m1", "ts": "2026-01-05T00:15:00", "import_kwh": 1}', "ts:"),
        (
            b'{"v": 1, "meter_id": "m1", "ts": "2026-01-05T00:15:00Z", "import_kwh": -1}',
            "import_kwh:",
        ),
        (
            b'{"v": 1, "meter_id": "m1", "ts": "2026-01-05T00:15:00Z", "import_kwh": NaN}',
            "finite number",
        ),
        (
            b'{"v": 1, "meter_id": "m1", "ts": "2026-01-05T00:15:00Z", "import_kwh": "1e999"}',
            "import_kwh:",
        ),
        (
            b'{"v": 1, "meter_id": "a/b", "ts": "2026-01-05T00:15:00Z", "import_kwh": 1}',
            "meter_id:",
        ),
        (
            b'{"v": 1, "meter_id": "m1", "ts": "2026-01-05T00:15:00Z", "import_kwh": 1, "x": 1}',
            "x: Extra inputs",
        ),
        (b"[1, 2, 3]", "<root>"),
    ],
)
def test_json_decode_errors_say_what_is_wrong(payload: bytes, reason: str) -> None:
    with pytest.raises(SchemaError, match="MeterReading") as exc:
        JsonCodec(m.MeterReading).decode(payload)
    assert reason in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_json_decode_rejects_oversized_payload() -> None:
    codec = JsonCodec(m.MeterBatch, max_bytes=1000)
    with pytest.raises(SchemaError, match="exceeds the limit"):
        codec.decode(make_batch(n=50).model_dump_json().encode())


def test_json_encode_refuses_other_type() -> None:
    with pytest.raises(TypeError):
        JsonCodec(m.MeterBatch).encode(make_reading())  # type: ignore[arg-type]


def _frame(seq: int = 7) -> Frame:
    header = m.FrameHeader(camera_id="cam-1", seq=seq, captured_at=T0, width=640, height=360)
    return Frame(header=header, jpeg=JPEG)


def test_frame_roundtrip() -> None:
    codec = FrameCodec()
    data = codec.encode(_frame())
    assert data.startswith(FRAME_MAGIC)
    assert codec.decode(data) == _frame()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "magic"),
        (b"\xff\xd8\xff\xd9", "magic"),
        (FRAME_MAGIC + struct.pack(">H", 500) + b"{}", "runs past the end"),
        (FRAME_MAGIC + struct.pack(">H", 2) + b"{}" + JPEG, "camera_id"),
    ],
)
def test_frame_decode_errors(data: bytes, reason: str) -> None:
    with pytest.raises(SchemaError, match=reason):
        FrameCodec().decode(data)


def test_frame_rejects_non_jpeg_and_truncated_jpeg() -> None:
    codec = FrameCodec()
    good = codec.encode(_frame())
    with pytest.raises(SchemaError, match="not a complete JPEG"):
        codec.decode(good[:-2])
    with pytest.raises(SchemaError, match="not JPEG"):
        codec.encode(Frame(header=_frame().header, jpeg=b"\x89PNG...."))
    with pytest.raises(SchemaError, match="exceeds the limit"):
        FrameCodec(max_bytes=50).decode(good)


def test_dead_letter_keeps_reason_and_payload() -> None:
    payload = b"x" * 600_000
    dl = dead_letter(
        source_topic="meter.readings",
        payload=payload,
        error=SchemaError("bad ts"),
        stage="energy",
        key=b"m1",
        partition=2,
        offset=41,
    )
    assert dl.reason == "bad ts" and dl.error_type == "SchemaError"
    assert dl.payload_size == 600_000
    assert base64.b64decode(dl.payload_b64) == payload[: 512 * 1024]
    assert (dl.partition, dl.offset, dl.key) == (2, 41, "m1")
    assert dl.failed_at.utcoffset() is not None


@pytest.mark.parametrize("name", sorted(m.MESSAGE_TYPES))
def test_every_message_type_has_a_version_and_forbids_extras(name: str) -> None:
    model = m.MESSAGE_TYPES[name]
    schema = model.model_json_schema()
    assert "v" in schema["properties"]
    assert schema.get("additionalProperties") is False
