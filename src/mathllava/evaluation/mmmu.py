"""MMMU: loader for a local copy of the dataset and the benchmark's own parsing and scoring.

Parsing follows MMMU-Benchmark/MMMU `eval/eval_utils.py` (the copy Math-LLaVA ships is identical):
multiple-choice responses become one option letter ("(X)" mentions first, then " X ", then option
text for responses longer than five words; the last mention wins; a seeded random letter when
nothing matches); open responses become a list of candidate strings and numbers taken from the tail
of sentences that carry an answer indicator. Scoring is exact letter equality for multiple choice
and, for open questions, a parsed number equal to a normalised ground truth or a ground-truth string
contained in a parsed string. Accuracy is micro-averaged per subject, per discipline and overall.

The prompt is Math-LLaVA's (eval_mmmu/configs/llava1.5.yaml): a MathVista-style hint, the question,
and "(A) option" lines.
"""

from __future__ import annotations

import ast
import io
import random
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

DISCIPLINES = {
    "Art and Design": ["Art", "Art_Theory", "Design", "Music"],
    "Business": ["Accounting", "Economics", "Finance", "Manage", "Marketing"],
    "Science": ["Biology", "Chemistry", "Geography", "Math", "Physics"],
    "Health and Medicine": ["Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
                            "Pharmacy", "Public_Health"],
    "Humanities and Social Science": ["History", "Literature", "Sociology", "Psychology"],
    "Tech and Engineering": ["Agriculture", "Architecture_and_Engineering", "Computer_Science", "Electronics",
                             "Energy_and_Power", "Materials", "Mechanical_Engineering"],
}
# the order in which the reference walks the subjects (alphabetical by its short names)
SUBJECT_ORDER = ["Accounting", "Agriculture", "Architecture_and_Engineering", "Art", "Art_Theory",
                 "Basic_Medical_Science", "Biology", "Chemistry", "Clinical_Medicine", "Computer_Science", "Design",
                 "Diagnostics_and_Laboratory_Medicine", "Economics", "Electronics", "Energy_and_Power", "Finance",
                 "Geography", "History", "Literature", "Manage", "Marketing", "Materials", "Math",
                 "Mechanical_Engineering", "Music", "Pharmacy", "Physics", "Psychology", "Public_Health", "Sociology"]
HINT_MULTI_CHOICE = "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end."
HINT_OPEN = "Hint: Please answer the question and provide the final answer at the end."
RANDOM_SEED = 42


def subject_of(problem_id: str) -> str:
    """'validation_Art_Theory_12' -> 'Art_Theory'."""
    return "_".join(problem_id.split("_")[1:-1])


def discipline_of(subject: str) -> str | None:
    return next((d for d, subjects in DISCIPLINES.items() if subject in subjects), None)


def option_letters(options: list[str]) -> list[str]:
    return [chr(ord("A") + i) for i in range(len(options))]


def build_query(question: str, options: list[str] | None, question_type: str) -> str:
    if question_type == "multiple-choice":
        listed = "".join(f"({letter}) {text}\n" for letter, text in zip(option_letters(options or []), options or []))
        return f"{HINT_MULTI_CHOICE}\n{question}\n{listed}"
    return f"{HINT_OPEN}\n{question}"


# ---------------------------------------------------------------- parsing
def parse_multi_choice(response: str, letters: list[str], index_to_answer: Mapping[str, str],
                       rng: random.Random | None = None) -> str:
    """One option letter from a free-text response."""
    for char in ",.!?;:'":
        response = response.strip(char)
    padded = f" {response} "
    candidates: list[str] = []
    bracketed = False
    by_letter = True
    for letter in letters:
        if f"({letter})" in padded:
            candidates.append(letter)
            bracketed = True
    if not candidates:
        candidates = [letter for letter in letters if f" {letter} " in padded]
    if not candidates and len(padded.split()) > 5:
        for letter, text in index_to_answer.items():
            if text.lower() in padded.lower():
                candidates.append(letter)
                by_letter = False
    if not candidates:
        return (rng or random.Random(RANDOM_SEED)).choice(letters)
    if len(candidates) == 1:
        return candidates[0]
    if by_letter:
        pattern = "({})" if bracketed else " {} "
        positions = [padded.rfind(pattern.format(c)) for c in candidates]
    else:
        positions = [padded.lower().rfind(index_to_answer[c].lower()) for c in candidates]
    return candidates[positions.index(max(positions))]  # the last mention; ties to the first listed


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
        return True
    except ValueError:
        return False


