from pathlib import Path
from typing import Annotated, Optional, Tuple

import pandas as pd
from zenml import step

from mathllava.data.config import DataSettings
from mathllava.data.ingest import SourceSpec, ingest_many
from mathllava.data.synthetic import GeneratorConfig, generate_cached
from mathllava.tracking import log_metrics, mark_training_experiment

from ._state import state_dir


def _generate(cfg: GeneratorConfig) -> str:
    return str(generate_cached(cfg, state_dir() / "data", progress=True))


@step
def generate_synthetic(data: DataSettings) -> Tuple[
    Annotated[str, "train_annotations"], Annotated[str, "heldout_annotations"], Annotated[Optional[str], "scorer_annotations"]
]:
    """Render the synthetic pool, the held-out split and the scorer's labelled share (LLaVA JSON + PNG folders)."""
    scorer = _generate(data.split("scorer")) if data.scorer_labels is not None else None
    return _generate(data.split("train")), _generate(data.split("heldout")), scorer


@step
def ingest_sources(annotations: Optional[str], data: DataSettings, include_extra: bool = True,
                   inputs: str = "") -> Tuple[
    Annotated[pd.DataFrame, "manifest"], Annotated[pd.DataFrame, "ingest_quarantine"]
]:
    """One manifest row per sample from the generator's output and any extra sources (any supported format).
    `inputs`: the fingerprint of the files on disk (`DataSettings.fingerprint`), part of the cache key."""
    specs = []
    if annotations:
        specs.append(SourceSpec(annotations=annotations, image_root=str(Path(annotations).parent / "images"),
                                name=Path(annotations).parent.name))
    if include_extra:
        specs += data.extra_sources
    mark_training_experiment()
    manifest, quarantine = ingest_many(specs, data.images, progress=True)
    unknown = int((manifest["task_type"] == "unknown").sum()) if len(manifest) else 0
    log_metrics({"ingested": len(manifest), "ingest_quarantined": len(quarantine), "unknown_task": unknown,
                 **{f"ingested_{t}": int(n) for t, n in manifest["task_type"].value_counts().items()}}, section="data")
    return manifest, quarantine
