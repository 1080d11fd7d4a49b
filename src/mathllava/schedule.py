"""Schedules: the `schedule:` block of a run config (ZenML's own keys), checked before anything is
sent. On the Kubernetes orchestrator a schedule becomes a CronJob, which must not overlap runs
(concurrencyPolicy Forbid) and must keep a bounded history."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, field_validator

# what Kubernetes' cron parser (robfig/cron, standard mode) takes beyond the five fields
MACROS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


def validate_cron(expression: str) -> str:
    """The expression, if Kubernetes' CronJob controller and cron would both take it; else a
    ValueError that says what is wrong."""
    from cronsim import CronSim, CronSimError

    text = " ".join(str(expression).split())
    if text in MACROS:
        return text
    if text.startswith(("TZ=", "CRON_TZ=")):
        raise ValueError(f"{expression!r}: time zones go in the CronJob's timeZone field, not the expression")
    fields = text.split(" ")
    if len(fields) != 5:
        raise ValueError(f"{expression!r}: a cron expression has 5 fields (minute hour day-of-month month "
                         f"day-of-week), not {len(fields)}")
    for field in fields:
        bare = re.sub(r"JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC|SUN|MON|TUE|WED|THU|FRI|SAT", "",
                      field.upper())
        if any(c in bare for c in "LW#?"):
            raise ValueError(f"{expression!r}: {field!r} uses L, W, # or ?, Quartz extensions Kubernetes does not take")
    try:
        CronSim(text, datetime(2026, 1, 1))
    except CronSimError as err:
        raise ValueError(f"{expression!r}: {err}") from None
    return text


class ScheduleSettings(BaseModel):
    """ZenML's Schedule, as far as a cron-driven orchestrator uses it."""

    model_config = ConfigDict(extra="forbid")

    cron_expression: str
    name: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    catchup: bool = False

    @field_validator("cron_expression")
    @classmethod
    def _cron(cls, value: str) -> str:
        return validate_cron(value)


def check_cronjob_settings(settings: dict | None, where: str) -> None:
    """A scheduled run's Kubernetes orchestrator settings must forbid overlapping runs and bound the
    CronJob's history."""
    if settings is None:
        return
    problems = []
    if settings.get("concurrency_policy") != "Forbid":
        problems.append("concurrency_policy must be Forbid (runs never overlap)")
    for key in ("successful_jobs_history_limit", "failed_jobs_history_limit"):
        if not isinstance(settings.get(key), int):
            problems.append(f"{key} must be set (a bounded history of Jobs)")
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))


def schedule_of(path: str | Path) -> ScheduleSettings | None:
    """The `schedule:` block of a run config, checked; None when it has none."""
    from .settings import parse, read_yaml

    block = read_yaml(path).get("schedule")
    return None if block is None else parse(ScheduleSettings, block, "schedule", str(path))
