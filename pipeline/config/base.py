"""What every config section shares: no unknown keys, checked assignments; operational fields; the fingerprint hash.

A field that changes no output (batch and chunk sizes, engine and endpoint options, logging, the budget) is
declared with `operational(...)`: that is the only place it is said. Its description ends in "(operational)",
and `section.fingerprinted()` (what every stage's `fields` dumps) leaves it out, so changing it reuses finished
work (docs/architecture.md rule 4; tests/pipeline/test_config.py changes each one and checks no fingerprint moves).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

OPERATIONAL = "(operational)"


def operational(default: Any = ..., *, description: str, **kwargs: Any) -> Any:
    """A `Field` that changes no output: outside every fingerprint, and said so in its description."""
    return Field(default, description=f"{description} {OPERATIONAL}", json_schema_extra={"operational": True},
                 **kwargs)


def operational_fields(model: type[BaseModel]) -> set[str]:
    return {name for name, f in model.model_fields.items()
            if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("operational")}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def fingerprinted(self, *, exclude: set[str] = frozenset(), **kwargs: Any) -> dict:
        """`model_dump` without the operational fields (and `exclude`: fields that enter a fingerprint another
        way, such as a model by its revision)."""
        return self.model_dump(exclude=operational_fields(type(self)) | set(exclude), **kwargs)


def fingerprint(*parts: Any) -> str:
    """A stable 16-hex-digit hash of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
