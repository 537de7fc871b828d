from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest

from citystream.table import format_table
from citystream.testing import Stack, restartable_stack_settings, start_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The fault suite's own stack: it kills Kafka, Mosquitto and PostgreSQL, so it does not
    share the session's, and its ports lie outside the ephemeral range so that a killed
    service always gets its port back (``citystream.testing.stable_port``)."""
    from citystream.stack.supervisor import down

    settings = restartable_stack_settings(tmp_path_factory.mktemp("citystream-faults-stack"))
    try:
        yield start_stack(settings)
    finally:
        down(settings)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from tests.faults.test_faults import HEADERS

    # the modules that ran: each keeps its rows (and the vision one a note on its columns)
    modules = [sys.modules.get(f"tests.faults.{m}") for m in ("test_faults", "test_vision_fault")]
    rows = [row for m in modules if m is not None for row in m.ROWS]
    if not rows:
        return
    terminalreporter.write_sep("=", "fault suite: kill -9 and restart, one component at a time")
    terminalreporter.write_line(format_table(list(HEADERS), rows))
    terminalreporter.write_line(
        "in flight: readings the gateway had published that were not in the DB at the kill; "
        "lost / duplicated: rows missing from / repeated in meter_readings after the drain; "
        "replayed: readings Kafka holds more than once (collapsed by the DB); restarts: "
        "workers that exited and were started again; rows again: kill -> first new rows "
        "after the component is back; drained: kill -> every row stored."
    )
    for m in modules:
        if m is not None and m.ROWS and hasattr(m, "NOTE"):
            terminalreporter.write_line(m.NOTE)
