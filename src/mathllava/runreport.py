"""The summary a finished pipeline run prints: what each stage did, where the model is, what state the
registry is in now (not what it was when the run registered), and the one command to run next.

It reads plain values (the steps' outputs, the registry's current view of the version) and imports no
pipeline code, so the wording is tested without running a pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field

SET_NAMES = {"heldout": "held-out synthetic", "mathv": "Math-V testmini"}


@dataclass
class RunFacts:
    """What the summary is made of. `registration` and the other outputs are the steps' artifacts;
    `registered_in` names the run that made the registration when this run reused it from the cache;
    `aliases`/`stage` are the registry's now."""

    run: str
    validation: dict
    cleaning: dict
    selection: dict
    curated_rows: int
    augmented_by_type: dict
    training: dict
    evaluation: dict
    registration: dict
    model_dir: str
    aliases: list[str]
    stage: str
    tracking_uri: str
    cached_steps: list[str] = field(default_factory=list)
    steps: int = 0
    registered_in: str | None = None
    overrides: dict = field(default_factory=dict)


def _contenders(block: dict) -> str:
    return ", ".join(f"{label} {block[key]['accuracy']:.2f}" for key, label in
                     (("model", "model"), ("base", "base"), ("frequent", "frequent answer")) if key in block)


def promote_command(name: str, tracking_uri: str, config: str | None) -> str:
    """The exact command that promotes the challenger of `name` (with the run's own evaluation sets)."""
    parts = ["mathllava", "registry", "promote", name]
    if config:
        parts += ["--config", config]
    return " ".join(parts + ["--tracking-uri", tracking_uri])


def promotion_lines(facts: RunFacts, config: str | None) -> tuple[str, str | None]:
    """(what happened to the promotion, the next command if one is needed)."""
    reg = facts.registration
    name, version = reg["model_name"], reg["version"]
    promotion = reg.get("promotion")
    if facts.registered_in:
        said = (f"nothing was registered or compared now: run {facts.registered_in} registered v{version} with "
                "these same inputs and outputs (this run reused it from the cache)")
        if "challenger" in facts.aliases:
            command = promote_command(name, facts.tracking_uri, config)
            return f"{said}. v{version} is still challenger; to compare and promote it: {command}", command
        return said, None
    if reg.get("identical_to"):
        return (f"nothing new to compare: this run's weights are identical to v{version}'s, so no version was "
                f"added; v{version} is tagged with this run (also_produced_by.{facts.run})", None)
    if reg.get("alias") is None:
        return ("not a candidate: the gate on the held-out split failed, so v" + str(version)
                + " got no alias (register.gate)", None)
    if not promotion:
        command = promote_command(name, facts.tracking_uri, config)
        return f"not compared (register.promotion.compare and .auto are off); to compare and promote: {command}", command
    sets = "; ".join(f"{SET_NAMES.get(s, s)}, {n} problems" for s, n in (promotion.get("sets") or {}).items())
    by_metric = promotion.get("scores") or {}
    scores = "; ".join((f"{SET_NAMES.get(m, m)}: " if len(by_metric) > 1 else "")
                       + f"v{version} {s.get('challenger', float('nan')):.2f}"
                       + (f" vs v{promotion['champion_before']} {s['champion']:.2f}" if "champion" in s else "")
                       for m, s in by_metric.items())
    on = f" on {sets}" if sets else ""
    if promotion.get("promoted"):
        before = promotion.get("champion_before")
        what = f"first champion (there was none){on}" if before is None else f"beat champion v{before}{on}: {scores}"
        return f"promoted by this run: v{version} became champion, {what}", None
    command = promote_command(name, facts.tracking_uri, config)
    reasons = "; ".join(promotion.get("reasons") or [])
    if promotion.get("wins") and promotion.get("auto") is not True:
        auto = promotion.get("auto")
        why = ("register.promotion.auto is 'first': the pipeline promotes only while there is no champion"
               if auto == "first" else "register.promotion.auto is false: promotions are left to you")
        return (f"not promoted: v{version} beats champion v{promotion.get('champion_before')}{on} ({scores}), but "
                f"{why}. To promote it: {command}", command)
    if promotion.get("champion_before") is not None:
        return (f"not promoted: v{version} stays challenger; it does not beat champion "
                f"v{promotion['champion_before']}{on} ({reasons})", None)
    return f"not promoted: {reasons}", command


def summary_rows(facts: RunFacts, config: str | None = None) -> list[tuple[str, str]]:
    """(label, text) rows, in the order a reader wants them."""
    v, c, s, t, e, reg = (facts.validation, facts.cleaning, facts.selection, facts.training, facts.evaluation,
                          facts.registration)
    rows = []
    reused = len(facts.cached_steps)
    rows.append(("run", facts.run + (f"  ({reused} of {facts.steps} steps reused from the cache)" if reused
                                     else f"  (all {facts.steps} steps ran)")))
    if facts.overrides:
        rows.append(("overrides", ", ".join(f"{k}={v_}" for k, v_ in facts.overrides.items())))
    reasons = ", ".join(f"{k} {n}" for k, n in (v.get("reasons") or {}).items())
    rows.append(("data", f"{v['rows']} records ingested, {v['quarantined']} quarantined"
                 + (f" ({reasons})" if reasons else "")
                 + f"; {c['dedup']['removed']} duplicates and {c['contamination']['removed']} evaluation-set "
                   "matches removed"))
    scorer = s.get("scorer") or {}
    exact = (scorer.get("complexity") or {}).get("exact")
    levels = ", ".join(f"L{k} {lv['selected']} ({lv['share']:.0%}, target {lv['target_share']:.0%})"
                       for k, lv in s["levels"].items())
    rows.append(("selection", f"{s['selected']} images by the {scorer.get('method', 'rule')} scorer"
                 + (f" (complexity exact on held-back labels: {exact:.0%})" if isinstance(exact, float) else "")
                 + f", {s['dropped_unclear']} unclear dropped; {levels}"
                 + ("" if s.get("within_tolerance") else " - OUTSIDE the tolerance")))
    rows.append(("training data", f"{facts.curated_rows} question-answer rows: "
                 + ", ".join(f"{k} {n}" for k, n in facts.augmented_by_type.items())))
    losses = [h["loss"] for h in t.get("history", []) if "loss" in h]
    rows.append(("training", f"{t['global_step']} steps"
                 + (f", loss {losses[0]:.2f} -> {losses[-1]:.2f}" if losses else "")
                 + (f", {t['truncated']} truncated, {t['dropped']} dropped" if t.get("truncated") or t.get("dropped")
                    else "")))
    rows.append(("model", facts.model_dir))
    for split in ("heldout", "mathv"):
        if split in e:
            rows.append((SET_NAMES[split], f"{e[split].get('problems', '?')} problems, accuracy %: "
                         + _contenders(e[split])))
    gate = "gate passed" if reg.get("alias") else "gate failed"
    if reg.get("identical_to"):
        gate = "the same weights, not registered again"
    rows.append(("registered", f"{reg['model_name']} v{reg['version']}: {gate}; now "
                 + (f"{', '.join(facts.aliases)} ({facts.stage})" if facts.aliases else facts.stage)))
    promotion, _ = promotion_lines(facts, config)
    rows.append(("promotion", promotion))
    return rows


def next_command(facts: RunFacts, config: str | None = None) -> str | None:
    return promotion_lines(facts, config)[1]
