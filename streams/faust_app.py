"""The one way CityStream builds a faust-streaming app.

Topics carry raw bytes encoded by the codecs in :mod:`schemas` (never
``faust.Record``, which embeds Python class paths in the wire format); agents
decode with :func:`streams.decode.decode_record` and send failures to the DLQ.
"""

from __future__ import annotations

from typing import Any

from citystream.settings import Settings


def create_faust_app(settings: Settings, app_id: str, **overrides: Any) -> Any:
    """A faust app wired to the configured Kafka, with bytes (raw) serialisation.

    ``overrides`` are passed to :class:`faust.App` (e.g. ``web_port``).  No work at
    import time: faust is imported here, when an app is built.
    """
    import faust

    datadir = settings.state_dir / "faust" / app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {
        "broker": f"kafka://{settings.kafka.bootstrap}",
        "key_serializer": "raw",
        "value_serializer": "raw",
        "topic_replication_factor": 1,
        "producer_acks": -1,
        "datadir": str(datadir),
        "store": "memory://",
        "web_enabled": settings.metrics_port > 0,
        "web_port": settings.metrics_port or 6066,
        "web_host": "127.0.0.1",
        "topic_disable_leader": False,
    }
    options.update(overrides)
    return faust.App(app_id, **options)
