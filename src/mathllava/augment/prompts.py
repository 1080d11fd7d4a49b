"""Prompts of the paper's four generators (AskImg, CompQ, RephQ, SimpQ) and of the consistency judge,
and AskImg's few-shot exemplars: per source, TF-IDF over that source's questions, KMeans with 5
clusters, the question nearest each cluster's centre (the paper's recipe).

Every generator replies with JSON only; `parse.py` reads the replies strictly."""

from __future__ import annotations

import json

from ..evaluation.mathvista import build_query

ITEM_SCHEMA = ('{"questions": [{"question": "...", "choices": ["...", "..."] or null, "answer": "...", '
               '"answer_type": "integer" | "float" | "text"}]}')
TEXT_SCHEMA = '{"questions": ["...", "..."]}'
_ANSWER_RULES = ("Each question must have one short answer that can be read or computed from the image: "
                 "for a multiple-choice question give the choices and answer with the option letter (A, B, ...); "
                 "otherwise answer with a number.")


def choose_exemplars(questions: list[str], k: int = 5, seed: int = 0) -> list[int]:
    """Indices of up to `k` representative questions: TF-IDF vectors, KMeans with k clusters, the
    question nearest each centre (clusters ordered by size, largest first)."""
    unique: dict[str, int] = {}
    for i, q in enumerate(questions):
        unique.setdefault(" ".join(str(q).split()), i)
    if len(unique) <= k:
        return sorted(unique.values())
    from sklearn.cluster import KMeans
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts, index = list(unique), list(unique.values())
    vectors = TfidfVectorizer(lowercase=True, ngram_range=(1, 2), min_df=1).fit_transform(texts)
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(vectors)
    distances = km.transform(vectors)
    sizes = [(int((km.labels_ == c).sum()), c) for c in range(k)]
    chosen = []
    for _size, cluster in sorted(sizes, key=lambda s: (-s[0], s[1])):
        members = [i for i in range(len(texts)) if km.labels_[i] == cluster]
        if members:
            chosen.append(index[min(members, key=lambda i: (distances[i, cluster], i))])
    return chosen


def exemplar_block(exemplars: list[dict]) -> str:
    lines = []
    for n, ex in enumerate(exemplars, 1):
        line = f"{n}. Question: {ex['question']}"
        if ex.get("choices"):
            line += " Choices: " + "; ".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(ex["choices"]))
        lines.append(line + f" Answer: {ex['answer']}")
    return "\n".join(lines)


def askimg(n: int, exemplars: list[dict]) -> str:
    """AskImg: new question-answer pairs about the image, in the style of the source's exemplars."""
    parts = ["Task: AskImg. Look at the image and write "
             f"{n} new math question{'s' if n > 1 else ''} about it, each with its answer."]
    if exemplars:
        parts.append("Questions of this kind, asked about similar images:\n" + exemplar_block(exemplars))
    parts += [_ANSWER_RULES, "The questions must differ from each other and from the examples.",
              f"Reply with JSON only, in this form: {ITEM_SCHEMA}"]
    return "\n\n".join(parts)


def _question_block(seed: dict) -> str:
    text = f"Question: {seed['question']}"
    if seed.get("choices"):
        text += "\nChoices: " + "; ".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(seed["choices"]))
    return text


def _seed_block(seed: dict) -> str:
    return _question_block(seed) + f"\nAnswer: {seed['answer']}"


def compq(n: int, seed: dict) -> str:
    """CompQ: harder versions of the seed question that need more reasoning steps."""
    return "\n\n".join([
        "Task: CompQ. Here is a question about the image and its answer.", _seed_block(seed),
        f"Write {n} harder version{'s' if n > 1 else ''} of this question that need more reasoning steps "
        "(combine several facts from the image, add a computation), each with its new answer.",
        _ANSWER_RULES, f"Reply with JSON only, in this form: {ITEM_SCHEMA}"])


def rephq(n: int, seed: dict) -> str:
    """RephQ: the seed question in other words, same meaning and answer."""
    return "\n\n".join([
        "Task: RephQ. Here is a question about the image and its answer.", _seed_block(seed),
        f"Rewrite the question in {n} different way{'s' if n > 1 else ''}: other words, the same meaning, "
        "the same answer. Do not include the choices or the answer.",
        f"Reply with JSON only, in this form: {TEXT_SCHEMA}"])


def simpq(n: int, seed: dict) -> str:
    """SimpQ: the seed question with some of its stated conditions removed; the image supplies them."""
    return "\n\n".join([
        "Task: SimpQ. Here is a question about the image and its answer.", _seed_block(seed),
        f"Write {n} shorter version{'s' if n > 1 else ''} of the question that leave out some of the conditions "
        "or values it states, so that they must be read from the image. The answer must stay the same. "
        "Do not include the choices or the answer.",
        f"Reply with JSON only, in this form: {TEXT_SCHEMA}"])


PROMPTS = {"compq": compq, "rephq": rephq, "simpq": simpq}


def rationale(seed: dict) -> str:
    """A worked solution of the seed question, ending in the final-answer line that `rationales.verify`
    checks against the seed's answer (not shown to the model)."""
    return "\n\n".join([
        "Task: Rationale. Solve this question about the image step by step.", _question_block(seed),
        "Write each step on its own line: what you read in the image, then each computation. "
        "End with one last line of the form `The answer is X.`, where X is the option letter for a "
        "multiple-choice question and the value otherwise. Reply with the steps and that line only."])


def judge(item: dict) -> str:
    """The consistency check's question: the generated question as a MathVista-style query, answered
    on its own."""
    return build_query(item["question"], item["question_type"], item["answer_type"], item.get("precision"),
                       item.get("choices"), item.get("unit"))


def seed_view(row: dict) -> dict:
    choices = row.get("choices")
    choices = json.loads(choices) if isinstance(choices, str) else None  # a missing value may be NaN
    return {"question": row["question"], "answer": row["answer"], "choices": choices or None}
