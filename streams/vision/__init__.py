"""Vision: detections of one frame and the per-camera multi-object tracker.

Pure numpy logic; the detector backend (ultralytics, optional ``vision`` extra) converts its
output into :class:`Detections` once, right after inference.
"""

from streams.vision.detections import Detections
from streams.vision.tracking import ByteTracker, MultiCameraTracker, TrackerConfig

__all__ = ["ByteTracker", "Detections", "MultiCameraTracker", "TrackerConfig"]
