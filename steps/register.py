import os
import subprocess
from pathlib import Path
from typing import Annotated

import pandas as pd
from zenml import get_step_context, step

from mathllava.ingest import manifest_digest
from mathllava import plots
from mathllava.registry.promotion import PromotionConflict, PromotionSettings, compare_with_champion, promote
from mathllava.registry.versions import gate, register_model_dir, set_alias
from mathllava.tracking import experiment_url, log_dict, log_figure, log_metrics

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
    log_metrics({"gate_passed": float(result.passed)}, section="registry")
    promotion = _promote(name, alias, PromotionSettings(**register_cfg.get("promotion", {})))
    return {"model_name": name, "version": version, "alias": alias, "source": source, "gate": result.reasons,
            "promotion": promotion,
            "dataset_digest": digest, "tracking_uri": mlflow.get_tracking_uri(),
            "mlflow_run_id": mlflow.active_run().info.run_id,
            "mlflow_ui": experiment_url(mlflow.get_tracking_uri(), mlflow.active_run().info.experiment_id), "environment": os.environ.get("MATHLLAVA_ENV", "local")}


def _promote(name: str, alias: str | None, settings: PromotionSettings) -> dict | None:
    """A new challenger against the champion, both scored on the same sets now (the comparison of
    `mathllava registry promote`): logged as a table and a chart (`promotion.compare`), and acted on
    with `promotion.auto`."""
    import mlflow

    from mathllava.registry.evaluate import scorer

    if alias != "challenger" or not (settings.auto or settings.compare):
        return None
    uri = mlflow.get_tracking_uri()
    os.environ.setdefault("MATHLLAVA_ACTOR", f"pipeline run {get_step_context().pipeline_run.name}")
    evaluate = scorer(settings.eval, uri)
    try:
        if settings.auto:
            decision, entry = promote(name, evaluate, settings.margins, state_dir() / "registry" / f"{name}.lock",
                                      uri, reason="register.promotion.auto")
            challenger, champion = entry["challenger"], entry["champion"]
            log_dict(entry, "registry/promotion.json")
            log_metrics({"promoted": float(decision.promote)}, section="registry")
        else:
            challenger, champion, decision = compare_with_champion(name, evaluate, settings.margins, uri)
    except PromotionConflict as err:
        return {"promoted": False, "reasons": [str(err)]}
    if champion is not None:
        _log_comparison(challenger, champion, decision.scores, settings.margins)
    return {"promoted": settings.auto and decision.promote, "reasons": decision.reasons, "champion_before": champion,
            "scores": decision.scores}


def _log_comparison(challenger: str, champion: str, scores: dict, margins: dict) -> None:
    import mlflow

    metrics = sorted(scores)
    mlflow.log_table({"metric": metrics, f"challenger v{challenger}": [scores[m]["challenger"] for m in metrics],
                      f"champion v{champion}": [scores[m]["champion"] for m in metrics],
                      "margin": [margins.get(m, 0.0) for m in metrics]}, "registry/comparison.json")
    log_figure(plots.accuracy_bars({f"challenger v{challenger}": {m: scores[m]["challenger"] for m in metrics},
                                    f"champion v{champion}": {m: scores[m]["champion"] for m in metrics}},
                                   "challenger vs champion, same sets"), "registry/comparison.png")