def normalize_str(text: str) -> list:
    """A number becomes [float rounded to 2 decimals]; a string becomes [lower-cased], and a single
    character is padded with a space on either side so that it cannot match by accident."""
    text = text.strip()
    if _is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


_NUMBER_WITH_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_NUMBER_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
_NUMBER_SIMPLE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])")


def extract_numbers(text: str) -> list[str]:
    return _NUMBER_WITH_COMMAS.findall(text) + _NUMBER_SCIENTIFIC.findall(text) + _NUMBER_SIMPLE.findall(text)


_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_TRIVIAL = {":", ",", ".", "!", "?", ";", "'"}


def _key_subresponses(response: str) -> list[str]:
    response = response.strip().strip(".").lower()
    # the reference lower-cases before splitting on ". " + capital, so in effect it splits on newlines
    sentences = re.split(r"\.\s(?=[A-Z])|\n", response)
    keys = []
    for index, sentence in enumerate(sentences):
        indicators = _INDICATORS + (("=",) if index == len(sentences) - 1 else ())
        shortest = None
        for indicator in indicators:
            if indicator in sentence:
                tail = sentence.split(indicator)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in _TRIVIAL:
            keys.append(shortest)
    return keys or [response]


def parse_open(response: str) -> list:
    """Candidate answers (strings and floats) from an open response."""
    keys = _key_subresponses(response)
    candidates = list(keys)
    for key in keys:
        candidates.extend(extract_numbers(key))
    normalised: list = []
    for candidate in candidates:
        normalised.extend(normalize_str(candidate))
    return list(dict.fromkeys(normalised))


# ---------------------------------------------------------------- scoring
def eval_multi_choice(truth: str | list[str], prediction: str) -> bool:
    return prediction in truth if isinstance(truth, list) else truth == prediction


def eval_open(truth: str | list[str], prediction: list) -> bool:
    answers: list = []
    for item in truth if isinstance(truth, list) else [truth]:
        answers.extend(normalize_str(str(item)))
    for candidate in prediction:
        if isinstance(candidate, str):
            if any(isinstance(a, str) and a in candidate for a in answers):
                return True
        elif candidate in answers:
            return True
    return False


def judge(question_type: str, truth: Any, prediction: Any) -> bool:
    if question_type == "multiple-choice":
        return eval_multi_choice(truth, prediction)
    parsed = prediction if isinstance(prediction, list) else parse_open(str(prediction))
    return eval_open(truth, parsed)


def _micro(results: Iterable[Mapping[str, Any]]) -> tuple[int, float]:
    results = list(results)
    total = sum(r["num"] for r in results)
    return total, (sum(r["acc"] * r["num"] for r in results) / total if total else 0)


def score(predictions: Mapping[str, Any], answers: Mapping[str, Mapping[str, Any]]) -> tuple[dict, dict]:
    """(judgements per id, scores in the reference's printed layout: 'Overall-<discipline>' then its
    subjects, each {num, acc} with acc a fraction rounded to 3 places, and 'Overall')."""
    judgements: dict[str, bool] = {}
    per_subject: dict[str, dict] = {}
    by_subject: dict[str, list[str]] = {}
    for problem_id in predictions:
        by_subject.setdefault(subject_of(problem_id), []).append(problem_id)
    for subject in SUBJECT_ORDER:
        ids = by_subject.get(subject)
        if not ids:
            continue
        for problem_id in ids:
            if problem_id not in answers:
                raise KeyError(f"MMMU: no ground truth for {problem_id}")
            truth = answers[problem_id]
            judgements[problem_id] = judge(truth["question_type"], truth["ground_truth"], predictions[problem_id])
        right = sum(judgements[i] for i in ids)
        per_subject[subject] = {"num": len(ids), "acc": right / len(ids)}
    scores: dict[str, dict] = {}
    for discipline, subjects in DISCIPLINES.items():
        present = {s: per_subject[s] for s in subjects if s in per_subject}
        total, accuracy = _micro(present.values())
        scores[f"Overall-{discipline}"] = {"num": total, "acc": round(accuracy, 3)}
        for subject, result in present.items():
            scores[subject] = {"num": result["num"], "acc": round(result["acc"], 3)}
    total, accuracy = _micro(per_subject.values())
    scores["Overall"] = {"num": total, "acc": round(accuracy, 3)}
    return judgements, scores


