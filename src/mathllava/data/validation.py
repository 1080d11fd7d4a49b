"""Quality validation of the manifest with a Great Expectations (GX Core 1.x) suite.

Rows that fail an expectation are quarantined with the expectation's reason, never dropped
silently; the caller decides whether the failure rate should fail the run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pandas as pd
from pydantic import Field, model_validator

from ..formats import ANSWER_TYPES, QUESTION_TYPES, TASK_NAMES
from ..settings import Strict
from .sources import UNKNOWN


class ValidationRules(Strict):
    """The quality suite's limits (`validate`)."""

    min_side: int = Field(32, gt=0)
    max_side: int = Field(4096, gt=0)
    max_question_chars: int = Field(2000, gt=0)
    max_answer_chars: int = Field(200, gt=0)
    max_failure_rate: float = Field(0.2, ge=0, le=1)   # per input dataset, ingest and validation faults together
    task_types: tuple[str, ...] = (*TASK_NAMES, UNKNOWN)
    question_types: tuple[str, ...] = QUESTION_TYPES
    answer_types: tuple[str, ...] = ANSWER_TYPES

    @model_validator(mode="after")
    def _sides(self) -> "ValidationRules":
        if self.min_side > self.max_side:
            raise ValueError(f"min_side ({self.min_side}) must not exceed max_side ({self.max_side})")
        return self


@dataclass
class ValidationOutcome:
    valid: pd.DataFrame
    quarantine: pd.DataFrame
    result: dict
    failure_rate: float                               # every stage, every dataset
    counts_by_reason: dict = field(default_factory=dict)
    per_dataset: dict = field(default_factory=dict)   # dataset -> {read, failed, rate}
    max_failure_rate: float = 1.0

    @property
    def passed(self) -> bool:
        return bool(self.result.get("success"))


def _prepare(manifest: pd.DataFrame) -> pd.DataFrame:
    frame = manifest.reset_index(drop=True).copy()
    frame["question_chars"] = frame["question"].fillna("").astype(str).str.len()
    frame["answer_chars"] = frame["answer"].fillna("").astype(str).str.strip().str.len()
    frame["image_ok"] = frame["image_ok"].fillna(False).astype(bool)
    # GX's between-check skips nulls; a missing size must fail, so give it an out-of-range value
    frame["width_checked"] = frame["width"].fillna(-1)
    frame["height_checked"] = frame["height"].fillna(-1)
    frame["answer"] = frame["answer"].replace("", None)
    return frame


def build_expectations(rules: ValidationRules) -> list:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToNotBeNull(column="id", meta={"reason": "missing id"}),
        gxe.ExpectColumnValuesToBeUnique(column="id", meta={"reason": "duplicate id"}),
        gxe.ExpectColumnValuesToNotBeNull(column="answer", meta={"reason": "missing answer"}),
        gxe.ExpectColumnValuesToNotBeNull(column="question", meta={"reason": "missing question"}),
        gxe.ExpectColumnValuesToBeInSet(column="image_ok", value_set=[True], meta={"reason": "image fault"}),
        gxe.ExpectColumnValuesToBeBetween(column="width_checked", min_value=rules.min_side, max_value=rules.max_side,
                                          meta={"reason": "image width out of range"}),
        gxe.ExpectColumnValuesToBeBetween(column="height_checked", min_value=rules.min_side, max_value=rules.max_side,
                                          meta={"reason": "image height out of range"}),
        gxe.ExpectColumnValuesToBeInSet(column="task_type", value_set=list(rules.task_types),
                                        meta={"reason": "unknown task type"}),
        gxe.ExpectColumnValuesToBeInSet(column="question_type", value_set=list(rules.question_types),
                                        meta={"reason": "unknown question type"}),
        gxe.ExpectColumnValuesToBeInSet(column="answer_type", value_set=list(rules.answer_types),
                                        meta={"reason": "unknown answer type"}),
        gxe.ExpectColumnValuesToBeBetween(column="question_chars", min_value=1, max_value=rules.max_question_chars,
                                          meta={"reason": "question length out of bounds"}),
        gxe.ExpectColumnValuesToBeBetween(column="answer_chars", min_value=1, max_value=rules.max_answer_chars,
                                          meta={"reason": "answer length out of bounds"}),
    ]


def run_suite(frame: pd.DataFrame, rules: ValidationRules, suite_name: str = "manifest_quality") -> dict:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch = ctx.data_sources.add_pandas("manifest").add_dataframe_asset("rows").add_batch_definition_whole_dataframe("all")
    suite = ctx.suites.add(gx.ExpectationSuite(name=suite_name))
    for expectation in build_expectations(rules):
        suite.add_expectation(expectation)
    definition = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"{suite_name}_run", data=batch, suite=suite))
    result = definition.run(batch_parameters={"dataframe": frame}, result_format="COMPLETE")
    return result.to_json_dict()


