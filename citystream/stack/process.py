"""Child processes of the local stack: spawn detached, find again by pid file, stop.

A service started by the stack is a session leader (``start_new_session=True``) whose
stdout/stderr go to ``<state_dir>/logs/<name>.log`` and whose pid is in
``<state_dir>/run/<name>.pid``.  The pid file is removed on a clean stop, so a pid file
whose process is gone means the service died: its state is ``crashed`` until the next
``up`` (nothing restarts it behind the user's back).

States::

    running    our pid file, process alive, its command line carries our marker
    stopped    no pid file and nothing answers on the port
    crashed    pid file left behind, process gone (or the pid now belongs to someone else)
    external   configured as an existing service, or the port answers but not from us
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from citystream.errors import StackError

RUNNING = "running"
STOPPED = "stopped"
CRASHED = "crashed"
EXTERNAL = "external"


@dataclass(frozen=True)
class ProcessFiles:
    """Where one service keeps its pid file and log."""

    name: str
    pidfile: Path
    log: Path
    marker: str
    """A string in the command line of our process (a path in the state dir): tells our
    process from an unrelated one that got the same pid later."""

    @classmethod
    def under(cls, state_dir: Path, name: str, marker: str) -> ProcessFiles:
        return cls(
            name=name,
            pidfile=state_dir / "run" / f"{name}.pid",
            log=state_dir / "logs" / f"{name}.log",
            marker=marker,
        )


def read_pid(pidfile: Path) -> int | None:
    try:
        text = pidfile.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return int(text) if text.isdigit() else None


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # state is the first field after the parenthesised command name
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def owned_pid(files: ProcessFiles) -> int | None:
    """The pid of our live process, or None."""
    pid = read_pid(files.pidfile)
    if pid is not None and pid_alive(pid) and files.marker in cmdline(pid):
        return pid
    return None


def self_connected(sock: socket.socket) -> bool:
    """The socket is connected to itself (same local and remote address)."""
    return bool(sock.getsockname() == sock.getpeername())


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Something listens on ``host:port``.

    A connection to a loopback port in the kernel's ephemeral range that nobody listens on
    can succeed by connecting to itself (TCP simultaneous open, source port = destination
    port); such a socket is not a service, so it does not count."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            return not self_connected(sock)
    except OSError:
        return False


def process_state(files: ProcessFiles, host: str, port: int) -> tuple[str, int | None]:
    """(state, pid) of a service that is not configured as external."""
    pid = owned_pid(files)
    if pid is not None:
        return RUNNING, pid
    if files.pidfile.exists():
        return CRASHED, read_pid(files.pidfile)
    if port_open(host, port):
        return EXTERNAL, None
    return STOPPED, None


def tail(path: Path, lines: int = 30) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(data.splitlines()[-lines:])


def spawn(
    files: ProcessFiles,
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> int:
    """Start ``argv`` detached (own session), output appended to the log; write the pid file."""
    files.log.parent.mkdir(parents=True, exist_ok=True)
    files.pidfile.parent.mkdir(parents=True, exist_ok=True)
    with files.log.open("ab") as log:
        log.write(
            f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} start: {' '.join(argv)}\n".encode()
        )
        log.flush()
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise StackError(f"{files.name}: cannot run {argv[0]}: {exc}") from exc
    tmp = files.pidfile.with_suffix(".pid.tmp")
    tmp.write_text(f"{proc.pid}\n")
    tmp.replace(files.pidfile)
    # The child is not waited for here; a reaper keeps it from lingering as a zombie
    # while this (possibly long-lived) parent runs.
    _children[proc.pid] = proc
    return proc.pid


_children: dict[int, subprocess.Popen[bytes]] = {}


def reap() -> None:
    """Collect the exit status of our children that ended (no zombies left behind)."""
    for pid, proc in list(_children.items()):
        if proc.poll() is not None:
            del _children[pid]


def wait_ready(
    files: ProcessFiles,
    pid: int,
    ready: Callable[[], bool],
    timeout: float,
    what: str,
) -> None:
    """Poll ``ready()`` until true; fail early if the process dies, late on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        reap()
        if ready():
            return
        if not pid_alive(pid):
            raise StackError(
                f"{files.name} exited while starting ({what}); log {files.log}:\n{tail(files.log)}"
            )
        if time.monotonic() > deadline:
            raise StackError(
                f"{files.name} not ready after {timeout:.0f} s ({what}); log {files.log}:\n"
                f"{tail(files.log)}"
            )
        time.sleep(0.2)


def _group_leftovers(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == pgid:
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[-1].split()[2]) == pgid:
                pids.append(int(entry.name))
    return pids


def kill_leftovers(pid: int) -> None:
    """SIGKILL what is left of the process group led by a dead ``pid`` (e.g. postgres backends
    orphaned by a killed postmaster).  A pgid cannot be reused while the group has members,
    so members found for a dead leader are ours."""
    if pid_alive(pid):
        return
    left = _group_leftovers(pid)
    for child in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child, signal.SIGKILL)
    # Wait for them to go: e.g. a new postmaster refuses to start while an old backend
    # still holds the shared memory segment.
    deadline = time.monotonic() + 10.0
    while any(pid_alive(p) for p in left) and time.monotonic() < deadline:
        time.sleep(0.05)


def stop(files: ProcessFiles, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> bool:
    """Stop our process: ``sig``, wait, then SIGKILL the whole group.  Removes the pid file.

    Returns True when a live process was stopped.
    """
    pid = owned_pid(files)
    stopped = False
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            reap()
            time.sleep(0.1)
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            while pid_alive(pid) and time.monotonic() < deadline + 10:
                reap()
                time.sleep(0.1)
        stopped = True
        reap()
    old = read_pid(files.pidfile)
    if old is not None:
        kill_leftovers(old)
    files.pidfile.unlink(missing_ok=True)
    return stopped
