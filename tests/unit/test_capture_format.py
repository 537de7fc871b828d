"""The capture file format: round trip, seeking, truncation, corruption."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from citystream.capture import (
    CapturedRecord,
    CaptureError,
    CaptureReader,
    CaptureWriter,
    read_capture,
    read_truth,
    truth_path,
    write_capture,
)
from citystream.capture.format import SYNC


def make_records(n: int, topics: tuple[str, ...] = ("a", "b"), t0: int = 1_700_000_000_000):
    out = []
    for i in range(n):
        out.append(
            CapturedRecord(
                topic=topics[i % len(topics)],
                key=None if i % 7 == 0 else f"k{i % 5}".encode(),
                value=None if i % 11 == 0 else bytes([i % 256]) * (i % 50) + b"\xff\xd8jpeg",
                timestamp_ms=t0 + i * 1000,
                partition=i % 3,
                offset=i,
                headers=(("h", b"v"), ("none", None), ("ü", b"\x00")) if i % 4 == 0 else (),
            )
        )
    return out


def write(path: Path, records, **kw) -> None:
    with CaptureWriter(path, metadata={"test": True}, **kw) as w:
        w.add_many(records)


@pytest.mark.parametrize("compression", ["zlib", "none"])
@pytest.mark.parametrize("block_records", [1, 7, 1000])
def test_round_trip(tmp_path: Path, compression: str, block_records: int) -> None:
    recs = make_records(100)
    write(tmp_path / "c.cap", recs, compression=compression, block_records=block_records)
    with CaptureReader(tmp_path / "c.cap") as r:
        assert r.complete and not r.damage
        assert r.metadata["test"] is True
        assert list(r) == recs
        s = r.stats()
        assert (s.records, s.per_topic) == (100, {"a": 50, "b": 50})


def test_empty_capture(tmp_path: Path) -> None:
    write(tmp_path / "e.cap", [])
    with CaptureReader(tmp_path / "e.cap") as r:
        assert r.complete and list(r) == [] and r.stats().records == 0


def test_time_range_skips_blocks(tmp_path: Path) -> None:
    recs = make_records(1000)
    write(tmp_path / "c.cap", recs, block_records=100)
    t0 = recs[0].timestamp_ms
    got = read_capture(tmp_path / "c.cap", start_ms=t0 + 250_000, end_ms=t0 + 260_000)
    assert got == recs[250:260]
    with CaptureReader(tmp_path / "c.cap") as r:
        read = []
        orig = r._block_records
        r._block_records = lambda info: (read.append(info), orig(info))[1]  # type: ignore[method-assign]
        assert list(r.records(start_ms=t0 + 250_000, end_ms=t0 + 260_000)) == recs[250:260]
        assert len(read) == 1  # only the block holding 250..259 was decompressed
    assert read_capture(tmp_path / "c.cap", topics=["b"]) == recs[1::2]


def test_compression_shrinks_json_and_stores_jpeg_raw(tmp_path: Path) -> None:
    js = [
        CapturedRecord("t", b"k", b'{"meter_id":"mt0000001","import_kwh":0.25}' * 20, i)
        for i in range(500)
    ]
    write(tmp_path / "j.cap", js)
    assert (tmp_path / "j.cap").stat().st_size < sum(len(r.value or b"") for r in js) / 10
    rnd = [CapturedRecord("t", b"k", os.urandom(5000), i) for i in range(50)]
    write(tmp_path / "r.cap", rnd)
    assert read_capture(tmp_path / "r.cap") == rnd


def test_truncated_tail_keeps_valid_prefix(tmp_path: Path) -> None:
    recs = make_records(300)
    path = tmp_path / "c.cap"
    write(path, recs, block_records=50)
    data = path.read_bytes()
    for cut in (len(data) - 5, len(data) - 400, len(data) // 2):
        (tmp_path / "t.cap").write_bytes(data[:cut])
        with CaptureReader(tmp_path / "t.cap") as r:
            assert not r.complete
            got = list(r)
            assert got == recs[: len(got)]  # a prefix, whole blocks only
            assert len(got) % 50 == 0  # whole blocks
            if cut < len(data) - 400:
                assert r.damage and "truncated" in r.damage[-1].reason


def test_crash_without_close_loses_only_open_block(tmp_path: Path) -> None:
    recs = make_records(120)
    w = CaptureWriter(tmp_path / "c.cap", block_records=1000)
    w.add_many(recs[:100])
    w.flush()  # what the recorder does once a second
    w.add_many(recs[100:])
    w.abandon()  # killed: no index, open block lost
    with CaptureReader(tmp_path / "c.cap") as r:
        assert not r.complete and not r.damage
        assert list(r) == recs[:100]


def test_corrupted_block_is_reported_and_skipped(tmp_path: Path) -> None:
    recs = make_records(300)
    path = tmp_path / "c.cap"
    write(path, recs, block_records=100)
    with CaptureReader(path) as r:
        second = r.blocks[1]
    data = bytearray(path.read_bytes())
    data[second.offset + 40] ^= 0xFF
    path.write_bytes(bytes(data))
    with CaptureReader(path) as r:  # the index is intact: the block fails its CRC on read
        assert list(r) == recs[:100] + recs[200:]
        assert "checksum" in r.damage[0].reason
    # without the index (cut the trailer) the scan resyncs on the next frame marker
    path.write_bytes(bytes(data[:-3]))
    with CaptureReader(path) as r:
        assert list(r) == recs[:100] + recs[200:]
        assert any("checksum" in d.reason for d in r.damage)


def test_garbage_between_frames_is_skipped(tmp_path: Path) -> None:
    recs = make_records(20)
    path = tmp_path / "c.cap"
    write(path, recs, block_records=10)
    with CaptureReader(path) as r:
        cut = r.blocks[1].offset
    data = path.read_bytes()
    path.write_bytes(data[:cut] + b"junk" + SYNC[:2] + data[cut:-16])
    with CaptureReader(path) as r:
        assert list(r) == recs
        assert len(r.damage) == 1


@pytest.mark.parametrize(
    "content,msg",
    [
        (b"", "not a CityStream"),
        (b"PK\x03\x04" * 10, "not a CityStream"),
        (b"CSCAP\x00\x09\n\0\0\0\0", "version"),
    ],
)
def test_not_a_capture(tmp_path: Path, content: bytes, msg: str) -> None:
    (tmp_path / "x").write_bytes(content)
    with pytest.raises(CaptureError, match=msg):
        CaptureReader(tmp_path / "x")


def test_write_capture_with_truth(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    ts = datetime(2026, 2, 1, tzinfo=UTC)
    n = write_capture(
        tmp_path / "s.cap",
        [("meter.readings", b"gw1", b"{}", ts), ("meter.readings", b"gw2", b"{}", 5)],
        truth=[{"kind": "fault", "at": ts}],
        metadata={"seed": 3},
    )
    assert n == 2
    recs = read_capture(tmp_path / "s.cap")
    assert [r.timestamp_ms for r in recs] == [int(ts.timestamp() * 1000), 5]
    assert [r.offset for r in recs] == [0, 1]
    assert truth_path(tmp_path / "s.cap").name == "s.truth.jsonl"
    assert read_truth(tmp_path / "s.cap") == [{"kind": "fault", "at": "2026-02-01T00:00:00+00:00"}]
    with pytest.raises(ValueError, match="aware"):
        write_capture(tmp_path / "n.cap", [("t", None, b"", datetime(2026, 1, 1))])
