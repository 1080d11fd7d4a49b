import hashlib
import json
from typing import Annotated, Tuple

import pandas as pd
from zenml import step

from mathllava.data.ingest import ingest_many
from mathllava.data.synthetic import GeneratorConfig, generate
from mathllava.tracking import log_metrics, mark_training_experiment

from ._state import state_dir


def _generate(cfg: dict, split: str) -> str:
    key = hashlib.sha256(json.dumps({**cfg, "split": split}, sort_keys=True).encode()).hexdigest()[:12]
    out = state_dir() / "data" / f"synthetic-{split}-{key}"
    done = out / "data.json"
    if not done.exists():  # content-addressed: the same config always gives the same folder
        generate(out, GeneratorConfig(**{**cfg, "level_weights": tuple(cfg["level_weights"]),
                                         "id_prefix": f"synth-{split}"}), progress=True)
    return str(done)


@step
def generate_synthetic(data: dict) -> Tuple[Annotated[str, "train_annotations"], Annotated[str, "heldout_annotations"]]:
    """Render the synthetic training pool and the held-out split (LLaVA JSON + PNG folders)."""
    synthetic = data["synthetic"]
    heldout = {**synthetic, **data["heldout"], "unclear_fraction": 0.0}
    return _generate(synthetic, "train"), _generate(heldout, "heldout")


@step
def ingest_sources(annotations: str, data: dict, include_extra: bool = True) -> Tuple[
    Annotated[pd.DataFrame, "manifest"], Annotated[pd.DataFrame, "ingest_quarantine"]
]:
    """One manifest row per sample from the generator's output and any MathV360K-format folders."""
    from pathlib import Path

    specs = [{"annotations": annotations, "image_root": str(Path(annotations).parent / "images"),
              "name": Path(annotations).parent.name}]
    if include_extra:
        specs += data.get("extra_sources") or []
    mark_training_experiment()
    manifest, quarantine = ingest_many(specs, int(data["max_pixels"]), progress=True)
    log_metrics({"ingested": len(manifest), "ingest_quarantined": len(quarantine)}, section="data")
    return manifest, quarantine
