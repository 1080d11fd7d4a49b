"""Annotation files in the layouts people really have, streamed by `data.jsonstream`, and the source table
of `data.sources`: which records are read and in what order, the layout detected, the line each record
starts on (across 64 KiB reads, exact-length lines, BOMs, CRLF, lines longer than a read), faults naming
file, line and column, memory kept flat on the fault path, and which task a record gets."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import ijson
import pytest

from mathllava.data.jsonstream import (
    CHUNK,
    AnnotationError,
    _ijson_message,
    blocks,
    json_layout,
    lines,
    stream_json,
)
from mathllava.data.readers import detect_format, read_annotations
from mathllava.data.sources import UNKNOWN, SourceTable, load_table, resolve_task, task_code

BOM = "\ufeff"


def llava(i: int, **extra) -> dict:
    return {"id": f"r{i}", "image": f"img/{i}.png", "conversations": [
        {"from": "human", "value": f"<image>\nWhat is {i} plus 1?"},
        {"from": "gpt", "value": str(i + 1)}], **extra}


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def streamed(path: Path) -> list[tuple[int, int | None, object]]:
    return list(stream_json(path, *json_layout(path)))


def where(path: Path, index: int, line: int | None) -> str:
    return f"{path}:#{index}" + (f":line {line}" if line is not None else "")


def failure(iterable) -> tuple[list, str]:
    """The items an iterator yields before it raises AnnotationError, and the error's message."""
    seen = []
    with pytest.raises(AnnotationError) as err:
        for item in iterable:
            seen.append(item)  # noqa: PERF402 - the ones before the fault, one by one
    return seen, str(err.value)


# ------------------------------------------------------------------------------------- layouts detected

def test_each_layout_is_detected_with_its_records_prefix_and_key(tmp_path):
    recs = [llava(0), llava(1)]
    keyed = {"a": {k: v for k, v in recs[0].items() if k != "id"}, "b": recs[1]}   # a record's own id wins
    cases = {
        "list.json": (json.dumps(recs), ("list", "item", 0)),
        "bom_list.json": (BOM + "\n\n  " + json.dumps(recs), ("list", "item", 0)),
        "wrapped.json": (json.dumps({"version": "1.0", "info": {"n": 2}, "data": recs}), ("wrapped", "data.item", 3)),
        "bom_wrapped.json": (BOM + json.dumps({"annotations": recs}), ("wrapped", "annotations.item", 1)),
        "ids.json": (json.dumps(keyed), ("map", "", 0)),
        "bom_ids.json": (BOM + json.dumps(keyed), ("map", "", 0)),
        # a list of objects wins over lists of strings or numbers (COCO-style `licenses`, `tags`)
        "tagged.json": (json.dumps({"tags": ["geo"], "sizes": [3, 4], "questions": recs}),
                        ("wrapped", "questions.item", 3)),
    }
    for name, (text, layout) in cases.items():
        path = write(tmp_path / name, text)
        assert json_layout(path) == layout, name
        ids = [r["id"] for r in (i.record for i in read_annotations(path))]
        assert ids == (["a", "r1"] if "ids" in name else ["r0", "r1"]), name


def test_an_empty_list_of_records_reads_as_no_records(tmp_path):
    path = write(tmp_path / "empty_split.json", json.dumps({"version": 2, "data": [], "tags": ["x"]}))
    assert json_layout(path) == ("wrapped", "data.item", 2)
    assert list(read_annotations(path)) == []
    path = write(tmp_path / "empty_list.json", "[\n]\n")
    assert json_layout(path) == ("list", "item", 0) and list(read_annotations(path)) == []


