"""Streaming of text and whole-file JSON annotation files, for `readers`.

`lines` and `blocks` read a file in bytes with the UTF-8 BOM dropped and UTF-8 checked as they go
(a bad byte is an AnnotationError naming the line); `stream_json` feeds a whole-file JSON document
to ijson 64 KiB at a time and tells the line each record starts on (a scan of the brackets outside
strings, which is exact because a JSON string cannot hold a raw newline). A parse fault is located by
parsing again line by line, then the failing line byte by byte: only on that path does the file get
read more than once.
"""

from __future__ import annotations

import codecs
import re
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ijson

CHUNK = 1 << 16  # read size; a longer line comes in pieces (a minified file is one long line)
_BOM = codecs.BOM_UTF8
_CONTINUATION = bytes(range(0x80, 0xC0))  # UTF-8 bytes that do not start a character


class AnnotationError(ValueError):
    """The file itself cannot be read: message always starts with the file path (and line when known)."""


def _not_utf8(path: Path, line: int, byte: int) -> AnnotationError:
    return AnnotationError(f"{path}: not UTF-8 text (byte 0x{byte:02x} at line {line}); re-save the file as UTF-8")


def lines(path: Path, limit: int | None = None) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, bytes, whole line?) for a text file: BOM dropped, UTF-8 checked as it goes,
    empty file refused. With `limit`, a longer line comes in pieces (whole=False but the last)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    lineno, content = 1, False
    with open_binary(path) as f:
        first = True
        while True:
            chunk = f.readline(limit) if limit else f.readline()
            if not chunk:
                break
            whole = chunk.endswith(b"\n") or not limit or len(chunk) < limit  # short: the file's last line
            if first and chunk.startswith(_BOM):
                chunk = chunk[len(_BOM):]
            first = False
            try:  # a whole line or the file's end: no character may be left cut (a cut last line)
                decoder.decode(chunk, final=whole)
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


def open_binary(path: Path):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise AnnotationError(f"{path}: file not found") from None
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot open: {exc.strerror or exc}") from None


_STR = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_TOK = re.compile(r'[\[\]{}:,]|[^\s\[\]{}:,]+')
_BRACKET = re.compile(r'[\[\]{}]')


class _Starts:
    """The line each record starts on. JSON strings cannot hold a raw newline, so scanning brackets
    outside strings line by line follows the nesting exactly (for valid JSON; invalid JSON stops
    the ijson parse anyway). `layout`: "list" (top-level array), "map" (each value of the top-level
    object) or "wrapped" (the array under the top-level object's `key_index`-th key, 1-based)."""

    def __init__(self, layout: str, key_index: int = 0):  # pragma: no mutate (its one caller passes key_index)
        self.layout, self.key_index = layout, key_index
        self.depth = 2 if layout == "wrapped" else 1
        self.stack: list[str] = []
        self.keys = 0
        self.after_colon = False  # pragma: no mutate (set by the first token, before any value is read)
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
                # (both lines: starts past the last record are never read, so leaving in_records on is equivalent)
                if self.layout == "wrapped" and len(stack) == 1:  # pragma: no mutate (see above)
                    self.in_records = False  # pragma: no mutate (see above)
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


def first_byte(path: Path) -> bytes:
    for _, chunk, _ in lines(path, CHUNK):
        stripped = chunk.strip()
        if stripped:
            return stripped[:1]
    return b""  # pragma: no cover, no mutate (unreachable: lines() raises on an empty file)


