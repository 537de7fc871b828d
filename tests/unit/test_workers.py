from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from citystream.cli import main
from citystream.settings import Settings
from citystream.stack import process, workers


def test_cli_ignores_the_supervision_marker(capsys: object) -> None:
    assert main(["--worker=sink@/srv/cs", "topics"]) == 0


def test_worker_states_and_stop(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    sleeper = workers.Worker("sleeper", ("topics",))
    assert workers.status(settings) == []
    # A registered worker that never ran is stopped; a dead pid file means crashed.
    workers._registry(settings).parent.mkdir(parents=True)
    workers._registry(settings).write_text('[{"name": "sleeper", "args": ["topics"]}]')
    assert [s.state for s in workers.status(settings)] == [process.STOPPED]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    pidfile = workers._files(settings, sleeper).pidfile
    pidfile.write_text(f"{dead.pid}\n")
    assert [s.state for s in workers.status(settings)] == [process.CRASHED]
    workers.stop(settings)
    assert not pidfile.exists()
    assert workers.log_path(settings, "sleeper") == tmp_path / "logs" / "worker-sleeper.log"
    assert workers.log_path(settings, "nope") is None
