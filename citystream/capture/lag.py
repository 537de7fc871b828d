"""Consumer-group lag: how many records a group has not yet committed, per partition.

``lag = end offset - committed offset`` (the log start offset where the group has not
committed anything for a partition yet).  :func:`wait_for_drain` polls until every
given group has zero lag and keeps it for ``settle_s``, which is how a test knows that
a multi-stage pipeline has processed a replay: an upstream stage that still produces
raises a downstream group's lag again and restarts the settle period.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from citystream.errors import CityStreamError

#: group -> the topics it consumes (None: the topics it has committed offsets for).
GroupSpec = Mapping[str, Sequence[str] | None] | Iterable[str]


class DrainTimeout(CityStreamError, TimeoutError):
    """The pipeline still had lag when the deadline passed."""


def _groups(spec: GroupSpec) -> dict[str, Sequence[str] | None]:
    if isinstance(spec, Mapping):
        return dict(spec)
    if isinstance(spec, str):
        return {spec: None}
    return {g: None for g in spec}


def _committed(admin: Any, group: str, attempts: int = 40) -> dict[Any, Any]:
    """Committed offsets of ``group``; retries while the group coordinator is not ready
    (``__consumer_offsets`` is created on first use, which takes a few seconds)."""
    from kafka.errors import KafkaError

    for attempt in range(attempts):
        try:
            return dict(admin.list_group_offsets({group: None}).get(group, {}))
        except KafkaError as exc:
            if not getattr(exc, "retriable", False) or attempt == attempts - 1:
                raise
            time.sleep(0.25)
    return {}


def consumer_lag(admin: Any, groups: GroupSpec) -> dict[str, dict[tuple[str, int], int]]:
    """Lag of each group per ``(topic, partition)``, using a kafka-python admin client."""
    from kafka import TopicPartition
    from kafka.admin import OffsetSpec

    wanted = _groups(groups)
    committed: dict[str, dict[Any, Any]] = {}
    for group in wanted:
        committed[group] = _committed(admin, group)
    topics = {t for ts in wanted.values() if ts for t in ts}
    topics |= {tp.topic for c in committed.values() for tp in c}
    tps: list[Any] = []
    if topics:
        for desc in admin.describe_topics(sorted(topics)):
            name = desc.get("name", desc.get("topic"))
            for p in desc.get("partitions") or []:
                tps.append(TopicPartition(name, p.get("partition_index", p.get("partition"))))
    latest = admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in tps}) if tps else {}
    earliest = admin.list_partition_offsets({tp: OffsetSpec.EARLIEST for tp in tps}) if tps else {}
    out: dict[str, dict[tuple[str, int], int]] = {}
    for group, its_topics in wanted.items():
        mine = set(its_topics) if its_topics else {tp.topic for tp in committed[group]}
        lags: dict[tuple[str, int], int] = {}
        for tp in tps:
            if tp.topic not in mine:
                continue
            done = committed[group].get(tp)
            pos = done.offset if done is not None and done.offset >= 0 else earliest[tp].offset
            lags[(tp.topic, tp.partition)] = max(0, latest[tp].offset - pos)
        out[group] = lags
    return out


def total_lag(lags: Mapping[str, Mapping[tuple[str, int], int]]) -> int:
    return sum(sum(v.values()) for v in lags.values())


def wait_for_drain(
    bootstrap: str,
    groups: GroupSpec,
    *,
    timeout_s: float = 120.0,
    settle_s: float = 2.0,
    poll_s: float = 0.25,
) -> dict[str, dict[tuple[str, int], int]]:
    """Block until every group's lag is 0 and stayed 0 for ``settle_s``.

    Raises :class:`DrainTimeout` with the remaining lag per group and partition.
    """
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="citystream-drain")
    try:
        deadline = time.monotonic() + timeout_s
        zero_since: float | None = None
        while True:
            lags = consumer_lag(admin, groups)
            now = time.monotonic()
            if total_lag(lags) == 0:
                zero_since = zero_since if zero_since is not None else now
                if now - zero_since >= settle_s:
                    return lags
            else:
                zero_since = None
            if now >= deadline:
                left = {
                    g: {f"{t}[{p}]": n for (t, p), n in v.items() if n}
                    for g, v in lags.items()
                    if any(v.values())
                }
                raise DrainTimeout(f"pipeline not drained after {timeout_s} s; lag: {left}")
            time.sleep(poll_s)
    finally:
        admin.close()
