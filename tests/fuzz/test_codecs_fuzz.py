"""Property-based tests of every codec: bad input raises SchemaError with a message, never
another exception; whatever decodes re-encodes to the same message.

Decision on timestamps: the codecs accept any timezone-aware timestamp that exists in UTC
(years 1..9999), however far in the past or future; plausibility (clock skew, far future) is a
pipeline rule with a DLQ reason, not a wire-format rule.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from citystream.errors import SchemaError
from schemas.codecs import FrameCodec, JsonCodec
from schemas.messages import MESSAGE_TYPES
from schemas.topics import DEAD_LETTER_CODEC, TOPICS
from tests.fuzz.samples import SAMPLES

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CODECS: dict[str, JsonCodec[Any]] = {
    name: JsonCodec(model) for name, model in MESSAGE_TYPES.items()
}
NAMES = sorted(CODECS)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(["", "1", "2026-02-01T10:15:00", "2026-02-01T10:15:00Z", "car", "red"]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def decodes_or_schema_error(codec: Any, data: bytes) -> Any:
    """The property: a message, or SchemaError with a message naming the codec."""
    try:
        message = codec.decode(data)
    except SchemaError as exc:
        assert str(exc), "a SchemaError must say what is wrong"
        return None
    # anything accepted is canonical after one round trip
    again = codec.decode(codec.encode(message))
    assert again == message
    return message


def paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += paths(v, (*prefix, i))
    return out


def set_path(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    obj = json.loads(json.dumps(obj))
    target = obj
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    return obj


def test_every_topic_codec_is_covered() -> None:
    schemas = {t.schema for t in TOPICS.values()} - {"frame"}
    assert schemas <= set(SAMPLES)
    assert set(MESSAGE_TYPES) == set(SAMPLES)
    for name in NAMES:  # the samples themselves are valid
        assert decodes_or_schema_error(CODECS[name], json.dumps(SAMPLES[name]).encode()) is not None


@pytest.mark.parametrize("name", NAMES)
@FAST
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes(name: str, data: bytes) -> None:
    decodes_or_schema_error(CODECS[name], data)


@pytest.mark.parametrize("name", NAMES)
@FAST
@given(data=st.data(), value=json_values)
def test_one_field_replaced_by_anything(name: str, data: st.DataObject, value: Any) -> None:
    sample = SAMPLES[name]
    path = data.draw(st.sampled_from(paths(sample)))
    decodes_or_schema_error(CODECS[name], json.dumps(set_path(sample, path, value)).encode())


@pytest.mark.parametrize("name", NAMES)
@FAST
@given(data=st.data())
def test_truncated_json_is_a_schema_error(name: str, data: st.DataObject) -> None:
    raw = json.dumps(SAMPLES[name]).encode()
    cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    with pytest.raises(SchemaError):
        CODECS[name].decode(raw[:cut])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("v", [0, 2, -1, 10**30, "1", "2", None, [], 1.5])
def test_wrong_schema_version(name: str, v: Any) -> None:
    with pytest.raises(SchemaError, match="v"):
        CODECS[name].decode(json.dumps({**SAMPLES[name], "v": v}).encode())


@pytest.mark.parametrize("name", NAMES)
def test_unknown_field_is_rejected(name: str) -> None:
    with pytest.raises(SchemaError, match=r"extra|not permitted"):
        CODECS[name].decode(json.dumps({**SAMPLES[name], "surprise": 1}).encode())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_nan_and_infinity_never_pass(name: str, token: str) -> None:
    for path in paths(SAMPLES[name]):
        sample = SAMPLES[name]
        leaf: Any = sample
        for p in path:
            leaf = leaf[p]
        if not isinstance(leaf, float):
            continue
        raw = json.dumps(set_path(sample, path, "@@")).replace('"@@"', token).encode()
        msg = decodes_or_schema_error(CODECS[name], raw)
        assert msg is None, f"{name}.{path} accepted {token}"


@pytest.mark.parametrize("name", NAMES)
def test_huge_payload_is_refused_before_parsing(name: str) -> None:
    codec = CODECS[name]
    big = b'{"pad": "' + b"x" * codec.max_bytes + b'"}'
    with pytest.raises(SchemaError, match="exceeds"):
        codec.decode(big)
    with pytest.raises(SchemaError):
        codec.decode(b"[" * 200_000)  # deep nesting: a parse error, not a RecursionError


aware = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda m: timezone(timedelta(minutes=m))
)


@FAST
@given(
    name=st.sampled_from([n for n in NAMES if any("T" in str(v) for v in SAMPLES[n].values())]),
    when=st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
    tz=st.one_of(st.none(), offsets),
)
def test_timestamps_far_past_future_naive(name: str, when: datetime, tz: Any) -> None:
    sample = SAMPLES[name]
    field = next(k for k, v in sample.items() if v == "2026-02-01T10:15:00Z")
    stamp = when.replace(tzinfo=tz).isoformat()
    msg = decodes_or_schema_error(CODECS[name], json.dumps({**sample, field: stamp}).encode())
    if tz is None:
        assert msg is None, "naive timestamps are rejected"
    else:
        in_range = (
            datetime.min.replace(tzinfo=UTC)
            <= when.replace(tzinfo=UTC) - tz.utcoffset(None)
            <= datetime.max.replace(tzinfo=UTC)
        )
        assume(in_range)
        assert msg is not None, f"aware {stamp} must be accepted"
        assert getattr(msg, field).utcoffset() == timedelta(0)


# An aware timestamp that leaves the calendar once converted to UTC must be a SchemaError,
# not an OverflowError (stages catch SchemaError only: anything else is a poison pill).
@pytest.mark.parametrize(
    "stamp", ["9999-12-31T23:59:00-14:00", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-00:01"]
)
def test_timestamp_that_leaves_the_calendar_in_utc_is_a_schema_error(stamp: str) -> None:
    sample = {**SAMPLES["signal_phase_change"], "changed_at": stamp}
    with pytest.raises(SchemaError):
        CODECS["signal_phase_change"].decode(json.dumps(sample).encode())


@FAST
@given(gateway=st.text(max_size=80), meter=st.text(max_size=80))
def test_unknown_or_malformed_ids(gateway: str, meter: str) -> None:
    sample = set_path(SAMPLES["meter_batch"], ("readings", 0, "meter_id"), meter)
    msg = decodes_or_schema_error(
        CODECS["meter_batch"], json.dumps({**sample, "gateway_id": gateway}).encode()
    )
    if msg is not None:  # well-formed ids decode; whether they exist is the pipeline's question
        assert msg.gateway_id == gateway and 1 <= len(gateway) <= 64 and "/" not in gateway


def test_dead_letter_codec_is_the_registry_one() -> None:
    assert DEAD_LETTER_CODEC.model is MESSAGE_TYPES["dead_letter"]


# --- frames ------------------------------------------------------------------------------------

FRAME = FrameCodec(max_bytes=64 * 1024)
HEADER = json.dumps(SAMPLES["frame_header"]).encode()
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 32 + b"\xff\xd9"


def frame_bytes(header: bytes = HEADER, image: bytes = JPEG, hlen: int | None = None) -> bytes:
    n = len(header) if hlen is None else hlen
    return b"CSF1" + n.to_bytes(2, "big") + header + image


def test_valid_frame_round_trip() -> None:
    frame = FRAME.decode(frame_bytes())
    assert FRAME.decode(FRAME.encode(frame)) == frame


@FAST
@given(data=st.binary(max_size=400))
def test_frame_arbitrary_bytes(data: bytes) -> None:
    for blob in (data, b"CSF1" + data, frame_bytes(image=data)):
        try:
            FRAME.decode(blob)
        except SchemaError as exc:
            assert str(exc)


@FAST
@given(image=st.binary(max_size=2000).filter(lambda b: not b.startswith(b"\xff\xd8")))
def test_non_jpeg_frames_are_refused(image: bytes) -> None:
    with pytest.raises(SchemaError, match="JPEG"):
        FRAME.decode(frame_bytes(image=image))


@FAST
@given(hlen=st.integers(min_value=0, max_value=65535), header=st.binary(max_size=200))
def test_frame_header_length_lies(hlen: int, header: bytes) -> None:
    try:
        FRAME.decode(frame_bytes(header=header, hlen=hlen))
    except SchemaError as exc:
        assert str(exc)


def test_oversized_frame_is_refused() -> None:
    big = frame_bytes(image=b"\xff\xd8" + b"\x00" * FRAME.max_bytes + b"\xff\xd9")
    with pytest.raises(SchemaError, match="exceeds"):
        FRAME.decode(big)


@FAST
@given(field=st.sampled_from(["width", "height", "seq"]), value=json_scalars)
def test_frame_header_fields(field: str, value: Any) -> None:
    header = json.dumps({**SAMPLES["frame_header"], field: value}).encode()
    try:
        frame = FRAME.decode(frame_bytes(header=header))
    except SchemaError:
        return
    got = getattr(frame.header, field)
    assert not isinstance(got, float) or math.isfinite(got)