# ---------------------------------------------------------------- loading a local copy
def _parquet_files(root: Path, split: str) -> list[Path]:
    files = sorted(p for p in root.rglob("*.parquet") if p.name.startswith(split))
    if not files:
        raise FileNotFoundError(f"no MMMU '{split}' parquet files under {root} (expected <Subject>/{split}-*.parquet)")
    return files


def _image_bytes(cell: Any) -> bytes | None:
    if isinstance(cell, dict):
        return cell.get("bytes")
    if isinstance(cell, (bytes, bytearray)):
        return bytes(cell)
    return None


def load_mmmu(root: str | Path, image_dir: str | Path, split: str = "validation",
              subjects: list[str] | None = None, limit: int | None = None) -> list[dict]:
    """Problems from a local copy of HF `MMMU/MMMU` (the repository's `<Subject>/<split>-*.parquet`
    files). The first image of each problem is written to `image_dir` as PNG; only `image_1` is
    used, as in Math-LLaVA's evaluation."""
    import pandas as pd
    from PIL import Image

    root, image_dir = Path(root), Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    frames = [pd.read_parquet(f) for f in _parquet_files(root, split)]
    problems = []
    for row in pd.concat(frames, ignore_index=True).to_dict("records"):
        problem_id = str(row["id"])
        subject = subject_of(problem_id)
        if subjects and subject not in subjects:
            continue
        options = row.get("options")
        options = ast.literal_eval(options) if isinstance(options, str) and options.strip() else list(options or [])
        question_type = row.get("question_type") or ("multiple-choice" if options else "open")
        image_path = None
        data = _image_bytes(row.get("image_1"))
        if data:
            image_path = image_dir / f"{problem_id}.png"
            if not image_path.exists():
                with Image.open(io.BytesIO(data)) as img:
                    img.convert("RGB").save(image_path)
        answer = row.get("answer")
        if isinstance(answer, str) and answer.startswith("["):
            try:
                answer = ast.literal_eval(answer)
            except (ValueError, SyntaxError):
                pass
        problems.append({
            "benchmark": "mmmu", "pid": problem_id, "question": row["question"],
            "image_path": str(image_path) if image_path else None, "choices": options or None,
            "answer": answer, "question_type": question_type, "answer_type": "text", "precision": None,
            "unit": None, "query": build_query(row["question"], options, question_type),
            "metadata": {"subject": subject, "discipline": discipline_of(subject),
                         "subfield": row.get("subfield"), "difficulty": row.get("topic_difficulty")},
        })
        if limit and len(problems) >= limit:
            break
    return problems


def answer_dict(problems: Iterable[Mapping[str, Any]]) -> dict[str, dict]:
    """Ground truth in the layout of the reference's answer_dict_val.json."""
    return {p["pid"]: {"question_type": p["question_type"], "ground_truth": p["answer"]} for p in problems}


def predictions_from_responses(problems: list[Mapping[str, Any]], responses: list[str],
                               seed: int = RANDOM_SEED) -> dict[str, Any]:
    """The reference's output file: option letters for multiple choice (parsed at generation time),
    raw responses for open questions."""
    rng = random.Random(seed)
    out: dict[str, Any] = {}
    for problem, response in zip(problems, responses):
        if problem["question_type"] == "multiple-choice":
            options = list(problem["choices"] or [])
            letters = option_letters(options)
            out[problem["pid"]] = parse_multi_choice(response, letters, dict(zip(letters, options)), rng)
        else:
            out[problem["pid"]] = response
    return out
