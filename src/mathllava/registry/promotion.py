"""Promotion through stages in the MLflow registry, by a fair comparison.

Aliases are the stages: `challenger` (staging), `champion` (production) and `previous-champion` (the
champion it replaced, archived but ready for a rollback). A promotion evaluates the challenger and
the current champion on the same evaluation sets with the same scorer in one go, compares per metric
against configured margins, and moves the aliases only if the champion is still the version it was
compared against (checked under a lock, so two promotions at once cannot both go through). Every
decision is kept as tags on the versions involved: what was compared, the scores, who asked, when,
the outcome and why."""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import socket
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..evaluation.settings import EvalSettings

CHALLENGER, CHAMPION, PREVIOUS = "challenger", "champion", "previous-champion"
STAGES = {CHALLENGER: "staging", CHAMPION: "production", PREVIOUS: "archived"}
AUDIT = "audit."  # version tags audit.<UTC time> hold one JSON record each


class PromotionConflict(RuntimeError):
    """The registry changed between the comparison and the alias update: nothing was moved."""


class PromotionSettings(BaseModel):
    """`promotion:` in a run config: margins in accuracy points per metric (the challenger must reach
    champion + margin on each), the evaluation sets, and whether the pipeline itself tries."""

    model_config = ConfigDict(extra="forbid")

    margins: dict[str, float] = {"mathv": 0.0}
    eval: EvalSettings = EvalSettings()
    auto: bool | Literal["first"] = "first"  # the pipeline promotes a winning challenger itself (first: only
                                             # while there is no champion, so the first version becomes one)
    compare: bool = True    # the pipeline compares each new challenger with the champion (table + chart)


class GateSettings(BaseModel):
    """`register.gate`: accuracy points the model must beat each baseline by on the held-out split."""

    model_config = ConfigDict(extra="forbid")

    min_margin_over_frequent: float = 0.0
    min_margin_over_base: float = 0.0


class RegisterSettings(BaseModel):
    """`register`: the registered model, the alias a passing version gets, the gate and the promotion."""

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(min_length=1)
    alias: str = "challenger"
    gate: GateSettings = GateSettings()
    promotion: PromotionSettings = PromotionSettings()


@dataclass
class Decision:
    promote: bool
    reasons: list[str]
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> {challenger, champion}


def compare(challenger: dict[str, float], champion: dict[str, float] | None, margins: dict[str, float]) -> Decision:
    """The challenger wins when it scores more than champion + margin on every metric with a margin
    (a negative margin is a tolerated drop; with margin 0 a tie is not a win). Without a champion it
    wins outright."""
    if champion is None:
        return Decision(True, ["no champion yet: the challenger becomes the first"],
                        {m: {"challenger": challenger[m]} for m in margins if m in challenger})
    missing = sorted(m for m in margins if m not in challenger or m not in champion)
    if missing:
        return Decision(False, [f"metric {m} was not scored for both versions" for m in missing])
    reasons, scores, ok_all = [], {}, True
    for metric, margin in margins.items():
        a, b = challenger[metric], champion[metric]
        ok = a > b + margin
        ok_all &= ok
        scores[metric] = {"challenger": a, "champion": b}
        reasons.append(f"{metric}: challenger {a:.2f} {'>' if ok else '<='} champion {b:.2f} + margin {margin:.2f}")
    return Decision(ok_all, reasons, scores)


def log_comparison(challenger: str, champion: str, scores: dict, margins: dict) -> None:
    """Challenger against champion in the active MLflow run: a table and a chart under registry/."""
    from .. import plots
    from ..tracking import log_figure, log_table

    metrics = sorted(scores)
    log_table({"metric": metrics, f"challenger v{challenger}": [scores[m]["challenger"] for m in metrics],
               f"champion v{champion}": [scores[m]["champion"] for m in metrics],
               "margin": [margins.get(m, 0.0) for m in metrics]}, "registry/comparison.json")
    log_figure(plots.accuracy_bars({f"challenger v{challenger}": {m: scores[m]["challenger"] for m in metrics},
                                    f"champion v{champion}": {m: scores[m]["champion"] for m in metrics}},
                                   "challenger vs champion, same sets"), "registry/comparison.png")


