"""CityStream's own long-running workers (bridge, sink, energy stages, map, gateways) as
supervised child processes of the local stack: pid files and logs under the state dir,
``crashed`` when they die, stopped by ``citystream down``.

Which workers a state dir runs is recorded in ``<state_dir>/run/workers.json`` so that
``status`` and ``down`` know them without being told again.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from citystream.settings import Settings
from citystream.stack import process
from citystream.stack.supervisor import ServiceStatus


@dataclass(frozen=True)
class Worker:
    """A ``citystream`` subcommand run as a supervised process."""

    name: str
    args: tuple[str, ...]

    @property
    def address(self) -> str:
        return "citystream " + " ".join(self.args[:3])


def _registry(settings: Settings) -> Path:
    return settings.state_dir / "run" / "workers.json"


def _files(settings: Settings, w: Worker) -> process.ProcessFiles:
    # The marker ties the pid to this state dir's worker (pids are reused).
    return process.ProcessFiles.under(
        settings.state_dir, f"worker-{w.name}", marker=f"--worker={w.name}@{settings.state_dir}"
    )


def _argv(settings: Settings, w: Worker) -> list[str]:
    marker = _files(settings, w).marker
    return [sys.executable, "-m", "citystream.cli", marker, *w.args]


def registered(settings: Settings) -> list[Worker]:
    try:
        data = json.loads(_registry(settings).read_text())
    except (OSError, ValueError):
        return []
    return [Worker(d["name"], tuple(d["args"])) for d in data]


def start(
    settings: Settings,
    workers: list[Worker],
    env: dict[str, str] | None = None,
    *,
    base_env: Mapping[str, str] | None = None,
) -> None:
    """Start every worker that is not running (a crashed one is started again).

    The workers get ``base_env`` (default: this process's environment) updated with
    ``env`` and the state dir."""
    known = {w.name: w for w in registered(settings)}
    known.update({w.name: w for w in workers})
    path = _registry(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{"name": w.name, "args": list(w.args)} for w in known.values()]))
    base = os.environ if base_env is None else base_env
    child_env = {**base, **(env or {}), "CITYSTREAM_STATE_DIR": str(settings.state_dir)}
    for w in workers:
        files = _files(settings, w)
        if process.owned_pid(files) is None:
            files.pidfile.unlink(missing_ok=True)
            process.spawn(files, _argv(settings, w), env=child_env)


def status(settings: Settings) -> list[ServiceStatus]:
    out = []
    for w in registered(settings):
        files = _files(settings, w)
        pid = process.owned_pid(files)
        if pid is not None:
            state = process.RUNNING
        elif files.pidfile.exists():
            state, pid = process.CRASHED, process.read_pid(files.pidfile)
        else:
            state = process.STOPPED
        out.append(ServiceStatus(w.name, w.address, state, settings.state_dir, pid, files.log))
    return out


def stop(settings: Settings) -> None:
    for w in reversed(registered(settings)):
        process.stop(_files(settings, w), timeout=30.0)


def log_path(settings: Settings, name: str) -> Path | None:
    for w in registered(settings):
        if w.name == name:
            return _files(settings, w).log
    return None
