"""The capture file: compact, append-only, indexed, crash-tolerant.

Layout (all integers big-endian)::

    file    := HEADER frame*  [INDEX frame  TRAILER]
    HEADER  := b"CSCAP\\x00\\x01\\n"  u32 meta_len  meta_json          (written once, at open)
    frame   := SYNC(4) u8 kind  u32 length  u32 crc32(kind + payload)  payload[length]
    kind T  := u16 topic_id  topic_name(utf-8)                          (before its first use)
    kind B  := u8 codec  u32 n_records  u32 raw_len  i64 min_ts  i64 max_ts  u64 first_seq
               body   (``raw_len`` bytes of records once decompressed; codec 0 raw, 1 zlib, 2 zstd)
    kind X  := index JSON: topics and one entry per block (offset, n, min_ts, max_ts, first_seq)
    TRAILER := u64 offset_of_X_frame  b"CSCAPEND"                       (written by close())
    record  := u16 topic_id  i32 partition  i64 offset  i64 timestamp_ms
               bytes key  bytes value  u16 n_headers (str name, bytes value)*
    bytes   := i32 length (-1: None) data ;  str := u16 length utf-8

A block is the unit of compression, checksum and seeking.  A recorder closes a block every
``block_records`` records, ``block_bytes`` bytes or on :meth:`CaptureWriter.flush` (the
recorder flushes once a second), so a crash loses at most the records of the open block.

Reading never trusts the file: a missing trailer (the recorder was killed) makes the reader
rebuild the index by scanning frames; a frame whose CRC does not match or that runs past the
end is reported in :attr:`CaptureReader.damage` and skipped by searching for the next ``SYNC``
marker, so a truncated tail or a corrupted block still leaves every intact block readable.
Timestamps are Kafka record timestamps (epoch milliseconds); the per-block ``min_ts``/``max_ts``
make ``--from``/``--to`` skip whole blocks without decompressing them.
"""

from __future__ import annotations

import json
import os
import struct
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self

from citystream.errors import CityStreamError

MAGIC = b"CSCAP\x00\x01\n"
SYNC = b"\xc5\x1d\xca\x9e"
TRAILER_MAGIC = b"CSCAPEND"
FORMAT_VERSION = 1

_FRAME = struct.Struct(">4sBII")
_BLOCK = struct.Struct(">BIIqqQ")
_REC = struct.Struct(">Hiqq")
_I32 = struct.Struct(">i")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_TRAILER = struct.Struct(">Q8s")

KIND_TOPIC, KIND_BLOCK, KIND_INDEX = ord("T"), ord("B"), ord("X")
CODEC_RAW, CODEC_ZLIB, CODEC_ZSTD = 0, 1, 2
CODECS = {"none": CODEC_RAW, "zlib": CODEC_ZLIB, "zstd": CODEC_ZSTD}
#: A frame longer than this is treated as corruption (no allocation bombs from a bad length).
MAX_FRAME_BYTES = 512 * 1024 * 1024
MAX_TOPICS = 65535

Headers = tuple[tuple[str, bytes | None], ...]


class CaptureError(CityStreamError, ValueError):
    """A capture file cannot be read (not a capture, unsupported version, unusable)."""


@dataclass(frozen=True)
class CapturedRecord:
    """One Kafka record as captured."""

    topic: str
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    partition: int = -1
    offset: int = -1
    headers: Headers = ()


@dataclass(frozen=True)
class BlockInfo:
    """One index entry: where a block starts and what it holds."""

    offset: int
    n_records: int
    min_ts: int
    max_ts: int
    first_seq: int


@dataclass(frozen=True)
class Damage:
    """A stretch of the file that could not be read, and why."""

    offset: int
    reason: str


# --- compression -----------------------------------------------------------------------------


def _zstd() -> Any:
    try:
        import zstandard

        return zstandard
    except ImportError as exc:
        raise CaptureError(
            "zstd compression needs the 'zstandard' package (pip install zstandard); "
            "use compression='zlib'"
        ) from exc


def _compress(codec: int, raw: bytes, level: int) -> bytes:
    if codec == CODEC_ZLIB:
        return zlib.compress(raw, level)
    if codec == CODEC_ZSTD:
        return bytes(_zstd().ZstdCompressor(level=level).compress(raw))
    return raw


def _decompress(codec: int, data: bytes, raw_len: int) -> bytes:
    if codec == CODEC_RAW:
        return data
    if codec == CODEC_ZLIB:
        return zlib.decompress(data, bufsize=max(raw_len, 1))
    if codec == CODEC_ZSTD:
        return bytes(_zstd().ZstdDecompressor().decompress(data, max_output_size=raw_len))
    raise CaptureError(f"unknown block codec {codec}")


