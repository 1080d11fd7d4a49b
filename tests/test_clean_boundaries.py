"""Boundary cases of data.clean that mutation testing showed no other test pins down: the exact dedup
and contamination reasons and reports, the phash distance bound (distance == threshold vs one more),
hashes of other lengths and missing hashes, the choices key, number-aware normalisation, CJK word
counts, the benchmark index's per-item counters, and the chunked nearest-neighbour search."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mathllava.data.clean as clean
from mathllava.data.clean import (
    BenchmarkRef,
    ContaminationSettings,
    DedupSettings,
    _choices_key,
    _nearest,
    _popcount_lut,
    dedup,
    guard,
    hamming,
    load_benchmarks,
    normalize_question,
    phash_array,
    word_count,
)
from mathllava.data.ingest import MANIFEST_COLUMNS, QUARANTINE_COLUMNS, ImageLimits, probe_image

from test_clean import LONG_Q, figure   # the same diagram-like images and long question


def rec(rid, sha=None, phash=None, question="Which shape is largest?", source="S", **extra) -> dict:
    return dict.fromkeys(MANIFEST_COLUMNS) | {"id": rid, "source": source, "dataset": f"ds-{source}",
                                              "origin": f"{source}.json:#{rid}", "question": question,
                                              "image_sha256": sha, "image_phash": phash} | extra


def frame(*rows, columns=MANIFEST_COLUMNS) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=columns)


def flip(hexhash: str, bits: int) -> str:
    """The hash with its `bits` lowest bits inverted: exactly `bits` bits away."""
    return format(int(hexhash, 16) ^ ((1 << bits) - 1), "016x")


# ------------------------------------------------------------------------------------ normalisation

@pytest.mark.parametrize("text, expected", [
    (float("nan"), ""),
    (None, ""),
    ("", ""),
    ("Question: What is x?\nChoices: (A) 1 (B) 2", "what is x"),
    ("  hint: read it\n question:  How far?", "how far"),
    ("What is x?\nHint: none", "what is x hint none"),          # "Hint:" not at the start: kept
    ("Find y.\nOptions:\nA. 3\nB. 4", "find y"),
    ("Pick one\n  CHOICES: a, b", "pick one"),
    ("<IMAGE2> See <image> the figure", "see the figure"),
    ("ＡＢ＝３．５", "ab=3.5"),                                   # NFKC: full-width letters, digits, dot
    ("x is 3.5, not 3. Or .5", "x is 3.5 not 3 or 5"),           # a dot counts only between digits
    ("-2 or (-3) or x-4 or 5-6 or a - 7 or a -7", "-2 or -3 or x 4 or 5 6 or a 7 or a -7"),  # a minus, not a hyphen
    ("1/2 of 10:30 is 1,000!", "1/2 of 10:30 is 1,000"),
    ("a_b + c = d < e", "a b + c = d < e"),                       # `_` is punctuation; math symbols stay
    ("Straße?", "strasse"),                                       # casefold, not lower
    ("\u201cquoted\u201d \u2014 done\u3002", "quoted done"),     # Unicode punctuation of any kind
])
def test_normalize_question_cases(text, expected):
    assert normalize_question(text) == expected


@pytest.mark.parametrize("text, count", [
    ("", 0),
    ("   ", 0),
    ("a  b\tc", 3),
    ("如图", 2),
    ("これはペン", 5),                     # hiragana and katakana: one word a character
    ("如图 在abc中 ab=ac", 2 + 3 + 1),
    ("求x的值", 4),                        # latin between CJK characters is its own word
    ("한국어 단어", 2),                    # Hangul is not in the CJK ranges: space-separated words
])
def test_word_count_cases(text, count):
    assert word_count(text) == count


@pytest.mark.parametrize("value, key", [
    (None, ""),
    (float("nan"), ""),
    ("[]", ""),
    ('["6 cm", "7, CM."]', "6 cm\x1f7 cm"),
    ("  [\"A\", \"B\"]", "a\x1fb"),
    (["A.", "-1.5"], "a\x1f-1.5"),
    ("12", "12"),                           # JSON, but not a list: one choice
    ("Red, Blue", "red blue"),
    ("[not json", "not json"),              # starts like a list but does not parse: one choice
])
def test_choices_key(value, key):
    assert _choices_key(value) == key


def test_choices_split_differently_are_different_choices():
    rows = frame(rec("a", "1" * 64, choices=json.dumps(["a b", "c"])),
                 rec("b", "1" * 64, choices=json.dumps(["a", "b c"])),
                 rec("c", "1" * 64, choices=json.dumps(["A", "B C"])),
                 rec("d", "1" * 64, choices=None),
                 rec("e", "1" * 64, choices="[]"))          # an empty list is no choices
    kept, removed, _ = dedup(rows)
    assert kept["id"].tolist() == ["a", "b", "d"]
    assert removed["reason"].tolist() == ["duplicate of b (S): same image (exact)",
                                          "duplicate of d (S): same image (exact)"]


# ------------------------------------------------------------------------------------------ hashing

def test_phash_array_lengths_and_invalid_entries():
    values = ["f", "F", "ff", "00000000000000ff", "ffffffffffffffff", "00000000000000001", "1" + "0" * 16,
              "", "not-hex", "0a", 255, None, float("nan"), "8000000000000000"]
    hashes, ok = phash_array(values)
    assert ok.tolist() == [True, True, True, True, True, False, False, False, False, True, False, False, False, True]
    assert hashes.dtype == np.uint64 and len(hashes) == len(values)
    assert hashes[ok].tolist() == [15, 15, 255, 255, 2**64 - 1, 10, 2**63]
    assert hashes[~ok].tolist() == [0] * 7
    empty, none_ok = phash_array([])
    assert empty.shape == (0,) and none_ok.shape == (0,)


def test_hamming_uses_numpy_popcount_when_present(monkeypatch):
    if not hasattr(np, "bitwise_count"):
        pytest.skip("numpy < 2.0: the lookup table is the only way")
    monkeypatch.setattr(clean, "_popcount_lut", lambda x: pytest.fail("lookup table used beside np.bitwise_count"))
    assert hamming(0xFF, 0x0F) == 4


def test_lookup_popcount_types_and_shapes(monkeypatch):
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    grid = hamming(np.array([[0, 1], [3, 7]], dtype=np.uint64), np.uint64(0))
    assert grid.dtype == np.uint8 and grid.tolist() == [[0, 1], [2, 3]]
    assert hamming(0xFFFF_FFFF_FFFF_FFFF, 0).dtype == np.uint8
    assert _popcount_lut(np.array([3, 255, 2**32 - 1], dtype=np.uint32)).tolist() == [2, 8, 32]  # widened first
    assert _popcount_lut(np.array([[1, 3], [7, 15]], dtype=np.uint64)).tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize("chunk_cells", [1, 2, 3, 4, 5, 9, 21, 1 << 22])
def test_nearest_same_answer_for_any_chunk_size(chunk_cells, monkeypatch):
    rng = np.random.default_rng(7)
    targets = rng.integers(0, 2**63, 3, dtype=np.uint64) * np.uint64(2)
    targets = np.concatenate([targets, targets[:1]])           # a tie: the first of equals wins
    hashes = np.concatenate([targets ^ np.uint64(0b101), rng.integers(0, 2**63, 3, dtype=np.uint64)])
    blocks = []
    real = clean.hamming
    monkeypatch.setattr(clean, "hamming", lambda a, b: blocks.append(np.shape(a)[0]) or real(a, b))
    dist, arg = _nearest(hashes, targets, chunk_cells=chunk_cells)
    brute = [[(int(h) ^ int(t)).bit_count() for t in targets] for h in hashes]
    assert dist.tolist() == [min(r) for r in brute] and arg.tolist() == [r.index(min(r)) for r in brute]
    assert dist.tolist()[:4] == [2, 2, 2, 2] and arg.tolist()[:4] == [0, 1, 2, 0]
    assert dist.dtype == np.uint8 and arg.dtype == np.int64
    step = max(1, chunk_cells // len(targets))               # rows a block: at most chunk_cells cells
    assert blocks == [min(step, len(hashes) - s) for s in range(0, len(hashes), step)]


def test_nearest_without_targets_or_hashes():
    dist, arg = _nearest(np.array([1, 2], dtype=np.uint64), np.zeros(0, dtype=np.uint64))
    assert dist.tolist() == [255, 255] and arg.tolist() == [0, 0] and dist.dtype == np.uint8
    dist, arg = _nearest(np.zeros(0, dtype=np.uint64), np.array([1], dtype=np.uint64))
    assert dist.shape == (0,) and arg.shape == (0,)


# -------------------------------------------------------------------------------------------- dedup

@pytest.mark.parametrize("threshold", [0, 1, 5, 32])
def test_dedup_phash_bound_is_inclusive(threshold):
    base = "0123456789abcdef"
    at, beyond = flip(base, threshold), flip(base, min(threshold + 1, 64))
    rows = frame(rec("k", "1" * 64, base), rec("at", "2" * 64, at), rec("beyond", "3" * 64, beyond))
    kept, removed, report = dedup(rows, DedupSettings(phash_distance=threshold))
    assert kept["id"].tolist() == ["k", "beyond"]
    assert removed["reason"].tolist() == [f"duplicate of k (S): same image (phash distance {threshold})"]
    assert (report["removed_exact"], report["removed_near"]) == (0, 1)


def test_dedup_short_hex_is_the_same_hash_and_unparsable_phash_matches_only_exactly():
    rows = frame(rec("a", "1" * 64, "ff"), rec("b", "2" * 64, "00000000000000ff"),
                 rec("c", "3" * 64, "zz"), rec("d", "4" * 64, "0" * 17), rec("e", "3" * 64, "00000000000000ff"))
    kept, removed, _ = dedup(rows, DedupSettings(phash_distance=0))
    assert kept["id"].tolist() == ["a", "c", "d"]
    assert removed["reason"].tolist() == ["duplicate of a (S): same image (phash distance 0)",
                                          "duplicate of c (S): same image (exact)"]  # sha first


def test_dedup_keeps_the_first_of_each_group_and_counts_everything():
    """Three copies: both later ones name the first; a singleton group first and rows with no sha
    (None, empty, NaN) in the middle of a group change nothing; counters add up."""
    rows = frame(rec("solo", "9" * 64, question="Alone?"),
                 rec("a1", "1" * 64, "00000000000000ff", source="A"),
                 rec("n1", None, "00000000000000ff", source="A"),
                 rec("n2", "", "00000000000000ff", source="A"),
                 rec("n3", float("nan"), "00000000000000ff", source="A"),
                 rec("n4", "", None, source="A"),
                 rec("b1", "1" * 64, None, source="B"),
                 rec("b2", "1" * 64, "00000000000000fe", source="B"),
                 rec("a2", "2" * 64, "00000000000000fc", source="A"),
                 rec("c1", "3" * 64, "00000000000000ff", source="C", question="Another?"),
                 rec("c2", "3" * 64, None, source="C", question="another"))
    kept, removed, report = dedup(rows)
    assert kept["id"].tolist() == ["solo", "a1", "n1", "n2", "n3", "n4", "c1"]
    assert removed["id"].tolist() == ["b1", "b2", "a2", "c2"]
    assert removed["reason"].tolist() == ["duplicate of a1 (A): same image (exact)",
                                          "duplicate of a1 (A): same image (exact)",
                                          "duplicate of a1 (A): same image (phash distance 2)",
                                          "duplicate of c1 (C): same image (exact)"]
    assert report == {"enabled": True, "phash_distance": 4, "rows_in": 11, "removed": 4, "removed_exact": 3,
                      "removed_near": 1, "cross_source": 2, "by_source": {"B": 2, "A": 1, "C": 1}, "rows_kept": 7}


def test_dedup_cross_source_count_adds_up():
    rows = frame(rec("a", "1" * 64, source="A"), rec("b", "1" * 64, source="B"), rec("c", "1" * 64, source="C"),
                 rec("a2", "1" * 64, source="A"))
    report = dedup(rows)[2]
    assert (report["cross_source"], report["removed_exact"]) == (2, 3)
    assert report["by_source"] == {"B": 1, "C": 1, "A": 1}


def test_dedup_keeps_manifest_order_inside_large_interleaved_groups():
    """Group members are visited in manifest order even when groups interleave over many rows (an
    unstable sort would visit a later twin first and keep it)."""
    rows = []
    for i in range(600):
        if i % 2:
            rows.append(rec(f"o{i}", f"{i:064d}", question="Odd question?"))
        else:
            rows.append(rec(f"e{i}", f"{i // 4:064d}", question="Even question?"))  # e0=e2, e4=e6, ...
    kept, removed, report = dedup(frame(*rows))
    assert removed["id"].tolist() == [f"e{i}" for i in range(2, 600, 4)]
    assert removed["reason"].tolist() == [f"duplicate of e{i - 2} (S): same image (exact)" for i in range(2, 600, 4)]
    assert report["removed"] == 150 and len(kept) == 450


def test_dedup_quarantine_rows_and_kept_frame_shape():
    """Without choices/dataset/origin columns: nothing is a key error, the quarantine has None there;
    the record is the full row as JSON (non-ASCII kept, other objects as str, cut at 2000
    characters); every quarantine column holds objects; kept keeps the columns and a fresh index."""
    long = "如图 " + "x" * 3000
    columns = ["id", "source", "question", "image_sha256", "image_phash", "where"]
    rows = pd.DataFrame([{"id": 1, "source": "S", "question": "如图?", "image_sha256": "1" * 64, "image_phash": None,
                          "where": Path("/data/a.png")},
                         {"id": 2, "source": "S", "question": "如图", "image_sha256": "1" * 64, "image_phash": None,
                          "where": Path("/data/b.png")},
                         {"id": 3, "source": "S", "question": long, "image_sha256": "1" * 64, "image_phash": None,
                          "where": None},
                         {"id": 4, "source": "S", "question": long, "image_sha256": "1" * 64, "image_phash": None,
                          "where": None}], columns=columns, index=[10, 11, 12, 13])
    kept, removed, _ = dedup(rows)
    assert list(kept.columns) == columns and kept.index.tolist() == [0, 1]
    assert kept["id"].tolist() == [1, 3]
    assert list(removed.columns) == QUARANTINE_COLUMNS
    assert (removed.dtypes == object).all()
    assert removed["id"].tolist() == [2, 4]
    assert removed["dataset"].tolist() == [None, None] and removed["origin"].tolist() == [None, None]
    assert removed["reason"].tolist() == ["duplicate of 1 (S): same image (exact)",
                                          "duplicate of 3 (S): same image (exact)"]
    first = json.loads(removed["record"].iloc[0])
    assert first == {"id": 2, "source": "S", "question": "如图", "image_sha256": "1" * 64, "image_phash": None,
                     "where": "/data/b.png"}
    assert '"如图"' in removed["record"].iloc[0]                  # not \\u escapes
    assert len(removed["record"].iloc[1]) == 2000 and removed["record"].iloc[1].startswith('{"id": 4')


@pytest.mark.parametrize("case", ["disabled", "empty"])
def test_dedup_disabled_or_empty_returns_everything(case):
    rows = frame(rec("a", "1" * 64), rec("b", "1" * 64))
    rows.index = [5, 6]
    if case == "empty":
        rows = rows.iloc[:0]
    kept, removed, report = dedup(rows, DedupSettings(enabled=case != "disabled", phash_distance=2))
    n = 2 if case == "disabled" else 0
    assert list(kept.columns) == MANIFEST_COLUMNS and kept.index.tolist() == list(range(n))
    assert list(removed.columns) == QUARANTINE_COLUMNS and removed.empty
    assert report == {"enabled": case != "disabled", "phash_distance": 2, "rows_in": n, "removed": 0,
                      "removed_exact": 0, "removed_near": 0, "cross_source": 0, "by_source": {}, "rows_kept": n}


# ------------------------------------------------------------------------------------ contamination

def write_bench(folder: Path, items: list[dict], name: str = "test.jsonl",
                broken: dict[int, str] | None = None) -> Path:
    lines = [json.dumps({"options": [], "answer": "1", "subject": "s"} | item) for item in items]
    for at, text in sorted((broken or {}).items()):
        lines.insert(at, text)
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.fixture
def bench(tmp_path):
    folder = tmp_path / "bench"
    figure(folder / "images" / "1.png", seed=11)
    figure(folder / "images" / "2.png", seed=12)
    path = write_bench(folder, [{"id": "1", "question": f"<image1>\n{LONG_Q}", "image": "images/1.png"},
                                {"id": "2", "question": "How many objects are there?", "image": "images/2.png"}])
    settings = ContaminationSettings(benchmarks=[BenchmarkRef(name="tiny", annotations=str(path))])
    return settings, load_benchmarks(settings), folder


def test_guard_phash_bound_is_inclusive_and_reports_everything(bench):
    settings, index, folder = bench
    p1, p2 = (probe_image(folder / "images" / f"{i}.png", ImageLimits()).phash for i in (1, 2))
    assert int(hamming(int(p1, 16), int(p2, 16))) > 12  # premise: the two benchmark images are far apart
    rows = frame(rec("clean", "a" * 64, None, "Nothing to see here?"),
                 rec("at", "b" * 64, flip(p1, 4), "Nothing to see here?"),
                 rec("beyond", "c" * 64, flip(p1, 5), "Nothing to see here?"),
                 rec("at2", "d" * 64, flip(p2, 3), "Nothing to see here?"),
                 rec("short", "e" * 64, None, "How many objects are there?"),
                 rec("q", "f" * 64, None, LONG_Q.lower()))
    kept, removed, report = guard(rows, index, settings)
    assert kept["id"].tolist() == ["clean", "beyond", "short"] and kept.index.tolist() == [0, 1, 2]
    assert removed["id"].tolist() == ["at", "at2", "q"] and (removed.dtypes == object).all()
    assert removed["reason"].tolist() == ["contamination: image matches tiny 1 (phash distance 4)",
                                          "contamination: image matches tiny 2 (phash distance 3)",
                                          "contamination: question matches tiny 1"]
    assert removed["stage"].tolist() == ["contamination"] * 3
    assert report == {"enabled": True, "rows_in": 6, "removed": 3, "by_benchmark": {"tiny": 3},
                      "by_kind": {"image_exact": 0, "image_near": 2, "question": 1},
                      "benchmarks": {"tiny": {"items": 2, "unreadable": 0, "questions": 2, "images_indexed": 2,
                                              "images_missing": 0, "images_failed": 0, "skipped": None}},
                      "images_indexed": 2, "questions_indexed": 2, "rows_kept": 3}
    report["benchmarks"]["tiny"]["items"] = 99
    assert index.report["tiny"]["items"] == 2  # the report holds a copy
    strict = guard(rows, index, settings.model_copy(update={"phash_distance": 3}))[1]
    assert strict["id"].tolist() == ["at2", "q"]


def test_guard_exact_image_wins_and_each_kind_counts_every_row(tmp_path, bench):
    settings, index, folder = bench
    sha1 = probe_image(folder / "images" / "1.png", ImageLimits()).sha256
    p2 = probe_image(folder / "images" / "2.png", ImageLimits()).phash
    rows = frame(rec("x1", sha1, p2, LONG_Q), rec("x2", sha1, None, "Other?"),
                 rec("n1", "1" * 64, p2, LONG_Q), rec("n2", "2" * 64, flip(p2, 1), "Other?"),
                 rec("miss", None, None, "Other question?"),
                 rec("q1", "", None, LONG_Q), rec("q2", float("nan"), None, f"Question: {LONG_Q}"))
    kept, removed, report = guard(rows, index, settings)
    assert kept["id"].tolist() == ["miss"]
    assert removed["reason"].tolist() == ["contamination: image matches tiny 1 (exact)"] * 2 + [
        "contamination: image matches tiny 2 (phash distance 0)",
        "contamination: image matches tiny 2 (phash distance 1)"] + ["contamination: question matches tiny 1"] * 2
    assert report["by_kind"] == {"image_exact": 2, "image_near": 2, "question": 2}
    assert report["by_benchmark"] == {"tiny": 6} and report["removed"] == 6


def test_guard_without_phash_or_benchmark_images_never_matches_near(tmp_path):
    path = write_bench(tmp_path / "b", [{"id": "7", "question": LONG_Q, "image": "gone.png"}])
    settings = ContaminationSettings(benchmarks=[BenchmarkRef(name="b", annotations=str(path))], phash_distance=32)
    index = load_benchmarks(settings)
    assert index.phash.shape == (0,) and not index.sha
    rows = frame(rec("p", "1" * 64, "0" * 16, "Short one?"), rec("q", "2" * 64, None, LONG_Q))
    kept, removed, _ = guard(rows, index, settings)
    assert kept["id"].tolist() == ["p"] and removed["reason"].tolist() == ["contamination: question matches b 7"]
    # a benchmark image exists: a row with no phash is still not "near" it, however loose the bound
    figure(tmp_path / "b" / "gone.png", seed=3)
    index = load_benchmarks(settings)
    assert index.phash.shape == (1,)
    rows = frame(rec("none", "3" * 64, None, "Short one?"), rec("bad", "4" * 64, "xyz", "Short one?"))
    assert guard(rows, index, settings)[1].empty


@pytest.mark.parametrize("case", ["disabled", "empty"])
def test_guard_disabled_or_empty_returns_everything(case, bench):
    settings, index, _ = bench
    rows = frame(rec("a", "1" * 64, None, LONG_Q))
    rows.index = [3]
    if case == "empty":
        rows = rows.iloc[:0]
    kept, removed, report = guard(rows, index, settings.model_copy(update={"enabled": case != "disabled"}))
    n = 1 if case == "disabled" else 0
    assert list(kept.columns) == MANIFEST_COLUMNS and kept.index.tolist() == list(range(n))
    assert list(removed.columns) == QUARANTINE_COLUMNS and removed.empty
    assert report == {"enabled": case != "disabled", "rows_in": n, "removed": 0, "by_benchmark": {},
                      "by_kind": {"image_exact": 0, "image_near": 0, "question": 0},
                      "benchmarks": index.report, "images_indexed": 2, "questions_indexed": 2, "rows_kept": n}


def test_load_benchmarks_counts_each_item_fault_and_goes_on(tmp_path):
    folder = tmp_path / "bench"
    figure(folder / "images" / "ok.png", seed=5)
    figure(folder / "images" / "dup.png", seed=5)                 # same bytes as ok.png
    (folder / "images" / "corrupt.png").write_bytes(b"not an image at all")
    (folder / "images" / "corrupt2.png").write_bytes(b"not an image either")
    items = [{"id": "a", "question": "Where is it?", "image": "../outside.png"},
             {"id": "b", "question": "where is it", "image": "images/ok.png"},       # same question: first kept
             {"id": "c", "question": "Q c", "image": "images/missing.png"},
             {"id": "d", "question": "Q d"},                     # no image at all: an unreadable record
             {"id": "e", "question": "Q e", "image": "images/missing2.png"},
             {"id": "f", "question": "Q f", "image": "images/corrupt.png"},
             {"id": "g", "question": "Q g", "image": "images/dup.png"},
             {"id": "h", "question": "Q h", "image": "images/corrupt2.png"},
             {"id": "i", "question": "Q i", "image": "/etc/passwd"}]
    path = write_bench(folder, items, name="items.txt", broken={1: "{broken", 4: "[not an object"})
    settings = ContaminationSettings(benchmarks=[
        BenchmarkRef(name="gone", annotations=str(tmp_path / "nowhere.json"), required=False),
        BenchmarkRef(name="b", annotations=str(path), format="mathv")])   # .txt: no format from the extension
    index = load_benchmarks(settings)
    assert index.report["gone"]["skipped"] == f"annotation file {tmp_path / 'nowhere.json'} does not exist"
    assert index.report["b"] == {"items": 8, "unreadable": 3, "questions": 8, "images_indexed": 2,
                                 "images_missing": 2, "images_failed": 4, "skipped": None}
    assert index.questions["where is it"] == ("b", "a") and len(index.questions) == 7
    ok = probe_image(folder / "images" / "ok.png", ImageLimits())
    corrupt = probe_image(folder / "images" / "corrupt.png", ImageLimits())
    assert index.sha[ok.sha256] == ("b", "b") and index.sha[corrupt.sha256] == ("b", "f") and len(index.sha) == 3
    assert index.phash_refs == [("b", "b"), ("b", "g")]
    assert index.phash.tolist() == [int(ok.phash, 16)] * 2 and index.phash.dtype == np.uint64


def test_load_benchmarks_image_root_and_format(tmp_path):
    root = tmp_path / "pictures"
    figure(root / "1.png", seed=21)
    figure(tmp_path / "ann" / "1.png", seed=22)                   # beside the file: not the one meant
    path = write_bench(tmp_path / "ann", [{"id": "1", "question": "Q?", "image": "1.png"}], name="bench.data")
    settings = ContaminationSettings(benchmarks=[BenchmarkRef(name="r", annotations=str(path), image_root=str(root),
                                                              format="mathv")])
    index = load_benchmarks(settings)
    assert list(index.sha) == [probe_image(root / "1.png", ImageLimits()).sha256]
    assert index.report["r"]["images_indexed"] == 1
    beside = load_benchmarks(ContaminationSettings(benchmarks=[BenchmarkRef(name="r", annotations=str(path),
                                                                            format="mathv")]))
    assert list(beside.sha) == [probe_image(tmp_path / "ann" / "1.png", ImageLimits()).sha256]
