"""Clarity and complexity per image, then complexity-stratified sampling (the paper's selection).

Scores come from the learned scorer (`scorer`) when enough labelled images exist, else from the
image-statistics rules (`imagestats`). The sampler follows the paper: a set ratio per complexity
level (default 0:1:2:3 = 2:3:4:1), every top-level image kept, each level spread evenly over
sources. The report gives each level's target, what was selected, and how any shortfall was filled.
"""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
from pydantic import Field, field_validator, model_validator

from ..settings import Strict
from . import scorer as learned
from .imagestats import (ClarityRules, ComplexityRules, clarity_score, complexity_level, complexity_score, defects,
                         image_stats)


class SamplingPlan(Strict):
    """`select.sampling`."""

    target_size: int = Field(gt=0)
    proportions: tuple[float, ...] = (2, 3, 4, 1)     # complexity 0:1:2:3, as in the paper
    keep_all_top_level: bool = True
    tolerance: float = Field(0.05, ge=0, le=1)         # allowed |selected share - target share| per level
    seed: int

    @field_validator("proportions")
    @classmethod
    def _proportions(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if len(value) < 2:
            raise ValueError("give one proportion per complexity level (at least two)")
        if any(p < 0 for p in value) or sum(value) <= 0:
            raise ValueError(f"proportions must be non-negative with a positive sum, got {list(value)}")
        return value


class SelectSettings(Strict):
    """`select`: clarity, complexity (rules), the learned scorer and the sampling plan."""

    clarity: ClarityRules = ClarityRules()
    complexity: ComplexityRules = ComplexityRules()
    scorer: learned.ScorerSettings = learned.ScorerSettings()
    sampling: SamplingPlan

    @model_validator(mode="after")
    def _levels_agree(self) -> "SelectSettings":
        levels = len(self.sampling.proportions)
        # the learned scorer's levels first: it is what sets the levels whenever labelled images exist
        if self.scorer.enabled and self.scorer.levels != levels:
            raise ValueError(f"sampling.proportions gives {levels} complexity levels but the learned scorer has "
                             f"scorer.levels = {self.scorer.levels}: give one proportion per scorer level")
        if len(self.complexity.cuts) + 1 != levels:
            raise ValueError(f"complexity.cuts has {len(self.complexity.cuts)} cut points for {levels} levels in "
                             f"sampling.proportions; it needs {levels - 1} (the rules' levels, used without "
                             f"labelled images)")
        if self.scorer.levels != levels:
            raise ValueError(f"scorer.levels ({self.scorer.levels}) must equal the {levels} sampling.proportions")
        return self


# --------------------------------------------------------------------------- scores


def _labels(frame: pd.DataFrame, levels: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Distinct labelled images: (paths, complexity or -1, clear 1/0 or -1); a level outside 0..levels-1
    counts as unknown."""
    first = frame.drop_duplicates("image_path")
    level = pd.to_numeric(first["complexity_label"], errors="coerce").fillna(-1).astype(int).to_numpy()
    level = np.where((level >= 0) & (level < levels), level, -1)
    clear = first["clear_label"].map(lambda v: -1 if v is None or v != v else int(bool(v))).to_numpy()
    return first["image_path"].tolist(), level, clear


def labelled_rows(frame: pd.DataFrame | None) -> pd.DataFrame:
    if frame is None or frame.empty:
        return pd.DataFrame(columns=["image_path", "complexity_label", "clear_label"])
    usable = frame["image_ok"].fillna(False).astype(bool) if "image_ok" in frame else True
    return frame[usable & frame["complexity_label"].notna()]   # complexity labels train; clarity comes with them


def _rule_scores(paths: list[str], cfg: SelectSettings, progress: bool) -> pd.DataFrame:
    iterator = paths
    if progress:
        from tqdm import tqdm

        iterator = tqdm(paths, desc="score images (rules)", unit="img")
    rows = {}
    for path in iterator:
        st = image_stats(path)
        cs = complexity_score(st, cfg.complexity)
        found = defects(st, cfg.clarity)
        rows[path] = {"clarity_score": clarity_score(st, cfg.clarity), "defects": ", ".join(found),
                      "clear": not found, "complexity_score": cs, "complexity": complexity_level(cs, cfg.complexity)}
    return pd.DataFrame.from_dict(rows, orient="index")


def score_images(manifest: pd.DataFrame, cfg: SelectSettings, labelled: pd.DataFrame | None = None,
                 progress: bool = False) -> tuple[pd.DataFrame, dict, object | None]:
    """The manifest with clarity (score, defects, clear) and complexity per row, each distinct image
    scored once; (scored, report, learned model or None). The scorer trains on `labelled` (a
    labelled share kept apart from the pool, as the paper's 10K) or, without it, on the pool's own
    labelled rows."""
    paths = manifest["image_path"].drop_duplicates().tolist()
    train_rows = labelled_rows(labelled)
    separate = not train_rows.empty
    if not separate:
        train_rows = labelled_rows(manifest)
    n_labelled = train_rows["image_path"].nunique()
    if not cfg.scorer.enabled or n_labelled < cfg.scorer.min_labelled:
        why = "disabled" if not cfg.scorer.enabled else f"{n_labelled} labelled images < {cfg.scorer.min_labelled}"
        scores = _rule_scores(paths, cfg, progress)
        return manifest.join(scores, on="image_path"), {"method": "rules", "why": why, "labelled": int(n_labelled)}, None
    label_paths, level, clear = _labels(train_rows, cfg.scorer.levels)
    model, report = learned.fit(learned.load_thumbnails(label_paths, cfg.scorer.side, progress), level, clear,
                                cfg.scorer, progress)
    report["trained_on_separate_labelled_set"] = separate
    levels, clear_p = learned.predict_paths(model, paths, cfg.scorer.side, progress)
    scores = pd.DataFrame({"clarity_score": clear_p, "complexity_score": levels.astype(float),
                           "complexity": levels}, index=paths)
    scored = manifest.join(scores, on="image_path")
    small = scored[["width", "height"]].min(axis=1).fillna(0) < cfg.clarity.min_side
    looks_unclear = scored["clarity_score"] < 0.5
    scored["clear"] = ~(small | looks_unclear)
    scored["defects"] = np.where(small, "low resolution", np.where(looks_unclear, "unclear (learned)", ""))
    if separate:  # the pool's own labels were never trained on: a second, independent check
        pool = scored.drop_duplicates("image_path")
        has = pool["complexity_label"].notna() & (pool["clear_label"] != False)  # noqa: E712 (None stays)
        report["pool_complexity"] = learned.agreement(pool.loc[has, "complexity_label"].astype(int).to_numpy(),
                                                      pool.loc[has, "complexity"].to_numpy(), cfg.scorer.levels)
    return scored, report, model


# --------------------------------------------------------------------------- sampling


def level_targets(available: dict[int, int], plan: SamplingPlan) -> dict[int, int]:
    """How many items to draw per complexity level. The top level is kept whole when configured (up
    to its share plus the tolerance); a level short of its share hands the rest to the other levels
    in proportion (the paper does not say how its level-3 shortfall was reallocated; this is our choice)."""
    levels = list(range(len(plan.proportions)))
    total = min(plan.target_size, sum(available.values()))
    targets = {lvl: 0 for lvl in levels}
    top = levels[-1]
    remaining = total
    open_levels = [lv for lv in levels if available.get(lv, 0) > 0]
    if plan.keep_all_top_level and available.get(top, 0):
        # every top-level image is kept (the paper: they are the scarcest) up to its share plus the
        # tolerance, so a plentiful top level cannot eat the budget; a zero proportion keeps none
        share = total * plan.proportions[top] / sum(plan.proportions)
        cap = int(share + plan.tolerance * total) if plan.proportions[top] > 0 else 0
        targets[top] = min(available[top], cap, total)
        remaining -= targets[top]
        open_levels.remove(top)
    while remaining > 0 and open_levels:
        weight = sum(plan.proportions[lv] for lv in open_levels)
        if weight <= 0:
            weight, shares = len(open_levels), {lv: remaining / len(open_levels) for lv in open_levels}
        else:
            shares = {lv: remaining * plan.proportions[lv] / weight for lv in open_levels}
        floors = {lv: int(shares[lv]) for lv in open_levels}
        # largest remainders get the leftover units so the shares add up exactly
        leftover = remaining - sum(floors.values())
        for lv in sorted(open_levels, key=lambda lv: shares[lv] - floors[lv], reverse=True)[:leftover]:
            floors[lv] += 1
        progressed = False
        for lv in list(open_levels):
            take = min(available[lv] - targets[lv], floors[lv])
            targets[lv] += take
            remaining -= take
            progressed |= take > 0
            if targets[lv] >= available[lv]:
                open_levels.remove(lv)
        if not progressed:
            break
    return targets


def even_quota(available: dict[str, int], n: int) -> dict[str, int]:
    """Split n over sources as evenly as their sizes allow (water filling)."""
    quota = {s: 0 for s in available}
    remaining = n
    open_sources = sorted(s for s in available if available[s] > 0)
    while remaining > 0 and open_sources:
        share, extra = divmod(remaining, len(open_sources))
        for i, s in enumerate(list(open_sources)):
            take = min(share + (1 if i < extra else 0), available[s] - quota[s])
            quota[s] += take
            remaining -= take
        open_sources = [s for s in open_sources if quota[s] < available[s]]
    return quota


def level_report(available: dict[int, int], selected: dict[int, int], plan: SamplingPlan) -> dict:
    """Per level: the ideal count at the plan's proportions of the budget, what was selected, the
    share's deviation, and in words how each shortfall or excess was filled."""
    budget = plan.target_size
    weight = sum(plan.proportions)
    top = len(plan.proportions) - 1
    top_excess = plan.keep_all_top_level and selected.get(top, 0) > budget * plan.proportions[top] / weight + 0.5
    levels, notes = {}, []
    for lv, p in enumerate(plan.proportions):
        ideal = budget * p / weight
        got, have = int(selected.get(lv, 0)), int(available.get(lv, 0))
        deviation = got / budget - p / weight
        levels[lv] = {"available": have, "ideal": round(ideal, 1), "selected": got, "share": got / budget,
                      "target_share": p / weight, "deviation": deviation,
                      "within_tolerance": abs(deviation) <= plan.tolerance}
        if got < ideal - 0.5 and have < ideal:
            notes.append(f"level {lv}: short of supply, all {have} clear images taken for an ideal {ideal:.0f}; "
                         f"the other levels with room filled the gap in proportion")
        elif got < ideal - 0.5 and top_excess:
            notes.append(f"level {lv}: {got} for an ideal {ideal:.0f}, shrunk in proportion to make room for "
                         f"level {top}, kept whole")
        elif lv == top and top_excess and got < have:
            notes.append(f"level {lv}: {got} of {have} images kept: keep_all_top_level keeps every one only up to "
                         f"its ideal {ideal:.0f} plus the {plan.tolerance:.0%} tolerance")
        elif lv == top and top_excess:
            notes.append(f"level {lv}: all {got} images kept (keep_all_top_level), {got - ideal:.0f} over its "
                         f"ideal {ideal:.0f}")
        elif got > ideal + 0.5:
            notes.append(f"level {lv}: {got} for an ideal {ideal:.0f}, filling a shortfall elsewhere")
    total = sum(selected.values())
    if total < budget:
        notes.append(f"budget: {total} selected of {budget} ({sum(available.values())} clear images available)")
    return {"levels": levels, "policy": notes,
            "within_tolerance": all(v["within_tolerance"] for v in levels.values())}


def stratified_sample(scored: pd.DataFrame, plan: SamplingPlan) -> tuple[pd.DataFrame, dict]:
    """Clear rows sampled per complexity level and evenly over sources; returns (selection, report)."""
    pool = scored[scored["clear"]]
    available = {int(k): int(v) for k, v in pool.groupby("complexity").size().items()}
    targets = level_targets(available, plan)
    rng = random.Random(plan.seed)
    chosen = []
    by_level_source: dict = {}
    for level, n in targets.items():
        if n <= 0:
            continue
        rows = pool[pool["complexity"] == level]
        by_source = {s: g.index.tolist() for s, g in rows.groupby("source")}
        quota = even_quota({s: len(v) for s, v in by_source.items()}, n)
        by_level_source[level] = quota
        for source, idx in sorted(by_source.items()):
            chosen.extend(rng.sample(sorted(idx), quota[source]))
    selection = scored.loc[sorted(chosen)].copy()
    selected = {int(k): int(v) for k, v in selection.groupby("complexity").size().items()}
    report = {
        "available_by_level": available,
        "targets_by_level": targets,
        "selected_by_level": selected,
        "selected_by_level_and_source": {int(k): v for k, v in by_level_source.items()},
        "selected": len(selection),
        "dropped_unclear": int((~scored["clear"]).sum()),
        **level_report(available, selected, plan),
    }
    return selection, report
