from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from citymap.auth import Principal, Role, TokenBook, token_from
from citymap.live import Event, visible
from citymap.params import ParamError, check_buckets, parse_resolution, time_range
from citymap.redact import violation_for
from citystream.settings import TokenGrant

T = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("15m", timedelta(minutes=15)),
        ("1h", timedelta(hours=1)),
        ("7d", timedelta(days=7)),
    ],
)
def test_resolutions(text: str, expected: timedelta) -> None:
    assert parse_resolution(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [("5", "not understood"), ("1s", "between"), ("8d", "between"), ("m5", "not understood")],
)
def test_bad_resolutions(text: str, says: str) -> None:
    with pytest.raises(ParamError, match=says):
        parse_resolution(text)


def test_time_range_defaults_and_errors() -> None:
    assert time_range(None, None, default=timedelta(days=1), max_span=timedelta(days=2), now=T) == (
        T - timedelta(days=1),
        T,
    )
    with pytest.raises(ParamError, match="no timezone"):
        time_range(datetime(2026, 1, 1), None, default=timedelta(1), max_span=timedelta(2))
    with pytest.raises(ParamError, match="before until"):
        time_range(T, T, default=timedelta(1), max_span=timedelta(2))
    with pytest.raises(ParamError, match="longer than 2d"):
        time_range(T - timedelta(days=3), T, default=timedelta(1), max_span=timedelta(days=2))
    with pytest.raises(ParamError, match="buckets"):
        check_buckets(T - timedelta(days=90), T, timedelta(seconds=10))


def test_tokens_and_headers() -> None:
    book = TokenBook([TokenGrant(token="x" * 20, role="viewer", name="ann")])
    assert book.lookup("x" * 20) == Principal("ann", Role.viewer)
    assert book.lookup("y" * 20) is None
    assert token_from("Bearer abc", "q") == "abc"
    assert token_from("Basic abc", "q") is None
    assert token_from(None, "q") == "q"


def test_viewer_gets_no_plate_or_evidence_and_utility_no_violations() -> None:
    v = {
        "violation_id": "v1",
        "evidence_uri": "file:///e.jpg",
        "evidence_sha256": "0" * 64,
        "details": {"plate": "51A-12345", "plate_confidence": 0.9, "speed_kmh": 61.0},
    }
    assert violation_for(v, True) == v
    assert violation_for(v, False) == {"violation_id": "v1", "details": {"speed_kmh": 61.0}}
    e = Event("violation", v)
    assert visible(e, Principal("u", Role.utility)) is None
    assert "evidence_uri" not in (visible(e, Principal("v", Role.viewer)) or {})
    assert visible(Event("alert", {"a": 1}), Principal("u", Role.utility)) == {"a": 1}
