from typing import Annotated

import pandas as pd
from zenml import step

from mathllava.augment import AugmentSettings, augment
from mathllava.tracking import log_dict, log_metrics

from ._state import state_dir


@step
def augment_questions(selection: pd.DataFrame, augment_cfg: AugmentSettings) -> Annotated[pd.DataFrame, "curated_dataset"]:
    """Seed pairs plus new, harder, rephrased and underspecified questions per selected image, from the
    programmatic generator or a model (`parameters.augment.generator`); counts, drops by reason and
    the run's report go to MLflow."""
    settings = augment_cfg
    if settings.cache_dir is None:
        settings = settings.model_copy(update={"cache_dir": str(state_dir() / "cache" / "augment")})
    curated, report = augment(selection, settings)
    log_metrics({"curated_rows": len(curated),
                 **{f"aug_{k}": v for k, v in curated["aug_type"].value_counts().items()}}, section="data")
    numbers = {k: report[k] for k in ("kept", "model_kept", "dropped_total", "requests", "cache_hits",
                                      "failed_requests", "skipped_budget", "retries", "tokens", "seconds",
                                      "requests_per_s") if isinstance(report.get(k), (int, float))}
    log_metrics(numbers, section="augment")
    log_metrics(report["kept_by_aug_type"], section="augment/kept")
    log_metrics(report.get("dropped", {}), section="augment/dropped")
    log_dict(report, "augment/report.json")
    return curated
