"""Strict reading of generator replies. A reply is either read whole or refused with a reason
(`Malformed`): one broken item refuses the whole reply, nothing is half-parsed.

Accepted: the JSON object alone, or one ```json fenced block holding it (models like to fence).
AskImg and CompQ: {"questions": [{"question", "choices" (list or null), "answer", "answer_type"}]};
RephQ and SimpQ: {"questions": ["...", ...]}. Extra items beyond the number asked are ignored."""

from __future__ import annotations

import json
import re

ANSWER_TYPES = ("integer", "float", "text")
_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.S)


class Malformed(ValueError):
    """`reason` is one of: empty, not_json, bad_schema."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def _json_body(reply: str) -> dict:
    text = (reply or "").strip()
    if not text:
        raise Malformed("empty", "empty reply")
    fences = _FENCE.findall(text)
    if len(fences) > 1:
        raise Malformed("not_json", "more than one fenced block")
    body = fences[0].strip() if fences else text
    try:
        data = json.loads(body)
    except ValueError as err:
        raise Malformed("not_json", str(err)[:120]) from None
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise Malformed("bad_schema", 'expected an object with a "questions" list')
    if not data["questions"]:
        raise Malformed("bad_schema", "no questions")
    return data


def _text(value, what: str, index: int) -> str:
    where = f"questions[{index}]" + (f".{what}" if what else "")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise Malformed("bad_schema", f"{where} must be a string")
    text = " ".join(str(value).split())
    if not text:
        raise Malformed("bad_schema", f"{where} is empty")
    return text


def parse_items(reply: str, n: int) -> list[dict]:
    """AskImg / CompQ replies: up to `n` items {question, choices, answer, answer_type}; answer_type
    is None when the reply does not state one."""
    items = []
    for i, raw in enumerate(_json_body(reply)["questions"][:n]):
        if not isinstance(raw, dict):
            raise Malformed("bad_schema", f"questions[{i}] must be an object")
        question = _text(raw.get("question"), "question", i)
        answer = _text(raw.get("answer"), "answer", i)
        choices = raw.get("choices")
        if choices is not None:
            if not isinstance(choices, list) or len(choices) < 2 or len(choices) > 26:
                raise Malformed("bad_schema", f"questions[{i}].choices must be a list of 2 to 26 options or null")
            choices = [_text(c, "choices", i) for c in choices]
            if len(set(choices)) != len(choices):
                raise Malformed("bad_schema", f"questions[{i}].choices repeat an option")
        answer_type = raw.get("answer_type")
        if answer_type is not None and answer_type not in ANSWER_TYPES:
            raise Malformed("bad_schema", f"questions[{i}].answer_type must be one of {ANSWER_TYPES}")
        items.append({"question": question, "choices": choices, "answer": answer, "answer_type": answer_type})
    return items


def parse_texts(reply: str, n: int) -> list[str]:
    """RephQ / SimpQ replies: up to `n` question texts."""
    return [_text(q, "", i) for i, q in enumerate(_json_body(reply)["questions"][:n])]
