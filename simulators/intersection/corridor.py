"""Junctions of a corridor as one road network: vehicles drive from one simulator to the next.

Each junction is its own ``citystream sim intersection`` process (libsumo runs one
simulation per process).  A junction given a neighbour on an arm (``--neighbour E=int-2``)

* no longer generates its own demand on that arm: the neighbour's exits feed it;
* hands every vehicle that leaves by that arm's outgoing edge to the neighbour, as a
  :class:`~schemas.messages.VehicleHandoff` on ``sim.handoffs`` (Kafka, keyed by the
  receiving junction), sent when the frame of that moment is published (in real time at
  ``--speed 1``, the only speed at which neighbours keep the same clock);
* admits the vehicles handed to it (:class:`HandoffFeed`) on the arm facing the sender,
  where they continue on a movement drawn from the turn shares.

The edges between two neighbours add up to the distance between them (two arms of
``arm_length_m``), so a vehicle takes about as long from one stop line to the next as on the
street.  A handoff from a junction that is not this arm's neighbour, or one that does not
decode, goes to ``sim.handoffs.dlq`` with the reason.  A repeated handoff (a retried send)
is admitted once: the vehicle's id in SUMO is its ``vehicle_ref``.  A receiver reads from
the end of the topic when it starts: a restarted simulator starts an empty network.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from citystream.errors import SchemaError
from schemas.messages import VehicleHandoff
from schemas.topics import TOPICS
from simulators.intersection.sim import Exit

log = logging.getLogger(__name__)
HANDOFFS = TOPICS["sim.handoffs"]
#: the arm of the neighbour a vehicle enters by, for the arm it left by
FACING = {"N": "S", "S": "N", "E": "W", "W": "E"}


def parse_neighbours(specs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["E=int-2", "W=int-0"]`` -> ``{"E": "int-2", "W": "int-0"}``."""
    out: dict[str, str] = {}
    for spec in specs:
        arm, sep, iid = spec.partition("=")
        arm = arm.strip().upper()
        if not sep or arm not in FACING or not iid.strip():
            raise ValueError(f"neighbour {spec!r}: expected ARM=INTERSECTION, ARM one of NESW")
        if arm in out:
            raise ValueError(f"neighbour {spec!r}: arm {arm} has a neighbour already")
        out[arm] = iid.strip()
    return out


def handoff_for(
    exit_: Exit, from_intersection: str, neighbours: Mapping[str, str], run_id: str, at: float
) -> VehicleHandoff | None:
    """The handoff of a vehicle that left by ``exit_.arm``; None where no neighbour is.
    ``run_id`` tells this run of the sender from its others (its vehicle ids repeat)."""
    to = neighbours.get(exit_.arm)
    if to is None:
        return None
    key = f"{from_intersection}|{run_id}|{exit_.vehicle_id}"
    return VehicleHandoff(
        vehicle_ref=f"h.{hashlib.sha256(key.encode()).hexdigest()[:24]}",
        from_intersection=from_intersection,
        to_intersection=to,
        arm=FACING[exit_.arm],
        vehicle_class=exit_.vehicle_class,
        speed_mps=round(min(max(exit_.speed_mps, 0.0), 60.0), 2),
        left_at=datetime.fromtimestamp(at, UTC),
    )


def check_handoff(h: VehicleHandoff, neighbours: Mapping[str, str]) -> str | None:
    """Why this junction refuses ``h`` (None: it is admitted)."""
    sender = neighbours.get(h.arm)
    if sender is None:
        return f"arm {h.arm} of {h.to_intersection} has no neighbour"
    if sender != h.from_intersection:
        return f"arm {h.arm} of {h.to_intersection} faces {sender}, not {h.from_intersection}"
    return None


class HandoffFeed:
    """Reads ``sim.handoffs`` on a thread: each handoff to ``intersection_id`` that passes
    :func:`check_handoff` goes to ``on_handoff``; refused and undecodable ones to
    ``on_invalid`` (raw value, error), the others are skipped."""

    def __init__(
        self,
        bootstrap: str,
        intersection_id: str,
        neighbours: Mapping[str, str],
        on_handoff: Callable[[VehicleHandoff], None],
        on_invalid: Callable[[bytes, Exception], None],
    ) -> None:
        self.bootstrap = bootstrap
        self.intersection_id = intersection_id
        self.neighbours = dict(neighbours)
        self.on_handoff = on_handoff
        self.on_invalid = on_invalid
        self.ready = threading.Event()  # positioned at the end of the topic
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="handoffs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        consumer: Any = None
        while consumer is None and not self._stop.is_set():
            try:
                consumer = KafkaConsumer(
                    bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False
                )
            except Exception as err:  # broker not up yet: retry, never fatal
                log.warning("handoffs: cannot reach Kafka (%s); retrying in 2 s", err)
                self._stop.wait(2.0)
        if consumer is None:
            return
        tp = TopicPartition(HANDOFFS.name, 0)
        consumer.assign([tp])
        consumer.seek_to_end(tp)
        consumer.position(tp)
        self.ready.set()
        log.info("handoffs: %s admits vehicles from %s", self.intersection_id, self.neighbours)
        try:
            while not self._stop.is_set():
                for records in consumer.poll(timeout_ms=200).values():
                    for r in records:
                        self.handle(r.key, r.value)
        finally:
            consumer.close()

    def handle(self, key: bytes | None, value: bytes | None) -> None:
        if key is not None and key != self.intersection_id.encode():
            return  # for another junction
        raw = value or b""
        try:
            h = HANDOFFS.codec.decode(raw)
        except SchemaError as err:
            self.on_invalid(raw, err)
            return
        assert isinstance(h, VehicleHandoff)
        if h.to_intersection != self.intersection_id:
            return
        why = check_handoff(h, self.neighbours)
        if why is not None:
            self.on_invalid(raw, ValueError(why))
            return
        self.on_handoff(h)
