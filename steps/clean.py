from typing import Annotated, Tuple

import pandas as pd
from zenml import step

from mathllava.data.clean import dedup, guard, load_benchmarks
from mathllava.data.config import DataSettings
from mathllava.tracking import log_dict, log_metrics


@step
def clean_manifest(valid_manifest: pd.DataFrame, data: DataSettings, inputs: str = "") -> Tuple[
    Annotated[pd.DataFrame, "clean_manifest"], Annotated[pd.DataFrame, "removed"], Annotated[dict, "clean_report"]
]:
    """Duplicates across sources (same image, exact or perceptual, with the same question) and every row
    whose image or question comes from an evaluation set are removed, each with its reason. `inputs`: the
    fingerprint of the evaluation files (`DataSettings.fingerprint`), so that a changed file is not cached."""
    kept, duplicates, dedup_report = dedup(valid_manifest, data.dedup)
    kept, contaminated, guard_report = guard(kept, load_benchmarks(data.contamination, data.images), data.contamination)
    report = {"dedup": dedup_report, "contamination": guard_report}
    log_metrics({"dedup_removed": dedup_report["removed"], "contamination_removed": guard_report["removed"]},
                section="data")
    log_metrics(guard_report.get("by_kind") or {}, section="data/contamination")
    log_dict(report, "clean/report.json")
    print(f"clean: {dedup_report['removed']} duplicates, {guard_report['removed']} evaluation-set rows removed "
          f"({guard_report.get('by_benchmark')})")
    return kept, pd.concat([duplicates, contaminated], ignore_index=True), report
