"""MathVista protocol: query format, rule-based answer extraction, normalisation and scoring.

Follows the benchmark's own evaluation (lupantech/MathVista `evaluation/`): the task hint per
answer type, quick extraction rules before any LLM, normalisation by question and answer type,
plain string equality with the ground truth, and breakdowns by metadata key (skills multi-label).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

HINT_MULTI_CHOICE = (
    "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end."
)
HINT_INTEGER = (
    "Hint: Please answer the question requiring an integer answer and provide the final value, "
    "e.g., 1, 2, 3, at the end."
)
HINT_FLOAT = {
    1: "Hint: Please answer the question requiring a floating-point number with one decimal place and "
    "provide the final value, e.g., 1.2, 1.3, 1.4, at the end.",
    2: "Hint: Please answer the question requiring a floating-point number with two decimal places and "
    "provide the final value, e.g., 1.23, 1.34, 1.45, at the end.",
}
HINT_LIST = (
    "Hint: Please answer the question requiring a Python list as an answer and provide the final list, "
    "e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end."
)

BREAKDOWN_KEYS = (
    "question_type",
    "answer_type",
    "language",
    "source",
    "category",
    "task",
    "context",
    "grade",
    "skills",
)


def task_hint(question_type: str, answer_type: str, precision: int | None) -> str:
    if question_type == "multi_choice":
        return HINT_MULTI_CHOICE
    if answer_type == "integer":
        return HINT_INTEGER
    if answer_type == "float":
        return HINT_FLOAT.get(int(precision or 1), HINT_FLOAT[1])
    if answer_type == "list":
        return HINT_LIST
    return "Hint: Please answer the question and provide the final answer at the end."


def build_query(
    question: str,
    question_type: str,
    answer_type: str,
    precision: int | None = None,
    choices: Iterable[str] | None = None,
    unit: str | None = None,
) -> str:
    """The zero-shot query in the layout MathVista ships in query.json (hint first, no 'Solution:')."""
    text = f"{task_hint(question_type, answer_type, precision)}\nQuestion: {question}"
    if unit:
        text += f" (Unit: {unit})"
    if question_type == "multi_choice" and choices:
        letters = [chr(ord("A") + i) for i in range(len(list(choices)))]
        text += "\nChoices:\n" + "\n".join(f"({l}) {c}" for l, c in zip(letters, choices))
    return text.strip()  # the shipped prompts carry no trailing whitespace


_ANSWER_IS = re.compile(r"[Tt]he answer is[:\s]*\"?(.+?)\"?\s*\.?\s*$", re.S)


def quick_extract(
    response: str,
    question_type: str,
    answer_type: str,
    choices: list[str] | None,
) -> str | None:
    """The benchmark's rule-based extraction steps; None when an LLM would be needed."""
    if response is None:
        return ""
    response = str(response).strip()
    if response == "":
        return ""
    if question_type == "multi_choice" and choices and response in choices:
        return response
    if answer_type == "integer":
        try:
            return str(int(response))
        except ValueError:
            pass
    if answer_type == "float":
        try:
            return str(float(response))
        except ValueError:
            pass
    match = _ANSWER_IS.search(response)
    if match:
        return match.group(1).strip()
    return None


def extract_answer(
    response: str,
    question_type: str,
    answer_type: str,
    choices: list[str] | None,
    llm_extract: Callable[[str, str], str] | None = None,
    query: str = "",
) -> tuple[str, str]:
    """Extraction as (answer, method). Quick rules first; then the LLM extractor when one is
    configured (called with the query and the response; a failure gives "" as in the benchmark).
    Without an LLM, an unmatched response is kept whole (the Math-LLaVA copy of the protocol does
    the same), so normalisation still sees it."""
    quick = quick_extract(response, question_type, answer_type, choices)
    if quick is not None:
        return quick, "rule"
    if llm_extract is not None:
        try:
            return str(llm_extract(query, str(response))).strip(), "llm"
        except Exception:
            return "", "llm_error"
    return str(response).strip(), "raw"


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insert, delete, substitute, each cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def most_similar_choice(text: str, choices: list[str]) -> str:
    distances = [edit_distance(text, c) for c in choices]
    return choices[distances.index(min(distances))]  # ties go to the first choice


