import tempfile
from pathlib import Path
from typing import Annotated, Optional, Tuple

import pandas as pd
from zenml import step

from mathllava import plots
from mathllava.data.selection import SelectSettings, score_images, stratified_sample
from mathllava.tracking import log_artifact, log_dict, log_figure, log_metrics


def _agreement_metrics(report: dict) -> dict:
    out = {}
    for key in ("complexity", "pool_complexity"):
        part = report.get(key) or {}
        for name in ("exact", "within_one"):
            if name in part:
                out[f"{key}_{name}"] = part[name]
    clarity = report.get("clarity") or {}
    for name in ("accuracy", "unclear_recall"):
        if clarity.get(name) is not None:
            out[f"clarity_{name}"] = clarity[name]
    return out


@step
def select_images(valid_manifest: pd.DataFrame, select: SelectSettings,
                  labelled_manifest: Optional[pd.DataFrame] = None) -> Tuple[
    Annotated[pd.DataFrame, "selection"], Annotated[pd.DataFrame, "scored_manifest"], Annotated[dict, "selection_report"]
]:
    """Clarity and complexity per image (the learned scorer, or the rules without labels), unclear
    images dropped, then a sample stratified by complexity and spread over sources."""
    scored, scorer_report, model = score_images(valid_manifest, select, labelled_manifest, progress=True)
    selection, report = stratified_sample(scored, select.sampling)
    report["scorer"] = scorer_report
    log_metrics({"selected": len(selection), "dropped_unclear": report["dropped_unclear"],
                 **{f"selected_level_{k}": v["selected"] for k, v in report["levels"].items()},
                 **{f"selected_share_level_{k}": v["share"] for k, v in report["levels"].items()}}, section="data")
    log_metrics(_agreement_metrics(scorer_report), section="data/scorer")
    for epoch, loss in enumerate(scorer_report.get("loss_by_epoch") or []):
        log_metrics({"loss": loss}, section="data/scorer", step=epoch)
    log_dict(report, "selection/report.json")
    for key in ("complexity", "pool_complexity"):
        if (scorer_report.get(key) or {}).get("confusion"):
            part = scorer_report[key]
            log_figure(plots.confusion_matrix(part["confusion"], f"{key.replace('_', ' ')}: {part['exact']:.1%} exact, "
                                              f"{part['within_one']:.1%} within one (n={part['n']})"),
                       f"selection/{key}_confusion.png")
    log_figure(plots.selection_vs_targets(report["levels"], select.sampling.tolerance), "selection/levels_vs_targets.png")
    log_figure(plots.complexity_distribution(scored[scored["clear"]], selection), "selection/complexity_by_source.png")
    log_figure(plots.clarity_histogram(scored), "selection/clarity.png")
    if model is not None:
        import torch

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "scorer.pt"
            torch.save({"state_dict": model.state_dict(), "settings": select.scorer.model_dump()}, path)
            log_artifact(path, "selection")
    return selection, scored, report
