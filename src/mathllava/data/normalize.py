"""One flat record for every annotation format (LLaVA conversations, MathVista, Math-V, flat tables, CSV).

`normalize_llava` takes a LLaVA conversation record (MathV360K): question and answer come from the
first human/gpt pair, parsed with the project's helpers in `mathllava.formats`; the record's
`metadata` overrides what was parsed (as `ingest.record_to_row` did). `normalize_flat` takes a record
whose fields are already separate (MathVista, Math-V, HF/parquet rows, CSV rows), with an optional
`metadata` object. Both return a dict with exactly `FLAT_KEYS` (None where unknown) or raise
`RecordError` with why this one record is bad.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from ..formats import infer_answer_type, parse_gpt_turn, parse_human_turn

FLAT_KEYS = (
    "id", "image", "question", "answer", "choices", "task", "source", "question_type", "answer_type",
    "precision", "unit", "skills", "context", "language", "complexity", "clear", "question_key", "scene",
    "extra",
)
# fields read from a record or its metadata under their own name
_META_FIELDS = ("task", "source", "question_type", "answer_type", "precision", "unit", "skills", "context",
                "language", "complexity", "clear", "question_key", "scene")
_IMAGE_TOKENS = re.compile(r"<image\d*>")
EMBEDDED_BYTES = "embedded image bytes are not supported; export images to files"


class RecordError(ValueError):
    """This one record cannot be used (its own fault, not the file's)."""


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (
        isinstance(value, float) and math.isnan(value))


def _text(value: Any) -> str | None:
    return None if _missing(value) else str(value)


def _int(value: Any, name: str) -> int | None:
    if _missing(value):
        return None
    if isinstance(value, bool):
        raise RecordError(f"{name} is not an integer: {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RecordError(f"{name} is not an integer: {value!r}") from None
    if not number.is_integer():
        raise RecordError(f"{name} is not an integer: {value!r}")
    return int(number)


def _bool(value: Any, name: str) -> bool | None:
    if _missing(value):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise RecordError(f"{name} is not a boolean: {value!r}")


def _str_list(value: Any, name: str, split_bar: bool = False) -> list[str] | None:
    """A list of strings from a list, a JSON list in a string, or (CSV) a `|`-separated string."""
    if _missing(value):
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                raise RecordError(f"{name} is not a valid JSON list: {text[:80]!r}") from None
        elif split_bar:
            value = [part.strip() for part in text.split("|")]
        else:
            value = [text]
    if not isinstance(value, (list, tuple)):
        raise RecordError(f"{name} must be a list, not {type(value).__name__}")
    if any(isinstance(v, (dict, list)) for v in value):
        raise RecordError(f"{name} must be a list of strings")
    return [str(v) for v in value]


def _scene(value: Any) -> dict | None:
    if _missing(value):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise RecordError("scene is not valid JSON") from None
    if not isinstance(value, dict):
        raise RecordError(f"scene must be an object, not {type(value).__name__}")
    return value


def _image(value: Any) -> str:
    """The image path as written: a string, or the `path` of an HF Image feature ({bytes, path})."""
    if isinstance(value, dict):
        if not _missing(value.get("path")):
            return str(value["path"])
        if value.get("bytes"):
            raise RecordError(EMBEDDED_BYTES)
        raise RecordError("missing image")
    if isinstance(value, (bytes, bytearray)):
        raise RecordError(EMBEDDED_BYTES)
    if _missing(value):
        raise RecordError("missing image")
    if not isinstance(value, str):
        raise RecordError(f"image must be a path string, not {type(value).__name__}")
    return value


def _holds_bytes(value: Any) -> bool:
    return isinstance(value, (bytes, bytearray)) or (isinstance(value, dict) and "bytes" in value)


def _id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise RecordError("missing id")
    return str(value)


def _metadata(record: dict) -> dict:
    meta = record.get("metadata")
    if isinstance(meta, str) and meta.strip().startswith("{"):
        try:
            meta = json.loads(meta)
        except ValueError:
            raise RecordError("metadata is not valid JSON") from None
    if _missing(meta):
        return {}
    if not isinstance(meta, dict):
        raise RecordError(f"metadata must be an object, not {type(meta).__name__}")
    return meta


def _finish(flat: dict, fields: dict, extra: dict) -> dict:
    """Coerce the metadata-like fields and infer question/answer types the way ingest always has."""
    choices = flat["choices"]
    if flat["answer"] is not None:
        qtype, atype, precision = infer_answer_type(flat["answer"], choices)
    else:
        qtype = atype = precision = None
    flat.update(
        task=_text(fields.get("task")),
        source=_text(fields.get("source")),
        question_type=_text(fields.get("question_type")) or qtype,
        answer_type=_text(fields.get("answer_type")) or atype,
        precision=_int(fields["precision"], "precision") if "precision" in fields else precision,
        unit=_text(fields.get("unit")),
        skills=_str_list(fields.get("skills"), "skills") or [],
        context=_text(fields.get("context")),
        language=_text(fields.get("language")),
        complexity=_int(fields.get("complexity"), "complexity"),
        clear=_bool(fields.get("clear"), "clear"),
        question_key=_text(fields.get("question_key")),
        scene=_scene(fields.get("scene")),
        extra=extra,
    )
    return flat


def _check_turns(conv: Any) -> None:
    if not isinstance(conv, list) or len(conv) < 2:
        raise RecordError("conversations must be a list of at least two turns")
    for turn in conv:
        if not isinstance(turn, dict) or turn.get("from") not in ("human", "gpt") or not isinstance(turn.get("value"), str):
            raise RecordError("each turn needs from in {human, gpt} and a string value")
    if conv[0]["from"] != "human" or conv[1]["from"] != "gpt":
        raise RecordError("first turn must be human and second gpt")


def normalize_llava(record: Any) -> dict:
    """A LLaVA conversation record as a flat record. The first human/gpt pair is the seed QA; a longer
    conversation is kept whole in `extra["conversations"]`."""
    if not isinstance(record, dict):
        raise RecordError("record is not an object")
    rid = _id(record.get("id"))
    if "conversations" not in record:
        raise RecordError("missing conversations")
    conv = record["conversations"]
    _check_turns(conv)
    image = _image(record.get("image"))
    meta = _metadata(record)
    human = parse_human_turn(conv[0]["value"])
    choices = _str_list(meta["choices"], "choices") if "choices" in meta else human["choices"]
    question = _text(meta.get("question")) or human["question"]
    if _missing(question):
        raise RecordError("missing question")
    if not _missing(meta.get("answer")):
        answer = str(meta["answer"])
    else:
        answer = parse_gpt_turn(conv[1]["value"], choices)
    if _missing(answer):
        raise RecordError("missing answer")
    fields = {k: meta[k] for k in _META_FIELDS if k in meta}
    fields.setdefault("unit", human["unit"])
    if _missing(fields.get("task")):
        fields["task"] = meta.get("task_type", record.get("task"))
    if _missing(fields.get("source")):
        fields["source"] = record.get("source")
    consumed = set(_META_FIELDS) | {"question", "answer", "choices", "task_type"}
    extra = {k: v for k, v in meta.items() if k not in consumed}
    extra.update((k, v) for k, v in record.items()
                 if k not in ("id", "image", "conversations", "metadata", "task", "source") and not _holds_bytes(v))
    if len(conv) > 2:
        extra["conversations"] = conv
    flat = {"id": rid, "image": image, "question": question, "answer": answer,
            "choices": choices or None}
    return _finish(flat, fields, extra)


def normalize_flat(record: Any, split_bar: bool = False) -> dict:
    """A record with separate fields (MathVista, Math-V, flat HF/parquet rows, CSV rows) as a flat
    record: `id` (or MathVista's `pid`), `image`, `question` (Math-V's `<image1>` tokens stripped),
    `answer`, `choices` (or Math-V's `options`; empty means none); the metadata-like fields from the
    record or its `metadata` object; everything else worth keeping (Math-V level/subject/solution,
    MathVista grade/category/...) in `extra`. `split_bar`: choices may be `a|b|c` (CSV)."""
    if not isinstance(record, dict):
        raise RecordError("record is not an object")
    meta = _metadata(record)
    rid = _id(record["id"] if not _missing(record.get("id")) else record.get("pid"))
    image_key = "image" if not _missing(record.get("image")) or "image_path" not in record else "image_path"
    image = _image(record.get(image_key))
    question = _text(record.get("question"))
    if question is not None:
        question = _IMAGE_TOKENS.sub("", question).strip()
    if _missing(question):
        raise RecordError("missing question")
    choice_key = "choices" if not _missing(record.get("choices")) or "options" not in record else "options"
    choices = _str_list(record.get(choice_key), choice_key, split_bar)
    fields = {k: meta[k] for k in _META_FIELDS if k in meta}
    fields.update((k, record[k]) for k in _META_FIELDS if not _missing(record.get(k)))
    consumed = set(_META_FIELDS) | {"id", "pid", "metadata", "question", "answer", "choices", "options",
                                    image_key, "decoded_image"}
    extra = {k: v for k, v in meta.items() if k not in consumed}
    extra.update((k, v) for k, v in record.items() if k not in consumed and not _holds_bytes(v))
    flat = {"id": rid, "image": image, "question": question, "answer": _text(record.get("answer")),
            "choices": choices or None}
    return _finish(flat, fields, extra)