def _client(tracking_uri: str | None):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)   # None (or ""): MLflow's default, as MlflowClient() has it


def require_model(name: str, tracking_uri: str | None = None) -> None:
    """A ValueError `no registered model NAME at URI` when the registry has no such model."""
    from mlflow.exceptions import MlflowException

    try:
        _client(tracking_uri).get_registered_model(name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise ValueError(f"no registered model {name!r} at {tracking_uri or _client(None).tracking_uri}") from None
        raise


def alias_version(client, name: str, alias: str) -> str | None:
    try:
        return client.get_model_version_by_alias(name, alias).version
    except Exception:  # MlflowException RESOURCE_DOES_NOT_EXIST: no such alias
        return None


def actor() -> str:
    return os.environ.get("MATHLLAVA_ACTOR") or f"{getpass.getuser()}@{socket.gethostname()}"


def record(client, name: str, version: str, entry: dict) -> dict:
    """One audit record on a version (a tag per event, so none overwrites another)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    entry = {"time": stamp, "actor": actor(), **entry}
    client.set_model_version_tag(name, version, f"{AUDIT}{stamp}", json.dumps(entry, sort_keys=True))
    return entry


@contextmanager
def registry_lock(path: str | Path):
    """Serialises alias changes of one registry from this machine (blocking)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def compare_with_champion(name: str, evaluate, margins: dict[str, float],
                          tracking_uri: str | None = None) -> tuple[str, str | None, Decision]:
    """(challenger, champion, decision): both scored by `evaluate(client, name, versions)` on the same
    sets in one call; nothing is changed."""
    client = _client(tracking_uri)
    require_model(name, tracking_uri)
    challenger = alias_version(client, name, CHALLENGER)
    if challenger is None:
        raise ValueError(f"{name} has no '{CHALLENGER}' version to promote")
    champion = alias_version(client, name, CHAMPION)
    if champion == challenger:
        raise ValueError(f"{name} v{challenger} is already the champion")
    scores = evaluate(client, name, [v for v in (challenger, champion) if v is not None])
    if champion is not None and champion not in scores:
        return challenger, champion, Decision(False, [f"the champion v{champion} was not scored"])
    return challenger, champion, compare(scores[challenger], scores[champion] if champion else None, margins)


def promote(name: str, evaluate, margins: dict[str, float], lock: str | Path, tracking_uri: str | None = None,
            reason: str = "") -> tuple[Decision, dict]:
    """Compare the challenger with the champion and, if it wins, make it champion, keeping the old one
    as previous-champion. Raises PromotionConflict when the aliases moved since the comparison
    started."""
    client = _client(tracking_uri)
    challenger, champion, decision = compare_with_champion(name, evaluate, margins, tracking_uri)
    with registry_lock(lock):
        now_champion, now_challenger = alias_version(client, name, CHAMPION), alias_version(client, name, CHALLENGER)
        if (now_champion, now_challenger) != (champion, challenger):
            raise PromotionConflict(
                f"{name}: the registry changed during the comparison (champion v{champion} -> v{now_champion}, "
                f"challenger v{challenger} -> v{now_challenger}); nothing was moved: compare again")
        entry = {"event": "promote" if decision.promote else "promotion-refused", "challenger": challenger,
                 "champion": champion, "scores": decision.scores, "margins": margins, "reasons": decision.reasons,
                 "reason": reason, "decision": uuid.uuid4().hex}
        if decision.promote:
            # in an order that leaves a usable registry if a call fails midway: the old champion is kept
            # as previous-champion before the new one takes over, and the challenger alias goes last
            if champion is not None:
                client.set_registered_model_alias(name, PREVIOUS, champion)
            client.set_registered_model_alias(name, CHAMPION, challenger)
            client.delete_registered_model_alias(name, CHALLENGER)
            if champion is not None:
                record(client, name, champion, {**entry, "stage": STAGES[PREVIOUS]})
            entry["stage"] = STAGES[CHAMPION]
        else:
            entry["stage"] = STAGES[CHALLENGER]
        return decision, record(client, name, challenger, entry)


def rollback(name: str, reason: str, lock: str | Path, tracking_uri: str | None = None) -> dict:
    """Make the previous champion the champion again; the version rolled back from keeps the record."""
    if not reason.strip():
        raise ValueError("a rollback needs a reason")
    client = _client(tracking_uri)
    with registry_lock(lock):
        champion, previous = alias_version(client, name, CHAMPION), alias_version(client, name, PREVIOUS)
        if previous is None:
            raise ValueError(f"{name} has no '{PREVIOUS}' to roll back to")
        client.set_registered_model_alias(name, CHAMPION, previous)
        client.delete_registered_model_alias(name, PREVIOUS)
        entry = {"event": "rollback", "champion": previous, "rolled_back": champion, "reason": reason,
                 "decision": uuid.uuid4().hex}
        if champion is not None:
            record(client, name, champion, {**entry, "stage": STAGES[PREVIOUS]})
        return record(client, name, previous, {**entry, "stage": STAGES[CHAMPION]})


@dataclass
class VersionInfo:
    version: str
    aliases: list[str]
    stage: str
    run_id: str | None
    tags: dict[str, str]


def show(name: str, tracking_uri: str | None = None) -> list[VersionInfo]:
    client = _client(tracking_uri)
    by_version: dict[str, list[str]] = {}
    from mlflow.exceptions import MlflowException

    try:
        for alias, version in (client.get_registered_model(name).aliases or {}).items():
            by_version.setdefault(str(version), []).append(alias)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    out = []
    for mv in sorted(client.search_model_versions(f"name='{name}'"), key=lambda m: int(m.version)):
        aliases = sorted(by_version.get(str(mv.version), []))
        decided = any(k.startswith(AUDIT) for k in mv.tags)   # it was a challenger or champion once
        stage = next((STAGES[a] for a in (CHAMPION, CHALLENGER, PREVIOUS) if a in aliases),
                     "archived" if decided else "none")
        out.append(VersionInfo(mv.version, aliases, stage, mv.run_id,
                               {k: v for k, v in mv.tags.items() if not k.startswith(AUDIT)}))
    return out


def history(name: str, tracking_uri: str | None = None) -> list[dict]:
    """One record per decision, oldest first: a promotion or rollback leaves a record on each version
    it moves (sharing its `decision` id); they are merged into one, on the version the decision was
    about (the challenger; for a rollback the version made champion again), with `stages` giving every
    moved version's new stage."""
    client = _client(tracking_uri)
    groups: dict[str, list[dict]] = {}
    for mv in client.search_model_versions(f"name='{name}'"):
        for key, value in mv.tags.items():
            if key.startswith(AUDIT):
                entry = {"version": str(mv.version), **json.loads(value)}
                groups.setdefault(entry.get("decision") or f"{mv.version}:{key}", []).append(entry)
    events = []
    for records in groups.values():
        first = records[0]
        subject = str(first.get("champion") if first["event"] == "rollback" else first.get("challenger")
                      or first["version"])
        main = next((r for r in records if r["version"] == subject), records[0])
        events.append({**main, "time": min(r["time"] for r in records),
                       "stages": {r["version"]: r.get("stage") for r in sorted(records, key=lambda r: r["version"])}})
    return sorted(events, key=lambda e: (e["time"], e["version"]))


def as_dict(decision: Decision) -> dict:
    return asdict(decision)