def json_layout(path: Path) -> tuple[str, str, int]:
    """(layout, ijson prefix, key index) of a LLaVA JSON file, refusing anything that is not a list
    of records, an object holding exactly one list of records, or an {id: record} mapping. An object
    is parsed once through before its records are streamed (to find the one list of records), so
    a fault in it is raised before any record."""
    first = first_byte(path)
    if first == b"[":
        return "list", "item", 0
    if first != b"{":
        raise AnnotationError(f"{path}: expected a JSON list of records or an object holding one, "
                              f"found {first.decode('utf-8', 'replace')!r} at the start")
    keys: list[list] = []  # [name, kind] per top-level key; kinds: object, scalar, list, list_obj, list_other
    with open_binary(path) as f:
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
        except ijson.JSONError:  # the layout is unknown, so no record can be trusted: refuse now
            raise AnnotationError(f"{path}: invalid JSON at {_fault(path, 'list', 'item')}") from None
    if any(name == "conversations" for name, _ in keys):
        raise AnnotationError(f"{path}: the file is one record (it has 'conversations'); expected a list of records")
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


def blocks(path: Path) -> Iterator[tuple[int, bytes, str | None]]:
    """(first line number, bytes, text) of about 64 KiB of whole lines at a time (BOM dropped);
    text is None for a piece of a line longer than that."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    lineno, carry, first = 1, b"", True
    with open_binary(path) as f:
        while True:
            raw = f.read(CHUNK)
            eof = len(raw) < CHUNK
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


def _parser(layout: str, prefix: str) -> tuple[list, Any]:
    sink = ijson.sendable_list()
    return sink, (ijson.kvitems_coro if layout == "map" else ijson.items_coro)(sink, prefix, use_float=True)


def _chars(data: bytes) -> int:
    """Characters in UTF-8 bytes, a character cut at either end counted where it starts."""
    return len(data.translate(None, _CONTINUATION))


def _fault(path: Path, layout: str, prefix: str) -> str:
    """Where the parse of a JSON file fails, "line N, column C: why" (C: the character where the
    parser stopped, the end of the unexpected token), found by parsing it again line by line, then
    once more with the failing line fed byte by byte."""
    bad: tuple[int, int] | None = None  # (line, piece of that line)  # pragma: no mutate (any falsy start)
    for _ in range(2):
        sink, coro = _parser(layout, prefix)
        lineno, piece, column = 1, 0, 0
        for lineno, chunk, _whole in lines(path, CHUNK):
            piece = piece + 1 if column else 0  # pragma: no mutate (only picks the piece fed byte by byte: same column)
            slow = bad == (lineno, piece)
            for end in (range(1, len(chunk) + 1) if slow else (len(chunk),)):
                try:
                    coro.send(chunk[end - 1:end] if slow else chunk)
                except ijson.JSONError as exc:
                    if not slow:
                        bad = (lineno, piece)
                        break
                    column += _chars(chunk[:end])
                    return f"line {lineno}, column {column}: {_ijson_message(exc)}"
            else:
                del sink[:]
                column = 0 if chunk.endswith(b"\n") else column + _chars(chunk)
                continue
            break
        else:
            try:
                coro.close()
            except ijson.JSONError as exc:
                return f"line {lineno}: {_ijson_message(exc)} (the file ends early: truncated?)"
    return f"line {bad[0] if bad else lineno}: invalid JSON"  # pragma: no cover, no mutate (unreachable)


def stream_json(path: Path, layout: str, prefix: str, key_index: int = 0) -> Iterator[tuple[int, int | None, Any]]:
    """(index, line it starts on or None, value) for each record of a JSON file laid out as
    `json_layout` says (for "map", value is (key, record)). A parse fault raises AnnotationError
    after the records before it were yielded."""
    sink, coro = _parser(layout, prefix)
    starts = _Starts(layout, key_index)

    def pieces() -> Iterator[bytes | None]:
        for lineno, block, text in blocks(path):
            if text is None:
                starts.lost = True
            elif not starts.lost:
                starts.feed(text, lineno)
            yield block
        yield None  # the end: ijson checks the document is complete

    index = 0
    for block in pieces():
        try:
            coro.send(block) if block is not None else coro.close()
        except ijson.JSONError:
            raise AnnotationError(f"{path}: invalid JSON at {_fault(path, layout, prefix)}") from None
        for value in sink:
            yield index, starts.next_line(), value
            index += 1
        del sink[:]
