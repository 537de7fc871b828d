"""Create the registry's Kafka topics on a broker (idempotent)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from citystream.errors import StackError
from schemas.topics import all_topic_specs


def ensure_topics(
    bootstrap: str,
    specs: Iterable[tuple[str, int, int]] | None = None,
    timeout_s: float = 60.0,
) -> list[str]:
    """Create every missing topic of ``specs`` (default: the whole registry and its DLQs).

    Returns the names created now; topics that exist are left as they are.
    """
    wanted = list(specs if specs is not None else all_topic_specs())
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="citystream-admin")
        except KafkaError as exc:
            last_error = exc
            time.sleep(1)
            continue
        try:
            existing = set(admin.list_topics())
            new = [
                NewTopic(name, partitions, 1, topic_configs={"retention.ms": str(retention)})
                for name, partitions, retention in wanted
                if name not in existing
            ]
            if new:
                # TopicAlreadyExists: created concurrently by another process, which is fine.
                with contextlib.suppress(TopicAlreadyExistsError):
                    admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
            return [t.name for t in new]
        except KafkaError as exc:
            last_error = exc
            time.sleep(1)
        finally:
            admin.close()
    raise StackError(f"could not create Kafka topics on {bootstrap}: {last_error}")
