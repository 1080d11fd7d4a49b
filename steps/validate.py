from typing import Annotated, Tuple

import pandas as pd
from zenml import step

from mathllava.tracking import log_dict, log_metrics
from mathllava.data.validation import ValidationRules, summarize_result, validate_manifest as run_validation


@step
def validate_manifest(manifest: pd.DataFrame, ingest_quarantine: pd.DataFrame, rules: dict) -> Tuple[
    Annotated[pd.DataFrame, "valid_manifest"], Annotated[pd.DataFrame, "quarantine"], Annotated[dict, "validation_report"]
]:
    """Great Expectations suite on the manifest; failing rows go to quarantine with their reason."""
    cfg = ValidationRules(**rules)
    outcome = run_validation(manifest, cfg)
    quarantine = pd.concat([ingest_quarantine, outcome.quarantine], ignore_index=True)
    report = {"rows": len(manifest), "valid": len(outcome.valid), "quarantined": len(quarantine),
              "failure_rate": outcome.failure_rate, "reasons": outcome.counts_by_reason,
              "gx": summarize_result(outcome.result)}
    log_metrics({"validation_rows": len(manifest), "validation_valid": len(outcome.valid),
                 "validation_quarantined": len(quarantine), "validation_failure_rate": outcome.failure_rate},
                section="data")
    log_dict(report, "validation/report.json")
    log_dict(outcome.result, "validation/gx_result.json")
    if outcome.failure_rate > cfg.max_failure_rate:
        raise RuntimeError(f"validation failure rate {outcome.failure_rate:.1%} exceeds the configured limit "
                           f"{cfg.max_failure_rate:.1%}: {outcome.counts_by_reason}")
    return outcome.valid, quarantine, report
