"""The programmatic generator (the embedded default): the paper's AskImg, CompQ, RephQ and SimpQ for
synthetic images, where questions come from each image's scene description, so every answer is
computed, not guessed. Images without a scene still get rule-based rephrased and underspecified
questions that keep the original answer. Counts per seed: `per_seed` (config.PerSeed)."""

from __future__ import annotations

import json
import random
import re
import pandas as pd

from ..data.synthetic import QuestionSpec, scene_questions

_LEADS = [
    (re.compile(r"^(As shown in the (figure|diagram|image|picture),?\s*)", re.I), ""),
    (re.compile(r"^(In|According to|Looking at) (the|this) (figure|diagram|image|picture|chart|bar chart|table),?\s*", re.I), ""),
]
_REPHRASE_PREFIXES = ["Based on the image, ", "Look at the picture. ", "Using the figure, "]


def rule_rephrase(question: str, rng: random.Random) -> str:
    """Same question, other words, for items without a scene."""
    body = question.strip()
    for pattern, repl in _LEADS:
        body = pattern.sub(repl, body)
    prefix = rng.choice(_REPHRASE_PREFIXES)
    if prefix.endswith(", ") and body[:2] != body[:2].upper():  # keep acronyms such as "AB" as they are
        body = body[:1].lower() + body[1:]
    return prefix + body


def rule_underspecify(question: str) -> str | None:
    """Drop stated context so the image must supply it: leading figure references and given
    values ('Given that ...,', 'If ... ,') are removed. None when nothing can be removed."""
    text = question.strip()
    for pattern, repl in _LEADS:
        text = pattern.sub(repl, text)
    text = re.sub(r"^(Given that|Suppose|If)[^,?]*,\s*", "", text, flags=re.I)
    sentences = re.split(r"(?<=[.])\s+", text)
    if len(sentences) > 1:
        text = sentences[-1]
    text = text[:1].upper() + text[1:]
    return text if text and text != question.strip() else None


def _row_from_spec(parent: pd.Series, spec: QuestionSpec, question: str, aug_type: str, n: int) -> dict:
    row = parent.to_dict()
    row.update(
        id=f"{parent['id']}#{aug_type}-{n}", question=question, answer=spec.answer,
        question_type=spec.question_type, answer_type=spec.answer_type, precision=spec.precision,
        choices=json.dumps(spec.choices) if spec.choices else None, unit=spec.unit,
        skills=json.dumps(spec.skills), question_key=spec.key, parent_id=parent["id"], aug_type=aug_type,
    )
    return row


def _keep_answer(parent: pd.Series, question: str, aug_type: str, n: int) -> dict:
    row = parent.to_dict()
    row.update(id=f"{parent['id']}#{aug_type}-{n}", question=question, parent_id=parent["id"], aug_type=aug_type)
    return row


def rationale_row(parent: dict) -> tuple[dict | None, str | None]:
    """(row, None) with the seed's worked solution computed from its scene and verified against its
    answer, or (None, drop reason); (None, None) when the row has no scene to compute from."""
    from ..evaluation.runner import problem_from_row
    from .rationales import scene_rationale, verify

    text = scene_rationale(parent)
    if text is None:
        return None, ("no_scene_steps" if isinstance(parent.get("scene"), str) else None)
    reason = verify(problem_from_row(parent), text)
    if reason is not None:
        return None, reason
    return {**parent, "id": f"{parent['id']}#rationale-0", "parent_id": parent["id"], "aug_type": "rationale",
            "rationale": text}, None


def augment_row(parent: pd.Series, cfg, rng: random.Random) -> list[dict]:
    """`cfg`: counts per seed (askimg, compq, rephq, simpq)."""
    out: list[dict] = []
    scene = json.loads(parent["scene"]) if isinstance(parent.get("scene"), str) else None
    if scene and "template" in scene:
        specs = scene_questions(scene["template"], {k: v for k, v in scene.items()
                                                      if k not in ("template", "seed", "level")}, scene["seed"])
        original = next((s for s in specs if s.key == parent["question_key"]), None)
        others = [s for s in specs if s.key != parent["question_key"]]
        rng.shuffle(others)
        harder = [s for s in others if s.steps >= 2][: cfg.compq]
        fresh = [s for s in others if s not in harder][: cfg.askimg]
        out += [_row_from_spec(parent, s, s.phrasings[0], "new_question", i) for i, s in enumerate(fresh)]
        out += [_row_from_spec(parent, s, s.phrasings[0], "harder", i) for i, s in enumerate(harder)]
        if original is not None:
            variants = [p for p in original.phrasings if p != parent["question"]]
            rng.shuffle(variants)
            out += [_keep_answer(parent, q, "rephrased", i) for i, q in enumerate(variants[: cfg.rephq])]
            if cfg.simpq and original.short != parent["question"]:
                out.append(_keep_answer(parent, original.short, "underspecified", 0))
        return out
    for i in range(cfg.rephq):
        out.append(_keep_answer(parent, rule_rephrase(parent["question"], rng), "rephrased", i))
    short = rule_underspecify(parent["question"]) if cfg.simpq else None
    if short:
        out.append(_keep_answer(parent, short, "underspecified", 0))
    return out

