"""Streaming readers for annotation files, one `Item` per record with where it came from.

Formats (`detect_format` names them): LLaVA conversation JSON (`llava_json`: a list, an object
holding one list of records under one key, or an `{id: record}` mapping) and JSON Lines
(`llava_jsonl`), MathVista (`mathvista`: pid -> record), Math-V (`mathv`: JSON Lines), HF `datasets`
saved to disk (`hf_disk`), parquet files or a folder of them (`parquet`) and a CSV next to an image
folder (`csv_folder`). Every record becomes one flat record (`normalize.FLAT_KEYS`).

A fault of one record (bad JSON line, not an object, missing question, ...) is an `Item` with
`error` set; the rest of the file still reads. A fault of the file (missing, empty, not UTF-8,
truncated or invalid whole-file JSON, an unknown layout) raises `AnnotationError` whose message
starts with the file path (and line when known). A fault found while streaming (invalid or
truncated JSON in a list of records, a bad byte further down) is raised after the records before it
were yielded: those stay yielded, and ingest keeps them (and reports the file's fault). An object-
shaped LLaVA JSON is parsed through once before its records (to find its one list of records), so
a fault in it is raised before any record.

Memory stays flat: whole-file JSON goes through ijson 64 KiB of whole lines at a time, JSON Lines
and CSV a line at a time, parquet and HF datasets a record batch at a time.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ijson

from .jsonstream import (
    CHUNK,
    AnnotationError,
    first_byte,
    json_layout,
    lines,
    open_binary,
    stream_json,
)
from .normalize import FLAT_KEYS, RecordError, normalize_flat, normalize_llava

__all__ = ["FLAT_KEYS", "FORMATS", "AnnotationError", "Item", "detect_format", "read_annotations"]

FORMATS = ("llava_json", "llava_jsonl", "mathvista", "mathv", "hf_disk", "parquet", "csv_folder")
RAW_LIMIT = 2000


@dataclass
class Item:
    where: str            # "file.jsonl:17", "file.json:#3:line 5", "data.csv:5", "dir[train]:#12", "f.parquet:#12"
    record: dict | None   # the flat record when it could be read and normalised
    error: str | None     # why this one record is bad (its own fault, never the file's)
    raw: str | None       # the record's raw text/JSON, at most 2000 characters
    rid: str | None = None  # a bad record's own id, when it has one (users look quarantined records up by it)


def _record_id(obj: Any) -> str | None:
    if isinstance(obj, dict):
        for key in ("id", "pid"):
            value = obj.get(key)
            if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
                return str(value).strip()
    return None


def _raw(obj: Any) -> str:
    if isinstance(obj, str):
        return obj[:RAW_LIMIT]

    def default(o: Any) -> str:
        return f"<{len(o)} bytes>" if isinstance(o, (bytes, bytearray)) else str(o)

    return json.dumps(obj, ensure_ascii=False, default=default)[:RAW_LIMIT]


def _item(where: str, obj: Any, normalise: Callable[[Any], dict], raw: str | None = None) -> Item:
    try:
        record = normalise(obj)
    except RecordError as exc:
        return Item(where, None, str(exc), raw if raw is not None else _raw(obj), _record_id(obj))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return Item(where, None, f"wrong schema: {type(exc).__name__}: {exc}",
                    raw if raw is not None else _raw(obj), _record_id(obj))
    return Item(where, record, None, raw if raw is not None else _raw(obj))


# ---------------------------------------------------------------------------------------- JSON Lines

def _jsonl(path: Path, normalise: Callable[[Any], dict]) -> Iterator[Item]:
    for lineno, line, _ in lines(path):
        if not line.strip():
            continue
        text = line.decode("utf-8").rstrip("\r\n")
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            yield Item(where, None, f"invalid JSON: {exc.msg} at column {exc.colno}", text[:RAW_LIMIT])
            continue
        yield _item(where, obj, normalise, text[:RAW_LIMIT])


# ------------------------------------------------------------------------------------- whole-file JSON

def _whole_json(path: Path, layout: str, prefix: str, key_index: int, make_item: Callable[[str, Any], Item],
                first_check: Callable[[Any], None] | None = None) -> Iterator[Item]:
    for index, line, value in stream_json(path, layout, prefix, key_index):
        if index == 0 and first_check is not None:
            first_check(value)
        yield make_item(f"{path}:#{index}" + (f":line {line}" if line is not None else ""), value)


def _llava_json(path: Path) -> Iterator[Item]:
    layout, prefix, key_index = json_layout(path)

    def make_item(where: str, obj: Any) -> Item:
        if layout == "map":
            key, obj = obj
            if isinstance(obj, dict) and "id" not in obj:
                obj = {"id": key, **obj}
        return _item(where, obj, normalize_llava)

    def first_check(obj: Any) -> None:
        if layout == "map" and not (isinstance(obj[1], dict) and "conversations" in obj[1]):
            raise AnnotationError(f"{path}: an object of objects without 'conversations' is not LLaVA "
                                  f"JSON (MathVista? pass fmt='mathvista')")

    return _whole_json(path, layout, prefix, key_index, make_item, first_check)


def _mathvista(path: Path) -> Iterator[Item]:
    if first_byte(path) != b"{":
        raise AnnotationError(f"{path}: MathVista annotations are a JSON object pid -> record")

    def make_item(where: str, pair: Any) -> Item:
        pid, obj = pair
        if isinstance(obj, dict) and _blank(obj.get("pid")) and _blank(obj.get("id")):
            obj = {"pid": pid, **obj}
        return _item(where, obj, normalize_flat)

    return _whole_json(path, "map", "", 0, make_item)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


# --------------------------------------------------------------------------------------------- tables

def _table_row(row: dict) -> dict:
    if row.get("conversations") is not None:
        return normalize_llava(row)
    return normalize_flat(row)


def _batches_items(label: str, batches: Iterator[Any]) -> Iterator[Item]:
    index = 0
    for batch in batches:
        for row in batch.to_pylist():
            yield _item(f"{label}:#{index}", row, _table_row)
            index += 1


def _parquet(path: Path) -> Iterator[Item]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise AnnotationError(f"{path}: no .parquet files in the folder")
    for file in files:
        try:
            batches = pq.ParquetFile(file).iter_batches(batch_size=1024)
            yield from _batches_items(str(file), batches)
        except (pa.ArrowException, OSError) as exc:
            raise AnnotationError(f"{file}: not a readable parquet file: {exc}") from None


def _arrow_files(folder: Path) -> list[Path]:
    state = folder / "state.json"
    if state.is_file():
        try:
            files = [folder / f["filename"] for f in json.loads(state.read_text("utf-8-sig"))["_data_files"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise AnnotationError(f"{state}: not a datasets state file: {exc}") from None
    else:
        files = sorted(folder.glob("*.arrow"))
    if not files:
        raise AnnotationError(f"{folder}: no arrow data files (not a datasets save_to_disk folder?)")
    return files


def _hf_disk(path: Path) -> Iterator[Item]:
    dict_file = path / "dataset_dict.json"
    if dict_file.is_file():
        try:
            splits = json.loads(dict_file.read_text("utf-8-sig"))["splits"]
        except (ValueError, KeyError, TypeError) as exc:
            raise AnnotationError(f"{dict_file}: not a DatasetDict file: {exc}") from None
        parts = [(f"{path}[{split}]", path / split) for split in splits]
    else:
        parts = [(str(path), path)]
    for label, folder in parts:
        yield from _batches_items(label, _arrow_batches(_arrow_files(folder)))


def _arrow_batches(files: list[Path]) -> Iterator[Any]:
    """Record batches of the arrow files `save_to_disk` writes (IPC streams), memory-mapped."""
    import pyarrow as pa

    for file in files:
        try:
            yield from pa.ipc.open_stream(pa.memory_map(str(file)))
        except (pa.ArrowException, OSError) as exc:
            raise AnnotationError(f"{file}: not a readable arrow stream file: {exc}") from None


# ------------------------------------------------------------------------------------------------ CSV

def _csv_file(path: Path) -> Path:
    if path.is_dir():
        found = sorted(path.glob("*.csv"))
        if len(found) != 1:
            raise AnnotationError(f"{path}: expected one .csv file in the folder, found {len(found)}")
        return found[0]
    return path


def _csv(path: Path) -> Iterator[Item]:
    path = _csv_file(path)
    for _ in lines(path):  # refuses a missing, empty or non-UTF-8 file, with the line of the bad byte
        pass
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except csv.Error as exc:
            raise AnnotationError(f"{path}: unreadable CSV header at line 1: {exc}") from None
        missing = [c for c in ("image", "question", "answer") if c not in header]
        if missing:
            raise AnnotationError(f"{path}: the CSV header (line 1) lacks {', '.join(missing)} (has {', '.join(header)})")
        last = reader.line_num
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise AnnotationError(f"{path}: unreadable CSV at line {reader.line_num}: {exc}") from None
            lineno, last = last + 1, reader.line_num
            if not any(c.strip() for c in cells):
                continue
            where = f"{path}:{lineno}"
            row = dict(zip(header, cells))
            raw = _raw(row)
            if len(cells) != len(header):
                yield Item(where, None, f"row has {len(cells)} fields, the header {len(header)}", raw)
                continue
            if _blank(row.get("id")):
                row["id"] = f"{path.stem}-{lineno}"
            yield _item(where, row, lambda r: normalize_flat(r, split_bar=True), raw)


# ---------------------------------------------------------------------------------------- detection

def _head(path: Path, n: int) -> list[Any]:
    """The first n non-blank lines parsed as JSON (None for one that is not JSON or too long)."""
    found: list[Any] = []
    for _, chunk, whole in lines(path, CHUNK):
        if chunk.strip():
            try:
                found.append(json.loads(chunk.decode("utf-8")) if whole else None)
            except ValueError:
                found.append(None)
            if len(found) == n:
                break
    return found


def _peek_mapping(path: Path) -> bool:
    """Whether a JSON object's first value is a MathVista-style record (pid/query/question fields)."""
    with open_binary(path) as f:
        if f.read(3) != codecs.BOM_UTF8:
            f.seek(0)
        first_key, fields = None, set()
        try:
            for n, (prefix, event, value) in enumerate(ijson.parse(f, use_float=True)):
                if n > 5000:
                    break
                if first_key is None:
                    if prefix == "" and event == "map_key":
                        first_key = value
                    continue
                if prefix == first_key:
                    if event == "map_key":
                        fields.add(value)
                    elif event != "start_map":
                        break
        except ijson.JSONError:
            return False
    return "conversations" not in fields and "question" in fields and bool(
        fields & {"pid", "query", "question_type", "answer_type"})