def test_layouts_that_are_not_a_list_of_records_are_refused_by_name(tmp_path):
    def refused(name: str, text: str) -> str:
        path = write(tmp_path / name, text)
        with pytest.raises(AnnotationError) as err:
            list(read_annotations(path, fmt="llava_json"))
        return str(err.value).removeprefix(f"{path}: ")

    assert refused("num.json", "42\n43\n") == \
        "expected a JSON list of records or an object holding one, found '4' at the start"
    assert refused("str.json", '"records.json"') == \
        "expected a JSON list of records or an object holding one, found '\"' at the start"
    assert refused("one.json", json.dumps(llava(0), indent=1)) == \
        "the file is one record (it has 'conversations'); expected a list of records"
    assert refused("two.json", json.dumps({"train": [llava(0)], "val": [llava(1)], "test": [llava(2)]})) == \
        "the object holds 3 lists of records ('train', 'val', 'test'); expected exactly one"
    assert refused("dot.json", json.dumps({"v1.0": [llava(0)]})) == \
        "the list of records is under key 'v1.0'; keys with a dot are not supported"
    assert refused("empty.json", "{}") == ("expected a JSON list of records, an object holding one list of "
                                           "records, or an {id: record} mapping; found an object with no keys")
    numbers = {"version": 1, "ids": [1, 2], "info": {"a": 1}, "flag": True, **{f"k{i}": None for i in range(8)}}
    assert refused("numbers.json", json.dumps(numbers)) == (
        "expected a JSON list of records, an object holding one list of records, or an {id: record} mapping; "
        "found an object with 'version' (scalar), 'ids' (list_other), 'info' (object), 'flag' (scalar), "
        "'k0' (scalar), 'k1' (scalar), 'k2' (scalar), 'k3' (scalar), 'k4' (scalar), 'k5' (scalar)")


def test_a_file_starting_with_text_is_an_annotation_error_not_a_crash(tmp_path):
    path = write(tmp_path / "notes.json", "Überblick: the annotations are in data/\n")
    with pytest.raises(AnnotationError) as err:
        list(read_annotations(path, fmt="llava_json"))
    message = str(err.value)
    assert message.startswith(f"{path}: expected a JSON list of records or an object holding one, found ")
    assert message.endswith(" at the start")


def test_an_invalid_object_is_refused_before_any_record_naming_line_and_column(tmp_path):
    text = '{"version": 1,\n "data": [\n  {"id": "a"},\n  {"id": "b" "c"}\n ]\n}\n'
    path = write(tmp_path / "w.json", text)
    with pytest.raises(AnnotationError) as err:
        read_annotations(path)   # refused when opened, before the first record
    message = str(err.value)
    column = text.split("\n")[3].index('"c"') + len('"c"')   # where the parser stops: the end of the bad token
    assert message == f"{path}: invalid JSON at line 4, column {column}: parse error: after key and value, " \
                      "inside map, I expect ',' or '}'"


# ------------------------------------------------------------------------------- line of each record

def test_list_records_start_lines_with_brackets_in_strings_scalars_and_nesting(tmp_path):
    text = ('[\n'
            '  {"id": "a", "note": "[ { \\" ] }"},  {"id": "b\\\\", "x": "["},\n'
            '  7,\n'
            '  "str [",\n'
            '  [1, [2, {"x": "}"}]],\n'
            '  {"id": "c",\n'
            '   "nested": {"list": [\n'
            '      {"deep": true, "k": ":,"}\n'
            '   ]}},\n'
            '  null, -1.5e3, true\n'
            ']\n')
    path = write(tmp_path / "mixed.json", text)
    expected = json.loads(text)
    assert streamed(path) == [(k, line, value) for k, (line, value) in
                              enumerate(zip([2, 2, 3, 4, 5, 6, 10, 10, 10], expected))]


def test_numbers_come_back_as_floats_so_records_can_be_written_as_json_again(tmp_path):
    path = write(tmp_path / "f.json", '[{"score": 0.25, "n": 3}, 1e2]')
    values = [v for _, _, v in streamed(path)]
    assert values == [{"score": 0.25, "n": 3}, 100.0]
    assert type(values[0]["score"]) is float and type(values[1]) is float
    assert json.dumps(values) == '[{"score": 0.25, "n": 3}, 100.0]'
    vista = write(tmp_path / "v.json", '{"7": {"score": 0.5}}')
    assert [v for _, _, v in stream_json(vista, "map", "")] == [("7", {"score": 0.5})]
    assert type(next(iter(stream_json(vista, "map", "")))[2][1]["score"]) is float


def test_id_mapping_records_start_at_their_values_not_their_keys(tmp_path):
    text = ('{\n'
            '  "k{0": {"id": "a", "conversations": []},\n'
            '  "k1":\n'
            '    {"id": "b", "note": "x: {y}"},\n'
            '  "k:2": {\n'
            '    "id": "c", "list": [{"a": [1, 2]}, "]"]\n'
            '  },  "k3": {}, "k4": {"z": null}\n'
            '}\n')
    path = write(tmp_path / "ids.json", text)
    assert json_layout(path) == ("map", "", 0)
    expected = list(json.loads(text).items())
    assert streamed(path) == [(k, line, pair) for k, (line, pair) in enumerate(zip([2, 4, 5, 7, 7], expected))]


