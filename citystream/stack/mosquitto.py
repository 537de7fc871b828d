"""The embedded Mosquitto MQTT broker.

Its config is rendered from ``mosquitto.conf.template`` beside this module into
``<state_dir>/mosquitto/mosquitto.conf`` on every start; persistence (retained messages and
persistent sessions) lives in ``<state_dir>/mosquitto/data``.
"""

from __future__ import annotations

import getpass
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from string import Template

from citystream.errors import StackError
from citystream.settings import Settings
from citystream.stack.process import ProcessFiles, port_open

NAME = "mosquitto"
TEMPLATE = Path(__file__).with_name("mosquitto.conf.template")


@dataclass(frozen=True)
class MosquittoPaths:
    home: Path
    data: Path
    config: Path

    @classmethod
    def of(cls, settings: Settings) -> MosquittoPaths:
        home = settings.state_dir.resolve() / NAME
        return cls(home=home, data=home / "data", config=home / "mosquitto.conf")


def _file_line(key: str, path: Path | None) -> str:
    if path is None:
        return f"#{key} (not configured)"
    return f"{key} {path.resolve()}"


def render_config(settings: Settings, template: Path = TEMPLATE) -> str:
    m = settings.mqtt
    try:
        text = template.read_text()
    except OSError as exc:
        raise StackError(f"mosquitto config template missing: {template}") from exc
    return Template(text).substitute(
        user=getpass.getuser(),
        host=m.host,
        port=m.port,
        allow_anonymous=str(m.allow_anonymous).lower(),
        password_file_line=_file_line("password_file", m.password_file),
        acl_file_line=_file_line("acl_file", m.acl_file),
        persistence_dir=MosquittoPaths.of(settings).data,
        max_queued_messages=m.max_queued_messages,
        autosave_changes=m.autosave_changes,
    )


def mosquitto_bin() -> str:
    path = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if path is None:
        raise StackError("mosquitto not installed; run `infra/install.sh` (or `make install`)")
    return path


@dataclass(frozen=True)
class MosquittoService:
    settings: Settings
    name: str = NAME
    stop_signal: signal.Signals = signal.SIGTERM
    start_timeout: float = 20.0

    @property
    def external(self) -> bool:
        return self.settings.mqtt.external

    @property
    def host(self) -> str:
        return self.settings.mqtt.host

    @property
    def port(self) -> int:
        return self.settings.mqtt.port

    @property
    def address(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def data_dir(self) -> Path:
        return MosquittoPaths.of(self.settings).data

    def files(self) -> ProcessFiles:
        return ProcessFiles.under(
            self.settings.state_dir.resolve(), NAME, str(MosquittoPaths.of(self.settings).config)
        )

    def prepare(self) -> None:
        paths = MosquittoPaths.of(self.settings)
        paths.data.mkdir(parents=True, exist_ok=True)
        paths.config.write_text(render_config(self.settings))

    def argv(self) -> list[str]:
        return [mosquitto_bin(), "-c", str(MosquittoPaths.of(self.settings).config)]

    def ready(self) -> bool:
        return port_open(self.host, self.port)

    def after_start(self) -> None:
        pass
