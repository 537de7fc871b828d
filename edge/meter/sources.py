"""Meter sources for the gateway agent: a JSON-lines replay file and the meter simulator.

Both are resumable (:class:`~edge.meter.agent.ResumableSource`): the agent stores the source
position in the outbox with every durable chunk, so after a crash or reboot the source continues
right after the last reading that reached the disk - nothing read twice, nothing skipped.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from citystream.errors import SchemaError
from schemas.codecs import JsonCodec
from schemas.messages import MeterReading

_CODEC = JsonCodec(MeterReading)


class ReplaySource:
    """MeterReading JSON, one per line (blank lines skipped); the cursor is the line number.

    ``rate`` (readings/s, 0: as fast as possible) paces the replay.
    """

    def __init__(self, path: Path, rate: float = 0.0) -> None:
        self.path = path
        self.rate = rate

    def iter_from(self, cursor: int | None) -> Iterator[tuple[int, MeterReading]]:
        start = cursor or 0
        t0 = time.monotonic()
        sent = 0
        with self.path.open("rb") as f:
            for lineno, line in enumerate(f, start=1):
                if lineno <= start or not line.strip():
                    continue
                try:
                    reading = _CODEC.decode(line.strip())
                except SchemaError as exc:
                    raise SchemaError(f"{self.path}:{lineno}: {exc}") from exc
                if self.rate > 0:
                    sent += 1
                    ahead = sent / self.rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
                yield lineno, reading


class SimSource:
    """The meter simulator as one gateway's meters (all meters of a simulated city).

    Deterministic by seed, so the cursor (readings yielded so far) resumes by skipping.
    ``speed`` is the time-warp factor (one interval every ``interval_s / speed`` seconds);
    0 runs as fast as possible.
    """

    def __init__(
        self, *, meters: int, hours: float, start: str, speed: float = 0.0, seed: int = 0
    ) -> None:
        from datetime import datetime, timedelta

        from citystream.errors import ConfigError

        try:
            from simulators.meters.block import to_readings
            from simulators.meters.generator import MeterSimulator
            from simulators.meters.topology import CityConfig, build_city
        except ImportError as exc:  # pragma: no cover - depends on the simulator package
            raise ConfigError(
                f"the meter simulator is not available ({exc}); use --replay"
            ) from exc
        self._to_readings = to_readings
        t0 = datetime.fromisoformat(start)
        if t0.tzinfo is None:
            raise ConfigError(f"--start {start!r} needs a UTC offset, e.g. +00:00")
        city = build_city(CityConfig(n_meters=meters, seed=seed))
        self._sim = MeterSimulator(city, seed=seed, record_truth=False)
        iv = self._sim.interval_s
        self.start = t0
        self.end = t0 + timedelta(seconds=max(iv, round(hours * 3600 / iv) * iv))
        self.speed = speed

    def iter_from(self, cursor: int | None) -> Iterator[tuple[int, MeterReading]]:
        skip = cursor or 0
        n = 0
        next_due = time.monotonic()
        for block in self._sim.run(self.start, self.end):
            if self.speed > 0:
                ahead = next_due - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
                next_due += block.interval_s / self.speed
            if n + len(block) <= skip:
                n += len(block)
                continue
            for reading in self._to_readings(block):
                n += 1
                if n > skip:
                    yield n, reading


def sim_source(*, meters: int, hours: float, start: str, speed: float, seed: int) -> SimSource:
    return SimSource(meters=meters, hours=hours, start=start, speed=speed, seed=seed)