def test_wrapped_records_start_lines_past_other_keys_holding_lists_and_objects(tmp_path):
    text = ('{"version": "1.0", "info": {"name": "x", "splits": [{"a": 1}],\n'
            '  "nested": {"data": [{"id": "no"}]}},\n'
            ' "tags": [["a", "b"], ["c"]],\n'
            ' "data": [\n'
            '  {"id": "r0"}, {"id": "r1"},\n'
            '  {"id": "r2",\n'
            '   "sub": [{"x": "}"}]},\n'
            '  "r3",\n'
            '  {"id": "r4"}\n'
            ' ],\n'
            ' "count": 5, "more": {"k": [{"id": "after"}]}\n'
            '}\n')
    path = write(tmp_path / "wrapped.json", text)
    assert json_layout(path) == ("wrapped", "data.item", 4)
    expected = json.loads(text)["data"]
    assert streamed(path) == [(k, line, value) for k, (line, value) in enumerate(zip([5, 5, 6, 8, 9], expected))]


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_lines_count_from_the_top_of_the_file_past_a_bom_blank_lines_and_crlf(tmp_path, newline):
    body = json.dumps([llava(0), llava(1)], indent=1).replace("\n", newline)
    path = write(tmp_path / "win.json", BOM + newline * 2 + body + newline)
    items = list(read_annotations(path))
    assert [i.record["id"] for i in items] == ["r0", "r1"]
    starts = [n + 1 for n, text in enumerate((BOM + newline * 2 + body).split("\n")) if text.rstrip("\r") == " {"]
    assert starts[0] == 4 and len(starts) == 2
    assert [i.where for i in items] == [where(path, 0, 4), where(path, 1, starts[1])]


def _record_lines(first: int, total: int, width: int = 100) -> list[str]:
    """Lines ` {"id": "rK", "pad": "xx..."},` of `width` bytes (the last one longer) adding up to `total`."""
    count = total // width
    sizes = [width] * (count - 1) + [width + total - count * width]
    out = []
    for k, size in enumerate(sizes):
        stem = f' {{"id": "r{first + k}", "pad": ""}},\n'
        out.append(stem.replace('""', '"' + "x" * (size - len(stem)) + '"'))
    assert sum(map(len, out)) == total
    return out


def _pretty_list(head: list[str], tail_records: int) -> str:
    tail = _record_lines(sum(line.startswith(' {"id"') for line in head), tail_records * 100)
    tail[-1] = tail[-1].replace("},\n", "}\n")
    return "[\n" + "".join(head) + "".join(tail) + "]\n"


@pytest.mark.parametrize("boundary", ["newline_one_byte_before_a_read", "blank_line_at_a_read_then_a_longer_line"])
def test_line_numbers_hold_across_64k_reads(tmp_path, boundary):
    """Records of a pretty-printed file many reads long keep their exact lines wherever the reads cut:
    a read ending one byte after a newline, a read ending on a newline and the next starting with a blank
    line, then a line longer than one read that still fits in two."""
    if boundary == "newline_one_byte_before_a_read":
        text = _pretty_list(_record_lines(0, CHUNK - 3), 1500)
        assert text.encode()[CHUNK - 2:CHUNK] == b"\n "
    else:
        head = _record_lines(0, CHUNK - 2) + ["\n"]
        head.append(_record_lines(len(head) - 1, 70_000, width=70_000)[0])   # r{records so far}
        text = _pretty_list(head, 1500)
        data = text.encode()
        assert data[CHUNK - 1:CHUNK + 1] == b"\n\n" and b"\n" not in data[CHUNK + 1:2 * CHUNK]
    path = write(tmp_path / "big.json", text)
    assert path.stat().st_size > 3 * CHUNK
    lines_of = [n + 1 for n, line in enumerate(text.split("\n")) if line.startswith(' {"id"')]
    items = list(read_annotations(path, fmt="llava_json"))
    assert [i.where for i in items] == [where(path, k, n) for k, n in enumerate(lines_of)]
    assert [i.rid for i in items] == [f"r{k}" for k in range(len(lines_of))]   # (no conversations: the ids of bad records)


