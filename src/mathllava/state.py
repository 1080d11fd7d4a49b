"""Where the project keeps its local state (data, ZenML store, MLflow, locks, schedule logs): one
folder, $MATHLLAVA_HOME, else `.mathllava` in the project folder."""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path


def state_home(project: str | Path = ".") -> Path:
    return Path(os.environ.get("MATHLLAVA_HOME") or Path(project) / ".mathllava").resolve()


def registry_lock_path(name: str) -> Path:
    """The lock that serialises alias changes of registered model `name` from this machine."""
    return state_home() / "registry" / f"{name}.lock"


LOCK_FD = "MATHLLAVA_PIPELINE_LOCK_FD"  # a parent that holds the lock hands it down (the scheduled run's wrapper)


class Busy(RuntimeError):
    """Another pipeline run of this state folder holds its lock."""

    def __init__(self, lock: Path, holder: str):
        super().__init__(f"another pipeline run holds {lock} ({holder})")
        self.lock, self.holder = lock, holder


def pipeline_lock_path(home: str | Path | None = None) -> Path:
    """The one lock of a state folder: every pipeline run (`make run`, scheduled runs) takes it."""
    return (Path(home) if home else state_home()) / "schedules" / "pipeline.lock"


def _inherited(lock: Path) -> bool:
    """True when this process was handed an open descriptor of `lock` by a parent that holds it."""
    fd = os.environ.get(LOCK_FD, "")
    if not fd.isdigit():
        return False
    try:
        held, here = os.fstat(int(fd)), os.stat(lock)
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (here.st_dev, here.st_ino)


@contextmanager
def pipeline_lock(home: str | Path | None = None, wait: bool = False, what: str = ""):
    """Hold the state folder's pipeline lock for the block. Raises Busy, naming the holder, when another
    process holds it (or waits for it with `wait`). The lock file says who holds it; the kernel frees
    the lock when its holder dies, however it dies, so a killed run never leaves it held."""
    import fcntl

    lock = pipeline_lock_path(home)
    lock.parent.mkdir(parents=True, exist_ok=True)
    if _inherited(lock):
        yield lock
        return
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            raise Busy(lock, handle.read().strip() or "holder unknown") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {datetime.now().isoformat(timespec='seconds')}"
                     + (f": {what}" if what else ""))
        handle.flush()
        os.environ[LOCK_FD] = str(handle.fileno())  # children (make, run.py) find it held by their parent
        os.set_inheritable(handle.fileno(), True)
        try:
            yield lock
        finally:
            os.environ.pop(LOCK_FD, None)
