"""Where the project keeps its local state (data, ZenML store, MLflow, locks, schedule logs): one
folder, $MATHLLAVA_HOME, else `.mathllava` in the project folder."""

from __future__ import annotations

import os
from pathlib import Path


def state_home(project: str | Path = ".") -> Path:
    return Path(os.environ.get("MATHLLAVA_HOME") or Path(project) / ".mathllava").resolve()


def registry_lock_path(name: str) -> Path:
    """The lock that serialises alias changes of registered model `name` from this machine."""
    return state_home() / "registry" / f"{name}.lock"
