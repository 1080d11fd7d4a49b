"""Scheduled runs on one machine: a cron entry per schedule (the user's crontab, or a crontab file),
whose command runs the pipeline under a lock so runs never overlap, appending to a log file.

    mathllava schedule create --cron "0 3 * * *" --config configs/local.yaml [--name NAME]
    mathllava schedule list
    mathllava schedule delete NAME

The cron expression comes from --cron or the config's `schedule:` block (the block a cluster
schedule uses too) and is checked before anything is installed."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .schedule import validate_cron
from .state import LOCK_FD, Busy, pipeline_lock, state_home

MARK = "mathllava-schedule:"
BUSY = 75  # EX_TEMPFAIL: another run holds the lock; this one is skipped, not failed
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class Entry:
    name: str
    cron: str
    command: str

    @property
    def config(self) -> str:
        words = shlex.split(self.command)
        return words[words.index("--config") + 1] if "--config" in words else ""

    def next_run(self, now: datetime | None = None) -> datetime:
        from cronsim import CronSim

        return next(CronSim(self.cron, now or datetime.now()))


def _table(crontab: str | Path | None):
    """The crontab to edit: a file (tests, /etc/cron.d-style files), else the user's own through the
    `crontab` command."""
    import shutil

    from crontab import CronTab

    target = crontab or os.environ.get("MATHLLAVA_CRONTAB")
    if target:
        path = Path(target)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")
        return CronTab(tabfile=str(path))
    if shutil.which("crontab") is None:
        raise ValueError("no `crontab` command on this machine: install cron (Debian: apt-get install cron), or "
                         "give --crontab FILE")
    return CronTab(user=True)


def entries(crontab: str | Path | None = None) -> list[Entry]:
    return [Entry(job.comment[len(MARK):], str(job.slices), job.command)
            for job in _table(crontab) if job.comment.startswith(MARK)]


def environment(workdir: str | Path) -> list[str]:
    """`NAME=value` words that a scheduled run needs to find what the run that created it used: the state
    folder and the tracking server (cron starts with an empty environment)."""
    from .tracking import tracking_source

    words = [f"MATHLLAVA_HOME={state_home(workdir)}"]
    uri, source = tracking_source()
    if source == "MLFLOW_TRACKING_URI":
        words.append(f"MLFLOW_TRACKING_URI={uri}")
    elif uri.startswith("http://127.0.0.1:"):
        words.append(f"MLFLOW_PORT={uri.rsplit(':', 1)[1]}")
    return words


def create(name: str, cron: str, config: str | Path, workdir: str | Path, crontab: str | Path | None = None,
           python: str = sys.executable) -> Entry:
    """Install (or replace) schedule `name`. Nothing is written unless every check passes."""
    cron = validate_cron(cron)
    if not _NAME.match(name):
        raise ValueError(f"schedule name {name!r}: letters, digits, '.', '_' and '-' only")
    workdir = Path(workdir).resolve()
    config = Path(config)
    config = config if config.is_absolute() else workdir / config
    if not config.is_file():
        raise ValueError(f"{config}: no such config file")
    if not (workdir / "Makefile").is_file():
        raise ValueError(f"{workdir}: not the project folder (no Makefile); give --workdir")
    command = " ".join(shlex.quote(w) for w in ["env", *environment(workdir), python, "-m", "mathllava.cli",
                                                 "schedule", "run", "--name", name, "--config", str(config),
                                                 "--workdir", str(workdir)])
    table = _table(crontab)
    table.remove_all(comment=f"{MARK}{name}")
    job = table.new(command=command, comment=f"{MARK}{name}")
    job.setall(cron)
    if not job.is_valid():
        raise ValueError(f"{cron!r}: cron refused it")
    table.write()
    return Entry(name, cron, command)


def delete(name: str, crontab: str | Path | None = None) -> None:
    table = _table(crontab)
    if not list(table.find_comment(f"{MARK}{name}")):
        known = ", ".join(e.name for e in entries(crontab)) or "none"
        raise ValueError(f"no schedule named {name!r} (schedules: {known})")
    table.remove_all(comment=f"{MARK}{name}")
    table.write()


def run_locked(command: list[str], home: Path, log: Path) -> int:
    """Run `command` under the pipeline lock of state folder `home` unless another run holds it; append its
    output to `log`. Returns its exit code, or BUSY when another run holds the lock. The command inherits
    the lock, so the `make run` it starts does not wait for itself."""
    log.parent.mkdir(parents=True, exist_ok=True)
    stamp = lambda: datetime.now().isoformat(timespec="seconds")  # noqa: E731
    with open(log, "a", encoding="utf-8") as out:
        try:
            with pipeline_lock(home, what="scheduled run"):
                out.write(f"{stamp()} start: {' '.join(command)}\n")
                out.flush()
                start = time.monotonic()
                # the run holds the lock too: if this process dies, the lock stays held until the run ends
                fd = int(os.environ[LOCK_FD]) if LOCK_FD in os.environ else None
                code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT,
                                      pass_fds=(fd,) if fd is not None else ()).returncode
                out.write(f"{stamp()} end: exit code {code} after {time.monotonic() - start:.0f} s\n")
                return code
        except Busy as busy:
            out.write(f"{stamp()} skipped: a run is still going ({busy.holder} holds {busy.lock})\n")
            return BUSY


def run_scheduled(name: str, config: str | Path, workdir: str | Path) -> int:
    """What the cron entry runs: `make run CONFIG=... RUN_ARGS=--no-schedule` in the project folder
    (the same set-up as by hand), under the one lock of that state folder."""
    home = state_home(workdir)
    command = ["make", "-C", str(workdir), "run", f"CONFIG={config}", "RUN_ARGS=--no-schedule"]
    return run_locked(command, home, home / "schedules" / f"{name}.log")
