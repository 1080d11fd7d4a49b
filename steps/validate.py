from typing import Annotated, Tuple

import pandas as pd
from zenml import step

from mathllava.data.validation import (ValidationRules, gate_failures, summarize_result,
                                       validate_manifest as run_validation)
from mathllava.tracking import log_dict, log_metrics, log_table, log_text


@step
def validate_manifest(manifest: pd.DataFrame, ingest_quarantine: pd.DataFrame, rules: ValidationRules) -> Tuple[
    Annotated[pd.DataFrame, "valid_manifest"], Annotated[pd.DataFrame, "quarantine"], Annotated[dict, "validation_report"]
]:
    """Great Expectations suite on the manifest; failing rows go to quarantine with their reason. The
    run stops when any input dataset's failure rate (ingest and suite faults over its records) passes
    `validate.max_failure_rate`."""
    outcome = run_validation(manifest, rules, ingest_quarantine)
    quarantine = pd.concat([ingest_quarantine, outcome.quarantine], ignore_index=True)
    report = {"rows": len(manifest), "valid": len(outcome.valid), "quarantined": len(quarantine),
              "failure_rate": outcome.failure_rate, "per_dataset": outcome.per_dataset,
              "reasons": outcome.counts_by_reason, "gx": summarize_result(outcome.result)}
    log_metrics({"validation_rows": len(manifest), "validation_valid": len(outcome.valid),
                 "validation_quarantined": len(quarantine), "validation_failure_rate": outcome.failure_rate},
                section="data")
    log_metrics({name: v["rate"] for name, v in outcome.per_dataset.items()}, section="data/failure_rate")
    log_dict(report, "validation/report.json")
    log_dict(outcome.result, "validation/gx_result.json")
    log_text(outcome.docs_html, "validation/data_docs.html")  # GX Data Docs for this run
    if len(quarantine):
        log_table(quarantine[["id", "dataset", "source", "stage", "reason", "origin"]].astype(str).to_dict("list"),
                  "validation/quarantine.json")
    failing = gate_failures(outcome)
    if failing:
        raise RuntimeError(f"validation failure rate above the limit {rules.max_failure_rate:.1%} in: "
                           + "; ".join(failing) + f". Reasons: {outcome.counts_by_reason}")
    return outcome.valid, quarantine, report
