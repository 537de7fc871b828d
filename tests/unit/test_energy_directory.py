"""The energy stages' meter directory: a reading of a meter registered since the last load
reloads it (at most every ``unknown_reload_s``) instead of going to the dead letters."""

from __future__ import annotations

from datetime import UTC, datetime

from citystream.settings import Settings
from schemas.messages import MeterReading
from streams.energy.reference import Directory
from streams.energy.stages import Router


class Loads(Router):
    """A router whose directory loads come from a list (the last one repeats)."""

    def __init__(self, *directories: Directory) -> None:
        super().__init__(Settings(), group_id="test-directory")
        self.directories = list(directories)
        self.loads = 0

    def load_directory(self) -> Directory:
        self.loads += 1
        return self.directories[min(self.loads, len(self.directories)) - 1]


def reading(meter_id: str) -> MeterReading:
    return MeterReading(
        meter_id=meter_id,
        ts=datetime(2026, 3, 2, 0, 15, tzinfo=UTC),
        interval_s=900,
        import_kwh=0.2,
        export_kwh=0.0,
    )


def directory(*meters: str) -> Directory:
    return Directory.from_rows([(m, "f-1", "d-1", False) for m in meters], [("f-1", "d-1", 400.0)])


def test_an_unknown_meter_reloads_the_directory_once_per_interval() -> None:
    router = Loads(directory("mt1"), directory("mt1", "mt2"))
    assert [p is not None for p in router.places([reading("mt1")])] == [True]
    router.unknown_reload_s = 3600.0  # loaded just now: the new meter waits for the interval
    assert router.places([reading("mt2")]) == [None] and router.loads == 1
    router.unknown_reload_s = 0.0  # the interval has passed: reload, and the meter is there
    found = router.places([reading("mt1"), reading("mt2"), reading("mt9")])
    assert [p is not None for p in found] == [True, True, False] and router.loads == 2
    assert found[1] is not None and found[1].district_id == "d-1"
