"""Cleaning a manifest after ingest: duplicates across sources, and evaluation-benchmark contamination.

`dedup` removes a row when an earlier row (manifest order) has the same image AND the same normalised
question and choices. Same image means the same `image_sha256` (exact) or perceptual hashes within
`phash_distance` bits (near). The same image with another question is kept (MathV360K asks many
questions per image). Rows are grouped by (question, choices) first, and phashes are compared with
numpy inside each group only, so the cost is the sum over groups of size^2, not rows^2. A row whose
phash is null (the image did not decode) matches only exactly; a row with no sha256 matches nothing.

`guard` removes training rows that leak an evaluation benchmark (`load_benchmarks` indexes them): an
image equal to a benchmark image (sha256) or within `phash_distance` bits of one, or a normalised
question equal to a benchmark question that has at least `min_question_words` words (short generic
questions such as "How many objects are there?" are asked of many unrelated images; `word_count`
counts each CJK character as a word).

Both return (kept, removed, report); `removed` has `ingest.QUARANTINE_COLUMNS` and stage "dedup" or
"contamination", and its reason names the row or benchmark item matched.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field

from ..paths import UnsafePathError, resolve_image_path
from ..settings import Strict
from .ingest import QUARANTINE_COLUMNS, ImageLimits, probe_image
from .readers import read_annotations

__all__ = ["BenchmarkIndex", "BenchmarkRef", "ContaminationSettings", "DedupSettings", "dedup", "guard",
           "hamming", "load_benchmarks", "normalize_question", "phash_array", "word_count"]


class DedupSettings(Strict):
    enabled: bool = True
    phash_distance: int = Field(4, ge=0, le=32)  # bits (of 64) within which two images are the same


class BenchmarkRef(Strict):
    name: str                      # in reasons and reports: "math-v testmini"
    annotations: str               # the benchmark's annotation file (any format `readers` knows)
    image_root: str | None = None  # default: the annotation file's folder
    format: str = "auto"
    required: bool = True          # False: a missing annotation file is skipped (and reported)


class ContaminationSettings(Strict):
    enabled: bool = True
    benchmarks: list[BenchmarkRef] = Field(default_factory=list)
    phash_distance: int = Field(4, ge=0, le=32)
    min_question_words: int = Field(12, ge=1)  # shorter benchmark questions (generic chart questions) never match on text alone


# ------------------------------------------------------------------------------------ normalisation

_IMAGE_TOKENS = re.compile(r"<image\d*>", re.IGNORECASE)
_HINT_QUERY = re.compile(r"^\s*(?:hint:.*?\n\s*)?question:\s*(.*)$", re.IGNORECASE | re.DOTALL)
_CHOICES = re.compile(r"\n\s*(?:choices|options):.*$", re.IGNORECASE | re.DOTALL)
# a separator between digits (3.5, 1,000, 1/2, 10:30) or a minus sign, kept; any other non-word char
_TOKEN = re.compile(r"(?<=\d)[.,/:](?=\d)|(?<![\w.])-(?=\d)|([^\w\s]|_)")


def _drop_punct(match: re.Match) -> str:
    char = match.group(1)
    if char is None:
        return match.group(0)  # inside a number
    return " " if unicodedata.category(char).startswith("P") else char  # math symbols (+ = <) stay


def normalize_question(text) -> str:
    """The comparison form of a question:
    1. `<image>` / `<image1>` tokens removed (Unicode NFKC first);
    2. a MathVista query ("Hint: ...\\nQuestion: ...\\nChoices: ...") reduced to its question part
       (only when the text starts with "Hint:" or "Question:"); a trailing "Choices:" block is cut;
    3. punctuation (Unicode category P*, and `_`) becomes a space, except `. , / :` between two digits
       and a minus sign before a digit; math symbols such as `+ = <` are kept;
    4. lower-cased (casefold), whitespace collapsed. None/NaN give ""."""
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return ""
    text = _IMAGE_TOKENS.sub(" ", unicodedata.normalize("NFKC", str(text))).strip()
    match = _HINT_QUERY.match(text)
    if match:
        text = match.group(1)
    text = _CHOICES.sub("", text)
    text = _TOKEN.sub(_drop_punct, text)
    return " ".join(text.casefold().split())


_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORDS = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")


def word_count(normalised: str) -> int:
    """Words of a normalised question: whitespace-separated tokens, each CJK character one word
    (Chinese questions have no spaces)."""
    return len(_WORDS.findall(normalised))


def _choices_key(value) -> str:
    """Normalised choices (a JSON list string in the manifest, or a list) as one comparable string."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip().startswith("[") else [value]
        except ValueError:
            value = [value]
    return "\x1f".join(normalize_question(v) for v in value)


# ------------------------------------------------------------------------------------------ hashing

_POPCOUNT8 = np.array([i.bit_count() for i in range(256)], dtype=np.uint8)


def _popcount_lut(x: np.ndarray) -> np.ndarray:
    """Bits set per uint64, through a byte lookup table (numpy without `bitwise_count`)."""
    x = np.asarray(x, dtype=np.uint64)
    flat = np.ascontiguousarray(x).reshape(-1)
    return _POPCOUNT8[flat.view(np.uint8)].reshape(-1, 8).sum(axis=1, dtype=np.uint8).reshape(x.shape)


def hamming(a, b) -> np.ndarray:
    """Bitwise Hamming distance between uint64 hashes (broadcast); uint8 values 0..64."""
    x = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    return np.bitwise_count(x) if hasattr(np, "bitwise_count") else _popcount_lut(x)


def phash_array(values) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 hashes, valid mask) from `imagehash` hex strings; null or unparsable entries are invalid."""
    values = list(values)
    out = np.zeros(len(values), dtype=np.uint64)
    ok = np.zeros(len(values), dtype=bool)
    for i, value in enumerate(values):
        if isinstance(value, str) and 0 < len(value) <= 16:
            try:
                out[i] = int(value, 16)
            except ValueError:
                continue
            ok[i] = True
    return out, ok


def _sha_list(series: pd.Series) -> list[str | None]:
    return [v if isinstance(v, str) and v else None for v in series]


def _split(manifest: pd.DataFrame, removed: dict[int, str], stage: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, quarantine) for positional row numbers -> reason, both in manifest order; the
    quarantine's `record` is the removed row as JSON (at most 2000 characters)."""
    mask = np.zeros(len(manifest), dtype=bool)
    order = sorted(removed)
    mask[order] = True
    rows = manifest.iloc[order]
    data = {col: rows[col].tolist() if col in rows.columns else [None] * len(rows)
            for col in ("id", "dataset", "source", "origin")}
    data.update(stage=[stage] * len(rows), reason=[removed[i] for i in order],
                record=[json.dumps(r, ensure_ascii=False, default=str)[:2000] for r in rows.to_dict("records")])
    table = pd.DataFrame(data, columns=QUARANTINE_COLUMNS, dtype=object)
    return manifest.iloc[~mask].reset_index(drop=True), table


