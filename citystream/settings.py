"""The one settings object of CityStream.

Loaded from environment variables (prefix ``CITYSTREAM_``, nested fields joined
with ``__``, e.g. ``CITYSTREAM_KAFKA__PORT=29092``) and, optionally, from a TOML
file named by ``CITYSTREAM_CONFIG``.  Environment wins over the file.  The object
is frozen and passed explicitly; nothing else in the code reads ``os.environ``
for configuration.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

Port = Field(ge=1, le=65535)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Frozen):
    host: str = Field("127.0.0.1", description="Broker host the clients connect to")
    port: int = Field(19092, ge=1, le=65535, description="Broker (PLAINTEXT) port")
    controller_port: int = Field(
        19093, ge=1, le=65535, description="KRaft controller port of the embedded broker"
    )
    bootstrap_servers: str | None = Field(
        None,
        description="Existing cluster, e.g. 'k1:9092,k2:9092'; when set the embedded broker "
        "is not started",
    )
    heap: str = Field(
        "512m",
        pattern=r"^[1-9][0-9]*[kKmMgG]$",
        description="JVM heap of the embedded broker (-Xmx)",
    )
    auto_create_topics: bool = Field(
        False,
        description="Let the embedded broker create unknown topics on first use (off: topics come "
        "from the topic registry; faust creates its own internal topics explicitly)",
    )
    session_timeout_ms: int = Field(
        15_000,
        ge=6_000,
        le=300_000,
        description="Consumer group session of the workers: a worker killed without leaving "
        "the group holds its partitions this long before another member (or its restart) "
        "takes them over; heartbeats come from a background thread every third of it",
    )

    @property
    def bootstrap(self) -> str:
        return self.bootstrap_servers or f"{self.host}:{self.port}"


class MqttSettings(_Frozen):
    host: str = Field("127.0.0.1", description="MQTT broker host")
    port: int = Field(11883, ge=1, le=65535, description="MQTT broker port")
    username: str | None = Field(None, description="MQTT user (password file auth)")
    password: str | None = Field(None, description="MQTT password")
    external: bool = Field(False, description="Use an existing broker; do not start mosquitto")
    allow_anonymous: bool = Field(True, description="Embedded broker accepts clients without login")
    password_file: Path | None = Field(
        None, description="mosquitto_passwd file for the embedded broker (None: no password auth)"
    )
    acl_file: Path | None = Field(
        None, description="ACL file for the embedded broker (None: no ACL)"
    )
    max_queued_messages: int = Field(
        100_000,
        ge=0,
        le=10_000_000,
        description="Per-client queue of the embedded broker for persistent sessions "
        "(0: unlimited)",
    )
    autosave_changes: int = Field(
        1,
        ge=1,
        le=1_000_000,
        description="The embedded broker saves its persistence file after this many queued "
        "messages or subscription changes: 1 means a kill -9 of mosquitto loses at most the "
        "message in hand; larger values trade that window for throughput under backlog",
    )
    bridge_client_id: str = Field(
        "citystream-bridge",
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="Fixed MQTT client id of the bridge: names its persistent session, so "
        "messages published while it is down are kept for it (one id per bridge instance)",
    )
    session_expiry_s: int = Field(
        7 * 24 * 3600,
        ge=60,
        le=365 * 24 * 3600,
        description="How long the broker keeps the bridge's session and queued messages "
        "while the bridge is disconnected (MQTT 5 session expiry)",
    )


class DbSettings(_Frozen):
    host: str = Field("127.0.0.1", description="PostgreSQL/TimescaleDB host")
    port: int = Field(15432, ge=1, le=65535, description="PostgreSQL port")
    user: str = Field("citystream", description="Database role")
    password: str | None = Field(None, description="Password (None: trust on loopback)")
    name: str = Field("citystream", description="Database name")
    external: bool = Field(False, description="Use an existing server; do not start postgres")
    os_user: str = Field(
        "citystream",
        min_length=1,
        max_length=32,
        pattern=r"^[a-z_][a-z0-9_-]*$",
        description="Unprivileged OS user the embedded postgres runs as when the stack is started "
        "by root (postgres refuses to run as root); created if missing",
    )
    retention_days: int = Field(
        90, ge=1, le=36500, description="Raw hypertable data older than this is dropped"
    )

    @property
    def dsn(self) -> str:
        pw = f" password={self.password}" if self.password else ""
        return f"host={self.host} port={self.port} user={self.user} dbname={self.name}{pw}"


Role = Literal["operator", "utility", "viewer"]


class TokenGrant(_Frozen):
    """One API token of the city map: who holds it and what role it has."""

    token: str = Field(min_length=16, max_length=256, description="Bearer token (secret)")
    role: Role = Field(description="operator (traffic), utility (energy) or viewer (read-only)")
    name: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.@-]+$",
        description="Who holds the token; recorded in the audit log",
    )


class CitymapSettings(_Frozen):
    host: str = Field("127.0.0.1", description="Address the map's HTTP server listens on")
    port: int = Field(8080, ge=1, le=65535, description="HTTP port of the map and its API")
    city: str = Field(
        "hcm",
        pattern=r"^[A-Za-z0-9_-]{1,32}$",
        description="City id used in MQTT topics (city/{city}/signals/{intersection}/plan)",
    )
    tokens: tuple[TokenGrant, ...] = Field(
        (),
        max_length=1000,
        description="API tokens with their roles (JSON list in CITYSTREAM_CITYMAP__TOKENS); "
        "empty: `citystream map` makes one random token per role and prints them",
    )
    max_sse_clients: int = Field(
        2000, ge=1, le=100_000, description="Open live-update (SSE) connections accepted at once"
    )
    evidence_dir: Path | None = Field(
        None, description="Directory holding evidence images (file URIs outside it are not served)"
    )
    db_pool_size: int = Field(8, ge=1, le=200, description="Database connections of the API")


class VisionSettings(_Frozen):
    """Detection and tracking workers (``citystream vision worker``)."""

    weights: Path | None = Field(
        None,
        description="YOLO weights file (.pt); None: the model the project trained on simulator "
        "frames, shipped in the package (streams/vision/models/)",
    )
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto: CUDA when present, else CPU"
    )
    half: bool | None = Field(None, description="fp16 inference (None: on CUDA only)")
    imgsz: int = Field(
        0, ge=0, le=4096, description="Inference size (0: the size it was trained at)"
    )
    conf: float = Field(0.25, gt=0, lt=1, description="Minimum detection confidence")
    iou: float = Field(0.5, gt=0, lt=1, description="NMS IoU threshold")
    batch_max: int = Field(32, ge=1, le=1024, description="Frames per inference batch at most")
    batch_wait_ms: int = Field(
        20, ge=0, le=5000, description="How long a worker waits to fill a batch"
    )
    decode_threads: int = Field(4, ge=1, le=128, description="CPU JPEG decode threads")
    gpu_decode: bool | None = Field(
        None, description="Decode JPEG on the GPU (torchvision.io.decode_jpeg); None: on CUDA"
    )


class TrafficSettings(_Frozen):
    """Traffic rules/analytics workers (``citystream traffic worker``)."""

    evidence_dir: Path | None = Field(
        None, description="Where evidence bundles are stored (None: <state_dir>/evidence)"
    )
    count_window_s: int = Field(60, ge=1, le=3600, description="Lane count window")
    recommend_every_s: int = Field(
        300, ge=10, le=86400, description="How often signal-timing advice is computed"
    )
    saturation_pcu_h: float = Field(
        1800.0,
        gt=0,
        le=10_000,
        description="Saturation flow (PCU per hour of green) assumed for a lane whose queue "
        "discharges in the advice period were too short to measure its own",
    )
    saturation_min_discharge_s: float = Field(
        60.0,
        ge=0,
        le=86400,
        description="Seconds of green with a queue standing a lane needs in an advice period "
        "before its measured discharge rate replaces saturation_pcu_h",
    )
    track_idle_s: float = Field(
        3.0, gt=0, le=120, description="A track unseen this long is finished and judged"
    )
    judge_open: bool = Field(
        True,
        description="Report a violation as soon as more of the track cannot undo it, while "
        "the vehicle is in view (false: only once its track has ended)",
    )
    judge_every_s: float = Field(
        0.2,
        ge=0.05,
        le=10,
        description="Event-time step at which open tracks are judged: what a violation may "
        "wait before it is reported, against the rules' CPU (every rule on every open track)",
    )
    signal_lag_s: float = Field(
        0.5,
        ge=0,
        le=60,
        description="A red light is reported on an open track once the camera's event time is "
        "this far past the moment the vehicle was committed past the line: the longest a "
        "phase change may take from the controller to this worker",
    )
    frame_buffer_s: float = Field(
        12.0, gt=0, le=120, description="Seconds of frames kept per camera for evidence"
    )
    frames_ahead_max_s: float = Field(
        120.0,
        ge=1,
        le=3600,
        description="Frames that run ahead of their camera's tracks (a vision worker catching "
        "up) are kept for evidence until the tracks come, up to this many seconds of frames "
        "per camera (memory: about fps x JPEG size x this)",
    )
    track_max_age_s: float = Field(
        300.0,
        ge=10,
        le=86400,
        description="An open track older than this (event time: a parked vehicle, a static "
        "false detection) is judged on what was seen so far and cut to its tail, so that it "
        "cannot hold the committed offsets back",
    )
    track_tail_s: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="History kept of a track cut at track_max_age_s (at least the camera's "
        "longest no-stopping dwell limit + 1 s; the age cap is raised to two tails if shorter)",
    )
    camera_gone_s: float = Field(
        300.0,
        ge=1,
        le=86400,
        description="Wall-clock seconds without tracks from a camera (nothing left to fetch) "
        "after which it is retired although its tracks lag its frames (vision worker down): "
        "its open tracks are judged and its open count window is emitted as it is",
    )
    camera_refresh_s: float = Field(
        5.0, gt=0, le=3600, description="How often camera calibrations are re-read from the DB"
    )


class Settings(BaseSettings):
    """Everything a CityStream process needs to know about its surroundings."""

    model_config = SettingsConfigDict(
        env_prefix="CITYSTREAM_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    state_dir: Path = Field(
        Path(".citystream"), description="Data, logs and pid files of the local stack"
    )
    cache_dir: Path = Field(
        Path.home() / ".cache" / "citystream",
        description="Downloaded/built artefacts shared between checkouts (Kafka jars)",
    )
    kafka: KafkaSettings = KafkaSettings()
    mqtt: MqttSettings = MqttSettings()
    db: DbSettings = DbSettings()
    citymap: CitymapSettings = CitymapSettings()
    vision: VisionSettings = VisionSettings()
    traffic: TrafficSettings = TrafficSettings()
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Prometheus-style /metrics port of a worker (0: off)"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_path = os.environ.get("CITYSTREAM_CONFIG")
        if toml_path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(toml_path)))
        return tuple(sources)


def load_settings(**overrides: Any) -> Settings:
    """Settings from env/TOML, with explicit overrides (used by the CLI and tests)."""
    return Settings(**overrides)
