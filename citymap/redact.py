"""What a viewer must not see: plates, evidence pointers and images (pure)."""

from __future__ import annotations

from typing import Any

#: Fields of a violation only roles with evidence access receive.
EVIDENCE_FIELDS = ("evidence_uri", "evidence_sha256")
_SECRET_WORDS = ("plate", "evidence", "image", "photo", "face")


def public_details(details: dict[str, Any]) -> dict[str, Any]:
    """``details`` without any key that names a plate, evidence, image, photo or face."""
    return {k: v for k, v in details.items() if not any(w in k.lower() for w in _SECRET_WORDS)}


def violation_for(row: dict[str, Any], sees_evidence: bool) -> dict[str, Any]:
    """A violation as the role may see it; a new dict, ``row`` is not changed."""
    if sees_evidence:
        return dict(row)
    out = {k: v for k, v in row.items() if k not in EVIDENCE_FIELDS}
    if isinstance(out.get("details"), dict):
        out["details"] = public_details(out["details"])
    return out
