"""Training data: LLaVA conversation files (the MathV360K format) in, tokens and pixels out.

    [{"id": ..., "image": "<path under the image root>", "conversations":
        [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]}, ...]

Each record is rendered with the base model's chat template (`mathllava.conversation`) and
tokenized once; the loss is taken on the assistant turns only (every other label is IGNORE_INDEX).
A conversation longer than `max_length` loses its last turns whole, so an answer is never cut: a
record whose first answer does not fit is dropped. Both are counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..conversation import IGNORE_INDEX, TemplateError, conversation_text, turns_from_llava


class DataError(ValueError):
    """A training file that cannot be used; the message names the file and the line or record."""


def read_conversations(path: str | Path) -> list[dict]:
    """Records of a LLaVA JSON list or JSONL file, each checked for `conversations` and an
    optional string `image`. Errors name the file and the line (JSONL) or record index (JSON)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such training file")
    text = path.read_text(encoding="utf-8-sig")  # pragma: no mutate (codec names ignore case)
    records: list[tuple[str, Any]] = []
    if path.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append((f"line {number}", json.loads(line)))
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}: line {number} is not valid JSON: {err.msg}") from err
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}): {err.msg}") from err
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of LLaVA records, found {type(data).__name__}")
        records = [(f"record {i}", r) for i, r in enumerate(data)]
    if not records:
        raise DataError(f"{path}: no records")
    out = []
    for where, record in records:
        if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
            raise DataError(f"{path}: {where} has no 'conversations' list")
        if record.get("image") is not None and not isinstance(record["image"], str):
            raise DataError(f"{path}: {where}: 'image' must be a path string")
        try:
            turns_from_llava(record["conversations"])
        except TemplateError as err:
            raise DataError(f"{path}: {where}: {err}") from err
        out.append(record)
    return out


@dataclass
class EncodedRecord:
    input_ids: list[int]
    labels: list[int]
    status: str  # "ok", "truncated" (later turns dropped whole) or "dropped" (the first answer does not fit)
    turns_kept: int = 0


def encode_conversation(processor, conversations: list[dict], with_image: bool, image_tokens: int,
                        max_length: int) -> EncodedRecord:
    """Token ids and labels for one record: the image placeholder expanded to `image_tokens` ids,
    labels on the assistant turns (each closed by end-of-sequence), cut at a turn boundary."""
    tok = processor.tokenizer
    turns = turns_from_llava(conversations)
    text, spans = conversation_text(processor, turns, with_image)
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=True)  # pragma: no mutate (True is the default)
    offsets = enc["offset_mapping"]
    span_of = [-1] * len(offsets)  # pragma: no mutate (any negative means none) which assistant turn each token is in
    k = 0
    for t, (start, end) in enumerate(offsets):
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        if k < len(spans) and end > start and end > spans[k][0]:
            span_of[t] = k
    last_token = {turn: t for t, turn in enumerate(span_of) if turn >= 0}
    if len(last_token) != len(spans):
        missing = min(set(range(len(spans))) - set(last_token))
        raise TemplateError(f"assistant turn {missing} has no tokens")
    image_id = processor.image_token_id if with_image else None  # pragma: no mutate (no image: the text holds no image token)
    ids: list[int] = []
    labels: list[int] = []
    turn_ends: list[int] = []  # sequence length after each assistant turn
    for t, token_id in enumerate(enc["input_ids"]):
        if token_id == image_id:
            ids.extend([image_id] * image_tokens)
            labels.extend([IGNORE_INDEX] * image_tokens)
            continue
        ids.append(token_id)
        labels.append(token_id if span_of[t] >= 0 else IGNORE_INDEX)
        if span_of[t] >= 0 and last_token[span_of[t]] == t:
            if token_id != tok.eos_token_id:  # every answer ends with end-of-sequence, as in LLaVA
                ids.append(tok.eos_token_id)
                labels.append(tok.eos_token_id)
            turn_ends.append(len(ids))
    if len(ids) <= max_length:
        return EncodedRecord(ids, labels, "ok", len(turns))
    fitting = [end for end in turn_ends if end <= max_length]
    if not fitting:
        return EncodedRecord([], [], "dropped", 0)
    cut = fitting[-1]
    return EncodedRecord(ids[:cut], labels[:cut], "truncated", len(fitting))


def raw_pixels(processor, image) -> Any:
    """The processor's resize and crop of one image, before rescaling and normalisation (uint8 when
    the processor works on 8-bit images, as the PIL backend does), so it can be stored compactly;
    `normalize_pixels` finishes the processor's work."""
    # not mutated: with the pinned transformers, None or no return_tensors give the same uint8 array
    out = processor.image_processor(images=image, do_rescale=False, do_normalize=False,  # pragma: no mutate
                                    return_tensors="np")["pixel_values"][0]  # pragma: no mutate
    return compact_pixels(out)


def compact_pixels(values) -> Any:
    """uint8 when every value is a whole number in 0..255 (nothing is lost), else float16."""
    import numpy as np

    if np.array_equal(values, np.round(values)) and values.min() >= 0 and values.max() <= 255:
        return values.astype(np.uint8)
    return values.astype(np.float16)


def pixel_normalizer(processor) -> dict:
    ip = processor.image_processor
    return {"scale": float(ip.rescale_factor) if ip.do_rescale else 1.0,
            "mean": [float(v) for v in ip.image_mean] if ip.do_normalize else [0.0, 0.0, 0.0],
            "std": [float(v) for v in ip.image_std] if ip.do_normalize else [1.0, 1.0, 1.0]}


def normalize_pixels(pixels, normalizer: dict, dtype=None):
    """float pixel values from stored raw pixels (a torch tensor, any device), exactly as the
    processor computes them: rescale, then subtract the mean and divide by the std per channel."""
    import torch

    x = pixels.float() * normalizer["scale"]
    # not mutated: the device matters on a GPU only, and (C, 1, 1) broadcasts as (1, C, 1, 1) over a batch
    mean = torch.tensor(normalizer["mean"], device=x.device).view(1, -1, 1, 1)  # pragma: no mutate (see above)
    std = torch.tensor(normalizer["std"], device=x.device).view(1, -1, 1, 1)  # pragma: no mutate (see above)
    x = (x - mean) / std
    return x if dtype is None else x.to(dtype)  # pragma: no mutate (x.to(None) is x: swapped branches are equivalent)

