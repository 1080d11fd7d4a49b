"""Math-V (MATH-Vision) loader: JSONL problems with images, as MathVista-format problems."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..ingest import resolve_image_path


def _answer_type(answer: str) -> tuple[str, int | None]:
    if re.fullmatch(r"-?\d+", answer):
        return "integer", None
    if re.fullmatch(r"-?\d+\.\d+", answer):
        return "float", len(answer.split(".")[1])
    return "text", None


def load_mathv(root: str | Path, limit: int | None = None) -> list[dict]:
    """Problems from `<root>/testmini.jsonl` (or test.jsonl) with absolute image paths."""
    root = Path(root)
    path = root / "testmini.jsonl" if (root / "testmini.jsonl").exists() else root / "test.jsonl"
    problems = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        question = re.sub(r"\s*<image\d*>\s*", " ", item["question"]).strip()
        options = item.get("options") or []
        answer = str(item["answer"]).strip()
        if options:
            letters = [chr(ord("A") + i) for i in range(len(options))]
            truth = options[letters.index(answer)] if answer in letters else answer
            qtype, atype, precision, choices = "multi_choice", "text", None, options
        else:
            truth, (atype, precision), qtype, choices = answer, _answer_type(answer), "free_form", None
        problems.append({
            "pid": str(item["id"]), "question": question, "image": item["image"],
            "image_path": str(resolve_image_path(root, item["image"])), "choices": choices, "unit": None,
            "precision": precision, "answer": truth, "question_type": qtype, "answer_type": atype,
            "metadata": {"language": "english", "source": "Math-V", "category": "math-targeted-vqa",
                         "task": item.get("subject"), "context": "math competition figure",
                         "grade": f"level {item.get('level')}", "skills": [item.get("subject")]},
        })
        if limit and len(problems) >= limit:
            break
    from .mathvista import build_query

    for p in problems:
        p["query"] = build_query(p["question"], p["question_type"], p["answer_type"], p["precision"], p["choices"])
    return problems
