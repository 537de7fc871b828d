"""Decode a Kafka record with its topic's codec, or turn it into a dead letter."""

from __future__ import annotations

from typing import Any

from citystream.errors import SchemaError
from schemas.codecs import dead_letter
from schemas.messages import DeadLetter
from schemas.topics import Topic


def decode_record(
    topic: Topic,
    value: bytes | None,
    *,
    stage: str,
    key: bytes | None = None,
    partition: int | None = None,
    offset: int | None = None,
) -> tuple[Any, DeadLetter | None]:
    """``(message, None)`` when ``value`` is valid, else ``(None, dead_letter)`` with the reason.

    Only schema problems become dead letters; programming errors propagate.
    """
    try:
        if value is None:
            raise SchemaError(f"{topic.name}: record without a value (tombstone)")
        return topic.codec.decode(value), None
    except SchemaError as exc:
        return None, dead_letter(
            source_topic=topic.name,
            payload=value or b"",
            error=exc,
            stage=stage,
            key=key,
            partition=partition,
            offset=offset,
        )
