"""Math-V and MMMU scoring rules, case by case (expected values worked out from each benchmark's
published rules), plus loaders and the score layouts."""

import json
import random

import pytest

from conftest import SHARED
from mathllava.evaluation import mathv, mmmu
from mathllava.evaluation.benchmarks import get

MATHV_DIR = SHARED / "math-v-testmini"


# ---------------------------------------------------------------- Math-V
@pytest.mark.parametrize("response,expected", [
    ("", ""),
    ("The answer is 12.", "12"),                      # the tail after the last "is " is a number
    ("The area is 5 and the perimeter is 12.", "12"),  # ... the last one
    ("Therefore, the answer is (C).", "c"),            # trailing " (C)." is an option letter
    ("B\nBecause the triangle is isosceles", "b"),     # a leading letter line
    ("(b)", "b"),                                      # "(b)" loses its brackets
    ("The answer is 7\nbecause 3 + 4 = 7", "7"),       # text after the phrase, first line only
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("x = 5", "5"),                                    # the value after "="
    ("60^\\circ", "60"),                               # degree signs dropped
    ("(1, 2)", "(1,2)"),                               # spaces removed: list/tuple spacing does not matter
    ("2\\sqrt3", "2\\sqrt{3}"),                        # sqrt argument braced
    ("3/4", "\\frac{3}{4}"),                           # a/b becomes a fraction
    ("0.5", "\\frac{1}{2}"),                           # the reference's special case
    ("答案是 C", "答案是c"),                             # no English cue: lower-cased, spaces gone, kept
    ("5 cm", "5cm"),
])
def test_mathv_model_answer_extraction(response, expected):
    assert mathv.extract_model_answer(response) == expected


@pytest.mark.parametrize("model_answer,truth,options,correct", [
    ("", "5", [], False),                    # empty never matches
    ("b", "B", ["1", "2"], True),            # letters compare case-insensitively
    ("c", "B", ["1", "2", "3"], False),
    ("triangle", "B", ["circle", "Triangle"], True),   # the option text counts as well as the letter
    ("1,000", "1000", [], True),             # LaTeX parse reads the grouped number
    ("-0.005", "0", [], False),              # rounds to -0.01 at 2 decimals (unlike MathVista's int truncation)
    ("-0.004", "0", [], True),               # rounds to -0.0 == 0
    ("3.14159", "3.14", [], True),           # numeric equality to 2 decimals
    ("3.1", "3.14", [], False),
    ("2.499", "2.5", [], True),
    ("2.50", "2.5", [], True),               # a one-decimal truth: trailing zeros do not matter
    ("2.46", "2.5", [], False),              # ... but there is no rounding to the truth's precision
    ("(1,2)", "(1, 2)", [], True),           # tuples compared element-wise after evaluation
    ("[1,2]", "[2,1]", [], False),
    ("\\frac{3}{4}", "0.75", [], True),
    ("\\frac{1}{2}", "1/2", [], True),
    ("\\pi", "3.14", [], True),
    ("答案是c", "C", [], False),
    ("北京", "A", ["北京", "上海"], True),     # Chinese option text
    ("5cm", "5", [], False),                 # units glued to the number make it symbolic
    ("9^{9^{9}}", "1", [], False),           # refused, never expanded
])
def test_mathv_judgement(model_answer, truth, options, correct):
    assert mathv.judge(model_answer, truth, options) is correct


LONG_PROSE = ("5.hence,countingtheregionsonebyoneandaddingthenumbersthatappearineachofthefourcornerswefind"
              "thatthevaluewritteninthemiddleoftheshapemustmatchtheonewealreadyhadfromthefirstrowofthetable"
              "aboveandsoweconcludethattheresultisfive")


