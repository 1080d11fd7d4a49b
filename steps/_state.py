"""The project's state folder, created on first use (see mathllava.state)."""

from pathlib import Path

from mathllava.state import state_home


def state_dir() -> Path:
    path = state_home()
    path.mkdir(parents=True, exist_ok=True)
    return path
