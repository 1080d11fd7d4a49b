"""Quality filters for generated pairs. Each check returns None (keep) or the reason it drops the pair:

- too_short / too_long / answer_too_long: length bounds;
- answer_type: a multiple-choice answer must be an option letter, a free-form answer a number of the
  stated type (integer, float);
- duplicate / near_duplicate: the same question (normalised), or one at least `near_duplicate` similar
  with the same answer, among the questions of the same image, the seed's included;
- inconsistent: a judge model, answering the question on its own, does not give the same answer.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher

from ..evaluation.mathvista import extract_answer
from .config import FilterSettings

_INT = re.compile(r"[-+]?\d+")
_NUM = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)")
_LETTER = re.compile(r"\(?([A-Z])\)?")


def normalise(question: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", question.lower()).split())


def length_reason(question: str, answer: str, rules: FilterSettings) -> str | None:
    if len(question) < rules.min_question_chars:
        return "too_short"
    if len(question) > rules.max_question_chars:
        return "too_long"
    if len(str(answer)) > rules.max_answer_chars:
        return "answer_too_long"
    return None


def typed_answer(item: dict) -> dict | str:
    """The item with question_type, answer_type, precision and the stored answer (the option's text
    for multiple choice, the number otherwise) filled in; or "answer_type" when the answer does not
    fit the question's type."""
    answer = str(item["answer"]).strip().rstrip(".")
    if item.get("choices"):
        match = _LETTER.fullmatch(answer)
        if not match or ord(match.group(1)) - ord("A") >= len(item["choices"]):
            return "answer_type"
        if item.get("answer_type") not in (None, "text"):
            return "answer_type"
        return {**item, "question_type": "multi_choice", "answer_type": "text", "precision": None,
                "answer": item["choices"][ord(match.group(1)) - ord("A")]}
    declared = item.get("answer_type")
    if _INT.fullmatch(answer) and declared in (None, "integer"):
        return {**item, "question_type": "free_form", "answer_type": "integer", "precision": None,
                "answer": str(int(answer)), "choices": None}
    if _NUM.fullmatch(answer) and declared in (None, "float"):
        decimals = len(answer.split(".")[1]) if "." in answer else 0
        precision = max(1, decimals)
        return {**item, "question_type": "free_form", "answer_type": "float", "precision": precision,
                "answer": f"{float(answer):.{precision}f}", "choices": None}
    return "answer_type"


class ImageQuestions:
    """The questions already kept for one image (its seed questions first). A near duplicate is a
    question at least `threshold` similar (difflib ratio of the normalised texts) with the same
    answer: "the smallest bar" next to "the largest bar" asks something else."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.seen: list[tuple[str, str]] = []

    def add(self, question: str, answer) -> None:
        self.seen.append((normalise(question), str(answer).strip().lower()))

    def reason(self, question: str, answer) -> str | None:
        text, answer = normalise(question), str(answer).strip().lower()
        if any(text == other for other, _ in self.seen):
            return "duplicate"
        if any(a == answer and SequenceMatcher(None, text, other, autojunk=False).ratio() >= self.threshold
               for other, a in self.seen):
            return "near_duplicate"
        return None


def agrees(item: dict, judge_reply: str) -> bool:
    """Does the judge's reply give the pair's answer? Extraction and normalisation are MathVista's
    (the evaluation's rules); numbers agree within half a unit of the stated precision."""
    extraction, _ = extract_answer(judge_reply, item["question_type"], item["answer_type"], item.get("choices"))
    text = str(extraction).strip()
    if item["question_type"] == "multi_choice":
        if text in item["choices"]:
            return text == item["answer"]
        letters = set(re.findall(r"\b([A-Z])\b", text))  # one option letter, not a guess at the nearest text
        if len(letters) != 1:
            return False
        index = ord(letters.pop()) - ord("A")
        return index < len(item["choices"]) and item["choices"][index] == item["answer"]
    numbers = [m.group(0) for m in _NUM.finditer(text.replace(",", ""))]
    if not numbers:
        return False
    value = float(numbers[-1])  # the final value, as the hint asks
    if item["answer_type"] == "integer":
        return value == int(item["answer"])
    tolerance = 0.5 * 10 ** -(item.get("precision") or 1)
    return abs(value - float(item["answer"])) <= tolerance + 1e-12
