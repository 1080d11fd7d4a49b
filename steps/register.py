import os
import subprocess
from pathlib import Path
from typing import Annotated

import pandas as pd
from zenml import get_step_context, step

from mathllava.ingest import manifest_digest
from mathllava.registry.promotion import PromotionConflict, PromotionSettings, promote
from mathllava.registry.versions import gate, register_model_dir, set_alias
from mathllava.tracking import log_dict, log_metrics

from ._state import state_dir


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


@step
def register_model(model_dir: Path, curated_dataset: pd.DataFrame, eval_report: dict, register_cfg: dict) -> Annotated[
    dict, "registration"
]:
    """Register the model in the MLflow registry with lineage tags; alias it when the gate passes."""
    import mlflow

    digest = manifest_digest(curated_dataset)
    columns = ["id", "source", "task_type", "image", "image_sha256", "question", "answer", "question_type",
               "answer_type", "aug_type", "parent_id", "complexity"]
    dataset = mlflow.data.from_pandas(curated_dataset[[c for c in columns if c in curated_dataset]],
                                      source=str(Path(curated_dataset["image_path"].iloc[0]).parents[3]),
                                      name=f"mathllava-curated-{digest}", targets="answer", digest=digest)
    mlflow.log_input(dataset, context="training")
    held = eval_report["heldout"]
    result = gate(held["model"]["accuracy"], held["frequent"]["accuracy"], held["base"]["accuracy"],
                  **register_cfg.get("gate", {}))
    tags = {"zenml_run_id": str(get_step_context().pipeline_run.id), "zenml_run_name": get_step_context().pipeline_run.name,
            "dataset_digest": digest, "git_commit": _git_commit(), "heldout_accuracy": held["model"]["accuracy"],
            "heldout_frequent_accuracy": held["frequent"]["accuracy"],
            "heldout_base_accuracy": held["base"]["accuracy"], "gate_passed": result.passed}
    if "mathv" in eval_report:
        tags["mathv_accuracy"] = eval_report["mathv"]["model"]["accuracy"]
    name = register_cfg["model_name"]
    version, source = register_model_dir(str(model_dir), name, tags, description="; ".join(result.reasons))
    alias = None
    if result.passed:
        alias = register_cfg.get("alias", "challenger")
        set_alias(name, alias, version)
    log_metrics({"gate_passed": float(result.passed)})
    promotion = _promote(name, alias, PromotionSettings(**register_cfg.get("promotion", {})))
    return {"model_name": name, "version": version, "alias": alias, "source": source, "gate": result.reasons,
            "promotion": promotion,
            "dataset_digest": digest, "tracking_uri": mlflow.get_tracking_uri(),
            "mlflow_run_id": mlflow.active_run().info.run_id, "environment": os.environ.get("MATHLLAVA_ENV", "local")}


def _promote(name: str, alias: str | None, settings: PromotionSettings) -> dict | None:
    """With `register.promotion.auto`, a new challenger is compared with the champion right away (the
    same comparison as `mathllava registry promote`)."""
    import mlflow

    from mathllava.registry.evaluate import scorer

    if not (settings.auto and alias == "challenger"):
        return None
    uri = mlflow.get_tracking_uri()
    os.environ.setdefault("MATHLLAVA_ACTOR", f"pipeline run {get_step_context().pipeline_run.name}")
    try:
        decision, entry = promote(name, scorer(settings.eval, uri), settings.margins,
                                  state_dir() / "registry" / f"{name}.lock", uri, reason="register.promotion.auto")
    except PromotionConflict as err:
        return {"promoted": False, "reasons": [str(err)]}
    log_metrics({"promoted": float(decision.promote)})
    log_dict(entry, "registry/promotion.json")
    return {"promoted": decision.promote, "reasons": decision.reasons, "champion_before": entry["champion"]}
