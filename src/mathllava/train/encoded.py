"""Encode a training set once, store it on disk, and read it back with no per-step work.

Per-step encoding (image decoding and resizing, tokenizing) in the training process held the
Trainer path to 0.56x a bare loop on an H200 (`../shared/reference/gpu-measurements.md`); encoding
once took it to ~0.94x. So every record is tokenized and every distinct image resized and cropped
once, in parallel worker processes, into flat numpy files that training memory-maps:

    <cache>/<key>/ids.bin, labels.bin   int32 tokens of all records, back to back
                   offsets.npy           int64, record i is ids[offsets[i]:offsets[i+1]]
                   image_index.npy       int32, the row of record i's image in pixels.npy (-1: none)
                   pixels.npy            the processor's resized and cropped images, before rescaling
                                         and normalisation (uint8 for 8-bit processors; 4x smaller
                                         than float32, and normalised on the GPU)
                   meta.json             written last: the cache is complete when it exists

The key digests the data file, the image files' sizes and times, the base's processor files and
`max_length`, so any change re-encodes and an unchanged rerun (or a resumed run) reuses the cache.
Memory maps give zero-copy random access shared by dataloader workers; Arrow (`datasets`) was
measured at 0.6 ms per 336 px image with an int64 copy, 10x slower than this.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..paths import UnsafePathError, resolve_image_path
from .data import DataError, encode_conversation, pixel_normalizer, raw_pixels

FORMAT = 1
PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json",
                   "chat_template.jinja", "chat_template.json", "special_tokens_map.json")
INLINE_BELOW = 20_000  # records; smaller sets are encoded in this process (workers take seconds to start)


@dataclass
class EncodeStats:
    records: int = 0
    truncated: int = 0
    dropped: int = 0
    images: int = 0
    tokens: int = 0
    dropped_ids: list[str] = field(default_factory=list)


def iter_chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def file_digest(path: Path) -> str:
    """sha256 of a file, read once per (path, size, mtime): the run identity and the cache key both
    need the training file's digest, and it can be hundreds of MB."""
    st = Path(path).stat()
    return _digest_of(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=64)
