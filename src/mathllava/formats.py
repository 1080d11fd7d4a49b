"""Record formats: LLaVA conversation JSON (how MathV360K ships) with MathVista-style metadata."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .conversation import IMAGE_TOKEN
from .evaluation.mathvista import build_query

TASK_NAMES = {
    "FQA": "figure question answering",
    "GPS": "geometry problem solving",
    "MWP": "math word problem",
    "TQA": "textbook question answering",
    "VQA": "visual question answering",
}
TASK_CODES = {v: k for k, v in TASK_NAMES.items()}
QUESTION_TYPES = ("multi_choice", "free_form")
ANSWER_TYPES = ("integer", "float", "text", "list")


def answer_letter(answer: str, choices: list[str] | None) -> str | None:
    if not choices or answer not in choices:
        return None
    return chr(ord("A") + choices.index(answer))


def target_text(answer: str, question_type: str, choices: list[str] | None) -> str:
    """What the assistant turn says: the option letter for multiple choice, else the value,
    which is what the benchmark's quick extraction reads without an LLM."""
    if question_type == "multi_choice":
        return answer_letter(answer, choices) or answer
    return answer


def record_from_spec(item: Any) -> dict:
    """A LLaVA conversation record for a synthetic item (`synthetic.SyntheticItem`)."""
    q = item.question
    query = build_query(q.phrasings[0], q.question_type, q.answer_type, q.precision, q.choices, q.unit)
    return {
        "id": item.id,
        "image": item.image,
        "conversations": [
            {"from": "human", "value": f"{IMAGE_TOKEN}\n{query}"},
            {"from": "gpt", "value": target_text(q.answer, q.question_type, q.choices)},
        ],
        "metadata": {
            "question": q.phrasings[0],
            "answer": q.answer,
            "question_type": q.question_type,
            "answer_type": q.answer_type,
            "precision": q.precision,
            "choices": q.choices,
            "unit": q.unit,
            "task": TASK_NAMES[item.task],
            "skills": q.skills,
            "context": item.context,
            "source": item.source,
            "language": "english",
            "complexity": item.complexity,
            "clear": item.clear,
            "degradation": item.degradation,
            "question_key": q.key,
            "steps": q.steps,
            "scene": item.scene,
        },
    }


_HINT = re.compile(r"^Hint:[^\n]*\n")
_QUESTION = re.compile(r"^Question:\s*", re.M)
_CHOICES = re.compile(r"\nChoices:\n((?:\([A-Z]\)[^\n]*\n?)+)\s*$")
_UNIT = re.compile(r"\s\(Unit: ([^)]+)\)$")
_ANSWER_IS = re.compile(r"^\s*(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*:?\s*(.+?)\s*\.?\s*$", re.I | re.S)


def parse_human_turn(text: str) -> dict:
    """Split a human turn into question, choices and unit; accepts MathVista-style queries and
    plain questions."""
    body = text.replace(IMAGE_TOKEN, "").strip()
    choices = None
    match = _CHOICES.search(body)
    if match:
        choices = [re.sub(r"^\([A-Z]\)\s?", "", line) for line in match.group(1).strip().split("\n")]
        body = body[: match.start()]
    body = _HINT.sub("", body)
    body = _QUESTION.sub("", body, count=1).strip()
    unit = None
    unit_match = _UNIT.search(body)
    if unit_match:
        unit = unit_match.group(1)
        body = body[: unit_match.start()]
    return {"question": body.strip(), "choices": choices, "unit": unit}


def parse_gpt_turn(text: str, choices: list[str] | None) -> str:
    """The ground-truth answer from an assistant turn ('The answer is B', 'B', '12')."""
    value = text.strip()
    match = _ANSWER_IS.match(value)
    if match:
        value = match.group(1).strip()
    if choices:
        letter = re.fullmatch(r"\(?([A-Z])\)?", value)
        if letter and ord(letter.group(1)) - ord("A") < len(choices):
            return choices[ord(letter.group(1)) - ord("A")]
    return value


def infer_answer_type(answer: str, choices: list[str] | None) -> tuple[str, str, int | None]:
    """(question_type, answer_type, precision) for records that carry no metadata."""
    if choices:
        return "multi_choice", "text", None
    if re.fullmatch(r"-?\d+", answer):
        return "free_form", "integer", None
    if re.fullmatch(r"-?\d+\.\d+", answer):
        return "free_form", "float", len(answer.split(".")[1])
    if re.fullmatch(r"\[.*\]", answer):
        return "free_form", "list", None
    return "free_form", "text", None


def llava_record(row: dict, image: str) -> dict:
    """A curated manifest row as a LLaVA conversation record (the MathV360K format): the human turn
    is the MathVista-style query after the image marker, the gpt turn the answer as the benchmark's
    quick extraction reads it (`target_text`)."""
    from .evaluation.runner import problem_from_row

    problem = problem_from_row(row)
    meta = {k: (row[k].item() if hasattr(row[k], "item") else row[k])  # numpy scalars -> JSON numbers
            for k in ("source", "task", "task_type", "aug_type", "parent_id", "generator", "complexity")
            if row.get(k) is not None and row.get(k) == row.get(k)}  # NaN != NaN: missing
    meta.update({"question": problem["question"], "answer": problem["answer"], "choices": problem["choices"],
                 "question_type": problem["question_type"], "answer_type": problem["answer_type"],
                 "precision": problem["precision"], "unit": problem["unit"]})
    rationale = row.get("rationale")   # a worked solution ending in the final-answer line (augment.rationales)
    answer = rationale if isinstance(rationale, str) and rationale.strip() else \
        target_text(problem["answer"], problem["question_type"], problem["choices"])
    return {"id": problem["pid"], "image": image, "conversations": [
        {"from": "human", "value": f"{IMAGE_TOKEN}\n{problem['query']}"},
        {"from": "gpt", "value": answer},
    ], "metadata": meta}


def export_llava(rows: list[dict], out_dir: str | Path) -> Path:
    """Write `<out_dir>/conversations.json` and `<out_dir>/images/<sha256[:2]>/<sha256><ext>` (each
    distinct image once, hard-linked when the file system allows, else copied): a self-contained
    training set in the MathV360K layout. Returns the JSON path."""
    import json
    import os
    import shutil

    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for row in rows:
        source = Path(row["image_path"])
        digest = row.get("image_sha256") or source.name
        rel = f"{digest[:2]}/{digest}{source.suffix.lower()}"
        target = images / rel
        if not target.exists():
            target.parent.mkdir(exist_ok=True)
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
        records.append(llava_record(row, rel))
    path = out / "conversations.json"
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    return path
