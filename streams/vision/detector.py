"""The detector contract every backend implements, and the factory the workers call.

A detector turns a batch of JPEG frames (as they travel on ``camera.frames``) into one
:class:`~streams.vision.detections.Detections` per frame, in input order, in the pixel
coordinates of the *original* frame.  ``class_id`` indexes :attr:`Detector.classes`.
A frame that cannot be decoded yields a :class:`DecodeFailure` in its slot (the worker
sends it to the dead-letter topic) and never fails the rest of the batch.

Backends import their heavy dependencies (torch, ultralytics) lazily, so importing this
module stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from schemas.messages import VehicleClass
from streams.vision.detections import Detections

if TYPE_CHECKING:
    from citystream.settings import VisionSettings


@dataclass(frozen=True)
class DecodeFailure:
    """Why one frame of a batch produced no detections (e.g. not a decodable JPEG)."""

    reason: str


class Detector(Protocol):
    #: Identifies the weights (name and content hash), recorded with every track and violation.
    model_version: str
    #: ``class_id`` -> vehicle class.
    classes: Sequence[VehicleClass]
    #: "cuda:0", "cpu", ...
    device: str

    def detect_jpegs(self, jpegs: Sequence[bytes]) -> list[Detections | DecodeFailure]:
        """Detect objects in every frame of the batch; one result per input, in order."""
        ...


def load_detector(settings: VisionSettings) -> Detector:
    """The configured detector (the ultralytics YOLO backend)."""
    from streams.vision.yolo import YoloDetector

    return YoloDetector.from_settings(settings)
