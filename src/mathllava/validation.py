"""Quality validation of the manifest with a Great Expectations (GX Core 1.x) suite.

Rows that fail an expectation are quarantined with the expectation's reason, never dropped
silently; the caller decides whether the failure rate should fail the run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pandas as pd

from .formats import ANSWER_TYPES, QUESTION_TYPES, TASK_NAMES


@dataclass
class ValidationRules:
    min_side: int = 32
    max_side: int = 4096
    max_question_chars: int = 2000
    max_answer_chars: int = 200
    max_failure_rate: float = 0.2
    task_types: tuple[str, ...] = tuple(TASK_NAMES)
    question_types: tuple[str, ...] = QUESTION_TYPES
    answer_types: tuple[str, ...] = ANSWER_TYPES


@dataclass
class ValidationOutcome:
    valid: pd.DataFrame
    quarantine: pd.DataFrame
    result: dict
    failure_rate: float
    counts_by_reason: dict = field(default_factory=dict)

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
        gxe.ExpectColumnValuesToBeInSet(column="image_ok", value_set=[True], meta={"reason": "image does not decode"}),
        gxe.ExpectColumnValuesToBeBetween(column="width_checked", min_value=rules.min_side, max_value=rules.max_side,
                                          meta={"reason": "image width out of range"}),
        gxe.ExpectColumnValuesToBeBetween(column="height_checked", min_value=rules.min_side, max_value=rules.max_side,
                                          meta={"reason": "image height out of range"}),
        gxe.ExpectColumnValuesToBeInSet(column="task_type", value_set=list(rules.task_types),
                                        meta={"reason": "unknown task type"}),
        gxe.ExpectColumnValuesToNotBeNull(column="task_type", meta={"reason": "missing task type"}),
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


def _failing_rows(result: dict, frame: pd.DataFrame) -> dict[int, list[str]]:
    """Row index -> reasons, from each failed expectation's unexpected index list."""
    reasons: dict[int, list[str]] = {}
    for res in result["results"]:
        if res["success"]:
            continue
        cfg = res["expectation_config"]
        reason = (cfg.get("meta") or {}).get("reason") or cfg["type"]
        indices = res["result"].get("unexpected_index_list") or []
        if cfg["type"] == "expect_column_values_to_be_unique":
            # keep the first occurrence of a duplicated id; quarantine the later ones
            first = set(frame.drop_duplicates("id").index)
            indices = [i for i in indices if i not in first]
        for idx in indices:
            reasons.setdefault(int(idx), []).append(reason)
    return reasons


def validate_manifest(manifest: pd.DataFrame, rules: ValidationRules) -> ValidationOutcome:
    frame = _prepare(manifest)
    if frame.empty:
        raise ValueError("manifest is empty: nothing was ingested")
    result = run_suite(frame, rules)
    failing = _failing_rows(result, frame)
    bad = sorted(failing)
    quarantine = pd.DataFrame(
        {
            "id": frame.loc[bad, "id"].astype(str).values,
            "dataset": frame.loc[bad, "dataset"].values,
            "stage": "validate",
            "reason": ["; ".join(failing[i]) for i in bad],
            "record": [json.dumps({"image": frame.at[i, "image"], "image_error": frame.at[i, "image_error"],
                                   "question": str(frame.at[i, "question"])[:300]}, default=str) for i in bad],
        }
    )
    valid = manifest.reset_index(drop=True).drop(index=bad).reset_index(drop=True)
    counts: dict[str, int] = {}
    for reasons in failing.values():
        for r in reasons:
            counts[r] = counts.get(r, 0) + 1
    return ValidationOutcome(valid, quarantine, result, len(bad) / len(frame), counts)


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
