"""The pool every arm draws from, prepared once per experiment with the pipeline's own data stages:
the synthetic splits (and any extra sources) ingested, the Great Expectations suite, dedup and the
contamination guard, then clarity and complexity per image (the learned scorer, trained on the
labelled share). Cached on disk by the data sections' digest and the input files' fingerprint."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..data.clean import dedup, guard, load_benchmarks
from ..data.ingest import SourceSpec, ingest_many
from ..data.selection import score_images
from ..data.synthetic import generate_cached
from ..data.validation import gate_failures, validate_manifest
from .config import RecipeParameters

_SCALAR = (str, int, float, bool, type(None))


@dataclass
class Pool:
    scored: pd.DataFrame      # the cleaned pool, scored: clarity, complexity per row
    heldout: pd.DataFrame     # the held-out synthetic split's manifest
    report: dict


def _spec(annotations: Path) -> SourceSpec:
    return SourceSpec(annotations=str(annotations), image_root=str(annotations.parent / "images"),
                      name=annotations.parent.name)


def _storable(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns holding lists or dicts become JSON text, so the frame round-trips through parquet."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object and not out[column].map(lambda v: isinstance(v, _SCALAR)).all():
            out[column] = out[column].map(lambda v: v if isinstance(v, _SCALAR) else json.dumps(v, default=str))
    return out


def pool_key(recipe: RecipeParameters) -> str:
    sections = {k: getattr(recipe, k).model_dump(mode="json") for k in ("data", "select")}
    sections["validate"] = recipe.validate_rules.model_dump(mode="json")
    sections["files"] = recipe.data.fingerprint()
    return hashlib.sha256(json.dumps(sections, sort_keys=True).encode()).hexdigest()[:16]


def prepare_pool(recipe: RecipeParameters, work: Path, data_root: Path, progress: bool = True) -> Pool:
    """The scored pool and the held-out manifest; read from `work/pool-<key>` when already made."""
    data = recipe.data
    folder = work / f"pool-{pool_key(recipe)}"
    done = folder / "report.json"
    if done.is_file():
        return Pool(pd.read_parquet(folder / "scored.parquet"), pd.read_parquet(folder / "heldout.parquet"),
                    json.loads(done.read_text(encoding="utf-8")))
    data.check_files()
    train = generate_cached(data.split("train"), data_root, progress)
    heldout_file = generate_cached(data.split("heldout"), data_root, progress)
    manifest, quarantine = ingest_many([_spec(train), *data.extra_sources], data.images, progress=progress)
    heldout, _ = ingest_many([_spec(heldout_file)], data.images)
    labelled = None
    if data.scorer_labels is not None:
        labelled, _ = ingest_many([_spec(generate_cached(data.split("scorer"), data_root, progress))], data.images)
    outcome = validate_manifest(manifest, recipe.validate_rules, quarantine)
    failing = gate_failures(outcome)
    if failing:
        raise ValueError(f"validation failure rate above the limit {recipe.validate_rules.max_failure_rate:.1%} in: "
                         + "; ".join(failing))
    kept, duplicates, dedup_report = dedup(outcome.valid, data.dedup)
    kept, contaminated, guard_report = guard(kept, load_benchmarks(data.contamination, data.images),
                                             data.contamination)
    scored, scorer_report, _model = score_images(kept, recipe.select, labelled, progress=progress)
    report = {"ingested": len(manifest), "valid": len(outcome.valid),
              "quarantined": len(quarantine) + len(outcome.quarantine), "duplicates_removed": dedup_report["removed"],
              "contamination_removed": guard_report["removed"], "pool": len(scored),
              "clear": int(scored["clear"].sum()), "scorer": {k: v for k, v in scorer_report.items()
                                                               if isinstance(v, (str, int, float, bool))},
              "heldout": len(heldout)}
    folder.mkdir(parents=True, exist_ok=True)
    _storable(scored).to_parquet(folder / "scored.parquet")
    _storable(heldout).to_parquet(folder / "heldout.parquet")
    done.write_text(json.dumps(report, indent=2), encoding="utf-8")   # last: the folder is whole
    return Pool(pd.read_parquet(folder / "scored.parquet"), pd.read_parquet(folder / "heldout.parquet"), report)
