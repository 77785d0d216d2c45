"""What every config section shares: no unknown keys, checked assignments; operational fields; the fingerprint hash.

A field that changes no output (batch and chunk sizes, engine and endpoint options, logging, the budget) is
declared with `operational(...)`: that is the only place it is said. Its description ends in "(operational)",
and `section.fingerprinted()` (what every stage's `fields` dumps) leaves it out, so changing it reuses finished
work (docs/architecture.md rule 4; tests/pipeline/test_config.py changes each one and checks no fingerprint moves).
"""

from __future__ import annotations

import hashlib
import json
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, field_validator

OPERATIONAL = "(operational)"


def operational(default: Any = ..., *, description: str, **kwargs: Any) -> Any:
    """A `Field` that changes no output: outside every fingerprint, and said so in its description."""
    return Field(default, description=f"{description} {OPERATIONAL}", json_schema_extra={"operational": True},
                 **kwargs)


def operational_fields(model: type[BaseModel]) -> set[str]:
    return {name for name, f in model.model_fields.items()
            if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("operational")}


def _kinds(annotation) -> set:
    """The plain types an annotation admits (through Optional, unions and Annotated)."""
    if get_origin(annotation) in (Union, types.UnionType, Annotated):
        args = get_args(annotation)
        return set().union(*(_kinds(a) for a in (args[:1] if get_origin(annotation) is Annotated else args)))
    return {annotation}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value, info):
        """pydantic reads `true`/`yes` as 1 for a number (`--set seed=yes` ran with seed 1, issue 39): refused."""
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            kinds = _kinds(cls.model_fields[info.field_name].annotation)
            if kinds & {int, float} and bool not in kinds:
                raise ValueError(f"{str(value).lower()} is a boolean, not a number (YAML reads yes/no/on/off as "
                                 "booleans); write a number")
        return value

    def fingerprinted(self, *, exclude: set[str] = frozenset(), **kwargs: Any) -> dict:
        """`model_dump` without the operational fields (and `exclude`: fields that enter a fingerprint another
        way, such as a model by its revision)."""
        return self.model_dump(exclude=operational_fields(type(self)) | set(exclude), **kwargs)


def fingerprint(*parts: Any) -> str:
    """A stable 16-hex-digit hash of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