def test_a_bad_byte_far_down_a_big_file_is_named_by_its_line_after_the_records_before(tmp_path):
    text = _pretty_list(_record_lines(0, 3 * CHUNK), 10)
    lines_of = [n + 1 for n, line in enumerate(text.split("\n")) if line.startswith(' {"id"')]
    bad = lines_of[-5]
    data = text.encode()
    at = data.index(b'"pad": "', data.index(f'"r{len(lines_of) - 5}"'.encode())) + 9
    path = write(tmp_path / "latin.json", data[:at] + "é".encode("latin-1") + data[at + 1:])
    seen, message = failure(read_annotations(path))
    assert message == f"{path}: not UTF-8 text (byte 0xe9 at line {bad}); re-save the file as UTF-8"
    assert 0 < len(seen) < len(lines_of) - 5
    assert [i.where for i in seen] == [where(path, k, n) for k, n in enumerate(lines_of[:len(seen)])]


def test_after_a_line_longer_than_two_reads_no_record_gets_a_wrong_line(tmp_path):
    """A record minified onto one 200 KB line among pretty-printed ones: the lines before it stay exact,
    from it on they are unknown (None), never shifted."""
    huge = json.dumps(llava(3, metadata={"steps": [{"n": k, "text": "y" * 40} for k in range(4000)]}))
    assert len(huge) > 3 * CHUNK
    text = "[\n" + ",\n".join(json.dumps(llava(k), indent=1) for k in range(3)) + ",\n" + huge + ",\n" + \
        ",\n".join(json.dumps(llava(k), indent=1) for k in range(4, 7)) + "\n]\n"
    path = write(tmp_path / "mixed.json", text)
    lines_of = [n + 1 for n, line in enumerate(text.split("\n")) if line == "{"]
    items = list(read_annotations(path))
    assert [i.record["id"] for i in items] == [f"r{k}" for k in range(7)]
    assert [i.where for i in items] == [where(path, k, n) for k, n in enumerate(lines_of[:3])] + \
        [where(path, k, None) for k in range(3, 7)]


# ------------------------------------------------------------------------------------ faults located

def test_a_trailing_comma_names_the_closing_line(tmp_path):
    text = json.dumps([llava(0), llava(1)], indent=1)
    path = write(tmp_path / "comma.json", text[:-2] + ",\n]\n")
    seen, message = failure(read_annotations(path))
    last = text.count("\n") + 1
    assert message == f"{path}: invalid JSON at line {last}, column 1: parse error: unallowed token at this point in JSON text"
    assert seen == []   # the whole file was one read: its records go with it
    path = write(tmp_path / "comma2.json", '[1, 2,]')
    assert failure(stream_json(path, "list", "item"))[1] == \
        f"{path}: invalid JSON at line 1, column 7: parse error: unallowed token at this point in JSON text"


def test_trailing_garbage_after_the_list_keeps_the_records_and_names_line_and_column(tmp_path):
    text = json.dumps([llava(k) for k in range(1000)], indent=1) + "\n\n  ]\n"
    assert len(text) > 2 * CHUNK
    path = write(tmp_path / "garbage.json", text)
    seen, message = failure(stream_json(path, "list", "item"))
    assert 0 < len(seen) < 1000 and [v["id"] for _, _, v in seen] == [f"r{k}" for k in range(len(seen))]
    assert message == f"{path}: invalid JSON at line {text.count(chr(10))}, column 3: parse error: trailing garbage"


def test_a_truncated_file_names_its_last_line(tmp_path):
    path = write(tmp_path / "cut.json", '[{"id": "a"},\n{"id": "b"}\n')
    seen, message = failure(stream_json(path, "list", "item"))
    assert [v for _, _, v in seen] == [{"id": "a"}, {"id": "b"}]
    assert message == f"{path}: invalid JSON at line 2: parse error: premature EOF (the file ends early: truncated?)"


def test_the_column_counts_characters_not_bytes(tmp_path):
    path = write(tmp_path / "utf.json", '[\n {"q": "Größe ∑ 😀", "a": 1 "b": 2}\n]')
    line = ' {"q": "Größe ∑ 😀", "a": 1 "b": 2}'
    _, message = failure(stream_json(path, "list", "item"))
    column = line.index('"b"') + len('"b"')
    assert message == f"{path}: invalid JSON at line 2, column {column}: parse error: after key and value, " \
                      "inside map, I expect ',' or '}'"


