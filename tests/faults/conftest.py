from __future__ import annotations

from typing import Any

from citystream.table import format_table


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from tests.faults.test_faults import ROWS

    if not ROWS:
        return
    terminalreporter.write_sep("=", "fault suite: kill -9 and restart, one component at a time")
    headers = [
        "fault",
        "moment s",
        "not yet stored",
        "lost",
        "worker restarts",
        "recovery s",
    ]
    terminalreporter.write_line(format_table(headers, ROWS))
