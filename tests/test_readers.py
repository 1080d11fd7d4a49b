"""Annotation readers: every format, one item per record with where it came from, file faults named."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
from pathlib import Path

import pytest
from PIL import Image

from mathllava.data.readers import (
    FLAT_KEYS,
    AnnotationError,
    Item,
    detect_format,
    read_annotations,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MATHV = SHARED / "math-v-testmini" / "testmini.jsonl"
MATHVISTA = SHARED / "mathvista-testmini" / "testmini.json"


def llava(i: int, **meta) -> dict:
    rec = {"id": f"r{i}", "image": f"img/{i}.png", "conversations": [
        {"from": "human", "value": f"<image>\nWhat is {i} plus 1?"},
        {"from": "gpt", "value": str(i + 1)}]}
    if meta:
        rec["metadata"] = meta
    return rec


def good(items: list[Item]) -> list[dict]:
    assert all(i.error is None for i in items), [(i.where, i.error) for i in items if i.error]
    return [i.record for i in items]


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


# ------------------------------------------------------------------------------------------ real data

@pytest.mark.skipif(not MATHV.exists(), reason="no shared Math-V testmini")
def test_mathv_testmini_reads_completely():
    expected = sum(1 for line in MATHV.read_text("utf-8").splitlines() if line.strip())
    assert detect_format(MATHV) == "mathv"
    items = list(read_annotations(MATHV))
    records = good(items)
    assert len(records) == expected
    assert all(set(r) == set(FLAT_KEYS) for r in records)
    assert all("<image" not in r["question"] and r["task"] is None for r in records)
    assert all("level" in r["extra"] and "subject" in r["extra"] for r in records)
    raw = [json.loads(line) for line in MATHV.read_text("utf-8").splitlines() if line.strip()]
    assert [r["id"] for r in records] == [str(x["id"]) for x in raw]
    assert [r["choices"] for r in records] == [x["options"] or None for x in raw]
    assert items[0].where == f"{MATHV}:1"


@pytest.mark.skipif(not MATHVISTA.exists(), reason="no shared MathVista testmini")
def test_mathvista_testmini_reads_completely():
    raw = json.loads(MATHVISTA.read_text("utf-8"))
    assert detect_format(MATHVISTA) == "mathvista"
    items = list(read_annotations(MATHVISTA))
    records = good(items)
    assert len(records) == len(raw)
    assert [r["id"] for r in records] == list(raw)
    first = raw[next(iter(raw))]
    assert records[0]["task"] == first["metadata"]["task"]
    assert records[0]["source"] == first["metadata"]["source"]
    assert records[0]["extra"]["grade"] == first["metadata"]["grade"]
    # the line each record starts on: `    "pid": {` in the indented file
    lines = MATHVISTA.read_text("utf-8").split("\n")
    starts = [n + 1 for n, line in enumerate(lines) if line.startswith('    "') and line.endswith("{")]
    assert [i.where for i in items] == [f"{MATHVISTA}:#{k}:line {n}" for k, n in enumerate(starts)]


# -------------------------------------------------------------------------------------- LLaVA JSON

def test_llava_list_normalises_with_metadata_overrides_and_lines(tmp_path):
    records = [llava(0), llava(1, answer="7", question="Q?", task="FQA", source="geo", complexity=2, clear=True,
                                skills=["arithmetic"], level=3),
               {"id": "r2", "image": "img/2.png", "conversations": [
                   {"from": "human", "value": "<image>\nQuestion: Which?\nChoices:\n(A) red\n(B) blue"},
                   {"from": "gpt", "value": "The answer is B"},
                   {"from": "human", "value": "Why?"}, {"from": "gpt", "value": "Because."}]}]
    path = write(tmp_path / "a.json", json.dumps(records, indent=1))
    assert detect_format(path) == "llava_json"
    items = list(read_annotations(path))
    r0, r1, r2 = good(items)
    assert r0["question"] == "What is 0 plus 1?" and r0["answer"] == "1" and r0["answer_type"] == "integer"
    assert r0["task"] is None and r0["skills"] == [] and r0["language"] is None
    assert (r1["question"], r1["answer"], r1["task"], r1["source"], r1["complexity"], r1["clear"]) == \
        ("Q?", "7", "FQA", "geo", 2, True)
    assert r1["extra"] == {"level": 3}
    assert r2["choices"] == ["red", "blue"] and r2["answer"] == "blue" and r2["question_type"] == "multi_choice"
    assert len(r2["extra"]["conversations"]) == 4
    lines = path.read_text().split("\n")
    assert [i.where for i in items] == [
        f"{path}:#{k}:line {n + 1}" for k, n in enumerate(i for i, l in enumerate(lines) if l == " {")]


def test_wrapped_version_data_gives_all_records(tmp_path):
    doc = {"version": 1, "info": {"name": "x", "nested": {"a": [1]}}, "tags": ["a", "b"],
           "data": [llava(i) for i in range(5)], "count": 5}
    path = write(tmp_path / "w.json", json.dumps(doc, indent=2))
    items = list(read_annotations(path))
    assert [r["id"] for r in good(items)] == [f"r{i}" for i in range(5)]
    text = path.read_text().split("\n")
    first = next(n for n, l in enumerate(text) if l == "    {") + 1
    assert items[0].where == f"{path}:#0:line {first}"


def test_two_list_wrapper_is_refused(tmp_path):
    doc = {"train": [llava(0)], "test": [llava(1)]}
    path = write(tmp_path / "two.json", json.dumps(doc))
    with pytest.raises(AnnotationError, match=r"two\.json: .*2 lists of records.*'train'.*'test'") as err:
        list(read_annotations(path))
    assert str(err.value).startswith(str(path))


def test_id_mapping_and_other_objects(tmp_path):
    mapping = {f"k{i}": {k: v for k, v in llava(i).items() if k != "id"} for i in range(3)}
    path = write(tmp_path / "m.json", json.dumps(mapping))
    assert [r["id"] for r in good(list(read_annotations(path)))] == ["k0", "k1", "k2"]
    one = write(tmp_path / "one.json", json.dumps(llava(0), indent=1))
    with pytest.raises(AnnotationError, match=r"one\.json: the file is one record"):
        list(read_annotations(one))
    odd = write(tmp_path / "odd.json", json.dumps({"version": 1, "name": "x"}))
    with pytest.raises(AnnotationError, match=r"odd\.json: .*found an object with 'version'"):
        list(read_annotations(odd))
    vista = write(tmp_path / "v.json", json.dumps({"1": {"question": "q", "image": "i.png"}}))
    with pytest.raises(AnnotationError, match=r"v\.json: .*mathvista"):
        list(read_annotations(vista, fmt="llava_json"))


def test_record_faults_are_items_not_file_errors(tmp_path):
    no_q = llava(2)
    no_q["conversations"][0]["value"] = "<image>\n  "
    path = write(tmp_path / "bad.json", json.dumps([llava(0), 42, {"id": "x"}, no_q,
                                                    {**llava(4), "image": {"bytes": "AAAA", "path": None}}]))
    items = list(read_annotations(path))
    assert [i.error for i in items] == [
        None, "record is not an object", "missing conversations", "missing question",
        "embedded image bytes are not supported; export images to files"]
    assert items[1].raw == "42" and items[1].where == f"{path}:#1:line 1"


def test_bom_files_read(tmp_path):
    js = write(tmp_path / "bom.json", json.dumps([llava(0)]), "utf-8-sig")
    jl = write(tmp_path / "bom.jsonl", json.dumps(llava(0)) + "\n", "utf-8-sig")
    cv = write(tmp_path / "bom.csv", "image,question,answer\na.png,Q?,3\n", "utf-8-sig")
    for path in (js, jl, cv):
        assert len(good(list(read_annotations(path)))) == 1
    assert next(iter(read_annotations(cv))).record["id"] == "bom-2"


@pytest.mark.parametrize("name", ["l1.jsonl", "l1.json", "l1.csv"])
def test_latin1_is_refused_naming_path_and_line(tmp_path, name):
    if name.endswith(".csv"):
        text = "image,question,answer\na.png,Q?,3\nb.png,Qué?,4\n"
    elif name.endswith(".jsonl"):
        text = json.dumps(llava(0)) + "\n" + json.dumps(llava(1), ensure_ascii=False).replace("What", "Qué") + "\n"
    else:
        text = "[\n" + json.dumps(llava(0)) + ",\n" + json.dumps(llava(1)).replace("What", "Qué") + "\n]"
    path = write(tmp_path / name, text, "latin-1")
    with pytest.raises(AnnotationError) as err:
        list(read_annotations(path))
    line = text[:text.index("é")].count("\n") + 1
    assert line == (2 if name.endswith(".jsonl") else 3)
    assert str(err.value) == f"{path}: not UTF-8 text (byte 0xe9 at line {line}); re-save the file as UTF-8"


@pytest.mark.parametrize("name", ["e.json", "e.jsonl", "e.csv"])
def test_empty_file(tmp_path, name):
    path = write(tmp_path / name, "")
    with pytest.raises(AnnotationError, match="file is empty") as err:
        list(read_annotations(path))
    assert str(err.value) == f"{path}: file is empty"


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(AnnotationError, match=r"nope\.json: file not found"):
        read_annotations(tmp_path / "nope.json")
    with pytest.raises(AnnotationError, match=r"x\.txt: cannot tell"):
        detect_format(write(tmp_path / "x.txt", "hi"))


def test_truncated_json_names_path_and_line_and_keeps_records_before(tmp_path):
    text = json.dumps([llava(i) for i in range(3)], indent=1)
    cut = text.rindex('"conversations"')
    path = write(tmp_path / "t.json", text[:cut])
    last_line = text[:cut].count("\n") + 1
    seen = []
    with pytest.raises(AnnotationError) as err:
        for item in read_annotations(path):
            seen.append(item)  # noqa: PERF402 - the items before the fault, one by one
    assert str(err.value).startswith(f"{path}: invalid JSON at line {last_line}:")
    assert [i.record["id"] for i in seen] == ["r0", "r1"]
    # a fault in the middle: the line it is on
    lines = json.dumps([llava(i) for i in range(3)], indent=1).split("\n")
    bad = next(n for n, l in enumerate(lines) if '"r1"' in l)
    lines[bad] = lines[bad].replace('"id":', '"id"')
    path = write(tmp_path / "mid.json", "\n".join(lines))
    column = lines[bad].index('"r1"') + len('"r1"')  # the parser stops at the end of the unexpected token
    with pytest.raises(AnnotationError, match=rf"mid\.json: invalid JSON at line {bad + 1}, column {column}: .*colon"):
        list(read_annotations(path))


def test_minified_json_longer_than_a_read(tmp_path):
    """One line of 300 KB, multi-byte characters across the 64 KiB reads: all records, no line numbers;
    a fault in it is placed by line and column."""
    records = [llava(i, question=f"Größe {i}? ∑ 😀") for i in range(2000)]
    path = write(tmp_path / "min.json", json.dumps(records, ensure_ascii=False))
    assert path.stat().st_size > 4 * (1 << 16)
    items = list(read_annotations(path))
    assert [r["question"] for r in good(items)] == [f"Größe {i}? ∑ 😀" for i in range(2000)]
    assert [i.where for i in items] == [f"{path}:#{k}" for k in range(2000)]
    text = json.dumps(records, ensure_ascii=False)
    at = text.index('"r1500"')
    path = write(tmp_path / "minbad.json", text[:at] + "@" + text[at:])
    with pytest.raises(AnnotationError, match=rf"minbad\.json: invalid JSON at line 1, column {at + 1}: "):
        list(read_annotations(path))


def test_json_lines_named_json_and_object_faults(tmp_path):
    path = write(tmp_path / "lines.json", "".join(json.dumps(llava(i)) + "\n" for i in range(3)))
    assert detect_format(path) == "llava_jsonl"
    assert [i.where for i in read_annotations(path)] == [f"{path}:{n}" for n in (1, 2, 3)]
    with pytest.raises(AnnotationError, match=r"lines\.json: invalid JSON at line 2, column 1: .*trailing garbage"):
        list(read_annotations(path, fmt="llava_json"))
    broken = write(tmp_path / "wrapped.json", json.dumps({"version": 1, "data": [llava(0), llava(1)]}, indent=1)[:-40])
    with pytest.raises(AnnotationError, match=r"wrapped\.json: invalid JSON at line \d+: .*truncated"):
        next(iter(read_annotations(broken)))  # an object is refused before its first record


# ------------------------------------------------------------------------------------------------ JSONL

def test_one_bad_jsonl_line_is_flagged_with_its_line(tmp_path):
    lines = [json.dumps(llava(0)), "", json.dumps(llava(1)), '{"id": "r2", "image" "x"}', "",
             json.dumps(llava(3)), "[1, 2]", json.dumps(llava(4))]
    path = write(tmp_path / "a.jsonl", "\n".join(lines) + "\n")
    assert detect_format(path) == "llava_jsonl"
    items = list(read_annotations(path))
    assert [i.where for i in items] == [f"{path}:{n}" for n in (1, 3, 4, 6, 7, 8)]
    bad = {i.where: i.error for i in items if i.error}
    assert bad == {f"{path}:4": "invalid JSON: Expecting ':' delimiter at column 22",
                   f"{path}:7": "record is not an object"}
    assert [i.record["id"] for i in items if i.record] == ["r0", "r1", "r3", "r4"]
    assert items[2].raw == lines[3]


# -------------------------------------------------------------------------------------------------- CSV

def test_csv_with_image_folder(tmp_path):
    folder = tmp_path / "set"
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(folder / "images" / "a.png")
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(["id", "image", "question", "answer", "choices", "task", "source", "grade"])
    out.writerow(["", "images/a.png", "Which colour?", "red", '["red", "blue"]', "FQA", "mine", "5"])
    out.writerow(["q2", "images/a.png", "Two\nlines?", "2", "", "", "", ""])
    out.writerow(["q3", "images/a.png", "Pick", "B", "A|B|C", "", "", ""])
    buf.write("\n")  # a blank line: skipped, but counted
    out.writerow(["q4", "images/a.png", "", "1", "", "", "", ""])
    write(folder / "ann.csv", buf.getvalue())
    assert detect_format(folder) == "csv_folder"
    items = list(read_annotations(folder))
    assert [i.where for i in items] == [f"{folder / 'ann.csv'}:{n}" for n in (2, 3, 5, 7)]
    r1, r2, r3 = (i.record for i in items[:3])
    assert (r1["id"], r1["choices"], r1["task"], r1["source"], r1["extra"]) == \
        ("ann-2", ["red", "blue"], "FQA", "mine", {"grade": "5"})
    assert r1["question_type"] == "multi_choice" and r1["image"] == "images/a.png"
    assert r2["question"] == "Two\nlines?" and r2["choices"] is None and r2["answer_type"] == "integer"
    assert r3["choices"] == ["A", "B", "C"]
    assert items[3].error == "missing question"
    nohead = write(tmp_path / "h.csv", "img,question\nx,y\n")
    with pytest.raises(AnnotationError, match=r"h\.csv: the CSV header \(line 1\) lacks image, answer"):
        list(read_annotations(nohead))


# ----------------------------------------------------------------------------------- HF disk and parquet

FLAT_ROWS = [{"id": f"f{i}", "image": f"img/{i}.png", "question": f"Q{i}?", "answer": str(i),
              "choices": None, "task": "GPS", "source": "geo"} for i in range(3)]


def test_hf_save_to_disk_dataset_and_dict(tmp_path):
    import datasets

    datasets.Dataset.from_list(FLAT_ROWS).save_to_disk(str(tmp_path / "flat"))
    assert detect_format(tmp_path / "flat") == "hf_disk"
    items = list(read_annotations(tmp_path / "flat"))
    assert [(r["id"], r["task"], r["source"], r["answer_type"]) for r in good(items)] == \
        [(f"f{i}", "GPS", "geo", "integer") for i in range(3)]
    assert items[2].where == f"{tmp_path / 'flat'}:#2"

    conv = [{k: v for k, v in llava(i, source="s").items()} for i in range(2)]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(conv),
                          "test": datasets.Dataset.from_list(FLAT_ROWS[:1])}).save_to_disk(str(tmp_path / "dd"))
    items = list(read_annotations(tmp_path / "dd"))
    assert [i.where for i in items] == [f"{tmp_path / 'dd'}[train]:#0", f"{tmp_path / 'dd'}[train]:#1",
                                        f"{tmp_path / 'dd'}[test]:#0"]
    assert [(r["id"], r["answer"], r["source"]) for r in good(items)] == [("r0", "1", "s"), ("r1", "2", "s"),
                                                                          ("f0", "0", "geo")]


def test_hf_image_feature_path_and_bytes(tmp_path, monkeypatch):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.chdir(tmp_path)  # save_to_disk reads a path-only image from the file (and embeds it)
    (tmp_path / "imgs").mkdir()
    png = tmp_path / "imgs" / "a.png"
    Image.new("RGB", (4, 4)).save(png)
    features = datasets.Features({"id": datasets.Value("string"), "question": datasets.Value("string"),
                                  "answer": datasets.Value("string"), "image": datasets.Image()})
    rows = [{"id": "p", "question": "Q?", "answer": "1", "image": "imgs/a.png"},
            {"id": "b", "question": "Q?", "answer": "1", "image": {"path": None, "bytes": png.read_bytes()}}]
    datasets.Dataset.from_list(rows, features=features).save_to_disk(str(tmp_path / "img"))
    items = list(read_annotations(tmp_path / "img"))
    assert items[0].record["image"] == "a.png" and items[0].error is None  # datasets keeps the file name
    assert items[1].error == "embedded image bytes are not supported; export images to files"
    assert "bytes>" in items[1].raw and len(items[1].raw) < 2000
    image = pa.array([{"bytes": None, "path": "imgs/a.png"}],
                     pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"id": ["p"], "question": ["Q?"], "answer": ["1"], "image": image}), "p.parquet")
    assert [r["image"] for r in good(list(read_annotations(tmp_path / "p.parquet")))] == ["imgs/a.png"]


def test_parquet_file_and_folder(tmp_path):
    import datasets

    (tmp_path / "pq").mkdir()
    datasets.Dataset.from_list(FLAT_ROWS).to_parquet(str(tmp_path / "pq" / "a.parquet"))
    datasets.Dataset.from_list([llava(7, task="FQA")]).to_parquet(str(tmp_path / "pq" / "b.parquet"))
    single = tmp_path / "pq" / "a.parquet"
    assert detect_format(single) == "parquet" and detect_format(tmp_path / "pq") == "parquet"
    assert [r["id"] for r in good(list(read_annotations(single)))] == ["f0", "f1", "f2"]
    items = list(read_annotations(tmp_path / "pq"))
    assert [r["id"] for r in good(items)] == ["f0", "f1", "f2", "r7"]
    assert items[3].where == f"{tmp_path / 'pq' / 'b.parquet'}:#0" and items[3].record["task"] == "FQA"


# --------------------------------------------------------------------------------------------- streaming

def _peak(path: Path) -> int:
    tracemalloc.start()
    try:
        n = sum(1 for item in read_annotations(path) if item.error is None)
        return n, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _generate(path: Path, n: int) -> Path:
    with open(path, "w") as f:
        if path.suffix == ".json":
            f.write('{"version": 1, "data": [\n')
            f.write(",\n".join(json.dumps(llava(i)) for i in range(n)))
            f.write("\n]}\n")
        else:
            f.writelines(json.dumps(llava(i)) + "\n" for i in range(n))
    return path


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_memory_stays_flat(tmp_path, suffix):
    small = _peak(_generate(tmp_path / f"s{suffix}", 500))
    large = _peak(_generate(tmp_path / f"l{suffix}", 5_000))
    assert small[0] == 500 and large[0] == 5_000
    assert large[1] <= 2 * small[1], (small, large)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_memory_stays_flat_200k(tmp_path, suffix):
    small = _peak(_generate(tmp_path / f"s{suffix}", 20_000))
    large = _peak(_generate(tmp_path / f"l{suffix}", 200_000))
    assert small[0] == 20_000 and large[0] == 200_000
    assert large[1] <= 2 * small[1], (small, large)


def test_quarantined_records_keep_their_ids_and_file_lines(tmp_path):
    """The structural faults users hit (no assistant turn, empty conversations, an empty or null answer,
    a number as the question, an image that is not a string): each quarantined with the record's id and
    its file:line, so it can be looked up; a record with no id, and a line that is not JSON, have none."""
    from mathllava.data.ingest import ingest_source

    def rec(rid, **change):
        r = llava(rid)
        r.update(change)
        return r

    bad = [
        rec(0, id="no-assistant", conversations=[{"from": "human", "value": "<image>\nWhat is 1?"}]),
        rec(1, id="empty-conv", conversations=[]),
        rec(2, id="empty-answer", conversations=[{"from": "human", "value": "<image>\nWhat?"},
                                                 {"from": "gpt", "value": ""}]),
        rec(3, id="null-answer", conversations=[{"from": "human", "value": "<image>\nWhat?"},
                                                {"from": "gpt", "value": None}]),
        rec(4, id="number-question", conversations=[{"from": "human", "value": 7}, {"from": "gpt", "value": "1"}]),
        rec(5, id="image-not-string", image=["a.png"]),
        {"conversations": []},   # no id at all
    ]
    lines = [json.dumps(r) for r in bad] + ["{not json"]
    path = write(tmp_path / "train.jsonl", "\n".join(lines) + "\n")
    (tmp_path / "img").mkdir()
    manifest, quarantine = ingest_source(path, tmp_path, "mine")
    assert manifest.empty and len(quarantine) == 8
    by_line = {row["origin"]: row for row in quarantine.to_dict("records")}
    for number, record in enumerate(bad[:6], 1):
        row = by_line[f"{path}:{number}"]
        assert row["id"] == record["id"], (record["id"], row["reason"])
    assert all(by_line[f"{path}:{n}"]["id"] is None or by_line[f"{path}:{n}"]["id"] != by_line[f"{path}:{n}"]["id"]
               for n in (7, 8))   # missing (None or NaN)
