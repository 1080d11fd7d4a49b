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
    syntax error): `configs/x.yaml: no such config file`, `configs/x.yaml: line 4, column 9: not valid YAML: ...`."""
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
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark is not None else ""
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


def _inner_model(annotation):
    """The pydantic model a field holds (through Optional/Union), `dict` for a free mapping, else None."""
    import types
    import typing

    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _inner_model(arg)
            if found is not None:
                return found
        return None
    if origin is dict or annotation is dict:
        return dict
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _leaf_paths(model: type[BaseModel], prefix: str) -> list[str]:
    paths = []
    for name, field in model.model_fields.items():
        inner = _inner_model(field.annotation)
        if inner is not None and inner is not dict:
            paths += _leaf_paths(inner, f"{prefix}.{name}")
        paths.append(f"{prefix}.{name}")
    return paths


def override_path(key: str, sections: dict[str, type[BaseModel]]) -> list[str]:
    """The parts of a dotted override key (`train.seed`, `select.sampling.target_size`), checked against the
    typed sections. A last part that is not at that level but names exactly one key deeper in the section
    stands for it (`select.target_size` is `select.sampling.target_size`); otherwise a ValueError naming the
    key, with the full paths of the keys of that name in the section, if there are any."""
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ValueError(f"--set {key}: expected a dotted key such as train.seed")
    if parts[0] not in sections:
        raise ValueError(f"--set {key}: unknown section {parts[0]!r} (one of {', '.join(sections)})")
    node: Any = sections[parts[0]]
    for depth, part in enumerate(parts[1:], start=1):
        where = ".".join(parts[:depth])
        if node is dict:
            node = None     # a free mapping (e.g. register.promotion.margins): any key, any value below
            continue
        if node is None:
            raise ValueError(f"--set {key}: {where} is a value, not a section with keys")
        if part not in node.model_fields:
            near = [p for p in _leaf_paths(sections[parts[0]], parts[0]) if p.split(".")[-1] == part]
            if depth == len(parts) - 1 and len(near) == 1 and near[0].startswith(where + "."):
                return near[0].split(".")
            hint = f" (did you mean {' or '.join(near)}?)" if near else ""
            raise ValueError(f"--set {key}: {where} has no key {part!r}{hint}")
        node = _inner_model(node.model_fields[part].annotation)
    return parts


def apply_overrides(parameters: dict, overrides: list[str], sections: dict[str, type[BaseModel]]) -> dict[str, Any]:
    """Apply `KEY=VALUE` overrides (VALUE read as YAML: 1, 0.5, true, null, [2, 3, 4, 1]) to a run config's
    `parameters` in place; returns {key: value} as applied. Keys are checked against the typed sections
    before anything changes; the values are validated with the rest of the config afterwards."""
    import yaml

    applied: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item}: expected KEY=VALUE, e.g. train.seed=1")
        key = ".".join(override_path(key.strip(), sections))   # the full key, as recorded
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ValueError(f"--set {key}: {raw!r} is not a YAML value ({getattr(err, 'problem', err)})") from None
        applied[key] = value
    for key, value in applied.items():
        parts = key.split(".")
        node = parameters
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return applied