def _detail(reason: str, column: str, row: pd.Series, rules: ValidationRules) -> str:
    """The reason with the row's own fault: which image problem, which size, which length."""
    if column == "image_ok":
        return str(row.get("image_error") or "image does not decode")
    if column in ("width_checked", "height_checked"):
        side = column.split("_")[0]
        value = row.get(column)
        shown = "unknown" if value is None or value < 0 else int(value)
        return f"image {side} {shown} out of range [{rules.min_side}, {rules.max_side}]"
    if column in ("question_chars", "answer_chars"):
        limit = rules.max_question_chars if column == "question_chars" else rules.max_answer_chars
        return f"{reason}: {int(row.get(column))} characters (1..{limit})"
    if column in ("task_type", "question_type", "answer_type"):
        return f"{reason}: {row.get(column)!r}"
    return reason


def _failing_rows(result: dict, frame: pd.DataFrame, rules: ValidationRules) -> dict[int, list[str]]:
    """Row index -> reasons, from each failed expectation's unexpected index list."""
    reasons: dict[int, list[str]] = {}
    for res in result["results"]:
        if res["success"]:
            continue
        cfg = res["expectation_config"]
        reason = (cfg.get("meta") or {}).get("reason") or cfg["type"]
        column = cfg["kwargs"].get("column")
        indices = res["result"].get("unexpected_index_list") or []
        if cfg["type"] == "expect_column_values_to_be_unique":
            # keep the first occurrence of a duplicated id; quarantine the later ones
            first = set(frame.drop_duplicates("id").index)
            indices = [i for i in indices if i not in first]
        for idx in indices:
            reasons.setdefault(int(idx), []).append(_detail(reason, column, frame.loc[int(idx)], rules))
    return reasons


def failure_rates(manifest: pd.DataFrame, ingest_quarantine: pd.DataFrame | None,
                  validation_quarantine: pd.DataFrame) -> tuple[float, dict[str, dict]]:
    """(overall rate, per input dataset {read, failed, rate}): records that failed at ingest (unreadable,
    wrong schema, unsafe path) or in the suite, over every record read."""
    ingest_quarantine = ingest_quarantine if ingest_quarantine is not None else validation_quarantine.iloc[0:0]
    ingest_failed = ingest_quarantine[ingest_quarantine["stage"] == "ingest"]
    read = manifest.groupby("dataset").size().add(ingest_failed.groupby("dataset").size(), fill_value=0)
    failed = ingest_failed.groupby("dataset").size().add(validation_quarantine.groupby("dataset").size(),
                                                         fill_value=0)
    per = {}
    for dataset, n in read.items():
        bad = int(failed.get(dataset, 0))
        per[str(dataset)] = {"read": int(n), "failed": bad, "rate": bad / n if n else 0.0}
    total = int(read.sum()) if len(read) else 0
    return (int(failed.sum()) / total if total else 0.0), per


def validate_manifest(manifest: pd.DataFrame, rules: ValidationRules,
                      ingest_quarantine: pd.DataFrame | None = None) -> ValidationOutcome:
    frame = _prepare(manifest)
    if frame.empty:
        raise ValueError("manifest is empty: nothing was ingested")
    result = run_suite(frame, rules)
    failing = _failing_rows(result, frame, rules)
    bad = sorted(failing)
    quarantine = pd.DataFrame(
        {
            "id": frame.loc[bad, "id"].astype(str).values,
            "dataset": frame.loc[bad, "dataset"].values,
            "source": frame.loc[bad, "source"].values,
            "stage": "validate",
            "reason": ["; ".join(failing[i]) for i in bad],
            "origin": frame.loc[bad, "origin"].values if "origin" in frame else None,
            "record": [json.dumps({"image": frame.at[i, "image"], "image_error": frame.at[i, "image_error"],
                                   "question": str(frame.at[i, "question"])[:300]}, default=str) for i in bad],
        }
    )
    valid = manifest.reset_index(drop=True).drop(index=bad).reset_index(drop=True)
    counts: dict[str, int] = {}
    for reasons in failing.values():
        for r in reasons:
            key = r.split(":")[0]
            counts[key] = counts.get(key, 0) + 1
    if ingest_quarantine is not None:
        for r in ingest_quarantine["reason"]:
            key = str(r).split(":")[0]
            counts[key] = counts.get(key, 0) + 1
    overall, per_dataset = failure_rates(manifest, ingest_quarantine, quarantine)
    return ValidationOutcome(valid, quarantine, result, overall, counts, per_dataset, rules.max_failure_rate)


def gate_failures(outcome: "ValidationOutcome") -> list[str]:
    """Datasets whose failure rate passes the limit, as `name: 41.0% of 200 records`."""
    return [f"{name}: {v['rate']:.1%} of {v['read']} records ({v['failed']} failed)"
            for name, v in sorted(outcome.per_dataset.items()) if v["rate"] > outcome.max_failure_rate]


def summarize_result(result: dict) -> dict:
    """A compact, JSON-friendly view of a GX result for logging."""
    return {
        "success": result["success"],
        "statistics": result["statistics"],
        "expectations": [
            {
                "type": r["expectation_config"]["type"],
                "column": r["expectation_config"]["kwargs"].get("column"),
                "success": r["success"],
                "unexpected_count": r["result"].get("unexpected_count", 0),
                "reason": (r["expectation_config"].get("meta") or {}).get("reason"),
            }
            for r in result["results"]
        ],
    }
