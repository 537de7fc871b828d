"""Export JSON Schema files of every message type, for device makers."""

from __future__ import annotations

import json
from pathlib import Path

from schemas.messages import MESSAGE_TYPES


def export_json_schemas(out_dir: Path) -> list[Path]:
    """Write ``<name>.schema.json`` for each message type into ``out_dir``; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in sorted(MESSAGE_TYPES.items()):
        schema = model.model_json_schema(mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"citystream/{name}.schema.json"
        path = out_dir / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
