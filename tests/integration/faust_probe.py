"""A minimal real faust-streaming worker used by test_kafka_clients.py.

It consumes ``probe.in`` (meter gateway batches as bytes), decodes each with the registry's
codec and forwards valid ones to ``probe.out``; bad ones become dead letters on
``probe.dlq``.  Run: ``python tests/integration/faust_probe.py worker -l info``.
"""

from __future__ import annotations

from typing import Any

from citystream.settings import load_settings
from schemas.topics import DEAD_LETTER_CODEC, TOPICS
from streams.decode import decode_record
from streams.faust_app import create_faust_app

settings = load_settings()
app = create_faust_app(settings, "citystream-faust-probe")
source = app.topic("probe.in", partitions=2)
out = app.topic("probe.out", partitions=1)
dlq = app.topic("probe.dlq", partitions=1)
readings = TOPICS["meter.readings"]


@app.agent(source)
async def forward(stream: Any) -> None:
    async for event in stream.events():
        msg = event.message
        reading, dead = decode_record(
            readings,
            event.value,
            stage="faust-probe",
            key=event.key,
            partition=msg.partition,
            offset=msg.offset,
        )
        if dead is not None:
            await dlq.send(key=event.key, value=DEAD_LETTER_CODEC.encode(dead))
        else:
            await out.send(key=event.key, value=readings.codec.encode(reading))


if __name__ == "__main__":
    app.main()
