"""Faults a user can fix, told in one line: a full disk and a tracking server that stopped answering.

`explain(error)` walks an exception's chain (cause and context) and returns that line, or None for any
other error, whose traceback is then worth reading."""

from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path

# what torch's zip writer says when a write fails part-way: it drops the OSError and its errno
TORN_WRITE = ("unexpected pos", "iostream error", "file write failed", "PytorchStreamWriter failed")
NO_SPACE = ("No space left on device", "os error 28")
LOW_SPACE = 64 * 1024 * 1024  # bytes: a failed write with less free than this was a full disk
TRACKING_DOWN = ("Max retries exceeded", "Connection refused", "Failed to establish a new connection",
                 "RemoteDisconnected", "Connection aborted", "ConnectionResetError")


def _human(n: int) -> str:
    if n < 1024:
        return f"{n:.0f} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"


def free_bytes(folder: str | Path) -> int | None:
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


class DiskFull(OSError):
    """ENOSPC, with the folder being written and the space left on its file system."""

    def __init__(self, folder: str | Path, what: str = "writing"):
        free = free_bytes(folder)
        left = "unknown" if free is None else _human(free)
        super().__init__(errno.ENOSPC, f"no space left on device {what} {folder} ({left} free there); "
                                       f"free some space or point the state folder (MATHLLAVA_HOME) elsewhere")
        self.folder = str(folder)

    def __str__(self) -> str:
        return self.strerror


def chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def as_disk_full(error: BaseException, folder: str | Path) -> DiskFull | None:
    """`error` as DiskFull for `folder` when it is a failed write on a full disk: an ENOSPC OSError in its
    chain, or a torn torch write while the folder's file system has almost no space left."""
    for item in chain(error):
        if isinstance(item, DiskFull):
            return item
        if isinstance(item, OSError) and item.errno == errno.ENOSPC:
            return DiskFull(getattr(item, "filename", None) and Path(item.filename).parent or folder)
        if any(s in str(item) for s in NO_SPACE):  # the Rust tokenizers library raises a bare Exception
            return DiskFull(folder)
        if isinstance(item, RuntimeError) and any(s in str(item) for s in TORN_WRITE):
            free = free_bytes(folder)
            if free is not None and free < LOW_SPACE:
                return DiskFull(folder)
    return None


def explain(error: BaseException, tracking_uri: str | None = None, tracking_up: bool | None = None) -> str | None:
    """One line for a fault the user can fix, or None. `tracking_up`: whether the tracking server answers
    now (asked by the caller; a connection error while it answers is some other server's)."""
    full = as_disk_full(error, ".")
    if full is not None:
        return f"error: {full}"
    if tracking_uri and tracking_up is False:
        text = " ".join(str(item) for item in chain(error))
        if any(s in text for s in TRACKING_DOWN) or "MlflowException" in {type(i).__name__ for i in chain(error)}:
            return tracking_down(tracking_uri)
    return None


def tracking_down(uri: str) -> str:
    return (f"error: the MLflow tracking server at {uri} does not answer. Steps that finished are kept and "
            f"reused by the next run. `make run` restarts the local server (or: python -m mathllava.localserver "
            f"start); for a remote server, check it and set MLFLOW_TRACKING_URI")


class OneLineFaults(logging.Filter):
    """Drops a log record that carries a fault `explain` knows (its traceback would bury the one line the
    caller prints instead); every other record passes."""

    def __init__(self, explain_error):
        super().__init__()
        self.explain_error = explain_error
        self.seen: str | None = None  # the last line explained (the orchestrator may raise a summary error)

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is None and isinstance(record.args, tuple):
            error = next((a for a in record.args if isinstance(a, BaseException)), None)
        line = None if error is None else self.explain_error(error)
        if line is not None:
            self.seen = line
        return line is None
