"""The camera directory: which cameras exist, where they look, and when that changes.

Both traffic workers (vision and traffic) read the ``cameras`` and ``intersections``
reference tables through a :class:`CameraDirectory` and re-read them every
``settings.traffic.camera_refresh_s``.  Each refresh is compared with the previous one and
reported as :class:`CameraChanges`:

* **added**: a camera id that was not there before;
* **moved**: its calibration changed (a new ``calibration_version``, an edited calibration
  document, or another intersection): the workers reset the camera's tracker, watchdog and
  per-camera state, because positions measured with the old homography do not mix with new
  ones;
* **removed**: gone from the table; its state is dropped and its frames/tracks are
  dead-lettered from then on.

No worker restarts for any of these.  The row's ``calibration_version`` (an integer counter
in the table) is the authoritative version: it becomes the calibration's
``calibration_version`` recorded in every track, violation and evidence bundle.  A camera
whose calibration document is empty or invalid is still known (the vision worker tracks it,
without ground positions); :attr:`CameraInfo.problem` says why it has no calibration.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from citystream.errors import ConfigError, SinkError
from streams.traffic.calibration import Calibration

log = logging.getLogger(__name__)

CAMERAS_SQL = (
    "SELECT c.id, c.intersection_id, c.calibration, c.calibration_version, c.width, c.height "
    "FROM cameras c JOIN intersections i ON i.id = c.intersection_id ORDER BY c.id"
)


@dataclass(frozen=True)
class CameraInfo:
    """One camera as the workers see it."""

    camera_id: str
    intersection_id: str
    version: int
    calibration: Calibration | None
    problem: str | None = None
    width: int | None = None
    height: int | None = None
    #: Changes whenever anything the workers depend on changes (version, document, place).
    fingerprint: str = ""


def parse_camera_row(
    camera_id: str,
    intersection_id: str,
    calibration: Mapping[str, Any] | str | None,
    version: int,
    width: int | None = None,
    height: int | None = None,
) -> CameraInfo:
    """A :class:`CameraInfo` from one row of the reference tables (pure).

    ``camera_id``, ``intersection_id`` and ``calibration_version`` of the row override those
    in the calibration document, so the two can never disagree."""
    doc: Any = calibration
    if isinstance(doc, str):
        try:
            doc = json.loads(doc) if doc.strip() else {}
        except ValueError as exc:
            doc = {"__invalid__": str(exc)}
    doc = dict(doc or {})
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    fingerprint = hashlib.sha256(
        f"{camera_id}|{intersection_id}|{version}|{canonical}".encode()
    ).hexdigest()[:32]
    cal: Calibration | None = None
    problem: str | None = None
    if not doc:
        problem = "the camera has no calibration (empty calibration document)"
    elif "__invalid__" in doc:
        problem = f"calibration document is not JSON: {doc['__invalid__']}"
    else:
        doc.update(
            camera_id=camera_id,
            intersection_id=intersection_id,
            calibration_version=str(version),
        )
        try:
            cal = Calibration.from_dict(doc)
        except ConfigError as exc:
            problem = str(exc)[:500]
    return CameraInfo(
        camera_id, intersection_id, int(version), cal, problem, width, height, fingerprint
    )


@dataclass(frozen=True)
class CameraChanges:
    """What changed between two directory snapshots (ids, sorted)."""

    added: tuple[str, ...] = ()
    moved: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.moved or self.removed)


def diff_cameras(old: Mapping[str, CameraInfo], new: Mapping[str, CameraInfo]) -> CameraChanges:
    """Added, moved (fingerprint changed) and removed cameras (pure)."""
    return CameraChanges(
        added=tuple(sorted(set(new) - set(old))),
        moved=tuple(
            sorted(c for c in set(new) & set(old) if new[c].fingerprint != old[c].fingerprint)
        ),
        removed=tuple(sorted(set(old) - set(new))),
    )


def load_cameras_from_db(dsn: str) -> list[CameraInfo]:
    """Every camera of the reference tables; :class:`SinkError` when the DB cannot be read."""
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            rows = conn.execute(CAMERAS_SQL).fetchall()
    except psycopg.Error as exc:
        raise SinkError(f"cannot read the cameras reference table: {exc}") from exc
    return [parse_camera_row(*row) for row in rows]


@dataclass
class _State:
    cameras: dict[str, CameraInfo] = field(default_factory=dict)
    loaded: bool = False
    loaded_at: float = float("-inf")
    forced_at: float = float("-inf")
    #: the snapshot as of the last take_changes()
    taken: dict[str, CameraInfo] = field(default_factory=dict)


class CameraDirectory:
    """The cameras known to a worker, refreshed from the DB every ``refresh_s``.

    :meth:`refresh` (called from the worker's loop) reloads when due; :meth:`lookup` also
    reloads at once (at most every ``min_forced_s``) when asked for an unknown camera, so the
    first frames of a newly added camera are not dead-lettered.  :meth:`take_changes`
    returns what changed since it was last called.  A failed reload keeps the last good
    snapshot (logged and counted in :attr:`errors`).
    """

    def __init__(
        self,
        loader: Callable[[], Iterable[CameraInfo]],
        refresh_s: float,
        *,
        min_forced_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.loader = loader
        self.refresh_s = refresh_s
        self.min_forced_s = min_forced_s
        self.clock = clock
        self.errors = 0
        self.reloads = 0
        self._s = _State()
        self._lock = threading.Lock()

    @classmethod
    def from_dsn(cls, dsn: str, refresh_s: float) -> CameraDirectory:
        return cls(lambda: load_cameras_from_db(dsn), refresh_s)

    # --- queries -------------------------------------------------------------------------
    def get(self, camera_id: str) -> CameraInfo | None:
        return self._s.cameras.get(camera_id)

    def lookup(self, camera_id: str) -> CameraInfo | None:
        """The camera, reloading the directory first if it is unknown (rate-limited)."""
        info = self._s.cameras.get(camera_id)
        if info is None and self.clock() - self._s.forced_at >= self.min_forced_s:
            self._s.forced_at = self.clock()
            self.refresh(force=True)
            info = self._s.cameras.get(camera_id)
        return info

    @property
    def cameras(self) -> dict[str, CameraInfo]:
        return dict(self._s.cameras)

    @property
    def loaded(self) -> bool:
        return self._s.loaded

    def of_intersection(self, intersection_id: str) -> list[CameraInfo]:
        return [c for c in self._s.cameras.values() if c.intersection_id == intersection_id]

    # --- refresh -------------------------------------------------------------------------
    def refresh(self, *, force: bool = False) -> bool:
        """Reload if due (or ``force``); True when a reload happened.  Raises
        :class:`SinkError` only if the directory has never been loaded."""
        now = self.clock()
        if not force and now - self._s.loaded_at < self.refresh_s:
            return False
        with self._lock:
            try:
                fresh = {c.camera_id: c for c in self.loader()}
            except SinkError as exc:
                self._s.loaded_at = now  # retry after refresh_s, not on every call
                if not self._s.loaded:
                    raise
                self.errors += 1
                log.warning("camera directory: keeping the last snapshot: %s", exc)
                return False
            changes = diff_cameras(self._s.cameras, fresh)
            for cid in changes.added + changes.moved:
                if fresh[cid].problem:
                    log.warning("camera %s: %s", cid, fresh[cid].problem)
            if changes and self._s.loaded:
                log.info(
                    "cameras: added %s, moved %s, removed %s",
                    list(changes.added),
                    list(changes.moved),
                    list(changes.removed),
                )
            self._s.cameras = fresh
            self._s.loaded = True
            self._s.loaded_at = now
            self.reloads += 1
            return True

    def load_blocking(self, stop: threading.Event, retry_s: float = 2.0) -> bool:
        """Load the first snapshot, retrying while the DB is unreachable; False if ``stop``
        was set first."""
        while not stop.is_set():
            try:
                self.refresh(force=True)
                return True
            except SinkError as exc:
                log.warning(
                    "camera directory not loaded yet (retrying in %.0f s): %s", retry_s, exc
                )
                stop.wait(retry_s)
        return False

    def take_changes(self) -> CameraChanges:
        """Changes since the last call (the first call reports every camera as added)."""
        with self._lock:
            current = self._s.cameras
            out, self._s.taken = diff_cameras(self._s.taken, current), dict(current)
        return out