def test_a_zero_width_no_break_space_at_a_read_boundary_is_data_not_a_bom(tmp_path):
    """U+FEFF inside a value (text pasted from Windows tools) whose bytes start exactly at a 64 KiB read:
    kept in the record, and counted as one character in the column of a later fault on that line."""
    head = '[{"id": "a", "text": "'
    value = "x" * (CHUNK - len(head)) + BOM + "yy"
    text = head + value + '"}, {"id": "b", "pad": "' + "z" * CHUNK + '"} {"id": "c"}]'
    assert text.encode().index(BOM.encode(), 1) == CHUNK
    path = write(tmp_path / "zw.json", text)
    seen, message = failure(stream_json(path, "list", "item"))
    assert [v for _, _, v in seen] == [{"id": "a", "text": value}]   # "b" ends in the read that fails
    column = text.index('{"id": "c"}') + 1
    assert message == f"{path}: invalid JSON at line 1, column {column}: parse error: after array element, " \
                      "I expect ',' or ']'"


def test_ijson_messages_in_bytes_or_without_text_still_read(tmp_path):
    """The ctypes yajl backends give the message as bytes when its snippet cuts a character."""
    raw = b"lexical error: invalid char in json text.\n   \"caf\xc3 @\n          (right here) ------^\n"
    assert _ijson_message(ijson.JSONError(raw)) == "lexical error: invalid char in json text."
    assert _ijson_message(ijson.JSONError(b"\xc3 cut\nsnippet")) == "\ufffd cut"
    assert _ijson_message(ijson.IncompleteJSONError("  Incomplete JSON content\n")) == "Incomplete JSON content"
    assert _ijson_message(ijson.JSONError()) == ""


# ---------------------------------------------------------------------------------- memory stays flat

WHY = "Because the segment is half the diameter of the circle. " * 36


def _minified_with_trailing_comma(path: Path, n: int) -> Path:
    recs = [llava(i, metadata={"rationale": f"{WHY}{i}"}) for i in range(n)]
    return write(path, json.dumps(recs)[:-1] + ",]")


def _vista_with_trailing_comma(path: Path, n: int) -> Path:
    recs = {str(i): {"question": f"What is {i} plus 1? {WHY}", "image": f"images/{i}.png", "answer": str(i + 1),
                     "question_type": "free_form", "answer_type": "integer"} for i in range(n)}
    return write(path, json.dumps(recs, indent=1)[:-2] + ",\n}")


def _peak_until_fault(path: Path, fmt: str) -> tuple[int, int, str]:
    tracemalloc.start()
    count = 0
    try:
        with pytest.raises(AnnotationError) as err:
            for _ in read_annotations(path, fmt=fmt):
                count += 1
        return count, tracemalloc.get_traced_memory()[1], str(err.value)
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("fmt", ["auto", "mathvista"])
def test_a_typo_at_the_end_of_a_big_file_is_located_in_flat_memory(tmp_path, fmt):
    """Detection, streaming and locating the fault read a minified LLaVA list (one 4 MB line) and a
    MathVista pid -> record file a read at a time: ten times the file, about the same peak."""
    make = _minified_with_trailing_comma if fmt == "auto" else _vista_with_trailing_comma
    small, large = make(tmp_path / "s.json", 200), make(tmp_path / "l.json", 2000)
    assert large.stat().st_size > 4_000_000
    _peak_until_fault(small, fmt)  # warm up: imports and compiled patterns are not the file's
    (n_small, peak_small, _), (n_large, peak_large, message) = (_peak_until_fault(p, fmt) for p in (small, large))
    assert 0 < n_small < 200 and 1900 < n_large < 2000   # the records before the failing read
    assert peak_large <= 2 * peak_small, (peak_small, peak_large)
    if fmt == "auto":
        assert message == f"{large}: invalid JSON at line 1, column {large.stat().st_size}: " \
                          "parse error: unallowed token at this point in JSON text"
    else:
        last = large.read_text().count("\n") + 1
        assert message == f"{large}: invalid JSON at line {last}, column 1: " \
                          "parse error: invalid object key (must be a string)"


# ------------------------------------------------------------------------------- text lines and reads