# --- encoding of records ---------------------------------------------------------------------


def _put_bytes(out: list[bytes], data: bytes | None) -> None:
    if data is None:
        out.append(_I32.pack(-1))
    else:
        out.append(_I32.pack(len(data)))
        out.append(data)


def encode_record(topic_id: int, rec: CapturedRecord) -> bytes:
    out = [_REC.pack(topic_id, rec.partition, rec.offset, rec.timestamp_ms)]
    _put_bytes(out, rec.key)
    _put_bytes(out, rec.value)
    out.append(_U16.pack(len(rec.headers)))
    for name, value in rec.headers:
        raw = name.encode()
        out.append(_U16.pack(len(raw)))
        out.append(raw)
        _put_bytes(out, value)
    return b"".join(out)


def _get_bytes(buf: memoryview, pos: int) -> tuple[bytes | None, int]:
    (n,) = _I32.unpack_from(buf, pos)
    pos += 4
    if n < 0:
        return None, pos
    if pos + n > len(buf):
        raise CaptureError("record runs past the end of its block")
    return bytes(buf[pos : pos + n]), pos + n


def decode_records(body: bytes, topics: Mapping[int, str]) -> Iterator[CapturedRecord]:
    """The records of one decompressed block body."""
    buf = memoryview(body)
    pos = 0
    while pos < len(buf):
        topic_id, partition, offset, ts = _REC.unpack_from(buf, pos)
        pos += _REC.size
        key, pos = _get_bytes(buf, pos)
        value, pos = _get_bytes(buf, pos)
        (n_headers,) = _U16.unpack_from(buf, pos)
        pos += 2
        headers: list[tuple[str, bytes | None]] = []
        for _ in range(n_headers):
            (n,) = _U16.unpack_from(buf, pos)
            name = bytes(buf[pos + 2 : pos + 2 + n]).decode()
            hv, pos = _get_bytes(buf, pos + 2 + n)
            headers.append((name, hv))
        try:
            topic = topics[topic_id]
        except KeyError:
            raise CaptureError(f"record names topic id {topic_id}, never defined") from None
        yield CapturedRecord(topic, key, value, ts, partition, offset, tuple(headers))


def _frame(kind: int, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(bytes([kind])))
    return _FRAME.pack(SYNC, kind, len(payload), crc) + payload


# --- writer ----------------------------------------------------------------------------------


