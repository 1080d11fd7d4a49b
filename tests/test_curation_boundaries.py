"""Boundary cases of the curation code that mutation testing showed no other test pins down:
BOM before an object-shaped LLaVA JSON, task precedence, the contamination word-count boundary,
image-root containment by real path, and the pixel cap checked before decoding."""

import json
import os

import pandas as pd
import pytest
from PIL import Image, ImageFile

from mathllava.data.clean import (BenchmarkRef, ContaminationSettings, guard, load_benchmarks, normalize_question,
                                  word_count)
from mathllava.data.ingest import MANIFEST_COLUMNS, ImageLimits, ingest_source, probe_image
from mathllava.data.readers import read_annotations
from mathllava.data.sources import load_table
from mathllava.paths import UnsafePathError, resolve_image_path


def _llava(i: int, image: str = "a.png") -> dict:
    return {"id": f"r{i}", "image": image,
            "conversations": [{"from": "human", "value": f"<image>\nWhat is {i}?"}, {"from": "gpt", "value": str(i)}]}


@pytest.mark.parametrize("shape", ["wrapped", "map"])
@pytest.mark.parametrize("fmt", ["auto", "llava_json"])
def test_bom_before_object_shaped_llava_json_is_read(tmp_path, shape, fmt):
    """Guards: a UTF-8 BOM before `{"data": [...]}` / `{id: record}` refused as invalid JSON."""
    records = [_llava(0), _llava(1)]
    by_id = {r["id"]: {k: v for k, v in r.items() if k != "id"} for r in records}
    body = {"data": records} if shape == "wrapped" else by_id
    path = tmp_path / "train.json"
    path.write_text(json.dumps(body, indent=1), encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf{")
    items = list(read_annotations(path, fmt))
    assert [i.error for i in items] == [None, None]
    assert [(i.record["id"], i.record["answer"]) for i in items] == [("r0", "0"), ("r1", "1")]


def test_source_table_task_beats_the_spec_default_task(tmp_path):
    """Guards: the spec's default task winning over the source table (a TabMWP record turned VQA)."""
    root = tmp_path / "images"
    (root / "TabMWP").mkdir(parents=True)
    (root / "Nowhere").mkdir()
    Image.new("RGB", (32, 32), "red").save(root / "TabMWP" / "1.png")
    Image.new("RGB", (32, 32), "blue").save(root / "Nowhere" / "2.png")
    path = tmp_path / "mix.json"
    path.write_text(json.dumps([_llava(1, "TabMWP/1.png"), _llava(2, "Nowhere/2.png")]))
    table_task = load_table().task_of("TabMWP")
    assert table_task not in (None, "VQA")
    manifest, quarantine = ingest_source(path, root, "mix", task="VQA")
    assert quarantine.empty
    tasks = dict(zip(manifest["id"], manifest["task_type"]))
    assert tasks == {"r1": table_task, "r2": "VQA"}  # the default applies only where the table says nothing


def test_contamination_question_of_exactly_min_words_is_caught(tmp_path):
    """Guards: off-by-one (`>` for `>=`) letting a benchmark question of exactly min_question_words escape."""
    six, five = "How long is the red segment?", "How many cubes are left?"
    assert word_count(normalize_question(six)) == 6 and word_count(normalize_question(five)) == 5
    bench = tmp_path / "bench" / "test.jsonl"
    bench.parent.mkdir()
    bench.write_text("".join(json.dumps({"id": str(i), "question": f"<image1>\n{q}", "options": [], "answer": "1",
                                         "subject": "s", "image": f"images/{i}.png"}) + "\n"
                             for i, q in ((1, six), (2, five))))
    settings = ContaminationSettings(benchmarks=[BenchmarkRef(name="tiny", annotations=str(bench))],
                                     min_question_words=6)
    index = load_benchmarks(settings)
    rows = [dict.fromkeys(MANIFEST_COLUMNS) | {"id": rid, "source": "S", "dataset": "S", "question": q, "origin": rid}
            for rid, q in (("t6", "how long is the RED segment"), ("t5", five))]
    kept, removed, report = guard(pd.DataFrame(rows, columns=MANIFEST_COLUMNS), index, settings)
    assert removed["id"].tolist() == ["t6"] and removed["reason"].tolist() == ["contamination: question matches tiny 1"]
    assert kept["id"].tolist() == ["t5"] and report["by_kind"]["question"] == 1


def test_symlink_into_prefix_sharing_sibling_folder_is_refused(tmp_path):
    """Guards: image-root containment by string prefix (images/ link -> images-private/ accepted)."""
    root, private = tmp_path / "images", tmp_path / "images-private"
    root.mkdir()
    private.mkdir()
    Image.new("RGB", (32, 32), "red").save(root / "ok.png")
    Image.new("RGB", (32, 32), "black").save(private / "secret.png")
    os.symlink(private / "secret.png", root / "leak.png")
    os.symlink(private, root / "dir")
    for rel in ("leak.png", "dir/secret.png"):
        with pytest.raises(UnsafePathError, match="outside the image root"):
            resolve_image_path(root, rel)
    path = tmp_path / "a.jsonl"
    images = ["ok.png", "leak.png", "dir/secret.png"]
    path.write_text("".join(json.dumps(_llava(i, img)) + "\n" for i, img in enumerate(images)))
    manifest, quarantine = ingest_source(path, root, "a")
    assert manifest["id"].tolist() == ["r0"]
    assert quarantine["id"].tolist() == ["r1", "r2"]
    assert quarantine["reason"].str.startswith("unsafe image path:").all()
    assert quarantine["reason"].str.contains("resolves outside the image root").all()


def test_pixel_cap_refuses_a_bomb_before_decoding(tmp_path, monkeypatch):
    """Guards: the image decoded before the header's width*height is checked against max_pixels."""
    bomb = tmp_path / "bomb.png"
    Image.new("1", (2000, 2000)).save(bomb)   # 4M pixels declared, a few hundred bytes on disk
    assert bomb.stat().st_size < 10_000
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or real_load(self))
    refused = probe_image(bomb, ImageLimits(max_pixels=1_000_000))
    assert not refused.ok and refused.error == "decompression bomb refused: 2000x2000 pixels > 1000000"
    assert decoded == [] and refused.phash is None
    assert (refused.width, refused.height) == (2000, 2000) and refused.sha256   # header read, file hashed
    allowed = probe_image(bomb, ImageLimits(max_pixels=4_000_000))   # at the cap: decoded (the spy sees it)
    assert allowed.ok and allowed.phash and decoded and decoded[0] == (2000, 2000)


@pytest.mark.parametrize("rel, message", [
    ("", "empty image path"),
    ("   ", "empty image path"),
    (None, "empty image path"),
    ("a\x00b.png", "image path contains a NUL byte"),
    ("/etc/passwd", "absolute image path '/etc/passwd'"),
    ("C:\\data\\a.png", "absolute image path 'C:\\\\data\\\\a.png'"),
    ("a/../../b.png", "image path 'a/../../b.png' escapes the image root"),
    ("..\\..\\etc\\passwd", "image path '..\\\\..\\\\etc\\\\passwd' escapes the image root"),
])
def test_each_unsafe_image_path_is_refused_with_its_own_reason(tmp_path, rel, message):
    """Quarantine reasons say what was wrong; Windows-style separators are read as separators."""
    from mathllava.paths import UnsafePathError, resolve_image_path

    with pytest.raises(UnsafePathError) as err:
        resolve_image_path(tmp_path, rel)
    assert str(err.value) == message


def test_a_windows_style_relative_path_resolves_inside_the_root(tmp_path):
    """`sub\\a.png` from a dataset written on Windows names the file sub/a.png under the root."""
    from mathllava.paths import resolve_image_path

    assert resolve_image_path(tmp_path, "sub\\a.png") == (tmp_path / "sub" / "a.png").resolve()
