"""The local stack: PostgreSQL+TimescaleDB, Mosquitto and Kafka as child processes.

``up`` starts, in that order, every service that is neither configured as external nor
already reachable, and waits until each answers (postgres: a query; mosquitto: its port;
kafka: a metadata request).  It is idempotent.  ``down`` stops what ``up`` started.
``status`` only looks: a service whose process died is reported ``crashed`` and stays down
until the next ``up``.  ``kill`` and ``restart`` act on one service, for fault injection
and for a supervisor that brings back what crashed: ``restart`` starts a dead service again
with the same data dir and ports, never mistaking its own port for an external service.
Everything lives under ``settings.state_dir``::

    <state_dir>/logs/<service>.log    output of the service
    <state_dir>/run/<service>.pid     pid of the running service
    <state_dir>/postgres/data         PostgreSQL cluster
    <state_dir>/mosquitto/            mosquitto.conf and persistence
    <state_dir>/kafka/                server.properties and the broker's log dirs

Topics and migrations are not made here (see ``citystream.kafka_topics`` and the migrator).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from citystream.errors import StackError
from citystream.settings import Settings
from citystream.stack import process
from citystream.stack.kafka import KafkaService
from citystream.stack.mosquitto import MosquittoService
from citystream.stack.postgres import PostgresService


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    state: str  # running | stopped | crashed | external
    data_dir: Path
    pid: int | None
    log: Path


class Service(Protocol):
    """What the supervisor needs of one service module."""

    @property
    def name(self) -> str: ...
    @property
    def stop_signal(self) -> signal.Signals: ...
    @property
    def start_timeout(self) -> float: ...
    @property
    def external(self) -> bool: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def address(self) -> str: ...
    @property
    def data_dir(self) -> Path: ...
    def files(self) -> process.ProcessFiles: ...
    def prepare(self) -> None: ...
    def argv(self) -> list[str]: ...
    def ready(self) -> bool: ...
    def after_start(self) -> None: ...


SERVICE_NAMES = ("postgres", "mosquitto", "kafka")


def services(settings: Settings) -> list[Service]:
    """The services in start order."""
    return [PostgresService(settings), MosquittoService(settings), KafkaService(settings)]


def _service(settings: Settings, name: str) -> Service:
    for svc in services(settings):
        if svc.name == name:
            return svc
    raise StackError(f"unknown service {name!r}; one of {', '.join(SERVICE_NAMES)}")


def _status(svc: Service) -> ServiceStatus:
    files = svc.files()
    if svc.external:
        state, pid = process.EXTERNAL, None
    else:
        state, pid = process.process_state(files, svc.host, svc.port)
    return ServiceStatus(svc.name, svc.address, state, svc.data_dir, pid, files.log)


def status(settings: Settings) -> list[ServiceStatus]:
    """Current state of every service; starts and stops nothing."""
    return [_status(svc) for svc in services(settings)]


def log_path(settings: Settings, service: str) -> Path:
    return _service(settings, service).files().log


def _start(svc: Service, progress: Callable[[str], None], *, adopt: bool = True) -> None:
    """Start ``svc``; with ``adopt``, a port that already answers is used as it is."""
    files = svc.files()
    old = process.read_pid(files.pidfile)
    if old is not None:  # crashed: clear what is left of the old process group
        progress(f"{svc.name}: previous process {old} died; starting again (log {files.log})")
        process.kill_leftovers(old)
        files.pidfile.unlink(missing_ok=True)
    if process.port_open(svc.host, svc.port):
        if not adopt:
            raise StackError(
                f"{svc.name}: {svc.host}:{svc.port} is taken by another process; cannot restart"
            )
        progress(f"{svc.name}: {svc.host}:{svc.port} answers but is not ours; using it")
        return
    t0 = time.monotonic()
    progress(f"{svc.name}: starting on {svc.host}:{svc.port}")
    svc.prepare()
    pid = process.spawn(files, svc.argv(), cwd=files.log.parent)
    try:
        process.wait_ready(files, pid, svc.ready, svc.start_timeout, svc.address)
        svc.after_start()
    except BaseException:
        process.stop(files, svc.stop_signal, timeout=10)
        raise
    progress(f"{svc.name}: ready in {time.monotonic() - t0:.1f} s (pid {pid})")


def up(settings: Settings, progress: Callable[[str], None] = print) -> list[ServiceStatus]:
    """Start every service that is not reachable yet; idempotent.  Raises StackError with the
    tail of the service log when one fails to come up."""
    for svc in services(settings):
        st = _status(svc)
        if st.state == process.EXTERNAL:
            progress(f"{svc.name}: external at {svc.address}")
        elif st.state == process.RUNNING:
            svc.after_start()
            progress(f"{svc.name}: already running (pid {st.pid})")
        else:
            _start(svc, progress)
    return status(settings)


def down(settings: Settings) -> list[ServiceStatus]:
    """Stop the services this state dir started (kafka first); leaves external ones alone."""
    for svc in reversed(services(settings)):
        if svc.external:
            continue
        process.stop(svc.files(), svc.stop_signal, timeout=max(30.0, svc.start_timeout / 2))
    return status(settings)


def kill(settings: Settings, service: str, sig: signal.Signals = signal.SIGKILL) -> int:
    """Send ``sig`` (default SIGKILL, i.e. ``kill -9``) to the main process of one service of
    this state dir, as a crash would, and wait until it is gone.  Nothing is cleaned up: the
    pid file stays, so :func:`status` says ``crashed`` until :func:`restart` or :func:`up`.
    Returns the killed pid; raises StackError when the service is external or not running."""
    svc = _service(settings, service)
    if svc.external:
        raise StackError(f"{service} is external ({svc.address}); not ours to kill")
    pid = process.owned_pid(svc.files())
    if pid is None:
        raise StackError(f"{service} is not running (state {_status(svc).state})")
    os.kill(pid, sig)
    deadline = time.monotonic() + 30.0
    while process.pid_alive(pid):
        if time.monotonic() > deadline:
            raise StackError(f"{service} (pid {pid}) still alive 30 s after {sig.name}")
        process.reap()
        time.sleep(0.02)
    process.reap()
    return pid


def restart(
    settings: Settings,
    service: str,
    progress: Callable[[str], None] = print,
    *,
    port_wait_s: float = 30.0,
    attempts: int = 3,
) -> ServiceStatus:
    """Start one service of this state dir again after its process died (``kill -9``, OOM
    killer): same data dir, same ports; a running one is left alone.

    Unlike :func:`up`, a port that still answers is never taken for an external service:
    it is ours, so it is waited for (``port_wait_s``) and the start fails if it stays
    taken.  A start that fails (e.g. the port was grabbed again just before the bind) is
    tried ``attempts`` times.  Returns the service's status; raises StackError."""
    svc = _service(settings, service)
    if svc.external:
        raise StackError(f"{service} is external ({svc.address}); not ours to restart")
    if _status(svc).state == process.RUNNING:
        return _status(svc)
    for attempt in range(1, attempts + 1):
        deadline = time.monotonic() + port_wait_s
        while process.port_open(svc.host, svc.port) and time.monotonic() < deadline:
            time.sleep(0.2)
        try:
            _start(svc, progress, adopt=False)
            break
        except StackError as exc:
            if attempt == attempts:
                raise
            progress(f"{service}: restart attempt {attempt} failed ({exc}); trying again")
            time.sleep(1.0)
    return _status(svc)
