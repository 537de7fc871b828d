"""Pace simulated blocks in real time or at a speed factor (time-warp is simply not pacing)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from simulators.meters.block import ReadingBlock


def paced(
    blocks: Iterable[ReadingBlock],
    *,
    speed: float = 1.0,
    granularity_s: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[ReadingBlock]:
    """Yield sub-blocks when their simulated arrival time comes due on the wall clock.

    ``speed=1`` is real time, ``speed=60`` an hour per minute.  Readings are released in
    chunks of ``granularity_s`` simulated seconds (scaled by ``speed``), so a block holding a
    whole interval trickles out as its gateways upload.  ``clock``/``sleep`` are injectable for
    tests.
    """
    if speed <= 0:
        raise ValueError("speed must be > 0")
    wall0: float | None = None
    sim0 = 0.0
    step = granularity_s * speed
    for block in blocks:
        if len(block) == 0:
            continue
        if wall0 is None:
            wall0, sim0 = clock(), float(block.arrival[0])
        edges = np.arange(float(block.arrival[0]), float(block.arrival[-1]) + step, step)
        cuts = np.searchsorted(block.arrival, edges[1:], side="left")
        lo = 0
        for hi in [*cuts.tolist(), len(block)]:
            if hi <= lo:
                continue
            due = wall0 + (float(block.arrival[hi - 1]) - sim0) / speed
            wait = due - clock()
            if wait > 0:
                sleep(wait)
            yield block.take(np.arange(lo, hi))
            lo = hi
