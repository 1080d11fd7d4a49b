"""Scoring generated answers for manifest-style problems with the MathVista rules, and the
frequent-answer baseline."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pandas as pd

from ..formats import target_text
from . import mathvista


# the rules each evaluation set is judged by: the held-out synthetic data carries MathVista's format
SPLIT_BENCHMARK = {"heldout": "mathvista", "mathv": "mathv"}


def problem_from_row(row: dict) -> dict:
    """A MathVista-format problem from a manifest row (choices as a list, metadata nested)."""
    choices = row.get("choices")
    if isinstance(choices, str):
        choices = json.loads(choices)
    skills = row.get("skills")
    if isinstance(skills, str):
        skills = json.loads(skills)
    precision = row.get("precision")
    precision = None if precision is None or pd.isna(precision) else int(precision)
    unit = row.get("unit")
    unit = None if unit is None or (isinstance(unit, float) and pd.isna(unit)) else unit
    problem = {
        "pid": str(row["id"]), "question": row["question"], "image": row.get("image"), "choices": choices or None,
        "unit": unit, "precision": precision, "answer": str(row["answer"]),
        "question_type": row["question_type"], "answer_type": row["answer_type"],
        "metadata": {"language": row.get("language") or "english", "source": row.get("source"),
                     "category": "math-targeted-vqa", "task": row.get("task"), "context": row.get("context"),
                     "grade": row.get("grade") or "synthetic", "skills": skills or []},
    }
    problem["query"] = mathvista.build_query(problem["question"], problem["question_type"], problem["answer_type"],
                                             precision, problem["choices"], unit)
    return problem


def score_responses(problems: list[dict], responses: list[str], llm_extract=None) -> tuple[dict, dict]:
    """(results keyed by pid in the benchmark's output layout, scores in its scores layout)."""
    results: dict[str, dict] = {}
    for problem, response in zip(problems, responses):
        extraction, method = mathvista.extract_answer(response, problem["question_type"], problem["answer_type"],
                                                      problem["choices"], llm_extract,
                                                      problem.get("query", ""))
        prediction, ok = mathvista.score_problem(problem, extraction)
        results[problem["pid"]] = {**problem, "response": response, "extraction": extraction,
                                   "extraction_method": method, "prediction": prediction, "true_false": ok}
    return results, mathvista.aggregate(results)


def frequent_answers(train_problems: list[dict]) -> dict[Any, str]:
    """Most frequent target per (question_type, answer_type, precision) in the training data; for
    multiple choice that is the most frequent option letter."""
    counts: dict[Any, Counter] = {}
    for p in train_problems:
        key = (p["question_type"], p["answer_type"], p.get("precision"))
        counts.setdefault(key, Counter())[target_text(p["answer"], p["question_type"], p["choices"])] += 1
    return {k: c.most_common(1)[0][0] for k, c in counts.items()}


def frequent_answer_responses(train_problems: list[dict], eval_problems: list[dict]) -> list[str]:
    table = frequent_answers(train_problems)
    overall = Counter(table.values()).most_common(1)[0][0] if table else ""
    return [table.get((p["question_type"], p["answer_type"], p.get("precision")), overall) for p in eval_problems]