def detect_format(path: str | Path) -> str:
    """The format of an annotation file or folder, by extension and a peek at the content; raises
    AnnotationError naming the path when it cannot tell."""
    path = Path(path)
    if not path.exists():
        raise AnnotationError(f"{path}: file not found")
    if path.is_dir():
        if any((path / n).is_file() for n in ("dataset_dict.json", "dataset_info.json", "state.json")):
            return "hf_disk"
        if any(path.glob("*.parquet")):
            return "parquet"
        if any(path.glob("*.csv")):
            return "csv_folder"
        raise AnnotationError(f"{path}: a folder with no dataset_info.json, dataset_dict.json, .parquet or .csv file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix == ".csv":
        return "csv_folder"
    head = _head(path, 2) if suffix in (".json", ".jsonl", ".ndjson") else []
    if suffix in (".jsonl", ".ndjson") or (len(head) == 2 and all(isinstance(h, dict) for h in head)):
        mathv = bool(head) and isinstance(head[0], dict) and "options" in head[0] and "subject" in head[0]
        return "mathv" if mathv else "llava_jsonl"  # (a .json file of one object a line is JSON Lines)
    if suffix == ".json":
        return "mathvista" if first_byte(path) == b"{" and _peek_mapping(path) else "llava_json"
    raise AnnotationError(f"{path}: cannot tell the annotation format from the extension {suffix or '(none)'!r}; "
                          f"pass fmt= one of {', '.join(FORMATS)}")


_READERS: dict[str, Callable[[Path], Iterator[Item]]] = {
    "llava_json": _llava_json,
    "llava_jsonl": lambda p: _jsonl(p, normalize_llava),
    "mathvista": _mathvista,
    "mathv": lambda p: _jsonl(p, normalize_flat),
    "hf_disk": _hf_disk,
    "parquet": _parquet,
    "csv_folder": _csv,
}


def read_annotations(path: str | Path, fmt: str = "auto") -> Iterator[Item]:
    """One `Item` per record of an annotation file or folder, streamed. The path, the format and
    (LLaVA JSON) the layout are checked now (AnnotationError for a missing file, an unknown format or
    layout); faults found while reading raise AnnotationError from the iterator, after the records
    before them were yielded."""
    path = Path(path)
    if fmt == "auto":
        fmt = detect_format(path)
    elif fmt not in _READERS:
        raise AnnotationError(f"{path}: unknown annotation format {fmt!r}; one of {', '.join(FORMATS)}")
    elif not path.exists():
        raise AnnotationError(f"{path}: file not found")
    return _READERS[fmt](path)
