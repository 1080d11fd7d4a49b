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
    docs_html: str = ""                               # GX Data Docs page of this validation

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


def run_suite(frame: pd.DataFrame, rules: ValidationRules, suite_name: str = "manifest_quality"):
    """The GX validation result object (`.to_json_dict()` for logging, `data_docs_html` to render it)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch = ctx.data_sources.add_pandas("manifest").add_dataframe_asset("rows").add_batch_definition_whole_dataframe("all")
    suite = ctx.suites.add(gx.ExpectationSuite(name=suite_name))
    for expectation in build_expectations(rules):
        suite.add_expectation(expectation)
    definition = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"{suite_name}_run", data=batch, suite=suite))
    return definition.run(batch_parameters={"dataframe": frame}, result_format="COMPLETE")


def data_docs_html(result) -> str:
    """GX's own Data Docs page for a validation result, as one HTML document."""
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    return DefaultJinjaPageView().render(ValidationResultsPageRenderer().render(result))


def _detail(reason: str, column: str, row: pd.Series, rules: ValidationRules) -> str | None:
    """The reason with the row's own fault: which image problem, which size, which length."""
    if column == "image_ok":
        return str(row.get("image_error") or "image does not decode")
    if column in ("width_checked", "height_checked"):
        if row.get("image_error"):
            return None  # the image fault itself is the reason
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
            detail = _detail(reason, column, frame.loc[int(idx)], rules)
            if detail is not None:
                reasons.setdefault(int(idx), []).append(detail)
    return reasons


def reason_key(reason) -> str:
    """The kind of a quarantine reason, for counts: its text before the first colon."""
    return str(reason).split(":")[0]


def rates(read: dict, failed: dict) -> tuple[float, dict[str, dict]]:
    """(overall rate, per dataset {read, failed, rate}) from records read and failed per dataset."""
    per = {str(d): {"read": int(n), "failed": int(failed.get(d, 0)), "rate": failed.get(d, 0) / n if n else 0.0}
           for d, n in read.items()}
    total = sum(v["read"] for v in per.values())
    return (sum(v["failed"] for v in per.values()) / total if total else 0.0), per


def failure_rates(manifest: pd.DataFrame, ingest_quarantine: pd.DataFrame | None,
                  validation_quarantine: pd.DataFrame) -> tuple[float, dict[str, dict]]:
    """(overall rate, per input dataset {read, failed, rate}): records that failed at ingest (unreadable,
    wrong schema, unsafe path) or in the suite, over every record read."""
    ingest_quarantine = ingest_quarantine if ingest_quarantine is not None else validation_quarantine.iloc[0:0]
    ingest_failed = ingest_quarantine[ingest_quarantine["stage"] == "ingest"]
    read = manifest.groupby("dataset").size().add(ingest_failed.groupby("dataset").size(), fill_value=0)
    failed = ingest_failed.groupby("dataset").size().add(validation_quarantine.groupby("dataset").size(),
                                                         fill_value=0)
    return rates(read.to_dict(), failed.to_dict())


def validate_manifest(manifest: pd.DataFrame, rules: ValidationRules,
                      ingest_quarantine: pd.DataFrame | None = None) -> ValidationOutcome:
    frame = _prepare(manifest)
    if frame.empty:
        raise ValueError("manifest is empty: nothing was ingested")
    gx_result = run_suite(frame, rules)
    result = gx_result.to_json_dict()
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
    every = [r for reasons in failing.values() for r in reasons]
    for r in every + (list(ingest_quarantine["reason"]) if ingest_quarantine is not None else []):
        counts[reason_key(r)] = counts.get(reason_key(r), 0) + 1
    overall, per_dataset = failure_rates(manifest, ingest_quarantine, quarantine)
    return ValidationOutcome(valid, quarantine, result, overall, counts, per_dataset, rules.max_failure_rate,
                             data_docs_html(gx_result))


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


def _id_key(value: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "little")


