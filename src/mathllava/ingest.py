"""Ingest LLaVA conversation JSON (MathV360K layout) plus an image folder into one manifest table.

One row per sample. Records that cannot become a row (broken schema, an image path that escapes
the image root) go to the quarantine table with a reason; image problems (missing, corrupt, too
large) are recorded on the row so that validation quarantines them with the rest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

import pandas as pd
from PIL import Image

from .formats import TASK_CODES, TASK_NAMES, infer_answer_type, parse_gpt_turn, parse_human_turn

MANIFEST_COLUMNS = [
    "id", "source", "task_type", "task", "image", "image_path", "image_sha256", "image_format",
    "width", "height", "image_ok", "image_error", "question", "answer", "question_type", "answer_type",
    "precision", "choices", "unit", "skills", "context", "language", "complexity_label", "clear_label",
    "question_key", "scene", "parent_id", "aug_type", "dataset",
]
QUARANTINE_COLUMNS = ["id", "dataset", "stage", "reason", "record"]


class UnsafePathError(ValueError):
    pass


def resolve_image_path(image_root: Path, rel: str) -> Path:
    """The image file for a record's `image` field, refusing absolute paths and any path that
    leaves the image root (`..`, symlinks pointing outside)."""
    if not isinstance(rel, str) or not rel.strip():
        raise UnsafePathError("empty image path")
    if "\x00" in rel:
        raise UnsafePathError("image path contains a NUL byte")
    posix = PurePosixPath(rel.replace("\\", "/"))
    if posix.is_absolute() or (posix.parts and posix.parts[0].endswith(":")):
        raise UnsafePathError(f"absolute image path {rel!r}")
    if ".." in posix.parts:
        raise UnsafePathError(f"image path {rel!r} escapes the image root")
    root = image_root.resolve()
    path = (root / Path(*posix.parts)).resolve()
    if root != path and root not in path.parents:
        raise UnsafePathError(f"image path {rel!r} resolves outside the image root")
    return path


@dataclass
class ImageInfo:
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    ok: bool = False
    error: str | None = None


def probe_image(path: Path, max_pixels: int) -> ImageInfo:
    """Hash and decode an image; size is read from the header first so that a decompression bomb
    is refused before any pixel is decoded."""
    info = ImageInfo()
    if not path.is_file():
        info.error = "image file missing"
        return info
    data = path.read_bytes()
    info.sha256 = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(path) as img:
            info.width, info.height, info.format = img.width, img.height, img.format
            if img.width * img.height > max_pixels:
                info.error = f"image too large: {img.width}x{img.height} > {max_pixels} pixels"
                return info
            img.load()
    except Image.DecompressionBombError as exc:  # pragma: no cover - header check above usually wins
        info.error = f"image too large: {exc}"
        return info
    except Exception as exc:
        info.error = f"image does not decode: {type(exc).__name__}: {exc}"[:300]
        return info
    info.ok = True
    return info


def _schema_error(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "record is not an object"
    if not isinstance(record.get("id"), (str, int)) or str(record.get("id")).strip() == "":
        return "missing id"
    if "image" not in record:
        return "missing image field"
    conv = record.get("conversations")
    if not isinstance(conv, list) or len(conv) < 2:
        return "conversations must be a list of at least two turns"
    for turn in conv:
        if not isinstance(turn, dict) or turn.get("from") not in ("human", "gpt") or not isinstance(turn.get("value"), str):
            return "each turn needs from in {human, gpt} and a string value"
    if conv[0]["from"] != "human" or conv[1]["from"] != "gpt":
        return "first turn must be human and second gpt"
    return None


def _source_of(record: dict, dataset: str) -> str:
    meta = record.get("metadata") or {}
    if meta.get("source"):
        return str(meta["source"])
    first = PurePosixPath(str(record.get("image", ""))).parts
    return first[0] if len(first) > 1 else dataset


def _task_code(meta: dict, default: str | None) -> str | None:
    task = meta.get("task") or meta.get("task_type") or default
    if task in TASK_NAMES:
        return task
    return TASK_CODES.get(task, task)


def record_to_row(record: dict, image_root: Path, dataset: str, max_pixels: int, task_default: str | None) -> dict:
    meta = record.get("metadata") or {}
    conv = record["conversations"]
    human = parse_human_turn(conv[0]["value"])
    choices = meta.get("choices", human["choices"])
    question = meta.get("question") or human["question"]
    answer = str(meta["answer"]) if meta.get("answer") is not None else parse_gpt_turn(conv[1]["value"], choices)
    qtype, atype, precision = infer_answer_type(answer, choices)
    qtype = meta.get("question_type", qtype)
    atype = meta.get("answer_type", atype)
    precision = meta.get("precision", precision)
    path = resolve_image_path(image_root, record["image"])
    info = probe_image(path, max_pixels)
    code = _task_code(meta, task_default)
    return {
        "id": str(record["id"]),
        "source": _source_of(record, dataset),
        "task_type": code,
        "task": TASK_NAMES.get(code, code),
        "image": record["image"],
        "image_path": str(path),
        "image_sha256": info.sha256,
        "image_format": info.format,
        "width": info.width,
        "height": info.height,
        "image_ok": info.ok,
        "image_error": info.error,
        "question": question,
        "answer": answer,
        "question_type": qtype,
        "answer_type": atype,
        "precision": None if precision is None else int(precision),
        "choices": json.dumps(choices, ensure_ascii=False) if choices else None,
        "unit": meta.get("unit", human["unit"]),
        "skills": json.dumps(meta.get("skills") or [], ensure_ascii=False),
        "context": meta.get("context"),
        "language": meta.get("language", "english"),
        "complexity_label": meta.get("complexity"),
        "clear_label": meta.get("clear"),
        "question_key": meta.get("question_key"),
        "scene": json.dumps(meta["scene"], ensure_ascii=False) if meta.get("scene") else None,
        "parent_id": None,
        "aug_type": "original",
        "dataset": dataset,
    }


def load_records(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    if isinstance(data, dict):  # {id: record}
        return [{"id": k, **v} if isinstance(v, dict) and "id" not in v else v for k, v in data.items()]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records")
    return data


def ingest_llava(
    annotations: str | Path,
    image_root: str | Path,
    dataset: str | None = None,
    max_pixels: int = 40_000_000,
    task_default: str | None = None,
    progress: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(manifest, quarantine) for one LLaVA-format annotation file and its image folder."""
    annotations, image_root = Path(annotations), Path(image_root)
    dataset = dataset or annotations.parent.name
    records: Iterable = load_records(annotations)
    if progress:
        from tqdm import tqdm

        records = tqdm(records, desc=f"ingest {dataset}", unit="rec")
    rows, rejected = [], []
    for record in records:
        error = _schema_error(record)
        rid = str(record.get("id")) if isinstance(record, dict) else None
        if error is None:
            try:
                rows.append(record_to_row(record, image_root, dataset, max_pixels, task_default))
                continue
            except UnsafePathError as exc:
                error = f"unsafe image path: {exc}"
            except (KeyError, TypeError, ValueError) as exc:
                error = f"wrong schema: {type(exc).__name__}: {exc}"
        rejected.append({"id": rid, "dataset": dataset, "stage": "ingest", "reason": error,
                         "record": json.dumps(record, ensure_ascii=False, default=str)[:2000]})
    return (pd.DataFrame(rows, columns=MANIFEST_COLUMNS),
            pd.DataFrame(rejected, columns=QUARANTINE_COLUMNS))


def ingest_many(specs: list[dict], max_pixels: int, progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Ingest several sources: each spec has `annotations`, `image_root` and optional `name`, `task`."""
    manifests, quarantines = [], []
    for spec in specs:
        m, q = ingest_llava(spec["annotations"], spec["image_root"], spec.get("name"), max_pixels,
                            spec.get("task"), progress)
        manifests.append(m)
        quarantines.append(q)
    manifest = pd.concat(manifests, ignore_index=True) if manifests else pd.DataFrame(columns=MANIFEST_COLUMNS)
    quarantine = pd.concat(quarantines, ignore_index=True) if quarantines else pd.DataFrame(columns=QUARANTINE_COLUMNS)
    return manifest, quarantine


def manifest_digest(manifest: pd.DataFrame, columns: Iterable[str] = ("id", "image_sha256", "question", "answer")) -> str:
    """A content digest of a manifest (order-independent), for lineage tags."""
    h = hashlib.sha256()
    cols = [c for c in columns if c in manifest.columns]
    for line in sorted(manifest[cols].astype(str).agg("\x1f".join, axis=1)):
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]
