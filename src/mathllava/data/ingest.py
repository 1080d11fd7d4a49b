"""Ingest annotation files (any format `readers` knows) plus an image folder into one manifest.

One row per sample, streamed: records are read one at a time and rows come out in batches, so
memory stays flat however long the file is. A record that cannot become a row (unreadable line,
broken schema, an image path that escapes the image root) goes to the quarantine table with the
file, line and reason; image faults (missing, too big, a decompression bomb, undecodable) are
recorded on the row so that validation quarantines them with the rest. Each distinct image file is
probed once: its size is checked before anything is read, then it is hashed in chunks and decoded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Literal

import pandas as pd
from PIL import Image
from pydantic import Field

from ..formats import TASK_NAMES, infer_answer_type
from ..paths import UnsafePathError, resolve_image_path
from ..settings import Strict
from .readers import AnnotationError, read_annotations
from .sources import UNKNOWN, SourceTable, load_table, resolve_task

MANIFEST_COLUMNS = [
    "id", "source", "task_type", "task", "image", "image_path", "image_sha256", "image_phash", "image_format",
    "width", "height", "image_bytes", "image_ok", "image_error", "question", "answer", "question_type",
    "answer_type", "precision", "choices", "unit", "skills", "context", "language", "complexity_label",
    "clear_label", "question_key", "scene", "parent_id", "aug_type", "dataset", "origin",
]
QUARANTINE_COLUMNS = ["id", "dataset", "source", "stage", "reason", "origin", "record"]
CHUNK = 1 << 20


class SourceSpec(Strict):
    """One input: an annotation file (or HF dataset folder) and the folder its image paths are relative to."""

    annotations: str
    image_root: str
    name: str | None = None            # the dataset name in reports; default: the annotation file's folder
    format: Literal["auto", "llava_json", "llava_jsonl", "mathvista", "mathv", "hf_disk", "parquet",
                    "csv_folder"] = "auto"
    task: str | None = None            # task for records whose metadata and source say nothing
    source: str | None = None          # force one source name for every record

    def dataset_name(self) -> str:
        return self.name or Path(self.annotations).parent.name or Path(self.annotations).stem


class ImageLimits(Strict):
    max_pixels: int = Field(40_000_000, gt=0)     # larger images are refused before decoding
    max_bytes: int = Field(64 * 1024 * 1024, gt=0)  # larger files are refused before reading


@dataclass
class ImageInfo:
    sha256: str | None = None
    phash: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    size: int | None = None
    ok: bool = False
    error: str | None = None


def probe_image(path: Path, limits: ImageLimits) -> ImageInfo:
    """Size cap before any byte is read, a chunked sha256, the header's size against the pixel
    cap (a decompression bomb is refused before decoding), then a full decode and a perceptual hash."""
    import imagehash

    info = ImageInfo()
    try:
        info.size = path.stat().st_size
    except FileNotFoundError:
        info.error = f"image file missing: {path}"
        return info
    except OSError as exc:
        info.error = f"image file unreadable: {path}: {exc.strerror or exc}"
        return info
    if not path.is_file():
        info.error = f"image path is not a file: {path}"
        return info
    if info.size > limits.max_bytes:
        info.error = f"image file too large: {info.size} bytes > {limits.max_bytes}"
        return info
    if info.size == 0:
        info.error = "image file is empty"
        return info
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(CHUNK), b""):  # pragma: no mutate (read(None): same digest, more memory)
                digest.update(block)
    except OSError as exc:
        info.error = f"image file unreadable: {path}: {exc.strerror or exc}"
        return info
    info.sha256 = digest.hexdigest()
    try:
        with Image.open(path) as img:
            info.width, info.height, info.format = img.width, img.height, img.format
            if img.width * img.height > limits.max_pixels:
                info.error = (f"decompression bomb refused: {img.width}x{img.height} pixels > "
                              f"{limits.max_pixels}")
                return info
            img.load()
            info.phash = str(imagehash.phash(img))
    except Image.DecompressionBombError as exc:
        info.error = f"decompression bomb refused: {exc}"
        return info
    except Exception as exc:
        info.error = f"image does not decode: {type(exc).__name__}: {exc}"[:300]
        return info
    info.ok = True
    return info


def source_of(record: dict, spec: SourceSpec) -> str:
    """The source dataset: forced by the spec, else the record's metadata, else (MathV360K) the
    image path's first folder, else the spec's dataset name."""
    if spec.source:
        return spec.source
    if record.get("source"):
        return str(record["source"])
    parts = PurePosixPath(str(record.get("image") or "").replace("\\", "/")).parts
    return parts[0] if len(parts) > 1 else spec.dataset_name()


def _text(value) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


class Ingestor:
    """Turns one source's records into manifest rows; probes each distinct image once."""

    def __init__(self, spec: SourceSpec, limits: ImageLimits, table: SourceTable | None = None):
        self.spec, self.limits = spec, limits
        self.table = table or load_table()
        self.root = Path(spec.image_root)
        self.dataset = spec.dataset_name()
        self.probes: dict[str, ImageInfo] = {}
        self.paths: dict[str, Path] = {}   # the image field as written -> its checked path (images repeat)

    def row(self, record: dict, origin: str) -> dict:
        if not _text(record.get("id")):
            raise ValueError("missing id")
        if not _text(record.get("question")):
            raise ValueError("missing question")
        written = record.get("image") or ""
        path = self.paths.get(written) if isinstance(written, str) else None
        if path is None:
            path = resolve_image_path(self.root, written)
            self.paths[written] = path
        key = str(path)
        info = self.probes.get(key)
        if info is None:
            info = self.probes[key] = probe_image(path, self.limits)
        choices = record.get("choices") or None
        answer = _text(record.get("answer"))
        qtype, atype = record.get("question_type"), record.get("answer_type")  # the reader inferred them
        if qtype is None or atype is None:  # a record without an answer: nothing was inferred
            empty_qtype, empty_atype, _ = infer_answer_type(answer or "", choices)
            qtype, atype = qtype or empty_qtype, atype or empty_atype
        precision = record.get("precision")
        source = source_of(record, self.spec)
        code = resolve_task(record.get("task"), source, self.spec.task, self.table)
        scene = record.get("scene")
        return {
            "id": str(record["id"]).strip(), "source": self.table.canonical(source), "task_type": code,
            "task": TASK_NAMES.get(code, UNKNOWN), "image": record["image"], "image_path": key,
            "image_sha256": info.sha256, "image_phash": info.phash, "image_format": info.format,
            "width": info.width, "height": info.height, "image_bytes": info.size, "image_ok": info.ok,
            "image_error": info.error, "question": record["question"], "answer": answer,
            "question_type": qtype, "answer_type": atype, "precision": None if precision is None else int(precision),
            "choices": json.dumps(choices, ensure_ascii=False) if choices else None, "unit": record.get("unit"),
            "skills": json.dumps(record.get("skills") or [], ensure_ascii=False), "context": record.get("context"),
            "language": record.get("language") or "english", "complexity_label": record.get("complexity"),
            "clear_label": record.get("clear"), "question_key": record.get("question_key"),
            "scene": json.dumps(scene, ensure_ascii=False) if scene else None,
            "parent_id": None, "aug_type": "original", "dataset": self.dataset, "origin": origin,
        }

    def quarantined(self, rid, reason: str, origin: str, raw, source: str | None = None) -> dict:
        text = raw if isinstance(raw, str) or raw is None else json.dumps(raw, ensure_ascii=False, default=str)
        return {"id": None if rid is None else str(rid), "dataset": self.dataset, "source": source or self.dataset,
                "stage": "ingest", "reason": reason, "origin": origin, "record": (text or "")[:2000]}

    def items(self) -> Iterator[tuple[dict | None, dict | None]]:
        """(row, None) or (None, quarantine row) per record, in file order."""
        for item in read_annotations(self.spec.annotations, self.spec.format):
            record = item.record
            if item.error is not None or record is None:
                yield None, self.quarantined(item.rid, item.error or "unreadable record", item.where, item.raw)
                continue
            try:
                yield self.row(record, item.where), None
            except UnsafePathError as exc:
                yield None, self.quarantined(record.get("id"), f"unsafe image path: {exc}", item.where, item.raw,
                                             source_of(record, self.spec))
            except (KeyError, TypeError, ValueError) as exc:
                yield None, self.quarantined(record.get("id"), f"wrong schema: {exc}", item.where, item.raw,
                                             source_of(record, self.spec))