def test_lines_come_whole_or_in_pieces_of_one_read(tmp_path):
    exact = b"a" * (CHUNK - 1) + b"\n"          # one read, newline included
    longer = b"b" * (CHUNK + 5) + b"\n"
    path = write(tmp_path / "t.txt", exact + longer + b"ccc")
    assert list(lines(path, CHUNK)) == [(1, exact, True), (2, b"b" * CHUNK, False), (2, b"bbbbb\n", True),
                                        (3, b"ccc", True)]
    assert list(lines(path)) == [(1, exact, True), (2, longer, True), (3, b"ccc", True)]
    cut = write(tmp_path / "cut.txt", b"a" * (CHUNK - 1) + "é\n".encode())   # a character across two pieces
    assert [(n, len(b), whole) for n, b, whole in lines(cut, CHUNK)] == [(1, CHUNK, False), (1, 2, True)]
    bom = write(tmp_path / "bom.txt", (BOM + "x\n" + BOM + "y").encode())
    assert list(lines(bom)) == [(1, b"x\n", True), (2, BOM.encode() + b"y", True)]


def test_a_character_cut_at_the_end_of_a_file_is_named_by_its_line(tmp_path):
    """A JSON Lines file cut mid-character (an interrupted copy): the lines before it read, then the file's
    fault names the last line, never a bare UnicodeDecodeError."""
    path = write(tmp_path / "cut.jsonl", "".join(json.dumps(llava(k)) + "\n" for k in range(2)).encode() +
                 b'{"id": "caf\xc3')
    seen, message = failure(read_annotations(path))
    assert [i.record["id"] for i in seen] == ["r0", "r1"]
    assert message == f"{path}: not UTF-8 text (byte 0xc3 at line 3); re-save the file as UTF-8"
    short = write(tmp_path / "short.jsonl", json.dumps(llava(0)).encode() + b'\n{"id": "caf\xc3')
    with pytest.raises(AnnotationError) as err:
        read_annotations(short)   # the format is told from the first two lines: refused when opened
    assert str(err.value) == f"{short}: not UTF-8 text (byte 0xc3 at line 2); re-save the file as UTF-8"
    seen, message = failure(read_annotations(short, fmt="llava_jsonl"))
    assert [i.record["id"] for i in seen] == ["r0"] and message == str(err.value)
    # a last line of exactly one read: its piece is not known to be the end, the check after it still runs
    path = write(tmp_path / "exact.txt", b"x\n" + b"y" * (CHUNK - 1) + b"\xe2")
    seen, message = failure(lines(path, CHUNK))
    assert [(n, whole) for n, _, whole in seen] == [(1, True), (2, False)]
    assert message == f"{path}: not UTF-8 text (byte 0xe2 at line 2); re-save the file as UTF-8"


def test_json_lines_without_a_final_newline_and_with_crlf(tmp_path):
    path = write(tmp_path / "win.jsonl", "\r\n".join(json.dumps(llava(k)) for k in range(3)))
    assert detect_format(path) == "llava_jsonl"
    items = list(read_annotations(path))
    assert [(i.where, i.record["id"]) for i in items] == [(f"{path}:{k + 1}", f"r{k}") for k in range(3)]


def test_reads_are_whole_lines_of_64k_with_their_first_line(tmp_path):
    first = "[\n" + "".join(_record_lines(0, CHUNK - 2 - len(BOM.encode())))  # with the BOM: one read to a newline
    second = "".join(_record_lines(1000, CHUNK + 50))
    path = write(tmp_path / "b.json", BOM + first + second)
    got = list(blocks(path))
    assert len(got) == 3 and got[0][1] == first.encode()
    assert b"".join(b for _, b, _ in got) == (first + second).encode()
    assert all(text == b.decode() and b.endswith(b"\n") for _, b, text in got)
    assert [n for n, _, _ in got] == [1, 1 + first.count("\n"), 1 + first.count("\n") + got[1][1].count(b"\n")]
    one = write(tmp_path / "one.json", "z" * (2 * CHUNK + 1))    # one line of more than two reads: pieces
    assert [(n, len(b), t is None) for n, b, t in blocks(one)] == [(1, CHUNK, True), (1, CHUNK, True), (1, 1, False)]


def test_a_folder_or_a_missing_file_is_named(tmp_path):
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(AnnotationError) as err:
        list(read_annotations(tmp_path / "dir.json", fmt="llava_json"))
    assert str(err.value) == f"{tmp_path / 'dir.json'}: cannot open: Is a directory"
    with pytest.raises(AnnotationError) as err:
        list(stream_json(tmp_path / "gone.json", "list", "item"))
    assert str(err.value) == f"{tmp_path / 'gone.json'}: file not found"


# ---------------------------------------------------------------------------------------- source table

