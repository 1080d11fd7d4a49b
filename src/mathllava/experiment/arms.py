"""Each arm's training rows for one seed: its selection from the pool, then its augmentations.

The seed sets the selection's draw, the augmentation's choices and (in `cells`) the model's
initialisation and data order, so arm A and arm B at seed s differ only in their data."""

from __future__ import annotations

import random

import pandas as pd

from ..augment import GENERATORS, AugmentSettings, augment
from ..data.ingest import manifest_digest
from ..data.selection import SelectSettings, stratified_sample
from .config import ArmSettings

# the per-seed count that turns each augmentation on (its count comes from augment.per_seed)
_COUNT_OF = {aug_type: generator for generator, aug_type in GENERATORS.items()}
# what a cell's training data is, for its cache key: every row's identity and its target text
DIGEST_COLUMNS = ("id", "image_sha256", "question", "answer", "aug_type", "rationale")


def data_digest(rows: pd.DataFrame) -> str:
    present = [c for c in DIGEST_COLUMNS if c in rows]
    return manifest_digest(rows.assign(**{c: rows[c].fillna("").astype(str) for c in present}), present)


def random_sample(pool: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """`n` distinct images drawn uniformly from the pool (clear or not), with all their rows."""
    images = sorted(pool["image_path"].drop_duplicates())
    chosen = set(random.Random(seed).sample(images, min(n, len(images))))
    return pool[pool["image_path"].isin(chosen)].copy()


def select(pool: pd.DataFrame, arm: ArmSettings, settings: SelectSettings, seed: int) -> tuple[pd.DataFrame, dict]:
    plan = settings.sampling.model_copy(update={"seed": seed})
    if arm.selection == "stratified":
        return stratified_sample(pool, plan)
    chosen = random_sample(pool, plan.target_size, seed)
    by_level = {int(k): int(v) for k, v in chosen.groupby("complexity").size().items()}
    return chosen, {"selected": len(chosen), "selected_by_level": by_level,
                    "unclear": int((~chosen["clear"].astype(bool)).sum())}


def augment_settings(arm: ArmSettings, settings: AugmentSettings, seed: int) -> AugmentSettings:
    """`settings` with only the arm's augmentations on; a rationale is one per seed question."""
    counts = {name: 0 for name in _COUNT_OF.values()}
    for aug_type in arm.augment:
        name = _COUNT_OF[aug_type]
        counts[name] = 1 if name == "rationale" else settings.per_seed.count(name)
    per_seed = settings.per_seed.model_copy(update=counts)
    return settings.model_copy(update={"per_seed": per_seed, "seed": seed, "progress": False})


def arm_rows(pool: pd.DataFrame, arm: ArmSettings, select_settings: SelectSettings,
             augment_cfg: AugmentSettings, seed: int) -> tuple[pd.DataFrame, dict]:
    """(training rows, report) of `arm` at `seed`: seeds first, then their augmented rows."""
    selection, selection_report = select(pool, arm, select_settings, seed)
    settings = augment_settings(arm, augment_cfg, seed)
    if arm.augment:
        rows, augment_report = augment(selection, settings, progress=False)
    else:
        rows, augment_report = selection.assign(aug_type=None, parent_id=None, generator=None), {}
    counts = rows["aug_type"].fillna("seed").value_counts().to_dict()
    report = {"arm": arm.name, "seed": seed, "rows": len(rows), "images": int(rows["image_path"].nunique()),
              "by_aug_type": {k: int(v) for k, v in counts.items()}, "digest": data_digest(rows),
              "selected_by_level": selection_report.get("selected_by_level"),
              "augment_dropped": augment_report.get("dropped", {})}
    return rows.reset_index(drop=True), report