def normalize_extracted_answer(
    extraction: Any,
    choices: list[str] | None,
    question_type: str,
    answer_type: str,
    precision: int | float | None,
    ignore_empty_extractions: bool = False,
) -> str | None:
    if question_type == "multi_choice":
        if isinstance(extraction, str):
            extraction = extraction.strip()
        else:
            try:
                extraction = str(extraction)
            except Exception:
                extraction = ""
        if ignore_empty_extractions and not extraction:
            return None
        letters = re.findall(r"\(([a-zA-Z])\)", extraction)
        if letters:
            extraction = letters[0].upper()
        options = [chr(ord("A") + i) for i in range(len(choices or []))]
        if extraction in options:
            return choices[options.index(extraction)]
        return most_similar_choice(extraction, list(choices or [""]))
    if answer_type == "integer":
        try:
            return str(int(float(extraction)))  # truncation toward zero, as the benchmark does
        except Exception:
            return None
    if answer_type == "float":
        try:
            return str(round(float(extraction), int(precision)))
        except Exception:
            return None
    if answer_type == "list":
        try:
            return str(extraction)
        except Exception:
            return None
    return None if extraction is None else str(extraction).strip()


def safe_equal(prediction: Any, answer: Any) -> bool:
    try:
        return bool(prediction == answer)
    except Exception:
        return False


def score_problem(problem: Mapping[str, Any], extraction: Any) -> tuple[str | None, bool]:
    prediction = normalize_extracted_answer(
        extraction,
        problem.get("choices"),
        problem["question_type"],
        problem["answer_type"],
        problem.get("precision"),
    )
    return prediction, safe_equal(prediction, problem["answer"])


def _pct(correct: int, total: int) -> float:
    return correct / total * 100 if total else 0.0


def aggregate(results: Mapping[str, Mapping[str, Any]], keys: Iterable[str] = BREAKDOWN_KEYS) -> dict:
    """Scores in the benchmark's layout: `average` plus one dict per metadata key, each value with
    accuracy (percent string), correct and total, sorted by accuracy (highest first)."""
    pids = list(results)
    correct = sum(1 for p in pids if results[p]["true_false"])
    scores: dict[str, Any] = {
        "average": {"accuracy": str(round(_pct(correct, len(pids)), 2)), "correct": correct, "total": len(pids)}
    }
    for key in keys:
        counts: Counter = Counter()
        hits: Counter = Counter()
        for p in pids:
            problem = results[p]
            raw = problem.get(key, problem.get("metadata", {}).get(key))
            if raw is None:
                continue
            values = raw if isinstance(raw, (list, tuple)) else [raw]
            for value in dict.fromkeys(values):
                counts[value] += 1
                hits[value] += bool(problem["true_false"])
        if not counts:
            continue
        breakdown = {v: {"accuracy": _pct(hits[v], counts[v]), "correct": hits[v], "total": counts[v]} for v in counts}
        ordered = sorted(breakdown.items(), key=lambda kv: kv[1]["accuracy"], reverse=True)
        scores[key] = {v: {**s, "accuracy": f"{s['accuracy']:.2f}"} for v, s in ordered}
    return scores


def rescore(predictions: Mapping[str, Mapping[str, Any]]) -> tuple[dict, dict]:
    """Re-normalise and re-judge every problem of a benchmark-format predictions file from its
    `extraction`; returns (updated predictions, scores)."""
    updated: dict[str, dict] = {}
    for pid, problem in predictions.items():
        prediction, ok = score_problem(problem, problem.get("extraction", ""))
        updated[pid] = {**problem, "prediction": prediction, "true_false": ok}
    return updated, aggregate(updated)


def load_mathvista(path: str | Path, images_dir: str | Path | None = None, limit: int | None = None,
                   require_images: bool = True) -> list[dict]:
    """Problems from a MathVista-format file (testmini.json: pid -> problem) and its images folder
    (default: the file's folder, where `image` paths such as "images/1.jpg" resolve). A prebuilt
    `query` is used when present, else the zero-shot query is built."""
    import json

    from ..paths import resolve_image_path

    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, list):
        data = {str(p["pid"]): p for p in data}
    base = Path(images_dir) if images_dir else path.parent
    problems, missing = [], []
    for pid, item in list(data.items())[: limit or None]:
        image_path = resolve_image_path(base, item["image"]) if item.get("image") else None
        if image_path is None or not image_path.is_file():
            missing.append(pid)
        problem = {k: v for k, v in item.items() if k != "query"}
        problem.update({
            "benchmark": "mathvista", "pid": str(item.get("pid", pid)),
            "image_path": str(image_path) if image_path and image_path.is_file() else None,
            "query": item.get("query") or build_query(item["question"], item["question_type"], item["answer_type"],
                                                      item.get("precision"), item.get("choices"), item.get("unit")),
        })
        problems.append(problem)
    if missing and require_images:
        raise FileNotFoundError(f"{len(missing)} of {len(problems)} MathVista images are missing under {base} "
                                f"(first: pid {missing[0]}); unzip the benchmark's images.zip there")
    return problems