# -------------------------------------------------------------------------------------------- dedup

def dedup(manifest: pd.DataFrame, settings: DedupSettings | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(kept, removed, report): a row is removed when an earlier kept row has the same normalised
    question and choices and the same image (equal sha256, or phash within `phash_distance` bits);
    the reason names that row: "duplicate of <id> (<source>): same image (exact)" or
    "... same image (phash distance 3)". A near match names the closest earlier kept row."""
    settings = settings or DedupSettings()
    report = {"enabled": settings.enabled, "phash_distance": settings.phash_distance, "rows_in": len(manifest),
              "removed": 0, "removed_exact": 0, "removed_near": 0, "cross_source": 0, "by_source": {}}
    if not settings.enabled or manifest.empty:
        report["rows_kept"] = len(manifest)
        return manifest.reset_index(drop=True), pd.DataFrame(columns=QUARANTINE_COLUMNS), report
    questions = [normalize_question(q) for q in manifest["question"]]
    choices = manifest["choices"] if "choices" in manifest.columns else [None] * len(manifest)
    keys = [q + "\x1e" + _choices_key(c) for q, c in zip(questions, choices)]
    codes, _ = pd.factorize(pd.Series(keys), sort=False)
    order = np.argsort(codes, kind="stable")  # groups together, manifest order inside each group
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    shas = _sha_list(manifest["image_sha256"])
    phashes, has_phash = phash_array(manifest["image_phash"])
    ids, sources = manifest["id"].astype(str).tolist(), manifest["source"].astype(str).tolist()
    removed: dict[int, str] = {}
    for group in np.split(order, bounds):
        if len(group) < 2:
            continue
        seen_sha: dict[str, int] = {}
        kept_rows = np.empty(len(group), dtype=np.int64)      # rows kept so far that have a phash
        kept_hash = np.empty(len(group), dtype=np.uint64)
        n = 0
        for row in group.tolist():
            sha, match, how = shas[row], None, None
            if sha is None:
                continue
            if sha in seen_sha:
                match, how = seen_sha[sha], "exact"
            elif has_phash[row] and n:
                dist = hamming(kept_hash[:n], phashes[row])
                best = int(np.argmin(dist))
                if dist[best] <= settings.phash_distance:
                    match, how = int(kept_rows[best]), f"phash distance {int(dist[best])}"
            if match is None:
                seen_sha[sha] = row
                if has_phash[row]:
                    kept_rows[n], kept_hash[n] = row, phashes[row]
                    n += 1
                continue
            removed[row] = f"duplicate of {ids[match]} ({sources[match]}): same image ({how})"
            report["removed_exact" if how == "exact" else "removed_near"] += 1
            report["cross_source"] += sources[match] != sources[row]
            report["by_source"][sources[row]] = report["by_source"].get(sources[row], 0) + 1
    kept, quarantine = _split(manifest, removed, "dedup")
    report.update(removed=len(removed), rows_kept=len(kept))
    return kept, quarantine, report


# ------------------------------------------------------------------------------------ contamination

@dataclass
class BenchmarkIndex:
    """What the guard compares against: benchmark image hashes and normalised questions, each with
    the (benchmark name, item id) it came from (the first item when several share one)."""

    sha: dict[str, tuple[str, str]] = field(default_factory=dict)
    phash: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    phash_refs: list[tuple[str, str]] = field(default_factory=list)
    questions: dict[str, tuple[str, str]] = field(default_factory=dict)
    report: dict = field(default_factory=dict)  # per benchmark: items, images indexed/missing, skipped


def load_benchmarks(settings: ContaminationSettings, limits: ImageLimits | None = None) -> BenchmarkIndex:
    """Index every configured benchmark: its normalised questions and, for the images present on
    disk, sha256 and phash. A missing annotation file raises ValueError naming the file and its
    config key, unless the ref says `required: false` (then it is skipped and reported)."""
    limits = limits or ImageLimits()
    index, hashes = BenchmarkIndex(), []
    if not settings.enabled:
        return index
    for i, ref in enumerate(settings.benchmarks):
        path = Path(ref.annotations)
        entry = {"items": 0, "unreadable": 0, "questions": 0, "images_indexed": 0, "images_missing": 0,
                 "images_failed": 0, "skipped": None}
        index.report[ref.name] = entry
        if not path.exists():
            if ref.required:
                raise ValueError(f"data.contamination.benchmarks[{i}].annotations: benchmark {ref.name!r} "
                                 f"annotation file {path} does not exist (set required: false to skip it "
                                 f"where it is absent)")
            entry["skipped"] = f"annotation file {path} does not exist"
            continue
        root = Path(ref.image_root) if ref.image_root else path.parent
        for item in read_annotations(path, ref.format):
            if item.record is None:
                entry["unreadable"] += 1
                continue
            entry["items"] += 1
            rec, ref_id = item.record, (ref.name, str(item.record["id"]))
            question = normalize_question(rec.get("question"))
            if question:
                index.questions.setdefault(question, ref_id)
                entry["questions"] += 1
            try:
                image = resolve_image_path(root, rec.get("image") or "")
            except UnsafePathError:
                entry["images_failed"] += 1
                continue
            if not image.is_file():
                entry["images_missing"] += 1
                continue
            info = probe_image(image, limits)
            if info.sha256:
                index.sha.setdefault(info.sha256, ref_id)
            if info.phash:
                hashes.append(info.phash)
                index.phash_refs.append(ref_id)
            entry["images_indexed" if info.ok else "images_failed"] += 1
    index.phash = phash_array(hashes)[0]
    return index


def _nearest(hashes: np.ndarray, targets: np.ndarray, chunk_cells: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """(min distance, argmin) of each hash against all targets, in chunks of at most chunk_cells."""
    dist = np.full(len(hashes), 255, dtype=np.uint8)
    arg = np.zeros(len(hashes), dtype=np.int64)
    if len(targets) == 0:
        return dist, arg
    step = max(1, chunk_cells // len(targets))
    for start in range(0, len(hashes), step):
        block = hamming(hashes[start:start + step, None], targets[None, :])
        arg[start:start + step] = block.argmin(axis=1)
        dist[start:start + step] = block[np.arange(len(block)), arg[start:start + step]]
    return dist, arg


def guard(manifest: pd.DataFrame, index: BenchmarkIndex,
          settings: ContaminationSettings | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(kept, removed, report): training rows whose image equals (sha256) or is within
    `phash_distance` of a benchmark image, or whose normalised question equals a benchmark question of
    at least `min_question_words` words, are removed. Checks in that order; the first that matches
    gives the reason: "contamination: image matches <benchmark> <id> (exact)" / "(phash distance 2)",
    or "contamination: question matches <benchmark> <id>"."""
    settings = settings or ContaminationSettings()
    kinds = {"image_exact": 0, "image_near": 0, "question": 0}
    report = {"enabled": settings.enabled, "rows_in": len(manifest), "removed": 0, "by_benchmark": {},
              "by_kind": kinds, "benchmarks": {k: dict(v) for k, v in index.report.items()}, "images_indexed": len(index.sha),
              "questions_indexed": len(index.questions)}
    if not settings.enabled or manifest.empty:
        report["rows_kept"] = len(manifest)
        return manifest.reset_index(drop=True), pd.DataFrame(columns=QUARANTINE_COLUMNS), report
    shas = _sha_list(manifest["image_sha256"])
    phashes, has_phash = phash_array(manifest["image_phash"])
    unique, inverse = np.unique(phashes[has_phash], return_inverse=True)  # many rows share one image
    near_dist, near_arg = np.full(len(manifest), 255, np.uint8), np.zeros(len(manifest), np.int64)
    dist, arg = _nearest(unique, index.phash)
    near_dist[has_phash], near_arg[has_phash] = dist[inverse], arg[inverse]
    removed: dict[int, str] = {}
    for row, (sha, question) in enumerate(zip(shas, manifest["question"])):
        if sha is not None and sha in index.sha:
            (bench, bid), kind, how = index.sha[sha], "image_exact", "exact"
        elif near_dist[row] <= settings.phash_distance:
            (bench, bid), kind = index.phash_refs[near_arg[row]], "image_near"
            how = f"phash distance {int(near_dist[row])}"
        else:
            text = normalize_question(question)
            if word_count(text) < settings.min_question_words or text not in index.questions:
                continue
            (bench, bid), kind = index.questions[text], "question"
        if kind == "question":
            removed[row] = f"contamination: question matches {bench} {bid}"
        else:
            removed[row] = f"contamination: image matches {bench} {bid} ({how})"
        kinds[kind] += 1
        report["by_benchmark"][bench] = report["by_benchmark"].get(bench, 0) + 1
    kept, quarantine = _split(manifest, removed, "contamination")
    report.update(removed=len(removed), rows_kept=len(kept))
    return kept, quarantine, report
