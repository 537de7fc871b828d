"""Every worker runs with the collector tuned for stream processing (see ``tune_gc``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from citystream.worker import GC_GEN0_THRESHOLD, run_until_signalled


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)
    gc.unfreeze()


@pytest.mark.usefixtures("restore_gc")
def test_workers_collect_rarely_and_freeze_start_up_objects() -> None:
    seen: list[tuple[int, int, int]] = []
    frozen: list[int] = []

    def run() -> int:
        seen.append(gc.get_threshold())
        frozen.append(gc.get_freeze_count())
        return 3

    assert run_until_signalled("probe", run, lambda: None) == 3
    assert seen[0][0] == GC_GEN0_THRESHOLD > 700
    assert frozen[0] > 0
