from pathlib import Path
from typing import Annotated, Optional, Tuple

import pandas as pd
from zenml import ArtifactConfig, get_step_context, step
from zenml.enums import ArtifactType

from mathllava.formats import export_llava
from mathllava.k8s.config import ClusterLaunch
from mathllava.tracking import log_params
from mathllava.train.config import ModelSettings, TrainSettings
from mathllava.train.data import read_conversations
from mathllava.train.launch import train
from mathllava.train.tiny import init_tiny

from ._state import state_dir


@step
def export_training_data(curated_dataset: pd.DataFrame) -> Annotated[
    Path, ArtifactConfig(name="training_data", artifact_type=ArtifactType.DATA)
]:
    """The curated dataset in the MathV360K layout (conversations.json + images/), the input of
    `mathllava train` here and on a cluster."""
    out = state_dir() / "exports" / get_step_context().pipeline_run.name
    export_llava(curated_dataset.to_dict("records"), out)
    return out


@step
def train_model(training_data: Path, model_cfg: dict, train_cfg: dict, cluster_cfg: Optional[dict] = None) -> Tuple[
    Annotated[Path, ArtifactConfig(name="model_dir", artifact_type=ArtifactType.MODEL)],
    Annotated[str, "base_model"],
    Annotated[dict, "train_summary"],
]:
    """Fine-tune `model.base` (or the built-in tiny model, built here) with `mathllava train`'s code, in
    this process, under torchrun, or as a Kubeflow job (`train.launcher`)."""
    model, settings = ModelSettings(**model_cfg), TrainSettings(**train_cfg)
    cluster = ClusterLaunch(**cluster_cfg) if cluster_cfg else None
    log_params({"model": model.model_dump(), "train": settings.model_dump()})
    out = state_dir() / "training" / "runs" / get_step_context().pipeline_run.name
    data = training_data / "conversations.json"
    base = model.base
    if base is None:  # the embedded default: a tiny base whose tokenizer knows the curated text
        texts = [turn["value"] for record in read_conversations(data) for turn in record["conversations"]]
        base = str(init_tiny(out.parent / f"{out.name}-base", model.tiny, texts))
    if settings.cache_dir is None:
        settings = settings.model_copy(update={"cache_dir": str(state_dir() / "cache" / "encoded")})
    result = train(base, data, training_data / "images", out, settings, cluster=cluster)
    latest = state_dir() / "training" / "latest"
    latest.unlink(missing_ok=True)
    latest.symlink_to(out, target_is_directory=True)
    return result.model_dir, base, {**result.summary, "model_dir": str(result.model_dir)}  # where it lies on disk