# The official judge hands latex2sympy's output to Python's eval (with `math` names in scope) and
# compares both sides rounded to 2 decimals. Each verdict below is what that code gives; ours walks
# the same expression with the same Python operators, without eval, and bounds the size of integers.
@pytest.mark.parametrize("model_answer,truth,options,correct", [
    # huge powers: Python ints are exact and their quotient correctly rounded, so these evaluate
    ("\\frac{1}{3}", "$\\frac{3^{1008}-1}{3^{1009}}$", [], True),
    ("1/3", "$\\frac{3^{1008}-1}{3^{1009}}$", [], True),
    ("0.33", "$\\frac{3^{1008}-1}{3^{1009}}$", [], True),
    ("0.34", "$\\frac{3^{1008}-1}{3^{1009}}$", [], False),
    ("\\frac{1}{3}", "B", ["$1$", "$\\frac{3^{1008}-1}{3^{1009}}$"], True),   # through the option text
    ("(\\frac{3^{1008}-1}{3^{1009}},1)", "(0.33,1)", [], True),              # inside a tuple
    ("\\frac{2^{2024}}{2^{2024}+1}", "1", [], True),
    ("2^{2024}", "2^{2024}+1", [], False),           # two exact integers stay apart after rounding
    ("3^{1009}\\cdot0.5", "1", [], False),           # an int too large for a float: an error, not equal
    ("2^{-1009}", "0", [], True),                    # a negative power is float arithmetic: 0.0
    # a slash fraction against \frac: the published judge says equal (see mathv.py on Gemini-Pro 3013)
    ("4/3", "\\frac{4}{3}", [], True),
    ("\\frac{4}{3}", "4/3", [], True),
    ("1.33", "\\frac{4}{3}", [], True),
    ("1.3", "\\frac{4}{3}", [], False),
    # other consequences of eval's semantics, kept
    (LONG_PROSE, "5", [], True),                     # 222 characters; latex2sympy reads the leading 5
    ("3>2", "1", [], True),                          # a comparison is a bool, and round(True, 2) == 1
    ("e", "2.72", [], False),                        # printed as E, a name eval does not know
    ("10!", "3628800", [], True),                    # math.factorial
])
def test_mathv_judgement_follows_the_official_eval(model_answer, truth, options, correct):
    assert mathv.judge(model_answer, truth, options) is correct


@pytest.mark.parametrize("text", ["9^{9^{9}}", "2^{10^{12}}", "(2^{999})^{999}\\cdot(2^{999})^{999}", "100000!",
                                  "\\binom{2^{10^{12}}}{2}", "\\gcd(2^{10^{12}},6)", "\\sqrt[2^{10^{12}}]{2}",
                                  "\\binom{1000000}{500000}", "\\binom{3000000}{1500000}",
                                  "{" * 150 + "1" + "}" * 150, "1+" * 1200 + "1"])
def test_mathv_values_beyond_any_answer_are_refused_before_they_are_computed(text):
    with pytest.raises(mathv.TooLarge):
        mathv.latex_value(text)


def test_mathv_latex_evaluator_runs_no_code(monkeypatch, tmp_path):
    with pytest.raises(Exception):
        mathv.latex_value("\\text{__import__('os').system('true')}")
    assert mathv.latex_value("\\frac{1}{4}+\\sqrt{4}") == pytest.approx(2.25)
    # whatever text the LaTeX parser hands over is interpreted, never executed: were it given to eval,
    # this would write a file and return a number
    import latex2sympy2

    marker = tmp_path / "ran"
    monkeypatch.setattr(latex2sympy2, "latex2sympy", lambda text: f"len(open({str(marker)!r}, 'w').name) + pi")
    with pytest.raises(ValueError, match="not a numeric expression"):
        mathv.latex_value("x")
    assert not marker.exists()
    monkeypatch.setattr(latex2sympy2, "latex2sympy", lambda text: "(-1 + 3**1008)/(3**1009) + sqrt(4)")
    assert mathv.latex_value("x") == pytest.approx(1 / 3 + 2)


def test_mathv_score_layout():
    lines = [{"id": "1", "response": "The answer is 4.", "answer": "4", "options": [], "subject": "algebra", "level": 1},
             {"id": "2", "response": "A", "answer": "B", "options": ["x", "y"], "subject": "algebra", "level": 2},
             {"id": "3", "response": "(B)\nsince", "answer": "B", "options": ["x", "y"], "subject": "logic", "level": 1}]
    judged, scores = mathv.score_lines(lines)
    assert [line["correct"] for line in judged] == [True, False, True]
    assert scores == {
        "-all": "2/3=66.67%", "-level1": "2/2=100.0%", "-level1_algebra": "1/1=100.0%", "-level1_logic": "1/1=100.0%",
        "-level2": "0/1=0.0%", "-level2_algebra": "0/1=0.0%", "algebra": "1/2=50.0%", "algebra_level1": "1/1=100.0%",
        "algebra_level2": "0/1=0.0%", "logic": "1/1=100.0%", "logic_level1": "1/1=100.0%",
    }
    assert list(scores) == sorted(scores)
    assert mathv.parse_score(scores["-all"]) == (2, 3, 66.67)