class CaptureWriter:
    """Append records to a new capture file; :meth:`close` writes the index.

    ``compression`` is ``"zlib"`` (default), ``"zstd"`` (needs ``zstandard``) or ``"none"``;
    a block that does not shrink by compression (JPEG frames) is stored raw.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        metadata: Mapping[str, Any] | None = None,
        compression: str = "zlib",
        level: int = 6,
        block_records: int = 1000,
        block_bytes: int = 1 << 20,
        fsync: bool = False,
    ) -> None:
        if compression not in CODECS:
            raise ValueError(f"compression must be one of {sorted(CODECS)}, got {compression!r}")
        if block_records < 1 or block_bytes < 1:
            raise ValueError("block_records and block_bytes must be >= 1")
        self.path = Path(path)
        self.codec = CODECS[compression]
        if self.codec == CODEC_ZSTD:
            _zstd()
        self.level = level
        self.block_records = block_records
        self.block_bytes = block_bytes
        self.fsync = fsync
        self.topics: dict[str, int] = {}
        self.blocks: list[BlockInfo] = []
        self.records_written = 0
        self.bytes_in = 0
        self._buf: list[bytes] = []
        self._buf_bytes = 0
        self._new_topics: list[bytes] = []  # definitions written just before their block
        self._min_ts = 0
        self._max_ts = 0
        self._closed = False
        meta = {"format": FORMAT_VERSION, "created_ms": int(time.time() * 1000)}
        meta.update(metadata or {})
        meta_raw = json.dumps(meta, sort_keys=True).encode()
        self._f: BinaryIO = self.path.open("wb")
        self._f.write(MAGIC + _U32.pack(len(meta_raw)) + meta_raw)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _topic_id(self, topic: str) -> int:
        tid = self.topics.get(topic)
        if tid is None:
            if len(self.topics) >= MAX_TOPICS:
                raise ValueError(f"a capture holds at most {MAX_TOPICS} topics")
            tid = self.topics[topic] = len(self.topics)
            self._new_topics.append(_frame(KIND_TOPIC, _U16.pack(tid) + topic.encode()))
        return tid

    def add(self, record: CapturedRecord) -> None:
        """Append one record (buffered into the open block)."""
        if self._closed:
            raise ValueError("capture writer is closed")
        raw = encode_record(self._topic_id(record.topic), record)
        if not self._buf:
            self._min_ts = self._max_ts = record.timestamp_ms
        else:
            self._min_ts = min(self._min_ts, record.timestamp_ms)
            self._max_ts = max(self._max_ts, record.timestamp_ms)
        self._buf.append(raw)
        self._buf_bytes += len(raw)
        self.bytes_in += len(raw)
        if len(self._buf) >= self.block_records or self._buf_bytes >= self.block_bytes:
            self.flush()

    def add_many(self, records: Iterable[CapturedRecord]) -> None:
        for r in records:
            self.add(r)

    def flush(self) -> None:
        """Close the open block: compress, checksum and write it (then flush to the OS)."""
        if self._buf:
            raw = b"".join(self._buf)
            codec = self.codec
            body = _compress(codec, raw, self.level)
            if codec != CODEC_RAW and len(body) >= len(raw) * 0.95:
                codec, body = CODEC_RAW, raw
            head = _BLOCK.pack(
                codec, len(self._buf), len(raw), self._min_ts, self._max_ts, self.records_written
            )
            for definition in self._new_topics:
                self._f.write(definition)
            self._new_topics.clear()
            offset = self._f.tell()
            self._f.write(_frame(KIND_BLOCK, head + body))
            self.blocks.append(
                BlockInfo(offset, len(self._buf), self._min_ts, self._max_ts, self.records_written)
            )
            self.records_written += len(self._buf)
            self._buf = []
            self._buf_bytes = 0
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        """Flush the open block and write the index and trailer (idempotent)."""
        if self._closed:
            return
        self.flush()
        index = {
            "topics": {str(tid): name for name, tid in self.topics.items()},
            "records": self.records_written,
            "blocks": [
                [b.offset, b.n_records, b.min_ts, b.max_ts, b.first_seq] for b in self.blocks
            ],
        }
        offset = self._f.tell()
        self._f.write(_frame(KIND_INDEX, json.dumps(index).encode()))
        self._f.write(_TRAILER.pack(offset, TRAILER_MAGIC))
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())
        self._f.close()
        self._closed = True

    def abandon(self) -> None:
        """Close the file without flushing or indexing (what a crash leaves; for tests)."""
        self._f.close()
        self._closed = True


# --- reader ----------------------------------------------------------------------------------


@dataclass
class CaptureStats:
    records: int = 0
    blocks: int = 0
    min_ts: int | None = None
    max_ts: int | None = None
    per_topic: dict[str, int] = field(default_factory=dict)


class CaptureReader:
    """Read a capture file, complete or not.

    ``complete`` is true when the index was written (the recorder closed the file);
    otherwise the index is rebuilt by scanning.  :attr:`damage` lists what was skipped.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._f: BinaryIO = self.path.open("rb")
        self.size = os.fstat(self._f.fileno()).st_size
        head = self._f.read(len(MAGIC) + 4)
        if len(head) < len(MAGIC) + 4 or not head.startswith(MAGIC[:5]):
            self._f.close()
            raise CaptureError(f"{self.path}: not a CityStream capture file")
        if head[: len(MAGIC)] != MAGIC:
            self._f.close()
            raise CaptureError(f"{self.path}: unsupported capture format version")
        (meta_len,) = _U32.unpack(head[len(MAGIC) :])
        meta_raw = self._f.read(meta_len)
        try:
            self.metadata: dict[str, Any] = json.loads(meta_raw)
        except ValueError as exc:
            self._f.close()
            raise CaptureError(f"{self.path}: damaged header: {exc}") from None
        self.data_start = len(MAGIC) + 4 + meta_len
        self.damage: list[Damage] = []
        self.topics: dict[int, str] = {}
        self.blocks: list[BlockInfo] = []
        self.complete = self._load_index()
        if not self.complete:
            self._scan()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    # frames
    def _read_frame(self, offset: int) -> tuple[int, bytes, int] | str:
        """(kind, payload, next offset) of the frame at ``offset``, or why it is unreadable."""
        self._f.seek(offset)
        head = self._f.read(_FRAME.size)
        if len(head) < _FRAME.size:
            return "truncated frame header"
        sync, kind, length, crc = _FRAME.unpack(head)
        if sync != SYNC:
            return "no frame marker"
        if length > MAX_FRAME_BYTES or offset + _FRAME.size + length > self.size:
            return f"frame of {length} bytes runs past the end of the file (truncated)"
        payload = self._f.read(length)
        if zlib.crc32(payload, zlib.crc32(bytes([kind]))) != crc:
            return "checksum mismatch (corrupted)"
        return kind, payload, offset + _FRAME.size + length

    def _load_index(self) -> bool:
        if self.size < self.data_start + _TRAILER.size:
            return False
        self._f.seek(self.size - _TRAILER.size)
        offset, magic = _TRAILER.unpack(self._f.read(_TRAILER.size))
        if magic != TRAILER_MAGIC or not self.data_start <= offset < self.size:
            return False
        frame = self._read_frame(offset)
        if isinstance(frame, str) or frame[0] != KIND_INDEX:
            return False
        try:
            index = json.loads(frame[1])
            self.topics = {int(k): v for k, v in index["topics"].items()}
            self.blocks = [BlockInfo(*map(int, b)) for b in index["blocks"]]
        except (ValueError, KeyError, TypeError):
            self.topics, self.blocks = {}, []
            return False
        self._end = offset
        return True

    def _scan(self) -> None:
        """Rebuild topics and block index by walking the frames, skipping damage."""
        pos = self.data_start
        while pos < self.size:
            frame = self._read_frame(pos)
            if isinstance(frame, str):
                nxt = self._find_sync(pos + 1)
                self.damage.append(Damage(pos, f"{frame}; skipped {nxt - pos} bytes"))
                pos = nxt
                continue
            kind, payload, nxt = frame
            if kind == KIND_TOPIC and len(payload) >= 2:
                self.topics[_U16.unpack_from(payload)[0]] = payload[2:].decode("utf-8", "replace")
            elif kind == KIND_BLOCK and len(payload) >= _BLOCK.size:
                _, n, _, lo, hi, seq = _BLOCK.unpack_from(payload)
                self.blocks.append(BlockInfo(pos, n, lo, hi, seq))
            elif kind == KIND_INDEX:
                break
            pos = nxt
        self._end = pos

    def _find_sync(self, start: int) -> int:
        self._f.seek(start)
        chunk_size = 1 << 20
        pos = start
        tail = b""
        while True:
            chunk = self._f.read(chunk_size)
            if not chunk:
                return self.size
            data = tail + chunk
            i = data.find(SYNC)
            if i >= 0:
                return pos - len(tail) + i
            tail = data[-(len(SYNC) - 1) :]
            pos += len(chunk)

    # records
    def _block_records(self, info: BlockInfo) -> Iterator[CapturedRecord]:
        frame = self._read_frame(info.offset)
        if isinstance(frame, str) or frame[0] != KIND_BLOCK:
            self.damage.append(Damage(info.offset, frame if isinstance(frame, str) else "bad kind"))
            return
        payload = frame[1]
        codec, _n, raw_len, *_ = _BLOCK.unpack_from(payload)
        try:
            body = _decompress(codec, payload[_BLOCK.size :], raw_len)
            records = list(decode_records(body, self.topics))
        except (zlib.error, struct.error, UnicodeDecodeError, CaptureError) as exc:
            self.damage.append(Damage(info.offset, f"undecodable block: {exc}"))
            return
        yield from records

    def records(
        self,
        *,
        start_ms: int | None = None,
        end_ms: int | None = None,
        topics: Iterable[str] | None = None,
    ) -> Iterator[CapturedRecord]:
        """Records in file order, optionally only ``start_ms <= timestamp < end_ms`` and of
        ``topics``.  Blocks entirely outside the time range are not read."""
        wanted = set(topics) if topics is not None else None
        for info in self.blocks:
            if start_ms is not None and info.max_ts < start_ms:
                continue
            if end_ms is not None and info.min_ts >= end_ms:
                continue
            for rec in self._block_records(info):
                if start_ms is not None and rec.timestamp_ms < start_ms:
                    continue
                if end_ms is not None and rec.timestamp_ms >= end_ms:
                    continue
                if wanted is not None and rec.topic not in wanted:
                    continue
                yield rec

    def __iter__(self) -> Iterator[CapturedRecord]:
        return self.records()

    def stats(self) -> CaptureStats:
        """Counts from the index (no decompression), per topic by reading the records."""
        s = CaptureStats(records=sum(b.n_records for b in self.blocks), blocks=len(self.blocks))
        if self.blocks:
            s.min_ts = min(b.min_ts for b in self.blocks)
            s.max_ts = max(b.max_ts for b in self.blocks)
        for rec in self.records():
            s.per_topic[rec.topic] = s.per_topic.get(rec.topic, 0) + 1
        return s


def read_capture(path: str | os.PathLike[str], **filters: Any) -> list[CapturedRecord]:
    """Every (matching) record of a capture, as a list."""
    with CaptureReader(path) as reader:
        return list(reader.records(**filters))
