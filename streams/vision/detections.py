"""The project's detection type: one frame's boxes as numpy arrays (supervision-style)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def _empty_ids() -> IntArray:
    return np.zeros(0, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class Detections:
    """Boxes of one frame: ``xyxy`` (N, 4) pixels, ``confidence`` (N,), ``class_id`` (N,).

    ``tracker_id`` (N,) is filled by the tracker (``-1`` = untracked).  ``appearance``
    (N, D), optional: a small descriptor of each box's look (the detector's: the mean colour,
    0..1, of a 2 x 2 grid over the box's inner part), which the tracker uses to tell
    neighbouring vehicles apart.  Arrays are copied and made read-only, so a
    ``Detections`` can be shared between threads safely.
    """

    xyxy: FloatArray
    confidence: FloatArray
    class_id: IntArray
    tracker_id: IntArray = field(default_factory=_empty_ids)
    appearance: FloatArray | None = None

    def __post_init__(self) -> None:
        xyxy = np.asarray(self.xyxy, dtype=np.float64).reshape(-1, 4)
        n = len(xyxy)
        conf = np.asarray(self.confidence, dtype=np.float64).reshape(-1)
        cls = np.asarray(self.class_id, dtype=np.int64).reshape(-1)
        tid = np.asarray(self.tracker_id, dtype=np.int64).reshape(-1)
        if len(tid) == 0 and n:
            tid = np.full(n, -1, dtype=np.int64)
        if not len(conf) == len(cls) == len(tid) == n:
            raise ValueError(
                f"Detections arrays differ in length: xyxy {n}, confidence {len(conf)}, "
                f"class_id {len(cls)}, tracker_id {len(tid)}"
            )
        if n and not np.isfinite(xyxy).all():
            raise ValueError("Detections.xyxy holds NaN or infinity")
        if self.appearance is not None:
            app = np.asarray(self.appearance, dtype=np.float64)
            if app.ndim != 2 or len(app) != n or not np.isfinite(app).all():
                raise ValueError(
                    f"Detections.appearance must be ({n}, D) finite floats, got {app.shape}"
                )
            app = app.copy()
            app.setflags(write=False)
            object.__setattr__(self, "appearance", app)
        for name, arr in (
            ("xyxy", xyxy),
            ("confidence", conf),
            ("class_id", cls),
            ("tracker_id", tid),
        ):
            arr = arr.copy()
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index: Any) -> Detections:
        """Select rows by boolean mask, index array or slice."""
        app = self.appearance
        return Detections(
            self.xyxy[index].reshape(-1, 4),
            np.atleast_1d(self.confidence[index]),
            np.atleast_1d(self.class_id[index]),
            np.atleast_1d(self.tracker_id[index]),
            None if app is None else app[index].reshape(-1, app.shape[1]),
        )

    @property
    def bottom_center(self) -> FloatArray:
        """(N, 2) ground contact points in pixels: the middle of each box's bottom edge."""
        return np.stack([(self.xyxy[:, 0] + self.xyxy[:, 2]) / 2, self.xyxy[:, 3]], axis=1).reshape(
            -1, 2
        )
