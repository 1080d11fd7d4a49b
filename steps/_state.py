"""Where the project keeps its local state (data, ZenML store, MLflow): one folder, from the environment."""

import os
from pathlib import Path


def state_dir() -> Path:
    path = Path(os.environ.get("MATHLLAVA_HOME", ".mathllava")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
