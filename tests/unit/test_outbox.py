"""The durable outbox: order, ack, durability across reopen and kill -9, bound, batch ids."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from citystream.metrics import Registry
from edge.outbox import Outbox, OutboxFullError


def items(start: int, n: int) -> list[bytes]:
    return [f"r{i:06d}".encode() for i in range(start, start + n)]


def drain(ob: Outbox, max_items: int = 7) -> list[bytes]:
    """Everything pending, batch by batch, acking each."""
    out: list[bytes] = []
    while (batch := ob.peek_batch(max_items)) is not None:
        out.extend(batch.items)
        ob.ack(batch.batch_id)
    return out


def test_batches_come_out_in_order_and_ack_removes(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as ob:
        ob.append(items(0, 10))
        ob.append(items(10, 5))
        assert ob.pending_count() == 15
        assert ob.size_bytes() == 15 * 7
        b0 = ob.peek_batch(4)
        b1 = ob.peek_batch(4)
        assert b0 is not None and b1 is not None
        assert (b0.batch_id, b0.items) == (0, items(0, 4))
        assert (b1.batch_id, b1.items) == (1, items(4, 4))
        assert ob.ack(b0.batch_id) == 4
        assert ob.ack(b0.batch_id) == 0  # idempotent
        assert ob.pending_count() == 11
        assert drain(ob) == items(8, 7)  # b1 stays out until acked or rewound
        assert ob.ack(b1.batch_id) == 4
        assert ob.pending_count() == 0 and ob.size_bytes() == 0
        assert ob.peek_batch(4) is None


def test_seal_false_returns_only_existing_batches(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as ob:
        ob.append(items(0, 3))
        assert ob.peek_batch(10, seal=False) is None
        assert ob.unbatched_count() == 3
        b = ob.peek_batch(10)
        assert b is not None and b.items == items(0, 3) and ob.unbatched_count() == 0
        ob.rewind()
        again = ob.peek_batch(10, seal=False)
        assert again is not None and again.batch_id == b.batch_id


def test_rewind_resends_unacked_batches_oldest_first_with_same_ids(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as ob:
        ob.append(items(0, 9))
        sent = [ob.peek_batch(3) for _ in range(3)]
        assert [b.batch_id for b in sent if b] == [0, 1, 2]
        ob.ack(1)  # acks can come out of order
        ob.rewind()
        again = [ob.peek_batch(3) for _ in range(3)]
        assert [(b.batch_id, b.items) for b in again if b] == [(0, items(0, 3)), (2, items(6, 3))]
        assert again[2] is None


def test_unacked_entries_survive_reopen_in_order_with_their_batches(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as ob:
        ob.append(items(0, 10))
        b0 = ob.peek_batch(4)
        b1 = ob.peek_batch(4)
        assert b0 is not None and b1 is not None
        ob.ack(b0.batch_id)
        ob.append(items(10, 2))
    with Outbox(path) as ob:
        assert ob.pending_count() == 8
        assert ob.size_bytes() == 8 * 7
        assert ob.unbatched_count() == 4
        first = ob.peek_batch(100)
        assert first is not None and (first.batch_id, first.items) == (1, items(4, 4))
        second = ob.peek_batch(100)
        assert second is not None and (second.batch_id, second.items) == (2, items(8, 4))


def test_batch_ids_keep_increasing_across_reopen_even_when_empty(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as ob:
        ob.append(items(0, 6))
        assert drain(ob, 2) == items(0, 6)
        assert ob.next_batch_id == 3 and ob.pending_count() == 0
    with Outbox(path) as ob:
        assert ob.next_batch_id == 3
        ob.append(items(6, 1))
        b = ob.peek_batch(5)
        assert b is not None and b.batch_id == 3 and b.items == items(6, 1)


def test_source_cursor_is_stored_with_the_append(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as ob:
        assert ob.source_cursor is None
        ob.append(items(0, 2), cursor=2)
        ob.append(items(2, 3), cursor=5)
        ob.append([], cursor=6)  # a source may advance without readings (skipped lines)
        assert ob.source_cursor == 6
    with Outbox(path, max_entries=10) as ob:
        assert ob.source_cursor == 6
        with pytest.raises(OutboxFullError):
            ob.append(items(5, 6), cursor=12)  # refused: the cursor does not move either
        assert ob.source_cursor == 6 and ob.pending_count() == 5


def test_bound_warns_near_full_and_refuses_at_full_without_dropping(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reg = Registry("t")
    with Outbox(tmp_path / "o.db", max_entries=10, registry=reg) as ob:
        caplog.set_level(logging.WARNING, logger="citystream.edge.outbox")
        ob.append(items(0, 7))
        assert not ob.near_full and not caplog.records
        assert reg.get("outbox_near_full").value == 0
        ob.append(items(7, 1))  # 80 %
        assert ob.near_full
        assert any("NEAR FULL" in r.getMessage() for r in caplog.records)
        assert reg.get("outbox_near_full").value == 1
        assert reg.get("outbox_pending").value == 8
        assert reg.get("outbox_fill_ratio").value == pytest.approx(0.8)
        with pytest.raises(OutboxFullError, match="full"):
            ob.append(items(8, 3))  # would be 11 > 10: nothing stored
        assert ob.pending_count() == 8
        ob.append(items(8, 2))  # exactly at the bound is allowed
        with pytest.raises(OutboxFullError):
            ob.append(items(10, 1))
        ob.append(items(10, 1), force=True)  # shutdown flush: over the bound, not lost
        assert drain(ob, 4) == items(0, 11)
        assert not ob.near_full and reg.get("outbox_near_full").value == 0


def test_byte_bound(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=100) as ob:
        ob.append([b"x" * 60])
        with pytest.raises(OutboxFullError):
            ob.append([b"y" * 41])
        ob.append([b"y" * 40])
        assert ob.size_bytes() == 100


def test_wal_and_full_sync_are_in_force(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as ob:
        assert ob._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert ob._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_appends_survive_sigkill(tmp_path: Path) -> None:
    """A child appends and reports each durable append, then is killed with SIGKILL: every
    reported append is there after reopening, in order."""
    path = tmp_path / "o.db"
    child = textwrap.dedent(
        f"""
        import sys
        from edge.outbox import Outbox
        ob = Outbox({str(path)!r})
        i = 0
        while True:
            ob.append([f"r{{j:06d}}".encode() for j in range(i, i + 50)])
            i += 50
            print(i, flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    assert proc.stdout is not None
    reported = 0
    for line in proc.stdout:
        reported = int(line)
        if reported >= 2000:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    with Outbox(path) as ob:
        got = drain(ob, 500)
    assert len(got) >= reported
    assert got == items(0, len(got))
