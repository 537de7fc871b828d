"""A private stack: its own state dir and services on free loopback ports, and the
environment a child process needs to use it (tests, benchmarks, ``traffic evaluate``)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from citystream.settings import DbSettings, KafkaSettings, MqttSettings, Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def private_settings(state_dir: Path, base: Settings | None = None) -> Settings:
    """``base`` (default: the defaults) with ``state_dir`` and embedded Kafka, Mosquitto and
    PostgreSQL on free loopback ports."""
    return (base or Settings()).model_copy(
        update={
            "state_dir": state_dir,
            "kafka": KafkaSettings(port=free_port(), controller_port=free_port()),
            "mqtt": MqttSettings(port=free_port()),
            "db": DbSettings(port=free_port()),
        }
    )


def child_env(s: Settings) -> dict[str, str]:
    """Environment for a child process: ``os.environ`` without any CITYSTREAM_* of the
    caller (they could point elsewhere), plus this stack's state dir and endpoints."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("CITYSTREAM_")},
        "CITYSTREAM_STATE_DIR": str(s.state_dir),
        "CITYSTREAM_KAFKA__PORT": str(s.kafka.port),
        "CITYSTREAM_KAFKA__CONTROLLER_PORT": str(s.kafka.controller_port),
        "CITYSTREAM_MQTT__PORT": str(s.mqtt.port),
        "CITYSTREAM_DB__PORT": str(s.db.port),
    }
