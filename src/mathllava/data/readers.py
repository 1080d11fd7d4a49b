"""Streaming readers for annotation files, one `Item` per record with where it came from.

Formats (`detect_format` names them): LLaVA conversation JSON (`llava_json`: a list, an object
holding one list of records under one key, or an `{id: record}` mapping) and JSON Lines
(`llava_jsonl`), MathVista (`mathvista`: pid -> record), Math-V (`mathv`: JSON Lines), HF `datasets`
saved to disk (`hf_disk`), parquet files or a folder of them (`parquet`) and a CSV next to an image
folder (`csv_folder`). Every record becomes one flat record (`normalize.FLAT_KEYS`).

A fault of one record (bad JSON line, not an object, missing question, ...) is an `Item` with
`error` set; the rest of the file still reads. A fault of the file (missing, empty, not UTF-8,
truncated or invalid whole-file JSON, an unknown layout) raises `AnnotationError` whose message
starts with the file path (and line when known). A whole-file JSON fault is found while streaming:
records yielded before it stay yielded, and `ingest` keeps them (the file's fault is reported too).

Memory stays flat: JSON is streamed with ijson, fed line by line, JSONL/CSV line by line, parquet
and HF datasets by record batch.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import ijson

from .normalize import FLAT_KEYS, RecordError, normalize_flat, normalize_llava

__all__ = ["AnnotationError", "Item", "FORMATS", "FLAT_KEYS", "detect_format", "read_annotations"]

FORMATS = ("llava_json", "llava_jsonl", "mathvista", "mathv", "hf_disk", "parquet", "csv_folder")
RAW_LIMIT = 2000
_CHUNK = 1 << 16  # the longest piece of one line fed at once (a minified file is one long line)
_BOM = codecs.BOM_UTF8


class AnnotationError(ValueError):
    """The file itself cannot be read: message always starts with the file path (and line when known)."""


@dataclass
class Item:
    where: str            # "file.jsonl:17", "file.json:#3:line 5", "data.csv:5", "dir[train]:#12", "f.parquet:#12"
    record: dict | None   # the flat record when it could be read and normalised
    error: str | None     # why this one record is bad (its own fault, never the file's)
    raw: str | None       # the record's raw text/JSON, at most 2000 characters


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
        return Item(where, None, str(exc), raw if raw is not None else _raw(obj))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return Item(where, None, f"wrong schema: {type(exc).__name__}: {exc}",
                    raw if raw is not None else _raw(obj))
    return Item(where, record, None, raw if raw is not None else _raw(obj))


def _not_utf8(path: Path, line: int, byte: int) -> AnnotationError:
    return AnnotationError(f"{path}: not UTF-8 text (byte 0x{byte:02x} at line {line}); re-save the file as UTF-8")


def _lines(path: Path, limit: int | None = None) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, bytes, whole line?) for a text file: BOM dropped, UTF-8 checked as it goes,
    empty file refused. With `limit`, a longer line comes in pieces (whole=False but the last)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    lineno, content = 1, False
    with _open(path) as f:
        first = True
        while True:
            chunk = f.readline(limit) if limit else f.readline()
            if not chunk:
                break
            whole = chunk.endswith(b"\n") or not limit or len(chunk) < limit  # short: the file's last line
            if first and chunk.startswith(_BOM):
                chunk = chunk[len(_BOM):]
            first = False
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, lineno, exc.object[exc.start]) from None
            content = content or bool(chunk.strip())
            yield lineno, chunk, whole
            lineno += chunk.endswith(b"\n")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, lineno, exc.object[exc.start]) from None
    if not content:
        raise AnnotationError(f"{path}: file is empty")


def _open(path: Path):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise AnnotationError(f"{path}: file not found") from None
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot open: {exc.strerror or exc}") from None


# ---------------------------------------------------------------------------------------- JSON Lines

def _jsonl(path: Path, normalise: Callable[[Any], dict]) -> Iterator[Item]:
    for lineno, line, _ in _lines(path):
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

_STR = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_TOK = re.compile(r'[\[\]{}:,]|[^\s\[\]{}:,]+')
_BRACKET = re.compile(r'[\[\]{}]')


class _Starts:
    """The line each record starts on. JSON strings cannot hold a raw newline, so scanning brackets
    outside strings line by line follows the nesting exactly (for valid JSON; invalid JSON stops
    the ijson parse anyway). `layout`: "list" (top-level array), "map" (each value of the top-level
    object) or "wrapped" (the array under the top-level object's `key_index`-th key, 1-based)."""

    def __init__(self, layout: str, key_index: int = 0):
        self.layout, self.key_index = layout, key_index
        self.depth = 2 if layout == "wrapped" else 1
        self.stack: list[str] = []
        self.keys = 0
        self.after_colon = False
        self.in_records = layout != "wrapped"
        self.lost = False  # a line came in pieces: line numbers unknown from here on
        self.starts: deque[int] = deque()

    def feed(self, lines: str, lineno: int) -> None:
        """Scan whole lines of text, the first of them line `lineno`."""
        text, stack, pos, counted = _STR.sub('""', lines), self.stack, 0, 0
        while True:
            deep = len(stack) > self.depth
            match = (_BRACKET if deep else _TOK).search(text, pos)
            if match is None:
                return
            pos, tok = match.end(), match.group()
            if not deep:
                lineno += text.count("\n", counted, pos)
                counted = pos
            if deep:
                stack.append(tok) if tok in "[{" else stack.pop()
                continue
            at_records = len(stack) == self.depth and self.in_records
            starts_value = at_records and (self.layout != "map" or self.after_colon)
            if tok in "[{":
                if starts_value:
                    self.starts.append(lineno)
                if self.layout == "wrapped" and stack == ["{"] and tok == "[" and self.after_colon \
                        and self.keys == self.key_index:
                    self.in_records = True
                stack.append(tok)
            elif tok in "]}":
                if stack:
                    stack.pop()
                if self.layout == "wrapped" and len(stack) == 1:
                    self.in_records = False
            elif tok == ":":
                if stack == ["{"]:
                    self.keys += 1
            elif tok != "," and starts_value:
                self.starts.append(lineno)
            self.after_colon = tok == ":"

    def next_line(self) -> int | None:
        return None if self.lost or not self.starts else self.starts.popleft()


def _ijson_message(exc: Exception) -> str:
    text = exc.args[0] if exc.args else str(exc)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return str(text).strip().split("\n")[0]


def _first_byte(path: Path) -> bytes:
    for _, chunk, _ in _lines(path, _CHUNK):
        stripped = chunk.strip()
        if stripped:
            return stripped[:1]
    return b""  # pragma: no cover - _lines raises on an empty file


def _layout(path: Path) -> tuple[str, str, int]:
    """(layout, ijson prefix, key index) of a LLaVA JSON file, refusing anything that is not a list
    of records, an object holding exactly one list of records, or an {id: record} mapping."""
    first = _first_byte(path)
    if first == b"[":
        return "list", "item", 0
    if first != b"{":
        raise AnnotationError(f"{path}: expected a JSON list of records or an object holding one, "
                              f"found {first.decode('utf-8', 'replace')!r} at the start")
    keys: list[list] = []  # [name, kind] per top-level key; kinds: object, scalar, list, list_obj, list_other
    with _open(path) as f:
        if f.read(3) != _BOM:
            f.seek(0)
        try:
            for prefix, event, value in ijson.parse(f, use_float=True):
                if prefix == "" and event == "map_key":
                    keys.append([value, None])
                elif keys and keys[-1][1] is None and prefix == keys[-1][0]:
                    keys[-1][1] = {"start_map": "object", "start_array": "list"}.get(event, "scalar")
                elif keys and keys[-1][1] == "list" and prefix == f"{keys[-1][0]}.item":
                    keys[-1][1] = "list_obj" if event == "start_map" else "list_other"
        except ijson.JSONError:
            pass  # the streaming pass reports where the JSON breaks, with the line
    lists = [name for name, kind in keys if kind == "list_obj"] or \
            [name for name, kind in keys if kind == "list"]
    described = ", ".join(f"{name!r} ({kind or '?'})" for name, kind in keys[:10]) or "no keys"
    if len(lists) > 1:
        raise AnnotationError(f"{path}: the object holds {len(lists)} lists of records "
                              f"({', '.join(map(repr, lists))}); expected exactly one")
    if lists:
        name = lists[0]
        if "." in name:
            raise AnnotationError(f"{path}: the list of records is under key {name!r}; keys with a dot are not supported")
        return "wrapped", f"{name}.item", [k for k, _ in keys].index(name) + 1
    if keys and all(kind == "object" for _, kind in keys):
        return "map", "", 0
    raise AnnotationError(f"{path}: expected a JSON list of records, an object holding one list of "
                          f"records, or an {{id: record}} mapping; found an object with {described}")


def _blocks(path: Path) -> Iterator[tuple[int, bytes, str | None]]:
    """(first line number, bytes, text) of about 64 KiB of whole lines at a time (BOM dropped);
    text is None for a piece of a line longer than that."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    lineno, carry, first = 1, b"", True
    with _open(path) as f:
        while True:
            raw = f.read(_CHUNK)
            eof = len(raw) < _CHUNK
            if first and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            first, data = False, carry + raw
            newline = data.rfind(b"\n")
            if eof or newline < 0 or newline == len(data) - 1:
                block, carry = data, b""
            else:
                block, carry = data[:newline + 1], data[newline + 1:]
            if not block:
                return
            try:
                text = decoder.decode(block)
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, lineno + exc.object[:exc.start].count(b"\n"), exc.object[exc.start]) from None
            yield lineno, block, text if eof or block.endswith(b"\n") else None
            lineno += block.count(b"\n")
            if eof:
                return


def _json_fault_line(path: Path, layout: str, prefix: str) -> tuple[int, str]:
    """Where a whole-file JSON parse fails, found by parsing again one line at a time."""
    sink = ijson.sendable_list()
    coro = (ijson.kvitems_coro if layout == "map" else ijson.items_coro)(sink, prefix, use_float=True)
    lineno = 1
    for lineno, chunk, _ in _lines(path, _CHUNK):
        try:
            coro.send(chunk)
        except ijson.JSONError as exc:
            return lineno, _ijson_message(exc)
        del sink[:]
    try:
        coro.close()
    except ijson.JSONError as exc:
        return lineno, _ijson_message(exc) + " (the file ends early: truncated?)"
    return lineno, "unknown fault"  # pragma: no cover - the first parse failed, so this one does


def _whole_json(path: Path, layout: str, prefix: str, key_index: int,
                make_item: Callable[[str, Any], Item], first_check: Callable[[Any], None] | None = None
                ) -> Iterator[Item]:
    sink = ijson.sendable_list()
    coro = (ijson.kvitems_coro if layout == "map" else ijson.items_coro)(sink, prefix, use_float=True)
    starts = _Starts(layout, key_index)
    def blocks() -> Iterator[bytes | None]:
        for lineno, block, text in _blocks(path):
            if text is None:
                starts.lost = True
            elif not starts.lost:
                starts.feed(text, lineno)
            yield block
        yield None  # the end: ijson checks the document is complete

    index = 0
    for block in blocks():
        try:
            coro.send(block) if block is not None else coro.close()
        except ijson.JSONError:
            line, message = _json_fault_line(path, layout, prefix)
            raise AnnotationError(f"{path}: invalid JSON at line {line}: {message}") from None
        for obj in sink:
            if index == 0 and first_check is not None:
                first_check(obj)
            line = starts.next_line()
            yield make_item(f"{path}:#{index}" + (f":line {line}" if line is not None else ""), obj)
            index += 1
        del sink[:]


def _llava_json(path: Path) -> Iterator[Item]:
    layout, prefix, key_index = _layout(path)

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
    if _first_byte(path) != b"{":
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
    import pyarrow as pa

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
        files = _arrow_files(folder)

        def batches() -> Iterator[Any]:
            for file in files:
                try:
                    source = pa.memory_map(str(file))
                    try:
                        reader = pa.ipc.open_stream(source)
                    except pa.ArrowInvalid:
                        reader = pa.ipc.open_file(source)
                        yield from (reader.get_batch(i) for i in range(reader.num_record_batches))
                        continue
                    yield from reader
                except (pa.ArrowException, OSError) as exc:
                    raise AnnotationError(f"{file}: not a readable arrow file: {exc}") from None

        yield from _batches_items(label, batches())


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
    for _ in _lines(path):  # refuses a missing, empty or non-UTF-8 file, with the line of the bad byte
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

def _first_json_line(path: Path) -> Any:
    for _, line, _ in _lines(path):
        if line.strip():
            try:
                return json.loads(line.decode("utf-8"))
            except ValueError:
                return None
    return None  # pragma: no cover


def _peek_mapping(path: Path) -> bool:
    """Whether a JSON object's first value is a MathVista-style record (pid/query/question fields)."""
    with _open(path) as f:
        if f.read(3) != _BOM:
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
    if suffix in (".jsonl", ".ndjson"):
        first = _first_json_line(path)
        return "mathv" if isinstance(first, dict) and "options" in first and "subject" in first else "llava_jsonl"
    if suffix == ".json":
        return "mathvista" if _first_byte(path) == b"{" and _peek_mapping(path) else "llava_json"
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
    """One `Item` per record of an annotation file or folder, streamed. The path and format are
    checked now (AnnotationError for a missing file or an unknown format); faults found while reading
    raise AnnotationError from the iterator, after the records before them were yielded."""
    path = Path(path)
    if fmt == "auto":
        fmt = detect_format(path)
    elif fmt not in _READERS:
        raise AnnotationError(f"{path}: unknown annotation format {fmt!r}; one of {', '.join(FORMATS)}")
    elif not path.exists():
        raise AnnotationError(f"{path}: file not found")
    return _READERS[fmt](path)
