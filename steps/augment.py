from typing import Annotated

import pandas as pd
from zenml import step

from mathllava.augmentation import AugmentConfig, augment
from mathllava.tracking import log_metrics


@step
def augment_questions(selection: pd.DataFrame, augment_cfg: dict) -> Annotated[pd.DataFrame, "curated_dataset"]:
    """Seed pairs plus new, harder, rephrased and underspecified questions per selected image."""
    curated = augment(selection, AugmentConfig(**augment_cfg), progress=True)
    log_metrics({"curated_rows": len(curated),
                 **{f"aug_{k}": v for k, v in curated["aug_type"].value_counts().items()}}, section="data")
    return curated
