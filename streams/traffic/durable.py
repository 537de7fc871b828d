"""What the traffic worker keeps on disk besides Kafka offsets.

* Evidence bundles (:func:`keep_evidence`): written once per violation id.  A replay judges
  the same violation again; its bundle is then reused, not rewritten, because the hash of the
  first one may already be in the DB (the sink keeps the first row of a key).
* The restart state (:class:`StateFile`): per camera a
  :class:`~streams.traffic.camera_state.CameraMemory` (tracks judged or cut since the commit
  point: a replay must not judge those parts again; the violation kinds recent tracks were
  reported for: a later segment must not report them again) and the advice periods already
  finished.  Written atomically before every commit, read at start.  Version 1 files (judged
  tracks only) are read as memories without kinds.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path

from schemas.messages import ViolationKind
from streams.traffic.camera_state import CameraMemory, Judged
from streams.traffic.evidence import store_bundle, verify_bundle

log = logging.getLogger(__name__)

Memories = dict[str, CameraMemory]  # camera -> what its judgements left behind


def keep_evidence(root: Path, judged: Judged) -> tuple[str, str]:
    """Store the bundle of ``judged`` under ``root`` unless an intact one exists; returns
    its URI (relative to ``root``) and SHA-256."""
    v = judged.violation
    rel = Path(v.camera_id) / f"{v.violation_id}.zip"
    path = root / rel
    if path.exists():
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        if verify_bundle(path, sha):
            return rel.as_posix(), sha
        log.warning("evidence %s is damaged; writing it again", path)
    stored = store_bundle(root, judged.evidence)
    return stored.uri, stored.sha256


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> tuple[Memories, dict[str, float]]:
        """Camera memories and finished advice periods (intersection -> end) as last saved."""
        try:
            data = json.loads(self.path.read_text())
            memories: Memories = {}
            for cid, tracks in data["judged"].items():
                memories.setdefault(cid, CameraMemory()).judged.update(
                    {int(k): float(v) for k, v in tracks.items()}
                )
            for cid, tracks in data.get("fired", {}).items():
                memories.setdefault(cid, CameraMemory()).fired.update(
                    {
                        int(k): (float(t), frozenset(ViolationKind(x) for x in kinds))
                        for k, (t, kinds) in tracks.items()
                    }
                )
            done = {str(k): float(v) for k, v in data.get("advice_done", {}).items()}
            return memories, done
        except FileNotFoundError:
            return {}, {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable %s: %s", self.path, exc)
            return {}, {}

    def save(self, memories: Mapping[str, CameraMemory], done: Mapping[str, float]) -> None:
        doc = {
            "v": 2,
            "judged": {
                c: {str(k): t for k, t in m.judged.items()} for c, m in memories.items() if m.judged
            },
            "fired": {
                c: {str(k): [t, sorted(str(x) for x in kinds)] for k, (t, kinds) in m.fired.items()}
                for c, m in memories.items()
                if m.fired
            },
            "advice_done": dict(done),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, sort_keys=True))
        tmp.replace(self.path)
