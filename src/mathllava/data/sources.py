"""Task types per record: from the record's metadata, else its source dataset's entry in
`configs/data/sources.yaml` (the paper's 24 datasets), else the source spec's default, else
`unknown`. Missing optional metadata is not a fault: unknown tasks are kept and counted."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path


from ..formats import TASK_CODES, TASK_NAMES
from ..settings import read_yaml

UNKNOWN = "unknown"
DEFAULT_TABLE = Path(__file__).resolve().parents[3] / "configs" / "data" / "sources.yaml"


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9+]", "", str(name).lower())


class SourceTable:
    def __init__(self, entries: dict[str, dict], origin: str = "sources table"):
        self.tasks: dict[str, str] = {}
        self.names: dict[str, str] = {}
        for name, entry in entries.items():
            task = (entry or {}).get("task")
            if task not in TASK_NAMES:
                raise ValueError(f"{origin}: sources.{name}.task must be one of {sorted(TASK_NAMES)}, got {task!r}")
            for alias in [name, *((entry or {}).get("aliases") or [])]:
                self.tasks[_key(alias)] = task
                self.names[_key(alias)] = name

    def task_of(self, source: str | None) -> str | None:
        return self.tasks.get(_key(source)) if source else None

    def canonical(self, source: str) -> str:
        return self.names.get(_key(source), source)


@lru_cache(maxsize=8)
def load_table(path: str | Path = DEFAULT_TABLE) -> SourceTable:
    data = read_yaml(path, "sources table")
    if not isinstance(data.get("sources"), dict):
        raise ValueError(f"{path}: expected a `sources:` mapping of dataset name -> {{task: ...}}")
    return SourceTable(data["sources"], str(path))


def task_code(value) -> str | None:
    """FQA/GPS/MWP/TQA/VQA from a code or a full name (any case); None when it is neither."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.upper() in TASK_NAMES:
        return text.upper()
    return TASK_CODES.get(text.lower())


def resolve_task(record_task, source: str | None, default: str | None, table: SourceTable) -> str:
    return task_code(record_task) or table.task_of(source) or task_code(default) or UNKNOWN
