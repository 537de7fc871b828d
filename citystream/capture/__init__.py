"""Capture files: record Kafka traffic or simulator output, replay it later.

* :mod:`citystream.capture.format`: the file format, :class:`CaptureWriter`, :class:`CaptureReader`
* :mod:`citystream.capture.simulated`: captures written by simulators, ground-truth sidecars
* :mod:`citystream.capture.recorder`: Kafka topics -> capture (``citystream record``)
* :mod:`citystream.capture.replayer`: capture -> Kafka or MQTT, paced (``citystream replay``)
* :mod:`citystream.capture.lag`: consumer-group lag, to wait until a pipeline has drained

Only the format and simulated modules are imported here; the others import the broker clients.
"""

from citystream.capture.format import (
    BlockInfo,
    CapturedRecord,
    CaptureError,
    CaptureReader,
    CaptureWriter,
    Damage,
    read_capture,
)
from citystream.capture.simulated import read_truth, truth_path, write_capture

__all__ = [
    "BlockInfo",
    "CaptureError",
    "CaptureReader",
    "CaptureWriter",
    "CapturedRecord",
    "Damage",
    "read_capture",
    "read_truth",
    "truth_path",
    "write_capture",
]