def _digest_of(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(data_path: Path, image_paths: list[Path], image_root: Path, model_dir: Path, max_length: int) -> str:
    """Digest of what the encoding depends on. Images count by their path under the image root, size
    and modification time, so a copy of the same folder (ZenML unpacks artifacts afresh) hits."""
    h = hashlib.sha256(f"format {FORMAT} max_length {max_length}\n".encode())
    h.update(file_digest(data_path).encode())
    for name in PROCESSOR_FILES:
        if (model_dir / name).is_file():
            h.update(f"{name}:{file_digest(model_dir / name)}".encode())
    root = image_root.resolve()
    for path in image_paths:
        st = path.stat()
        h.update(f"{path.relative_to(root)}:{st.st_size}:{int(st.st_mtime)}\n".encode())
    return h.hexdigest()[:20]   # pragma: no mutate (the folder name's length: any prefix length keys the same)


def prune(cache_root: Path, keep: int, current: Path) -> list[str]:
    """Delete all but the `keep` most recently used encodings (the current one always stays)."""
    entries = [p for p in cache_root.iterdir() if (p / "meta.json").is_file() and p != current]
    entries.sort(key=lambda p: (p / "meta.json").stat().st_mtime, reverse=True)
    removed = []
    for path in entries[max(0, keep - 1):]:
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    return removed


class EncodedData:
    """Read-only view of an encoded training set (memory-mapped)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.meta = json.loads((self.root / "meta.json").read_text(encoding="utf-8"))
        self.offsets = np.load(self.root / "offsets.npy")
        self.image_index = np.load(self.root / "image_index.npy")
        total = int(self.offsets[-1])
        self.ids = np.memmap(self.root / "ids.bin", dtype=np.int32, mode="r", shape=(total,)) if total else \
            np.zeros(0, np.int32)
        self.labels = np.memmap(self.root / "labels.bin", dtype=np.int32, mode="r", shape=(total,)) if total else \
            np.zeros(0, np.int32)
        self.pixels = np.load(self.root / "pixels.npy", mmap_mode="r") if self.meta["images"] else None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __getitem__(self, i: int) -> dict[str, Any]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        row = int(self.image_index[i])
        return {"input_ids": self.ids[a:b], "labels": self.labels[a:b],
                "pixels": None if row < 0 else self.pixels[row]}


# ---------------------------------------------------------------- workers
@lru_cache(maxsize=2)
def _processor(model_dir: str):
    from ..llava import load_processor

    return load_processor(model_dir)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one core per worker: no oversubscription


def _encode_records(model_dir: str, items: list[tuple[list, bool]], image_tokens: int, max_length: int) -> list:
    processor = _processor(model_dir)
    out = []
    for conversations, with_image in items:
        enc = encode_conversation(processor, conversations, with_image, image_tokens, max_length)
        out.append((np.asarray(enc.input_ids, np.int32), np.asarray(enc.labels, np.int32), enc.status))
    return out


def _encode_images(model_dir: str, paths: list[str]) -> list:
    from PIL import Image

    processor = _processor(model_dir)
    out = []
    for path in paths:
        try:
            with Image.open(path) as img:
                out.append(raw_pixels(processor, img.convert("RGB")))
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: image cannot be read: {err}") from err
    return out


def _run(fn, model_dir: str, chunks: list[list], workers: int, desc: str, extra: tuple = (), progress: bool = True):
    """fn(model_dir, chunk, *extra) over chunks, in order, inline or in a spawn-started process pool."""
    from tqdm import tqdm

    bar = tqdm(total=sum(len(c) for c in chunks), desc=desc, unit="item", disable=not progress, dynamic_ncols=True)
    try:
        if workers <= 0:
            for chunk in chunks:
                yield from fn(model_dir, chunk, *extra)
                bar.update(len(chunk))
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker) as pool:
            for chunk, result in zip(chunks, pool.map(fn, [model_dir] * len(chunks), chunks,
                                                      *[[e] * len(chunks) for e in extra])):
                yield from result
                bar.update(len(chunk))
    finally:
        bar.close()


# ---------------------------------------------------------------- building
def _image_paths(records: list[dict], image_root: Path, data_path: Path) -> list[Path | None]:
    paths: list[Path | None] = []
    for i, record in enumerate(records):
        if not record.get("image"):
            paths.append(None)
            continue
        try:
            path = resolve_image_path(image_root, record["image"])
        except UnsafePathError as err:
            raise DataError(f"{data_path}: record {i} ({record.get('id')}): {err}") from err
        if not path.is_file():
            raise DataError(f"{data_path}: record {i} ({record.get('id')}): image {record['image']!r} "
                            f"not found under {image_root}")
        paths.append(path)
    return paths


def ensure_encoded(data_path: str | Path, records: list[dict], image_root: str | Path, model_dir: str | Path,
                   max_length: int, cache_root: str | Path, workers: int | None = None,
                   progress: bool = True, keep: int = 3) -> EncodedData:
    """The encoded set for these records, from the cache when it holds one, else built now (then
    moved into place in one rename, so a reader never sees half a cache). The cache keeps the
    `keep` most recently used encodings."""
    data_path, image_root, model_dir = Path(data_path), Path(image_root), Path(model_dir)
    if any(r.get("image") for r in records) and not image_root.is_dir():
        raise DataError(f"image root {image_root} is not a directory")
    paths = _image_paths(records, image_root, data_path)
    unique = sorted({p for p in paths if p is not None})
    target = Path(cache_root) / cache_key(data_path, unique, image_root, model_dir, max_length)
    if (target / "meta.json").is_file():
        os.utime(target / "meta.json")  # most recently used
        return EncodedData(target)
    if workers is None:
        workers = min(8, os.cpu_count() or 1) if len(records) >= INLINE_BELOW else 0
    tmp = target.with_name(f"{target.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _build(tmp, records, paths, unique, str(model_dir), max_length, workers, progress)
        try:
            tmp.rename(target)
        except OSError:  # another process finished the same cache first
            if not (target / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    prune(Path(cache_root), keep, target)
    return EncodedData(target)


def _build(out: Path, records: list[dict], paths: list, unique: list[Path], model_dir: str, max_length: int,
           workers: int, progress: bool) -> None:
    from PIL import Image

    from ..llava import image_token_count

    processor = _processor(model_dir)
    probe = raw_pixels(processor, Image.new("RGB", (64, 48), (255, 255, 255)))
    image_tokens = image_token_count(processor, probe)
    row_of = {p: i for i, p in enumerate(unique)}
    stats = EncodeStats(records=len(records), images=len(unique))
    pixels = None
    if unique:
        pixels = np.lib.format.open_memmap(out / "pixels.npy", mode="w+", dtype=probe.dtype,
                                           shape=(len(unique), *probe.shape))
        chunks = list(iter_chunks([str(p) for p in unique], 64))
        for i, array in enumerate(_run(_encode_images, model_dir, chunks, workers, "encode images",
                                       progress=progress)):
            if array.shape != probe.shape:
                raise DataError(f"{unique[i]}: the processor gives images of shape {array.shape}, others "
                                f"{probe.shape}; only fixed-size image processors (LLaVA-1.5) are supported")
            pixels[i] = array
        pixels.flush()
    else:
        np.save(out / "pixels.npy", np.zeros((0, *probe.shape), probe.dtype))
    offsets = [0]
    image_index = []
    items = [(r["conversations"], p is not None) for r, p in zip(records, paths)]
    chunks = list(iter_chunks(items, 256))
    with (out / "ids.bin").open("wb") as ids_f, (out / "labels.bin").open("wb") as labels_f:
        results = _run(_encode_records, model_dir, chunks, workers, "encode text", (image_tokens, max_length),
                       progress)
        for record, path, (ids, labels, status) in zip(records, paths, results):
            if status == "dropped":
                stats.dropped += 1
                if len(stats.dropped_ids) < 50:
                    stats.dropped_ids.append(str(record.get("id")))
                continue
            stats.truncated += status == "truncated"
            ids_f.write(ids.tobytes())
            labels_f.write(labels.tobytes())
            offsets.append(offsets[-1] + len(ids))
            image_index.append(-1 if path is None else row_of[path])
    stats.tokens = offsets[-1]
    if len(offsets) == 1:
        raise DataError(f"no record fits max_length {max_length} (all {len(records)} dropped)")
    np.save(out / "offsets.npy", np.asarray(offsets, np.int64))
    np.save(out / "image_index.npy", np.asarray(image_index, np.int32))
    meta = {"format": FORMAT, "samples": len(offsets) - 1, "image_tokens": image_tokens, "max_length": max_length,
            "normalizer": pixel_normalizer(processor), "pixel_dtype": str(probe.dtype),
            "pixel_shape": list(probe.shape), **asdict(stats)}
    (out / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
