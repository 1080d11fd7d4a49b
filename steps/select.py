from typing import Annotated, Tuple

import pandas as pd
from zenml import step

from mathllava import plots
from mathllava.data.selection import (ClarityRules, ComplexityRules, SamplingPlan, assign_complexity, score_images,
                                 stratified_sample)
from mathllava.tracking import log_dict, log_figure, log_metrics


@step
def select_images(valid_manifest: pd.DataFrame, select: dict) -> Tuple[
    Annotated[pd.DataFrame, "selection"], Annotated[pd.DataFrame, "scored_manifest"], Annotated[dict, "selection_report"]
]:
    """Clarity and complexity per image, unclear images dropped, stratified sample by complexity."""
    complexity_cfg = dict(select["complexity"])
    min_labelled = complexity_cfg.pop("min_labelled", 40)
    scored = score_images(valid_manifest, ClarityRules(**select["clarity"]),
                          ComplexityRules(cuts=tuple(complexity_cfg.get("cuts", (0.9, 1.6, 2.4)))), progress=True)
    scored, complexity_report = assign_complexity(scored, min_labelled=min_labelled)
    sampling = dict(select["sampling"])
    plan = SamplingPlan(target_size=sampling["target_size"], proportions=tuple(sampling["proportions"]),
                        keep_all_top_level=sampling["keep_all_top_level"], seed=sampling["seed"])
    selection, report = stratified_sample(scored, plan)
    report["complexity_model"] = complexity_report
    labelled = scored[scored["clear_label"].notna()]
    if len(labelled):
        truth = labelled["clear_label"].astype(bool)
        report["clarity_agreement"] = float((truth == labelled["clear"]).mean())
        report["unclear_recall"] = float((~labelled.loc[~truth, "clear"]).mean()) if (~truth).any() else None
    log_metrics({"selected": len(selection), "dropped_unclear": report["dropped_unclear"],
                 **{f"selected_level_{k}": v for k, v in selection.groupby("complexity").size().items()},
                 **{k: v for k, v in report.items() if k in ("clarity_agreement", "unclear_recall") and v is not None},
                 **{f"complexity_{k}": v for k, v in complexity_report.items() if isinstance(v, float)}},
                section="data")
    log_dict(report, "selection/report.json")
    log_figure(plots.complexity_distribution(scored[scored["clear"]], selection), "selection/complexity_by_source.png")
    log_figure(plots.clarity_histogram(scored), "selection/clarity.png")
    return selection, scored, report
