"""Encode/decode of every wire message, with strict validation and clear errors.

JSON messages use one :class:`JsonCodec` per model.  Camera frames use
:class:`FrameCodec`: ``b"CSF1"`` magic, a 2-byte big-endian header length, the
:class:`~schemas.messages.FrameHeader` as JSON, then the JPEG bytes.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from pydantic import ValidationError

from citystream.errors import SchemaError
from schemas.messages import DeadLetter, FrameHeader, Message

M = TypeVar("M", bound=Message)

MAX_JSON_BYTES = 4 * 1024 * 1024
MAX_FRAME_BYTES = 8 * 1024 * 1024
DLQ_PAYLOAD_LIMIT = 512 * 1024  # a whole gateway batch fits; Kafka's default max is 1 MiB
FRAME_MAGIC = b"CSF1"
_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"


def describe_validation_error(exc: ValidationError, limit: int = 5) -> str:
    """One line per problem, e.g. ``readings.0.import_kwh: Input should be >= 0``."""
    parts = []
    for err in exc.errors()[:limit]:
        where = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - limit
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)


class JsonCodec(Generic[M]):
    """UTF-8 JSON codec of one message model."""

    def __init__(self, model: type[M], max_bytes: int = MAX_JSON_BYTES) -> None:
        self.model = model
        self.max_bytes = max_bytes
        self.name = model.__name__

    def encode(self, message: M) -> bytes:
        if not isinstance(message, self.model):
            raise TypeError(f"{self.name} codec cannot encode {type(message).__name__}")
        return message.model_dump_json().encode()

    def decode(self, data: bytes) -> M:
        if len(data) > self.max_bytes:
            raise SchemaError(
                f"{self.name}: payload of {len(data)} bytes exceeds the limit of {self.max_bytes}"
            )
        if not data:
            raise SchemaError(f"{self.name}: empty payload")
        try:
            return self.model.model_validate_json(data)
        except ValidationError as exc:
            raise SchemaError(f"{self.name}: {describe_validation_error(exc)}") from exc


@dataclass(frozen=True)
class Frame:
    """A decoded camera frame: header plus the JPEG bytes (not decoded to pixels here)."""

    header: FrameHeader
    jpeg: bytes


class FrameCodec:
    """Binary codec of camera frames: magic, header length, header JSON, JPEG."""

    name = "Frame"
    _header_codec = JsonCodec(FrameHeader, max_bytes=65535)

    def __init__(self, max_bytes: int = MAX_FRAME_BYTES) -> None:
        self.max_bytes = max_bytes

    def encode(self, frame: Frame) -> bytes:
        header = self._header_codec.encode(frame.header)
        if not frame.jpeg.startswith(_JPEG_SOI):
            raise SchemaError("Frame: image bytes are not JPEG (no SOI marker)")
        return FRAME_MAGIC + struct.pack(">H", len(header)) + header + frame.jpeg

    def decode(self, data: bytes) -> Frame:
        if len(data) > self.max_bytes:
            raise SchemaError(
                f"Frame: {len(data)} bytes exceeds the limit of {self.max_bytes} bytes"
            )
        if len(data) < 6 or not data.startswith(FRAME_MAGIC):
            raise SchemaError("Frame: missing 'CSF1' magic; not a CityStream frame")
        (hlen,) = struct.unpack(">H", data[4:6])
        if 6 + hlen > len(data):
            raise SchemaError(f"Frame: header length {hlen} runs past the end of the message")
        header = self._header_codec.decode(data[6 : 6 + hlen])
        jpeg = data[6 + hlen :]
        if not jpeg.startswith(_JPEG_SOI) or not jpeg.rstrip(b"\x00").endswith(_JPEG_EOI):
            raise SchemaError("Frame: image bytes are not a complete JPEG (SOI/EOI markers)")
        return Frame(header=header, jpeg=jpeg)


def dead_letter(
    *,
    source_topic: str,
    payload: bytes,
    error: BaseException,
    stage: str,
    key: bytes | None = None,
    partition: int | None = None,
    offset: int | None = None,
    now: datetime | None = None,
) -> DeadLetter:
    """Build the dead-letter record for a message that ``stage`` could not process."""
    return DeadLetter(
        source_topic=source_topic,
        partition=partition,
        offset=offset,
        key=key.decode("utf-8", "replace") if key is not None else None,
        payload_b64=base64.b64encode(payload[:DLQ_PAYLOAD_LIMIT]).decode(),
        payload_size=len(payload),
        reason=(str(error) or type(error).__name__)[:4000],
        error_type=type(error).__name__,
        stage=stage,
        failed_at=now or datetime.now(UTC),
    )