def test_source_names_match_ignoring_case_and_punctuation_but_not_plus_or_digits():
    table = SourceTable({"GeoQA+": {"task": "GPS", "aliases": ["geoqa_plus"]}, "GeoQA": {"task": "FQA"},
                         "VQA2.0": {"task": "VQA", "aliases": None}, "VQA": {"task": "TQA"},
                         "CLEVR-Math": {"task": "MWP", "aliases": ["clevr_math", "clevrmath"], "context": "scene"}})
    for spelling, task, name in [("geoqa+", "GPS", "GeoQA+"), ("Geo QA +", "GPS", "GeoQA+"), ("GEOQA_PLUS", "GPS", "GeoQA+"),
                                 ("geo-qa", "FQA", "GeoQA"), ("vqa_2.0", "VQA", "VQA2.0"), ("Vqa", "TQA", "VQA"),
                                 ("clevr math", "MWP", "CLEVR-Math"), ("ClevrMath", "MWP", "CLEVR-Math")]:
        assert (table.task_of(spelling), table.canonical(spelling)) == (task, name), spelling
    assert table.task_of("SomeNewSet") is None and table.canonical("SomeNewSet") == "SomeNewSet"
    assert table.task_of(None) is None and table.task_of("") is None
    assert table.tasks == {"geoqa+": "GPS", "geoqaplus": "GPS", "geoqa": "FQA", "vqa20": "VQA", "vqa": "TQA",
                           "clevrmath": "MWP"}


def test_a_source_entry_without_a_task_code_names_the_table_and_entry(tmp_path):
    codes = "['FQA', 'GPS', 'MWP', 'TQA', 'VQA']"
    for entries, got in [({"ChartQA": None}, "None"), ({"ChartQA": {"context": "charts"}}, "None"),
                         ({"ChartQA": {"task": "figure question answering"}}, "'figure question answering'"),
                         ({"ChartQA": {"task": "fqa"}}, "'fqa'")]:
        with pytest.raises(ValueError) as err:
            SourceTable({"TabMWP": {"task": "MWP"}, **entries})
        assert str(err.value) == f"sources table: sources.ChartQA.task must be one of {codes}, got {got}"
    path = tmp_path / "sources.yaml"
    path.write_text("sources:\n  TabMWP: {task: MWP}\n  ChartQA: {task: charts}\n")
    with pytest.raises(ValueError) as err:
        load_table(path)
    assert str(err.value) == f"{path}: sources.ChartQA.task must be one of {codes}, got 'charts'"


def test_a_table_file_is_read_with_aliases_and_refused_without_a_sources_mapping(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("sources:\n  MyCharts: {task: FQA, aliases: [my_charts_v2]}\n  Shapes: {task: GPS}\n")
    table = load_table(path)
    assert (table.task_of("My-Charts-V2"), table.canonical("mycharts"), table.task_of("shapes")) == \
        ("FQA", "MyCharts", "GPS")
    for text in ["datasets:\n  MyCharts: {task: FQA}\n", "sources:\n  - MyCharts\n", "sources:\n"]:
        bad = tmp_path / f"bad{len(text)}.yaml"
        bad.write_text(text)
        with pytest.raises(ValueError) as err:
            load_table(bad)
        assert str(err.value) == f"{bad}: expected a `sources:` mapping of dataset name -> {{task: ...}}"


def test_task_codes_from_codes_or_full_names_in_any_case():
    for value, code in [("FQA", "FQA"), (" gps ", "GPS"), ("Math Word Problem", "MWP"),
                        ("  textbook question answering\n", "TQA"), ("vqa", "VQA")]:
        assert task_code(value) == code, value
    for value in [None, "", "   ", 3, ["FQA"], "chart", "figure-question-answering"]:
        assert task_code(value) is None, value


def test_task_precedence_record_then_source_table_then_spec_default_then_unknown():
    table = SourceTable({"TabMWP": {"task": "MWP"}})
    assert resolve_task("gps", "TabMWP", "VQA", table) == "GPS"
    assert resolve_task("not a task", "tab-mwp", "VQA", table) == "MWP"
    assert resolve_task(None, "TabMWP", "VQA", table) == "MWP"
    assert resolve_task("", "elsewhere", "visual question answering", table) == "VQA"
    assert resolve_task(None, None, "vqa", table) == "VQA"
    assert resolve_task(None, "elsewhere", "bogus", table) == UNKNOWN
    assert resolve_task(None, None, None, table) == UNKNOWN == "unknown"