def test_mathv_rescoring_needs_ground_truth():
    with pytest.raises(ValueError, match="no ground truth"):
        mathv.score_lines([{"id": "4", "response": "6"}])


@pytest.mark.skipif(not MATHV_DIR.exists(), reason="shared Math-V testmini not present")
def test_mathv_loader_and_cli_rescoring(tmp_path):
    import subprocess
    import sys

    problems = mathv.load_mathv(MATHV_DIR)
    assert len(problems) == 304
    assert sum(p["question_type"] == "multi_choice" for p in problems) == 190
    assert all(p["image_path"] and p["query"].startswith("Hint:") for p in problems)
    assert "<image" not in problems[0]["query"]
    # a predictions file in the benchmark's own layout (no ground truth in the lines): right answers
    # for the first ten, the letter "Z" for the rest
    lines = [{"id": p["pid"], "response": p["record"]["answer"] if i < 10 else "Z"} for i, p in enumerate(problems)]
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "scores.json"
    proc = subprocess.run([sys.executable, "-m", "mathllava.cli", "eval", "score", "--benchmark", "mathv", str(pred),
                           "--data", str(MATHV_DIR), "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["-all"] == "10/304=3.29%"
    proc = subprocess.run([sys.executable, "-m", "mathllava.cli", "eval", "score", "--benchmark", "mathv", str(pred),
                           "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2 and "no ground truth" in proc.stderr


# ---------------------------------------------------------------- MMMU
LETTERS = ["A", "B", "C", "D"]
PLANETS = dict(zip(LETTERS, ["Mars", "Jupiter", "Venus", "Earth"]))


@pytest.mark.parametrize("response,expected", [
    ("The answer is (B).", "B"),
    ("(A) is wrong, the correct one is (C)", "C"),             # several bracketed letters: the last wins
    ("I think it is B because of the rings", "B"),             # a bare letter between spaces
    ("The largest planet shown here is clearly Jupiter of course", "B"),   # option text, over 5 words
    ("Not Mars at all, it is Jupiter for sure", "B"),           # several option texts: the last wins
    ("(d)", None),                                              # lower case is not a letter mention
])
def test_mmmu_multiple_choice_parsing(response, expected):
    got = mmmu.parse_multi_choice(response, LETTERS, PLANETS, random.Random(42))
    assert got == (expected or random.Random(42).choice(LETTERS))  # no match: the seeded random letter


def test_mmmu_unparseable_choice_is_seeded_random():
    rng_a, rng_b = random.Random(42), random.Random(42)
    picks = [mmmu.parse_multi_choice("", LETTERS, PLANETS, rng_a) for _ in range(20)]
    assert picks == [rng_b.choice(LETTERS) for _ in range(20)]
    assert len(set(picks)) > 1


@pytest.mark.parametrize("response,truth,correct", [
    ("The total is 1,000", "1000", True),     # grouped thousands become 1000.0
    ("-0.005", "0", False),                   # rounds to -0.01 at 2 decimals
    ("-0.005", "-0.01", True),
    ("3.14159", "3.14", True),                # both sides rounded to 2 decimals
    ("The value is 3.14", "3.1", False),
    ("answer: a", "a", True),                 # one-character truths are matched with a space around
    ("banana", "a", False),                   # ... so they do not match inside a word
    ("答案是北京", "北京", True),                # strings: containment
    ("", "5", False),
    ("The result is 24", ["24", "24.0"], True),   # several acceptable answers
    ("[1,2]", "[1, 2]", False),               # list strings compare literally
    ("So the speed is 2.5e3 m/s", "2500", True),  # scientific notation
])
def test_mmmu_open_answers(response, truth, correct):
    assert mmmu.judge("open", truth, response) is correct


def test_mmmu_open_parsing_takes_the_tail_after_indicators():
    parsed = mmmu.parse_open("First we add 2 and 3.\nTherefore the sum is 5")
    assert 5.0 in parsed and "5" not in parsed
    # the patterns overlap as in the reference: "234.5" and "-3" are found as well
    assert mmmu.extract_numbers("cost 1,234.5 or 7e-3 and 42") == ["1,234", "7e-3", "234.5", "-3", "42"]


def test_mmmu_scores_layout():
    answers = {"validation_Math_1": {"question_type": "multiple-choice", "ground_truth": "A"},
               "validation_Math_2": {"question_type": "open", "ground_truth": "12"},
               "validation_Art_Theory_1": {"question_type": "multiple-choice", "ground_truth": "C"}}
    predictions = {"validation_Math_1": "A", "validation_Math_2": "it is 13", "validation_Art_Theory_1": "C"}
    judgements, scores = mmmu.score(predictions, answers)
    assert judgements == {"validation_Math_1": True, "validation_Math_2": False, "validation_Art_Theory_1": True}
    assert scores["Overall-Art and Design"] == {"num": 1, "acc": 1.0}
    assert scores["Art_Theory"] == {"num": 1, "acc": 1.0}
    assert scores["Overall-Science"] == {"num": 2, "acc": 0.5}
    assert scores["Overall-Business"] == {"num": 0, "acc": 0}
    assert scores["Overall"] == {"num": 3, "acc": 0.667}
    keys = list(scores)
    assert keys[:3] == ["Overall-Art and Design", "Art_Theory", "Overall-Business"] and keys[-1] == "Overall"
    judged = get("mmmu").rescore(predictions, answers=answers)
    assert judged.accuracy == pytest.approx(66.7)
    assert judged.groups["discipline"] == {"Art and Design": 100.0, "Science": 50.0}


def _write_mmmu_copy(root, n_per_subject=3):
    """A small local copy in the HF repository layout: <Subject>/validation-00000-of-00001.parquet
    with real PNG bytes in image_1."""
    import io

    import pandas as pd
    from PIL import Image

    for subject in ("Math", "Physics"):
        rows = []
        for i in range(1, n_per_subject + 1):
            buf = io.BytesIO()
            Image.new("RGB", (40, 30), (i * 40, 80, 120)).save(buf, format="PNG")
            mc = i % 2 == 1
            rows.append({"id": f"validation_{subject}_{i}", "question": f"<image 1> What is {i}+{i}?",
                         "options": str([str(2 * i), str(2 * i + 1), "0", "7"]) if mc else "[]",
                         "answer": "A" if mc else str(2 * i), "question_type": "multiple-choice" if mc else "open",
                         "subfield": "arithmetic", "topic_difficulty": "Easy",
                         "image_1": {"bytes": buf.getvalue(), "path": None}, "image_2": None})
        (root / subject).mkdir(parents=True)
        pd.DataFrame(rows).to_parquet(root / subject / "validation-00000-of-00001.parquet")


def test_mmmu_local_copy_loader(tmp_path):
    _write_mmmu_copy(tmp_path / "MMMU")
    problems = mmmu.load_mmmu(tmp_path / "MMMU", tmp_path / "images")
    assert len(problems) == 6
    first = next(p for p in problems if p["pid"] == "validation_Math_1")
    assert first["choices"] == ["2", "3", "0", "7"]
    assert first["query"] == ("Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, "
                              "at the end.\n<image 1> What is 1+1?\n(A) 2\n(B) 3\n(C) 0\n(D) 7\n")
    assert first["metadata"]["discipline"] == "Science"
    from PIL import Image

    with Image.open(first["image_path"]) as img:
        assert img.size == (40, 30)
    responses = ["(A)" if p["question_type"] == "multiple-choice" else f"so it is {p['answer']}" for p in problems]
    judged = get("mmmu").judge(problems, responses)
    assert judged.accuracy == 100.0 and judged.scores["Overall"]["num"] == 6
    with pytest.raises(FileNotFoundError, match="parquet"):
        mmmu.load_mmmu(tmp_path / "nothing-here", tmp_path / "images")
