"""Query parameter parsing that FastAPI's types do not cover: resolutions and time ranges.

Pure functions; errors are :class:`ParamError` (a ``ValueError``) with a message that says
what is wrong and what would be accepted.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from citystream.errors import CityStreamError

_RESOLUTION = re.compile(r"^([1-9][0-9]{0,3})(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MIN_RESOLUTION = timedelta(seconds=10)
MAX_RESOLUTION = timedelta(days=7)
MAX_BUCKETS = 20_000


class ParamError(CityStreamError, ValueError):
    """A query parameter is malformed or out of range."""


def parse_resolution(text: str) -> timedelta:
    """``"15m"`` -> 15 minutes. Units s, m, h, d; between 10 s and 7 d."""
    match = _RESOLUTION.match(text.strip())
    if not match:
        raise ParamError(
            f"resolution {text!r} is not understood: use a number and a unit s, m, h or d, "
            "e.g. 30s, 5m, 15m, 1h, 1d"
        )
    value = timedelta(seconds=int(match.group(1)) * _UNIT_S[match.group(2)])
    if not MIN_RESOLUTION <= value <= MAX_RESOLUTION:
        raise ParamError(f"resolution {text!r} must be between 10s and 7d")
    return value


def time_range(
    since: datetime | None,
    until: datetime | None,
    *,
    default: timedelta,
    max_span: timedelta,
    now: datetime | None = None,
) -> tuple[datetime, datetime]:
    """``[since, until)`` with defaults (``until`` = now, ``since`` = until - default).

    Both must be timezone-aware; ``since`` < ``until``; the span at most ``max_span``.
    """
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise ParamError(
                f"{name}={value.isoformat()} has no timezone: add one, e.g. "
                f"{value.isoformat()}Z or {value.isoformat()}+07:00"
            )
    end = until or now or datetime.now(UTC)
    start = since or end - default
    if start >= end:
        raise ParamError(f"since ({start.isoformat()}) must be before until ({end.isoformat()})")
    if end - start > max_span:
        raise ParamError(
            f"the range {start.isoformat()} .. {end.isoformat()} is longer than "
            f"{_span_text(max_span)}: narrow it"
        )
    return start.astimezone(UTC), end.astimezone(UTC)


def check_buckets(start: datetime, end: datetime, resolution: timedelta) -> None:
    """Refuse a range/resolution pair that would make more than :data:`MAX_BUCKETS` buckets."""
    n = (end - start) / resolution
    if n > MAX_BUCKETS:
        raise ParamError(
            f"{int(n)} buckets of {_span_text(resolution)} in the range: at most {MAX_BUCKETS}; "
            "use a coarser resolution or a shorter range"
        )


def _span_text(span: timedelta) -> str:
    s = int(span.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"