def check_spec(spec: SourceSpec, key: str = "") -> None:
    """Refuse a source whose files are not there, before any work. `key`: the config key of the source
    (`data.extra_sources[0]`); the error then starts with the key of the missing path."""
    where = lambda field: f"{key}.{field}: " if key else ""  # noqa: E731
    if not Path(spec.annotations).exists():
        raise AnnotationError(f"{where('annotations')}{spec.annotations}: annotation file does not exist")
    root = Path(spec.image_root)
    if not root.is_dir():
        raise AnnotationError(f"{where('image_root')}{spec.annotations}: image root {root} does not exist or is "
                              "not a folder")


def iter_batches(specs: Iterable[SourceSpec], limits: ImageLimits, batch_size: int = 5000,
                 progress: bool = False) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """(manifest batch, quarantine batch) pairs over every source, in order; every spec is checked
    before the first record is read."""
    specs = list(specs)
    for spec in specs:
        check_spec(spec)
    table = load_table()
    for spec in specs:
        ingestor = Ingestor(spec, limits, table)
        stream = ingestor.items()
        if progress:
            from tqdm import tqdm

            stream = tqdm(stream, desc=f"ingest {ingestor.dataset}", unit="rec")
        rows, rejected = [], []
        for row, bad in stream:
            (rows if row is not None else rejected).append(row if row is not None else bad)
            if len(rows) + len(rejected) >= batch_size:
                yield _frames(rows, rejected)
                rows, rejected = [], []
        if rows or rejected:
            yield _frames(rows, rejected)


