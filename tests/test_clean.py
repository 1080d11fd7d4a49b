"""data.clean: dedup across sources and the benchmark contamination guard, on real image files."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageEnhance

from mathllava.data.clean import (
    BenchmarkRef,
    ContaminationSettings,
    DedupSettings,
    _popcount_lut,
    dedup,
    guard,
    hamming,
    load_benchmarks,
    normalize_question,
    phash_array,
    word_count,
)
from mathllava.data.ingest import (
    MANIFEST_COLUMNS,
    QUARANTINE_COLUMNS,
    ImageLimits,
    probe_image,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MATHV = SHARED / "math-v-testmini"
MATHVISTA = SHARED / "mathvista-testmini"
LONG_Q = "As shown in the figure, if CB = 4.0, DB = 7.0, and D is the midpoint of AC, then the length of AC is ()"


def figure(path: Path, seed: int) -> Path:
    """A diagram-like PNG: a few filled shapes whose layout depends on the seed."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (256, 256), "white")
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x, y = rng.integers(0, 200, 2)
        w, h = rng.integers(20, 90, 2)
        fill = tuple(int(v) for v in rng.integers(0, 255, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x, y, x + w, y + h], fill=fill, outline="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def row(rid: str, source: str, image: Path, question: str, choices=None, phash=True) -> dict:
    info = probe_image(image, ImageLimits())
    assert info.ok, info.error
    out = dict.fromkeys(MANIFEST_COLUMNS)
    out.update(id=rid, source=source, dataset=source, image=image.name, image_path=str(image),
               image_sha256=info.sha256, image_phash=info.phash if phash else None, question=question,
               answer="1", choices=json.dumps(choices) if choices else None, origin=f"{source}.json:#{rid}")
    return out


def manifest(*rows) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=MANIFEST_COLUMNS)


def distance(a: Path, b: Path) -> int:
    ha, hb = (probe_image(p, ImageLimits()).phash for p in (a, b))
    return int(hamming(int(ha, 16), int(hb, 16)))


@pytest.fixture
def images(tmp_path):
    """a.png; the same bytes under another source's folder; a brightened JPEG re-encode (a near
    duplicate: another sha256, a phash a few bits off); a different figure."""
    a = figure(tmp_path / "geoqa" / "a.png", seed=1)
    copy = tmp_path / "unigeo" / "a_copy.png"
    copy.parent.mkdir()
    shutil.copy(a, copy)
    jpeg = tmp_path / "figureqa" / "a.jpg"
    jpeg.parent.mkdir()
    ImageEnhance.Brightness(Image.open(a)).enhance(1.3).save(jpeg, quality=60)
    other = figure(tmp_path / "iconqa" / "b.png", seed=2)
    return {"a": a, "copy": copy, "jpeg": jpeg, "other": other}


# ------------------------------------------------------------------------------------------ helpers

