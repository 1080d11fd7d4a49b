import json

import pytest

from conftest import SHARED
from mathllava.evaluation import mathvista as mv

RESULTS = SHARED / "mathvista-testmini" / "results"


@pytest.mark.skipif(not RESULTS.exists(), reason="shared MathVista results not present")
@pytest.mark.parametrize("name,overall", [("llava_llama_2_13b", "26.1"), ("random_guess", "17.9")])
def test_rescoring_reproduces_stored_scores_exactly(name, overall):
    predictions = json.loads((RESULTS / f"output_{name}.json").read_text())
    stored = json.loads((RESULTS / f"scores_{name}.json").read_text())
    updated, scores = mv.rescore(predictions)
    assert scores["average"]["accuracy"] == overall
    assert scores == stored  # every breakdown, counts and accuracy strings included
    assert all(updated[p]["true_false"] == predictions[p]["true_false"] for p in predictions)


@pytest.mark.skipif(not RESULTS.exists(), reason="shared MathVista results not present")
def test_query_builder_matches_shipped_queries():
    predictions = json.loads((RESULTS / "output_random_guess.json").read_text())
    testmini = json.loads((SHARED / "mathvista-testmini" / "testmini.json").read_text())
    out = json.loads((RESULTS / "output_llava_llama_2_13b.json").read_text())
    mismatches = [pid for pid, p in testmini.items()
                  if mv.build_query(p["question"], p["question_type"], p["answer_type"], p["precision"],
                                    p["choices"], p["unit"]) != out[pid]["query"]
                  # the stored prompts substitute numbers (N_0) or shuffle choices for a few items
                  and "N_0" not in out[pid]["query"]
                  and all(f"({chr(65 + i)}) {c}" in out[pid]["query"] for i, c in enumerate(p["choices"] or []))]
    assert len(predictions) == 1000
    assert mismatches == []


CHOICES = ["3", "12", "seven", "(8)"]


@pytest.mark.parametrize("extraction,expected", [
    ("", "3"),            # empty maps to the nearest (shortest) choice, as the benchmark does
    ("(b)", "12"),        # parenthesised letter, any case
    ("B", "12"),          # bare upper-case letter
    ("b", "3"),           # bare lower-case letter is not a letter match: edit distance picks "3"
    ("seven", "seven"),
    ("The answer is (C) seven", "seven"),
])
def test_multiple_choice_normalisation(extraction, expected):
    assert mv.normalize_extracted_answer(extraction, CHOICES, "multi_choice", "text", None) == expected


def test_ignore_empty_extractions_flag():
    assert mv.normalize_extracted_answer("", CHOICES, "multi_choice", "text", None, ignore_empty_extractions=True) is None


@pytest.mark.parametrize("extraction,answer_type,precision,expected", [
    ("1,000", "integer", None, None),
    ("-0.005", "integer", None, "0"),
    ("2.9", "integer", None, "2"),
    ("12", "integer", None, "12"),
    ("1.25", "float", 1, "1.2"),   # round-half-even on binary floats, as Python's round does
    ("1.20", "float", 1, "1.2"),
    ("3.14159", "float", 2, "3.14"),
    ("[1, 2]", "list", None, "[1, 2]"),
    ("[1,2]", "list", None, "[1,2]"),
])
def test_free_form_normalisation(extraction, answer_type, precision, expected):
    assert mv.normalize_extracted_answer(extraction, None, "free_form", answer_type, precision) == expected


def test_list_spacing_matters_and_chinese_choices():
    assert not mv.score_problem({"answer": "[1, 2]", "question_type": "free_form", "answer_type": "list"}, "[1,2]")[1]
    zh = {"answer": "140°", "choices": ["135°", "140°", "145°", "150°"], "question_type": "multi_choice",
          "answer_type": "text"}
    assert mv.score_problem(zh, "B")[1]
    assert mv.score_problem(zh, "140°")[1]
    assert mv.build_query("∠BOC＝（）", "multi_choice", "text", None, zh["choices"]).endswith("(D) 150°")


def test_quick_extraction_rules():
    assert mv.quick_extract("", "free_form", "integer", None) == ""
    assert mv.quick_extract("12", "free_form", "integer", None) == "12"
    assert mv.quick_extract("2.50", "free_form", "float", None) == "2.5"
    assert mv.quick_extract("red", "multi_choice", "text", ["red", "blue"]) == "red"
    assert mv.quick_extract('The answer is "42".', "free_form", "integer", None) == "42"
    assert mv.quick_extract("I think it is about twelve", "free_form", "integer", None) is None
    assert mv.extract_answer("I think twelve", "free_form", "integer", None, llm_extract=lambda q, r: "12") == ("12", "llm")


def test_edit_distance():
    assert mv.edit_distance("kitten", "sitting") == 3
    assert mv.edit_distance("", "abc") == 3
    assert mv.most_similar_choice("bleu", ["red", "blue"]) == "blue"


@pytest.mark.skipif(not RESULTS.exists(), reason="shared MathVista results not present")
def test_cli_rescoring_writes_the_benchmark_layout(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "scores.json"
    proc = subprocess.run([sys.executable, "-m", "mathllava.cli", "eval", "score", "--benchmark", "mathvista",
                           str(RESULTS / "output_random_guess.json"), "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "179/1000 = 17.9%" in proc.stdout
    assert json.loads(out.read_text()) == json.loads((RESULTS / "scores_random_guess.json").read_text())
