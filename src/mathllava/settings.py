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


def read_yaml(path, what: str = "config file") -> dict:
    """A YAML mapping from `path`, or a ValueError in one line that names the file (and the line of a
    syntax error): `configs/x.yaml: no such config file`, `configs/x.yaml: line 4: not valid YAML: ...`."""
    from pathlib import Path

    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such {what}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file") from None
    except yaml.YAMLError as err:
        mark, opened = getattr(err, "problem_mark", None), getattr(err, "context_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        if opened is not None and mark is not None and opened.line != mark.line:
            problem += f" ({getattr(err, 'context', None) or 'started'} on line {opened.line + 1})"
        raise ValueError(f"{path}:{where} not valid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of keys at the top level, found {type(data).__name__}")
    return data


def parse(cls: type[BaseModel], data: Any, prefix: str, source: str = "config", remote: bool = False):
    """Validate `data` as `cls`; a ValueError naming the source and each key's path on failure.
    `remote`: paths name files inside a cluster's pods, not here."""
    if isinstance(data, cls):
        return data
    try:
        return cls.model_validate(data or {}, context={"remote": remote})
    except ValidationError as err:
        raise ValueError(f"{source}: {describe_error(err, prefix)}") from None