@pytest.mark.parametrize("popcount", ["numpy", "lookup table"])
def test_hamming_on_known_bit_patterns(popcount, monkeypatch):
    if popcount == "lookup table":  # numpy < 2.0 has no bitwise_count
        monkeypatch.delattr(np, "bitwise_count")
    assert hamming(0, 0) == 0 and hamming(0, 0).shape == ()
    assert hamming(0b1011, 0) == 3
    assert hamming(0xFFFF_FFFF_FFFF_FFFF, 0) == 64
    assert hamming(0xF0F0_F0F0_F0F0_F0F0, 0x0F0F_0F0F_0F0F_0F0F) == 64
    assert hamming(1 << 63, 1) == 2
    grid = hamming(np.array([0, 0xFF], dtype=np.uint64)[:, None], np.array([0, 1, 0xFF00], dtype=np.uint64)[None, :])
    assert grid.tolist() == [[0, 1, 8], [8, 7, 16]]
    values = np.array([0, 1, 0xFF, 1 << 63, 0xFFFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0001], dtype=np.uint64)
    assert _popcount_lut(values).tolist() == [0, 1, 8, 1, 64, 2]  # the fallback without bitwise_count
    rng = np.random.default_rng(0)
    random = rng.integers(0, 2**63, 1000, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    assert _popcount_lut(random).tolist() == [int(v).bit_count() for v in random]


def test_phash_array_parses_hex_and_marks_nulls():
    hashes, ok = phash_array(["ffffffffffffffff", None, "00000000000000ff", "not-hex", float("nan")])
    assert ok.tolist() == [True, False, True, False, False]
    assert hashes[0] == np.uint64(2**64 - 1) and hashes[2] == 255


def test_normalize_question():
    query = ("Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the "
             "end.\nQuestion: What is the Length of AC?\nChoices:\n(A) 6cm\n(B) 7cm")
    assert normalize_question(query) == "what is the length of ac"
    assert normalize_question("<image1>\nWhat is  the\tlength of AC ?") == "what is the length of ac"
    assert normalize_question("If CB = 4.0, x is 1,000 or -3; find 1/2 of 'y'.") == "if cb = 4.0 x is 1,000 or -3 find 1/2 of y"
    assert normalize_question(None) == ""
    assert word_count("如图 在abc中 ab=ac") == 2 + 3 + 1  # each CJK character is a word


# -------------------------------------------------------------------------------------------- dedup

def test_exact_duplicate_across_sources_removed_naming_the_kept_row(images):
    rows = manifest(row("g1", "GeoQA+", images["a"], "What is the length of AC?"),
                    row("u7", "UniGeo", images["copy"], "what is the LENGTH of  AC"),
                    row("u8", "UniGeo", images["other"], "Something else entirely?"))
    kept, removed, report = dedup(rows, DedupSettings())
    assert kept["id"].tolist() == ["g1", "u8"]
    assert list(removed.columns) == QUARANTINE_COLUMNS
    assert removed["id"].tolist() == ["u7"] and removed["stage"].tolist() == ["dedup"]
    assert removed["reason"].tolist() == ["duplicate of g1 (GeoQA+): same image (exact)"]
    assert removed["source"].tolist() == ["UniGeo"] and json.loads(removed["record"][0])["id"] == "u7"
    assert report == {"enabled": True, "phash_distance": 4, "rows_in": 3, "removed": 1, "removed_exact": 1,
                      "removed_near": 0, "cross_source": 1, "by_source": {"UniGeo": 1}, "rows_kept": 2}


def test_same_image_with_another_question_or_choices_is_kept(images):
    rows = manifest(row("g1", "GeoQA+", images["a"], "What is the length of AC?", ["6", "7"]),
                    row("g2", "GeoQA+", images["copy"], "What is the length of BC?", ["6", "7"]),
                    row("g3", "GeoQA+", images["a"], "What is the length of AC?", ["6", "8"]),
                    row("g4", "GeoQA+", images["a"], "What is the length of AC?", ["6", "7"]))
    kept, removed, report = dedup(rows)
    assert kept["id"].tolist() == ["g1", "g2", "g3"]
    assert removed["reason"].tolist() == ["duplicate of g1 (GeoQA+): same image (exact)"]
    assert (report["removed"], report["cross_source"]) == (1, 0)


def test_near_duplicate_jpeg_removed_and_different_image_kept(images):
    near, far = distance(images["a"], images["jpeg"]), distance(images["a"], images["other"])
    assert 1 <= near <= 4 and far > 12  # the fixture's premise
    rows = manifest(row("f1", "FigureQA", images["jpeg"], "Which shape is largest?"),
                    row("g1", "GeoQA+", images["a"], "Which shape is largest?"),
                    row("i1", "IconQA", images["other"], "Which shape is largest?"))
    kept, removed, report = dedup(rows, DedupSettings(phash_distance=near))  # the threshold is inclusive
    assert kept["id"].tolist() == ["f1", "i1"]
    assert removed["reason"].tolist() == [f"duplicate of f1 (FigureQA): same image (phash distance {near})"]
    assert (report["removed_exact"], report["removed_near"], report["cross_source"]) == (0, 1, 1)
    assert len(dedup(rows, DedupSettings(phash_distance=near - 1))[0]) == 3  # a stricter threshold keeps both


def test_null_phash_matches_only_exactly_and_disabled_keeps_all(images):
    rows = manifest(row("a", "S1", images["a"], "Which shape is largest?"),
                    row("b", "S2", images["jpeg"], "Which shape is largest?", phash=False),
                    row("c", "S2", images["copy"], "Which shape is largest?", phash=False))
    kept, removed, _ = dedup(rows)
    assert kept["id"].tolist() == ["a", "b"]
    assert removed["reason"].tolist() == ["duplicate of a (S1): same image (exact)"]
    kept, removed, report = dedup(rows, DedupSettings(enabled=False))
    assert len(kept) == 3 and removed.empty and report["removed"] == 0


def test_rows_without_phash_never_enter_the_near_search():
    """A null phash must not act as the all-zero hash, neither as a kept row nor as a candidate; a
    near match names the closest kept row."""
    rows = manifest(*[dict(dict.fromkeys(MANIFEST_COLUMNS), id=rid, source="S", question="Same question?",
                           image_sha256=sha, image_phash=phash)
                      for rid, sha, phash in [("n1", "1" * 64, None), ("z", "2" * 64, "0" * 16),
                                              ("n2", "3" * 64, None), ("z2", "4" * 64, "0000000000000003"),
                                              ("y", "5" * 64, "00000000000000ff"), ("v", "6" * 64, "000000000000007f")]])
    kept, removed, _ = dedup(rows)
    assert kept["id"].tolist() == ["n1", "z", "n2", "y"]
    assert removed["reason"].tolist() == ["duplicate of z (S): same image (phash distance 2)",
                                          "duplicate of y (S): same image (phash distance 1)"]


def test_settings_are_strict():
    with pytest.raises(ValueError):
        DedupSettings(phash_distance=33)
    with pytest.raises(ValueError):
        ContaminationSettings(benchmark=[])
    assert ContaminationSettings().model_dump() == {"enabled": True, "benchmarks": [], "phash_distance": 4,
                                                    "min_question_words": 12}


# ------------------------------------------------------------------------------------ contamination

@pytest.fixture
def bench(tmp_path):
    """A Math-V-format benchmark of two items in tmp_path/bench (images relative to the file)."""
    folder = tmp_path / "bench"
    figure(folder / "images" / "1.png", seed=1)
    figure(folder / "images" / "2.png", seed=3)
    items = [{"id": "1", "question": f"<image1>\n{LONG_Q}", "options": [], "answer": "6", "subject": "g",
              "image": "images/1.png"},
             {"id": "2", "question": "How many objects are there?", "options": [], "answer": "5", "subject": "c",
              "image": "images/2.png"}]
    path = folder / "test.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


def test_guard_on_a_small_benchmark_counts_each_kind(tmp_path, images, bench):
    near = distance(images["a"], images["jpeg"])
    assert 1 <= near <= 4
    settings = ContaminationSettings(benchmarks=[BenchmarkRef(name="tiny", annotations=str(bench))],
                                     phash_distance=near)  # inclusive
    index = load_benchmarks(settings)
    assert index.report["tiny"] == {"items": 2, "unreadable": 0, "questions": 2, "images_indexed": 2,
                                    "images_missing": 0, "images_failed": 0, "skipped": None}
    rows = manifest(row("t1", "GeoQA+", images["copy"], "Unrelated question about this figure?"),
                    row("t2", "GeoQA+", images["jpeg"], "Another unrelated question?"),
                    row("t3", "UniGeo", images["other"], f"Hint: answer.\nQuestion: {LONG_Q.upper()}"),
                    row("t4", "UniGeo", images["other"], "How many objects are there?"),
                    row("t5", "UniGeo", images["other"], "A question nobody asked the benchmark at all?"))
    kept, removed, report = guard(rows, index, settings)
    assert kept["id"].tolist() == ["t4", "t5"]
    assert removed["reason"].tolist() == ["contamination: image matches tiny 1 (exact)",
                                          f"contamination: image matches tiny 1 (phash distance {near})",
                                          "contamination: question matches tiny 1"]
    assert set(removed["stage"]) == {"contamination"}
    assert report["by_kind"] == {"image_exact": 1, "image_near": 1, "question": 1}
    assert report["by_benchmark"] == {"tiny": 3} and (report["removed"], report["rows_kept"]) == (3, 2)
    off = settings.model_copy(update={"enabled": False})
    assert len(guard(rows, index, off)[0]) == 5 and not load_benchmarks(off).questions
    strict = settings.model_copy(update={"min_question_words": 30, "phash_distance": near - 1})
    assert guard(rows, index, strict)[0]["id"].tolist() == ["t2", "t3", "t4", "t5"]


def test_missing_benchmark_raises_with_key_path_unless_optional(tmp_path):
    missing = tmp_path / "nowhere" / "testmini.json"
    refs = [BenchmarkRef(name="mathvista testmini", annotations=str(missing))]
    with pytest.raises(ValueError) as err:
        load_benchmarks(ContaminationSettings(benchmarks=refs))
    assert str(missing) in str(err.value) and "data.contamination.benchmarks[0].annotations" in str(err.value)
    refs[0].required = False
    index = load_benchmarks(ContaminationSettings(benchmarks=refs))
    assert index.report["mathvista testmini"]["skipped"] == f"annotation file {missing} does not exist"
    assert not index.sha and not index.questions


needs_shared = pytest.mark.skipif(not (MATHV / "testmini.jsonl").is_file() or not (MATHVISTA / "testmini.json").is_file(),
                                  reason=f"real benchmark files absent under {SHARED} (Math-V/MathVista testmini)")


@pytest.fixture(scope="module")
def real_index():
    settings = ContaminationSettings(benchmarks=[
        BenchmarkRef(name="math-v testmini", annotations=str(MATHV / "testmini.jsonl")),
        BenchmarkRef(name="mathvista testmini", annotations=str(MATHVISTA / "testmini.json"))])
    return settings, load_benchmarks(settings)


@needs_shared
def test_real_benchmarks_catch_a_resaved_mathv_image_and_a_mathvista_question(tmp_path, images, real_index):
    settings, index = real_index
    assert index.report["math-v testmini"]["images_indexed"] == 304
    assert index.report["mathvista testmini"]["items"] == 1000
    assert index.report["mathvista testmini"]["images_indexed"] == 0  # annotations only: no images/ folder
    train = tmp_path / "train" / "mathv_4.png"
    train.parent.mkdir()
    Image.open(MATHV / "images" / "4.jpg").convert("RGB").save(train)  # re-saved: another sha256
    assert probe_image(train, ImageLimits()).sha256 not in index.sha
    exact = tmp_path / "train" / "mathv_7.jpg"
    shutil.copy(MATHV / "images" / "7.jpg", exact)
    mathvista = json.loads((MATHVISTA / "testmini.json").read_text())
    assert mathvista["6"]["question"] == LONG_Q
    short = "What number is shown?"  # a real MathVista question, asked of several unrelated images
    assert normalize_question(short) in index.questions and word_count(normalize_question(short)) < 8
    rows = manifest(row("m1", "IconQA", train, "Count the digits."),
                    row("m2", "IconQA", exact, "Count the bricks."),
                    row("m3", "GeoQA+", images["a"], LONG_Q),
                    row("m4", "TextVQA", images["other"], short),
                    row("m5", "TextVQA", images["jpeg"], "How many objects are there?"))
    kept, removed, report = guard(rows, index, settings)
    near = int(hamming(int(probe_image(train, ImageLimits()).phash, 16),
                       int(probe_image(MATHV / "images" / "4.jpg", ImageLimits()).phash, 16)))
    assert near <= 4
    assert removed["reason"].tolist() == [f"contamination: image matches math-v testmini 4 (phash distance {near})",
                                          "contamination: image matches math-v testmini 7 (exact)",
                                          "contamination: question matches mathvista testmini 6"]
    assert kept["id"].tolist() == ["m4", "m5"]
    assert report["by_kind"] == {"image_exact": 1, "image_near": 1, "question": 1}
    assert report["by_benchmark"] == {"math-v testmini": 2, "mathvista testmini": 1}