def _frames(rows: list, rejected: list) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS), pd.DataFrame(rejected, columns=QUARANTINE_COLUMNS)


def ingest_many(specs: Iterable[SourceSpec], limits: ImageLimits | None = None,
                progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(manifest, quarantine) for several sources, in memory (the pipeline's pools)."""
    manifests, quarantines = [], []
    for manifest, quarantine in iter_batches(specs, limits or ImageLimits(), progress=progress):
        manifests.append(manifest)
        quarantines.append(quarantine)
    manifest = pd.concat(manifests, ignore_index=True) if manifests else pd.DataFrame(columns=MANIFEST_COLUMNS)
    quarantine = (pd.concat(quarantines, ignore_index=True) if quarantines
                  else pd.DataFrame(columns=QUARANTINE_COLUMNS))
    return manifest, quarantine


def ingest_source(annotations: str | Path, image_root: str | Path, name: str | None = None,
                  limits: ImageLimits | None = None, **spec) -> tuple[pd.DataFrame, pd.DataFrame]:
    return ingest_many([SourceSpec(annotations=str(annotations), image_root=str(image_root), name=name, **spec)],
                       limits)


def manifest_digest(manifest: pd.DataFrame, columns: Iterable[str] = ("id", "image_sha256", "question", "answer")) -> str:
    """A content digest of a manifest (order-independent), for lineage tags."""
    h = hashlib.sha256()
    cols = [c for c in columns if c in manifest.columns]
    for line in sorted(manifest[cols].astype(str).agg("\x1f".join, axis=1)):
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]