class StreamValidator:
    """The suite over a stream of manifest batches (ids unique across batches too); each batch's GX
    Data Docs page is written as it is validated, so nothing grows with the row count but the id set."""

    def __init__(self, rules: ValidationRules, docs_dir=None):
        from pathlib import Path

        self.rules = rules
        self.docs_dir = Path(docs_dir) if docs_dir else None
        self.seen: set[int] = set()   # 8-byte digests of the ids so far: memory stays small per row
        self.read: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.reasons: dict[str, dict[str, int]] = {}
        self.tasks: dict[str, int] = {}
        self.valid = 0
        self.pages: list[tuple[str, int, int]] = []

    def _count(self, quarantine: pd.DataFrame) -> None:
        for dataset, stage, reason in zip(quarantine["dataset"], quarantine["stage"], quarantine["reason"]):
            self.failed[dataset] = self.failed.get(dataset, 0) + 1
            for part in str(reason).split("; "):
                bucket = self.reasons.setdefault(stage, {})
                bucket[reason_key(part)] = bucket.get(reason_key(part), 0) + 1

    def feed(self, manifest: pd.DataFrame, rejected: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        for dataset, n in pd.concat([manifest["dataset"], rejected["dataset"]]).value_counts().items():
            self.read[dataset] = self.read.get(dataset, 0) + int(n)
        parts = [rejected]
        if not manifest.empty:
            keys = manifest["id"].astype(str).map(_id_key)
            repeated = keys.isin(self.seen)
            if repeated.any():
                first = manifest[repeated]
                parts.append(pd.DataFrame({"id": first["id"].astype(str), "dataset": first["dataset"],
                                           "source": first["source"], "stage": "validate",
                                           "reason": "duplicate id (in an earlier batch)",
                                           "origin": first["origin"], "record": first["question"].astype(str).str[:300]}))
                manifest = manifest[~repeated]
                keys = keys[~repeated]
        good = manifest.iloc[0:0]
        if not manifest.empty:
            outcome = validate_manifest(manifest, self.rules)
            good = outcome.valid
            parts.append(outcome.quarantine)
            if self.docs_dir is not None:
                self.docs_dir.mkdir(parents=True, exist_ok=True)
                name = f"batch-{len(self.pages) + 1:04d}.html"
                (self.docs_dir / name).write_text(outcome.docs_html, encoding="utf-8")
                self.pages.append((name, len(manifest), len(outcome.quarantine)))
            self.seen.update(keys)
        bad = pd.concat([p for p in parts if not p.empty], ignore_index=True) if any(not p.empty for p in parts) \
            else rejected.iloc[0:0]
        self._count(bad)
        self.valid += len(good)
        for task, n in good["task_type"].value_counts().items():
            self.tasks[task] = self.tasks.get(task, 0) + int(n)
        return good, bad

    def report(self) -> dict:
        overall, per_dataset = rates(self.read, self.failed)
        return {"read": sum(self.read.values()), "valid": self.valid, "quarantined": sum(self.failed.values()),
                "failure_rate": overall, "per_dataset": per_dataset,
                "reasons_by_stage": self.reasons, "tasks": self.tasks,
                "data_docs": [name for name, _, _ in self.pages]}

    def write_index(self) -> str | None:
        """data_docs/index.html: one line per batch page."""
        if self.docs_dir is None:
            return None
        self.docs_dir.mkdir(parents=True, exist_ok=True)
        rows = "".join(f"<tr><td><a href='{n}'>{n}</a></td><td>{rows}</td><td>{bad}</td></tr>"
                       for n, rows, bad in self.pages)
        html = ("<html><head><meta charset='utf-8'><title>Data Docs</title></head><body>"
                "<h1>Great Expectations Data Docs: manifest_quality</h1>"
                f"<table border='1'><tr><th>batch</th><th>rows</th><th>quarantined</th></tr>{rows}</table>"
                "</body></html>")
        path = self.docs_dir / "index.html"
        path.write_text(html, encoding="utf-8")
        return str(path)
