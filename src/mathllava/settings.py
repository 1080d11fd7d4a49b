"""Typed settings, the bottom floor every stage's config imports: a strict pydantic base (unknown
keys refused) and `parse`, which names the file and each key's path in its error."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def describe_error(err: ValidationError, prefix: str) -> str:
    """`train.lora.r: Input should be greater than 0` lines, one per problem."""
    lines = []
    for problem in err.errors():
        path = ".".join(str(p) for p in (prefix, *problem["loc"]) if p != "")
        lines.append(f"{path}: {problem['msg']}")
    return "; ".join(lines)


def parse(cls: type[BaseModel], data: Any, prefix: str, source: str = "config", remote: bool = False):
    """Validate `data` as `cls`; a ValueError naming the source and each key's path on failure.
    `remote`: paths name files inside a cluster's pods, not here."""
    if isinstance(data, cls):
        return data
    try:
        return cls.model_validate(data or {}, context={"remote": remote})
    except ValidationError as err:
        raise ValueError(f"{source}: {describe_error(err, prefix)}") from None
