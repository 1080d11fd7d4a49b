import os
import subprocess
from pathlib import Path
from typing import Annotated

import pandas as pd
from zenml import get_step_context, step

from mathllava.data.ingest import manifest_digest
from mathllava.registry.promotion import (PromotionConflict, PromotionSettings, RegisterSettings, alias_version,
                                         compare_with_champion,
                                         log_comparison, promote, registry_lock)
from mathllava.registry.versions import (WEIGHTS_TAG, gate, identical_version, register_model_dir, set_alias,
                                         tag_with_run, weights_digest)
from mathllava.tracking import experiment_url, log_dict, log_metrics

from mathllava.state import registry_lock_path


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


@step
def register_model(model_dir: Path, curated_dataset: pd.DataFrame, eval_report: dict,
                   register_cfg: RegisterSettings) -> Annotated[
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
                  **register_cfg.gate.model_dump())
    tags = {"zenml_run_id": str(get_step_context().pipeline_run.id), "zenml_run_name": get_step_context().pipeline_run.name,
            "dataset_digest": digest, "git_commit": _git_commit(), "heldout_accuracy": held["model"]["accuracy"],
            "heldout_frequent_accuracy": held["frequent"]["accuracy"],
            "heldout_base_accuracy": held["base"]["accuracy"], "gate_passed": result.passed}
    if "mathv" in eval_report:
        tags["mathv_accuracy"] = eval_report["mathv"]["model"]["accuracy"]
    name = register_cfg.model_name
    run_name = get_step_context().pipeline_run.name
    weights = weights_digest(model_dir)
    same = identical_version(name, weights)
    if same is not None:  # e.g. an evaluation-only change: the training step came from the cache
        tag_with_run(name, same, run_name, mlflow.active_run().info.run_id)
        log_metrics({"gate_passed": float(result.passed), "new_version": 0.0}, section="registry")
        return {"zenml_stages": {}, "model_name": name, "version": same, "alias": None, "identical_to": same,
                "source": None, "gate": result.reasons, "promotion": None, "zenml_run_name": run_name,
                "dataset_digest": digest, "tracking_uri": mlflow.get_tracking_uri(),
                "mlflow_run_id": mlflow.active_run().info.run_id,
                "mlflow_ui": experiment_url(mlflow.get_tracking_uri(), mlflow.active_run().info.experiment_id),
                "environment": os.environ.get("MATHLLAVA_ENV", "local")}
    tags[WEIGHTS_TAG] = weights
    version, source = register_model_dir(str(model_dir), name, tags, description="; ".join(result.reasons))
    alias = None
    if result.passed:
        alias = register_cfg.alias
        with registry_lock(registry_lock_path(name)):  # never in the middle of a promotion's alias moves
            set_alias(name, alias, version)
    log_metrics({"gate_passed": float(result.passed)}, section="registry")
    promotion = _promote(name, alias, register_cfg.promotion)
    stages = _mirror_stages(name, version, alias, digest, promotion)
    return {"zenml_stages": stages, "model_name": name, "version": version, "alias": alias, "source": source,
            "gate": result.reasons, "promotion": promotion,
            "zenml_run_name": get_step_context().pipeline_run.name,
            "dataset_digest": digest, "tracking_uri": mlflow.get_tracking_uri(),
            "mlflow_run_id": mlflow.active_run().info.run_id,
            "mlflow_ui": experiment_url(mlflow.get_tracking_uri(), mlflow.active_run().info.experiment_id), "environment": os.environ.get("MATHLLAVA_ENV", "local")}


def _mirror_stages(name: str, version: str, alias: str | None, digest: str, promotion: dict | None) -> dict:
    """The ZenML Model Control Plane side: this run's model version (its curated dataset and model are
    linked artifacts) records its MLflow version, and every version's ZenML stage follows the registry
    (as it does after each `mathllava registry promote` or `rollback`)."""
    import mlflow

    from mathllava_zenml.stages import mirror

    model = get_step_context().model
    if model is None:
        return {}
    model.log_metadata({"mlflow": {"registered_model": name, "version": str(version), "alias": alias or "",
                                   "run_id": mlflow.active_run().info.run_id}, "dataset_digest": digest,
                        "promotion": promotion or {}})
    return mirror(name, mlflow.get_tracking_uri())


def _promote(name: str, alias: str | None, settings: PromotionSettings) -> dict | None:
    """A new challenger against the champion, both scored on the same sets now (the comparison of
    `mathllava registry promote`): logged as a table and a chart (`promotion.compare`), and acted on
    with `promotion.auto`."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from mathllava.registry.evaluate import scorer

    if alias != "challenger" or not (settings.auto or settings.compare):
        return None
    uri = mlflow.get_tracking_uri()
    auto = settings.auto is True or (settings.auto == "first" and alias_version(MlflowClient(), name, "champion") is None)
    os.environ.setdefault("MATHLLAVA_ACTOR", f"pipeline run {get_step_context().pipeline_run.name}")
    try:
        evaluate = scorer(settings.eval, uri)
    except ValueError as err:  # no evaluation set here (e.g. no ../shared/data): a fair comparison is impossible
        log_metrics({"promoted": 0.0}, section="registry")
        return {"promoted": False, "reasons": [f"promotion skipped: {err}"]}
    try:
        if auto:
            decision, entry = promote(name, evaluate, settings.margins, registry_lock_path(name), uri,
                                      reason="register.promotion.auto")
            challenger, champion = entry["challenger"], entry["champion"]
            log_dict(entry, "registry/promotion.json")
            log_metrics({"promoted": float(decision.promote)}, section="registry")
        else:
            challenger, champion, decision = compare_with_champion(name, evaluate, settings.margins, uri)
    except PromotionConflict as err:
        return {"promoted": False, "reasons": [str(err)]}
    if champion is not None:
        log_comparison(challenger, champion, decision.scores, settings.margins)
    return {"promoted": auto and decision.promote, "wins": decision.promote, "auto": settings.auto,
            "reasons": decision.reasons, "champion_before": champion, "scores": decision.scores,
            "sets": dict(getattr(evaluate, "sets", {}))}

