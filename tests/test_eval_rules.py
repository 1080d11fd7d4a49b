"""MathVista's and Math-V's official answer-extraction and scoring rules, one rule at a time.

Every expected value is what the benchmark's own code gives (lupantech/MathVista
`evaluation/calculate_score.py`, mathllm/MATH-V `evaluation/evaluate.py` + `utils.py`), on inputs
shaped like the benchmarks' own responses, extractions and answers."""

import json
import math
import shutil

import pytest

from conftest import SHARED
from mathllava.evaluation import mathv
from mathllava.evaluation import mathvista as mv

MATHVISTA = SHARED / "mathvista-testmini"
RESULTS = MATHVISTA / "results"
needs_mathvista = pytest.mark.skipif(not RESULTS.exists(), reason="shared MathVista testmini not present")


# ================================================================ MathVista
@needs_mathvista
@pytest.mark.parametrize("name", ["llava_llama_2_13b", "random_guess"])
def test_mathvista_rescoring_writes_the_stored_predictions_and_breakdown_order(name):
    predictions = json.loads((RESULTS / f"output_{name}.json").read_text())
    stored = json.loads((RESULTS / f"scores_{name}.json").read_text())
    # judged from the extraction alone: the stored verdicts are not carried over
    bare = {pid: {k: v for k, v in p.items() if k not in ("prediction", "true_false")}
            for pid, p in predictions.items()}
    updated, scores = mv.rescore(bare)
    assert {pid: p["true_false"] for pid, p in updated.items()} == {
        pid: p["true_false"] for pid, p in predictions.items()}
    differ = {pid for pid, p in predictions.items()
              if (None if p["prediction"] is None else str(p["prediction"])) != updated[pid]["prediction"]}
    # four decimal extractions of integer problems ("0.0034", "66.67", ...) are stored with prediction None;
    # calculate_score's int(float(x)) truncates them. Wrong either way: the verdicts agree.
    assert {pid: updated[pid]["prediction"] for pid in differ} == (
        {"246": "0", "835": "66", "983": "99", "987": "3553"} if name == "llava_llama_2_13b" else {})
    # each breakdown in the stored order: accuracy descending, ties in first-seen order
    assert list(scores) == list(stored)
    for key in stored:
        assert list(scores[key]) == list(stored[key]), key


def test_mathvista_option_letter_in_brackets_wins_over_the_text_after_it():
    choices = ["3", "12", "seven", "(8)"]
    # "(A) 12": the letter names option A, although "12" is option B's text (edit distance would pick B)
    assert mv.normalize_extracted_answer("(A) 12", choices, "multi_choice", "text", None) == "3"
    assert mv.normalize_extracted_answer("(D)", choices, "multi_choice", "text", None) == "(8)"
    # a number read from JSON is compared as its text
    assert mv.normalize_extracted_answer(12, choices, "multi_choice", "text", None) == "12"

    class Unprintable:
        def __str__(self):
            raise RuntimeError("no text")

    # an extraction that cannot become text counts as "": the nearest choice is the shortest
    assert mv.normalize_extracted_answer(Unprintable(), choices, "multi_choice", "text", None) == "3"
    assert mv.normalize_extracted_answer(Unprintable(), ["12", "3"], "multi_choice", "text", None) == "3"
    # a multiple-choice problem without choices has nothing to match: "" (never equal to an answer)
    assert mv.normalize_extracted_answer("B", None, "multi_choice", "text", None) == ""


@pytest.mark.parametrize("extraction,answer_type,precision,answer,prediction,correct", [
    ("12.0", "integer", None, "12", "12", True),           # integer answers: int(float(x))
    ("1.23", "float", 1, "1.2", "1.2", True),              # rounded to the problem's precision
    ("1.234", "float", 2, "1.23", "1.23", True),
    ("1.2", "float", 2, "1.23", "1.2", False),
    (" [2007, 2008]", "list", None, "[2007, 2008]", " [2007, 2008]", False),   # lists: str() only, no strip
    (None, "list", None, "[2007, 2008]", "None", False),
    # a free-form text answer (Math-V's non-numeric answers) is compared stripped
    ("  \\frac{1}{2} ", "text", None, "\\frac{1}{2}", "\\frac{1}{2}", True),
    (None, "text", None, "None", None, False),
])
def test_mathvista_free_form_prediction_and_verdict(extraction, answer_type, precision, answer, prediction, correct):
    problem = {"answer": answer, "question_type": "free_form", "answer_type": answer_type, "precision": precision,
               "choices": None}
    assert mv.score_problem(problem, extraction) == (prediction, correct)


def test_mathvista_safe_equal_treats_a_failing_comparison_as_wrong():
    class Strict:
        def __eq__(self, other):
            raise TypeError("not comparable")

    assert mv.safe_equal(Strict(), "12") is False
    assert mv.safe_equal("12", "12") is True


def test_mathvista_quick_extraction_rules():
    assert mv.quick_extract(None, "free_form", "integer", None) == ""
    assert mv.quick_extract("  ", "free_form", "integer", None) == ""
    # a multiple-choice response is taken whole only when it is one of the choices
    assert mv.quick_extract("I think (B)", "multi_choice", "text", ["3", "12"]) is None
    assert mv.quick_extract("The answer is B.", "multi_choice", "text", ["3", "12"]) == "B"
    assert mv.quick_extract("12", "free_form", "text", ["3", "12"]) is None   # ... and only for multiple choice


def test_mathvista_extraction_method_and_llm_call():
    def no_llm(query, response):
        raise AssertionError("the rules should have answered")

    choices = ["135°", "140°", "145°", "150°"]
    assert mv.extract_answer("145°", "multi_choice", "text", choices, no_llm) == ("145°", "rule")
    assert mv.extract_answer("12", "free_form", "integer", None, no_llm) == ("12", "rule")
    assert mv.extract_answer("2.50", "free_form", "float", None, no_llm) == ("2.5", "rule")

    calls = []

    def llm(query, response):
        calls.append((query, response))
        return " 250 \n"

    response = "The total volume of the measuring cup is 250 grams."
    assert mv.extract_answer(response, "free_form", "integer", None, llm, query="Q: volume?") == ("250", "llm")
    assert mv.extract_answer(response, "free_form", "integer", None, llm) == ("250", "llm")
    assert calls == [("Q: volume?", response), ("", response)]

    def failing(query, response):
        raise TimeoutError("extractor down")

    assert mv.extract_answer(response, "free_form", "integer", None, failing) == ("", "llm_error")
    assert mv.extract_answer(f"  {response}\n", "free_form", "integer", None) == (response, "raw")


def test_mathvista_task_hints():
    assert mv.task_hint("free_form", "float", None) == mv.HINT_FLOAT[1]
    assert mv.task_hint("free_form", "float", 2) == mv.HINT_FLOAT[2]
    assert mv.task_hint("free_form", "float", 3) == mv.HINT_FLOAT[1]   # no hint of its own: one decimal place
    text_hint = "Hint: Please answer the question and provide the final answer at the end."
    assert mv.task_hint("free_form", "text", None) == text_hint
    assert mv.build_query("Find x.", "free_form", "text") == text_hint + "\nQuestion: Find x."
    # a multiple-choice question without choices gets no Choices block
    assert mv.build_query("Which is larger?", "multi_choice", "text", None, None) == (
        mv.HINT_MULTI_CHOICE + "\nQuestion: Which is larger?")


def test_mathvista_edit_distance_and_nearest_choice():
    assert mv.edit_distance("", "") == 0
    assert mv.edit_distance("145°", "145°") == 0
    assert mv.edit_distance("1234", "2345") == 2          # drop "1", append "5"
    assert mv.edit_distance("acute", "cuter") == 2
    assert mv.most_similar_choice("1234", ["1000", "2345"]) == "2345"


def test_mathvista_aggregate_layout_and_order():
    assert mv.aggregate({}) == {"average": {"accuracy": "0.0", "correct": 0, "total": 0}}
    results = {
        # flat keys (no metadata), and no language
        "1": {"question_type": "free_form", "answer_type": "integer", "true_false": False,
              "skills": ["arithmetic reasoning"]},
        "2": {"question_type": "multi_choice", "answer_type": "text", "true_false": False,
              "metadata": {"language": "english", "skills": ["algebraic reasoning", "algebraic reasoning"]}},
        "3": {"question_type": "multi_choice", "answer_type": "text", "true_false": True,
              "metadata": {"language": "chinese", "skills": ["geometry reasoning", "algebraic reasoning"]}},
    }
    scores = mv.aggregate(results)
    assert scores["average"] == {"accuracy": "33.33", "correct": 1, "total": 3}
    assert list(scores) == ["average", "question_type", "answer_type", "language", "skills"]  # no source
    assert scores["language"] == {"chinese": {"accuracy": "100.00", "correct": 1, "total": 1},
                                  "english": {"accuracy": "0.00", "correct": 0, "total": 1}}
    assert list(scores["language"]) == ["chinese", "english"]
    assert list(scores["question_type"]) == ["multi_choice", "free_form"]
    # a skill listed twice counts once per problem; equal accuracies keep first-seen order
    assert scores["skills"] == {"geometry reasoning": {"accuracy": "100.00", "correct": 1, "total": 1},
                                "algebraic reasoning": {"accuracy": "50.00", "correct": 1, "total": 2},
                                "arithmetic reasoning": {"accuracy": "0.00", "correct": 0, "total": 1}}
    assert list(scores["skills"]) == ["geometry reasoning", "algebraic reasoning", "arithmetic reasoning"]


def test_mathvista_rescore_without_an_extraction_judges_the_empty_string():
    problem = {"question": "How many right angles are there?", "question_type": "multi_choice",
               "answer_type": "text", "choices": ["none", "2"], "precision": None, "answer": "none",
               "prediction": "none", "true_false": True}   # stale verdict: rescoring replaces it
    updated, scores = mv.rescore({"17": problem})
    assert updated["17"]["prediction"] == "2" and updated["17"]["true_false"] is False
    assert scores["average"] == {"accuracy": "0.0", "correct": 0, "total": 1}


# real testmini problems: a float (precision 1), an integer with a unit, a Chinese multiple choice, a list,
# a float with two decimals
PIDS = ("1", "2", "3", "506", "108")


@needs_mathvista
def test_mathvista_loader(tmp_path):
    testmini = json.loads((MATHVISTA / "testmini.json").read_text(encoding="utf-8"))
    shipped = json.loads((RESULTS / "output_llava_llama_2_13b.json").read_text())
    subset = {pid: dict(testmini[pid]) for pid in PIDS}
    del subset["506"]["pid"]                                # the key names the problem when the field is absent
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    for pid in ("1", "3"):                                  # images for two of the five
        (data / "images" / f"{pid}.jpg").write_bytes(b"\xff\xd8jpeg")
    (data / "testmini.json").write_text(json.dumps(subset, ensure_ascii=False), encoding="utf-8")

    with pytest.raises(FileNotFoundError) as missing:
        mv.load_mathvista(data / "testmini.json")
    assert str(missing.value) == (f"3 of 5 MathVista images are missing under {data} (first: pid 2); "
                                  "unzip the benchmark's images.zip there")

    problems = mv.load_mathvista(data / "testmini.json", require_images=False)
    assert [p["pid"] for p in problems] == list(PIDS)
    assert [p["image_path"] for p in problems] == [str((data / "images/1.jpg").resolve()), None,
                                                   str((data / "images/3.jpg").resolve()), None, None]
    for problem in problems:
        raw = testmini[problem["pid"]]
        assert problem["benchmark"] == "mathvista"
        assert problem["query"] == shipped[problem["pid"]]["query"]     # the prompt MathVista shipped
        assert {k: problem[k] for k in raw} == raw                        # every field kept as it is
    assert "pid" not in subset["506"] and problems[3]["pid"] == "506"
    assert problems[2]["choices"] == ["135°", "140°", "145°", "150°"] and problems[2]["answer"] == "145°"
    assert problems[1]["query"].endswith("(Unit: g)")
    assert problems[4]["query"].startswith(mv.HINT_FLOAT[2])

    # a list-format file with its own prebuilt query, images in another folder, and a limit
    for pid in ("2", "506", "108"):
        subset[pid]["image"] = f"images/{pid}.jpg"
    subset["1"]["query"] = "Prebuilt prompt for pid 1"
    del subset["3"]["image"]
    other = tmp_path / "images-elsewhere"
    shutil.copytree(data / "images", other / "images")
    for pid in ("2", "506", "108"):
        (other / "images" / f"{pid}.jpg").write_bytes(b"\xff\xd8jpeg")
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([{**subset[pid], "pid": int(pid)} for pid in PIDS], ensure_ascii=False),
                      encoding="utf-8")
    problems = mv.load_mathvista(listed, images_dir=other, limit=2)
    assert [p["pid"] for p in problems] == ["1", "2"]
    assert problems[0]["query"] == "Prebuilt prompt for pid 1" and problems[1]["query"] == shipped["2"]["query"]
    assert problems[1]["image_path"] == str((other / "images/2.jpg").resolve())
    with pytest.raises(FileNotFoundError, match=r"^1 of 5 MathVista images are missing .*\(first: pid 3\)"):
        mv.load_mathvista(listed, images_dir=other)          # pid 3 has no image field at all
    assert len(mv.load_mathvista(listed, images_dir=other, limit=3, require_images=False)) == 3


# ================================================================ Math-V
MATHV_DIR = SHARED / "math-v-testmini"
needs_mathv = pytest.mark.skipif(not MATHV_DIR.exists(), reason="shared Math-V testmini not present")


# Each expected model answer is what MATH-V's evaluate.py (+ utils.find_math_answer) derives from the response.
@pytest.mark.parametrize("response,expected", [
    # where the answer is cut out of the response
    ("The answer is \\boxed{5}, which is odd.", "5"),            # the text after "is " is no number: keep looking
    ("So the area is 12...", "12"),                              # the number after the last "is ", dots stripped
    ("The probability is .5.", "\\frac{1}{2}"),                  # ".5" -> "0.5" -> the reference's \frac{1}{2}
    ("The length is \\boxed{5}, so the answer is (C).", "c"),   # trailing " (C)." is the option letter
    ("First \\boxed{1}, then \\boxed{2}, finally \\boxed{3}", "3"),   # several boxes: the last
    ("The answer is 7. Because 3 + 4 = 8 - 1", "7"),             # after the phrase: up to ". "
    ("The answer is 7\nsince x = 8 - 1", "7"),                   # ... and up to the line end
    ("The answer is 12 cm.\nBecause 3 \\cdot 4 = 12", "12cm"),
    ("Area = 3 \\cdot 4\n= 12", "12"),                            # no phrase: the whole text, after the last "="
    ("The answer is: 7", "7"),                                   # a leading colon dropped
    ("\\text{The answer is 7}", "7"),                            # a stray closing brace cuts the answer
    ("$\\boxed{5}$ (so {x} = 5)", "5"),                          # ... also inside the (greedy) box match
    ("$\\boxed{5}$ (so {x}+{y} = 5)", "5"),                      # ... at the first closing brace
    ("First \\boxed{2}, then \\boxed{3}", "3"),
    ("AB = BC = 5", "5"),
    ("\\sqrt{2} \\approx 1.414 \\approx 1.41", "1.41"),
    ("\\boxed{\\text{B}}", "b"),                                 # a braced option letter
    ("\\boxed{\n5\n}", "5"),
    # LaTeX decoration and units
    ("The final answer is 30{}^\\circ", "30"), ("60^{\\circ}", "60"), ("The answer is 60^\\circ", "60"),
    ("2\\sqrt 3", "2\\sqrt{3}"), ("1\\,000", "1000"), ("1\\!000", "1000"),
    ("(-∞, 3)", "(-\\infty,3)"), ("(0, +\\infty)", "(0,\\infty)"),
    ("\\\\frac{3}{4}", "\\frac{3}{4}"), ("12\\\\text{ cm}", "12{cm}"),            # doubled backslashes
    ("\\dfrac{3}{4}", "\\frac{3}{4}"), ("\\tfrac{1}{3}", "\\frac{1}{3}"),
    ("12\\text{ cm}", "12{cm}"), ("5\\mbox{ cm}", "5{cm}"),
    ("The answer is \\frac{1}{2}\\text{ cm}", "\\frac{1}{2}{cm}"),
    ("\\begin{bmatrix}1\\\\2\\end{bmatrix}", "\\begin{pmatrix}1\\2\\end{pmatrix}"),
    ("\\left(1, 2\\right)", "(1,2)"), ("The answer is 5\\left(\\frac{1}{2}\\right)", "5(\\frac{1}{2})"),
    ("3 m^3", "3"), ("3{m}^3", "3"), ("12\\text{ units}", "12"), ("12 square units", "12square"),
    ("5\\text{ km}", "5"), ("5 km", "5"),
    ("\\$5", "5"), ("$\\frac{1}{2}$", "\\frac{1}{2}"), ("25\\%", "25"),
    ("\\sqrt{.25}", "\\sqrt{0.25}"), (".25", "0.25"),
    # square roots are braced; fractions are re-braced only when a square root is present
    ("\\sqrt{3}", "\\sqrt{3}"), ("\\sqrt3+1", "\\sqrt{3}+1"), ("2\\sqrt", "2\\sqrt"),
    ("\\frac12", "\\frac12"),
    ("\\frac12\\sqrt3", "\\frac{1}{2}\\sqrt{3}"), ("\\frac1{\\sqrt3}", "\\frac{1}{\\sqrt{3}}"),
    ("\\sqrt{2}\\frac12", "\\sqrt{2}\\frac{1}{2}"), ("2\\sqrt{3}\\frac{1}{2}", "2\\sqrt{3}\\frac{1}{2}"),
    ("\\frac{\\sqrt{3}}{2}+\\frac12", "\\frac{\\sqrt{3}}{2}+\\frac{1}{2}"),
    ("\\sqrt3\\frac1", "\\sqrt{3}\\frac1"),                       # a \frac too short to brace: left as it is
])
def test_mathv_model_answer_follows_the_reference(response, expected):
    assert mathv.extract_model_answer(response) == expected


YELLOW = ["red", "blue", "green", "Yellow", "This cannot be worked out for certain."]   # Math-V id 39


# Each verdict is what MATH-V's is_equal gives (either the letter or the option text may match).
@pytest.mark.parametrize("model_answer,truth,options,correct", [
    ("yellow", "D", YELLOW, True), ("d", "D", YELLOW, True), ("green", "D", YELLOW, False),
    ("(3,-4)", "(3,-4)", [], True), ("(3,-4.0)", "(3,-4)", [], True),       # Math-V id 2955
    ("24/5", "4.8", [], True), ("\\frac{24}{5}", "4.8", [], True), ("4.80", "4.8", [], True),   # id 250
    ("[0.5,3]", "[\\frac{1}{2},3]", [], True),          # lists are evaluated element-wise too
    ("(1,2)", "[1,2]", [], False),                      # ... but a tuple is not a list
    ("(1,2]", "(1,2)", [], False),                      # a half-open interval is not a tuple
    ("(-\\infty,0)", "(-\\infty, 0)", [], True),        # infinite ends are kept, not evaluated
    ("(a,1/2)", "(a, 0.5)", [], True), ("(-a,1/2)", "(-a, 0.5)", [], True),   # so are a and -a
    ("(1.4,2)", "(1.2,2)", [], False),                  # elements rounded to 2 decimals, not to integers
    ("3<2", "0", [], True), ("3<2", "1", [], False),    # a false comparison is 0
    ("3.5", "\\frac{1}{2}+3", [], True), ("5", "2.5\\cdot2", [], True),   # float arithmetic
    ("\\frac{1}{2}\\sqrt{3}", "0.87", [], True), ("\\sqrt{0.25}", "0.5", [], True),
])
def test_mathv_judgement_follows_the_reference(model_answer, truth, options, correct):
    assert mathv.judge(model_answer, truth, options) is correct


# ---------------------------------------------------------------- bounds of the LaTeX evaluator
# Everything up to a bound is computed exactly as the reference's eval computes it; past it, TooLarge.
@pytest.mark.parametrize("text,value", [
    ("2^{131072}", 2 ** 131072),                     # exponent * log2(base) at the bound
    ("2^{131071}+1", 2 ** 131071 + 1),               # an integer of exactly 131072 bits
    ("2^{65535}\\cdot2^{65535}", 2 ** 131070),       # a product whose factors have 131072 bits together
    ("(-1)^{1000000}", 1), ("1^{200000}", 1), ("0^{3}", 0),   # powers of -1, 0 and 1 never grow
    ("10000!", math.factorial(10000)),
    ("\\binom{5}{2}^{2}", 100),                      # latex2sympy computes one small power itself: allowed
    ("1" + "0" * 1999, 10 ** 1999),                  # 2000 characters
    ("(" * 100 + "7" + ")" * 100, 7),                # nested 100 deep
    ("+".join(["\\frac{1}{2}"] * 51), 25.5),         # 102 brace pairs side by side are not nesting
], ids=lambda v: v[:24] if isinstance(v, str) else "")   # (an int over 4300 digits has no str())
def test_mathv_latex_values_up_to_the_bounds(text, value):
    assert mathv.latex_value(text) == value


@pytest.mark.parametrize("text,reason", [
    ("3^{100000}", "power too large"),                       # 158,497 bits
    ("2^{131072}+2^{131072}", "integer too large"),
    ("2^{65536}\\cdot2^{65536}", "product too large"),
    ("10001!", "factorial argument too large"),
    ("\\binom{2^{5000}}{2}", "latex2sympy would compute a large value itself"),   # one power of four digits
    ("1" + "0" * 2000, "expression too long to parse"),
    ("(" * 101 + "7" + ")" * 101, "expression too long to parse"),
    ("(1+" * 101 + "1" + ")" * 101, "expression too long to parse"),
], ids=lambda v: v[:24])
def test_mathv_latex_values_past_the_bounds_are_refused(text, reason):
    with pytest.raises(mathv.TooLarge, match=reason):
        mathv.latex_value(text)


def test_mathv_float_overflow_is_the_reference_error():
    with pytest.raises(OverflowError):   # eval raises it too: "not equal"
        mathv.latex_value("1.5^{300000}")


@pytest.mark.parametrize("expression,name", [("factorial(100000)", "factorial"), ("comb(100000, 3)", "comb"),
                                             ("perm(100000, 3)", "perm")])
def test_mathv_large_combinatorics_are_refused_before_they_are_computed(monkeypatch, expression, name):
    import latex2sympy2

    calls = []
    monkeypatch.setitem(mathv._MATH_NAMES, name, lambda *args: calls.append(args))
    monkeypatch.setattr(latex2sympy2, "latex2sympy", lambda text: expression)
    with pytest.raises(mathv.TooLarge, match=f"{name} argument too large"):
        mathv.latex_value("x")
    assert calls == []


def test_mathv_evaluator_semantics_of_parsed_expressions(monkeypatch):
    import latex2sympy2

    parsed = {}
    monkeypatch.setattr(latex2sympy2, "latex2sympy", lambda text: parsed[text])
    parsed.update({"a": "comb(20, 20001)", "b": "1 < 3 < 2", "c": "1 < 2 < 3", "d": "2 < 1 < 3"})
    assert mathv.latex_value("a") == 0          # only the first argument bounds the size
    assert mathv.latex_value("b") is False      # chained comparisons, as Python evaluates them
    assert mathv.latex_value("c") is True
    assert mathv.latex_value("d") is False


# ---------------------------------------------------------------- scoring lines and loading the benchmark
def test_mathv_score_lines_regenerates_answers_and_reads_ground_truth_by_id():
    truth = {"39": {"answer": "A", "options": YELLOW, "subject": "logic", "level": 3},
             "250": {"answer": "4.8", "options": None, "subject": "metric geometry - length", "level": 5}}
    lines = [{"id": 39, "response": "The cube is red, so the answer is (A).", "model_answer": "b"},
             {"id": 250, "response": "So r = \\frac{24}{5}"},
             {"id": 250}]
    judged, scores = mathv.score_lines(lines, truth)
    assert [(j["model_answer"], j["correct"]) for j in judged] == [("a", True), ("\\frac{24}{5}", True), ("", False)]
    assert [(j["subject"], j["level"]) for j in judged] == [("logic", 3), ("metric geometry - length", 5)] + [
        ("metric geometry - length", 5)]
    assert scores["-all"] == "2/3=66.67%" and scores["logic_level3"] == "1/1=100.0%"
    # a stored model_answer is kept when regeneration is off, and judged by its option text
    kept, _ = mathv.score_lines([{"id": "39", "response": "(B)", "model_answer": "red"}], truth, regen_answer=False)
    assert kept[0]["model_answer"] == "red" and kept[0]["correct"] is True
    with pytest.raises(ValueError) as missing:
        mathv.score_lines([{"id": 7, "response": "6", "answer": "6"}])
    assert str(missing.value) == "Math-V line 7: no ground truth (level, options, subject); pass the benchmark data"


def test_mathv_loader_of_a_test_file(tmp_path):
    records = [{"id": 1, "question": "<image1>\nWhat is $x$?", "options": [], "answer": "0.25", "level": 2,
                "subject": "algebra", "image": "images/1.jpg"},
               {"id": 2, "question": "Which one?\n<image1>", "options": ["1", "2"], "answer": "B", "level": 1,
                "subject": "logic", "image": "images/2.jpg"},
               {"id": 3, "question": "How many?", "options": [], "answer": "-3", "level": 1,
                "subject": "counting", "image": "images/3.jpg"}]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    problems = mathv.load_mathv(tmp_path)
    assert [(p["pid"], p["answer"], p["answer_type"], p["precision"]) for p in problems] == [
        ("1", "0.25", "float", 2), ("2", "2", "text", None), ("3", "-3", "integer", None)]
    assert problems[0]["query"] == mv.HINT_FLOAT[2] + "\nQuestion: What is $x$?"
    assert problems[1]["query"] == mv.HINT_MULTI_CHOICE + "\nQuestion: Which one?\nChoices:\n(A) 1\n(B) 2"
    assert problems[2]["query"] == mv.HINT_INTEGER + "\nQuestion: How many?"
    assert problems[0]["image_path"] == str((tmp_path / "images/1.jpg").resolve())


def test_mathv_read_records(tmp_path):
    (tmp_path / "test.jsonl").write_text('{"id": "1", "answer": "A"}\n\n{"id": "2", "answer": "é"}\n',
                                         encoding="utf-8")
    assert [r["id"] for r in mathv.read_records(tmp_path)] == ["1", "2"]        # test.jsonl when no testmini
    assert mathv.read_records(tmp_path / "test.jsonl")[1]["answer"] == "é"
    (tmp_path / "testmini.jsonl").write_text('{"id": "3"}\n{"id": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"testmini\.jsonl:2: not JSON \("):
        mathv.read_records(tmp_path)
    with pytest.raises(FileNotFoundError) as missing:
        mathv.read_records(tmp_path / "nothing")
    assert str(missing.value) == f"Math-V data not found: {tmp_path / 'nothing'}"


@needs_mathv
def test_mathv_loader_fields():
    problems = {p["pid"]: p for p in mathv.load_mathv(MATHV_DIR)}
    assert len(problems) == 304
    hint_mc = mv.HINT_MULTI_CHOICE
    assert problems["39"] == {
        "benchmark": "mathv", "pid": "39",
        "question": "Ingrid has 4 red, 3 blue, 2 green and 1 yellow cube. She uses them to build the following "
                    "object: Cubes with the same colour don't touch each other. Which colour is the cube with the "
                    "question mark?",
        "image": "images/39.jpg", "image_path": str((MATHV_DIR / "images/39.jpg").resolve()),
        "choices": YELLOW, "unit": None, "precision": None, "answer": "red",
        "question_type": "multi_choice", "answer_type": "text",
        "query": hint_mc + "\nQuestion: Ingrid has 4 red, 3 blue, 2 green and 1 yellow cube. She uses them to build "
                 "the following object: Cubes with the same colour don't touch each other. Which colour is the "
                 "cube with the question mark?\nChoices:\n(A) red\n(B) blue\n(C) green\n(D) Yellow\n"
                 "(E) This cannot be worked out for certain.",
        "metadata": {"language": "english", "source": "Math-V", "category": "math-targeted-vqa", "task": "logic",
                     "context": "math competition figure", "grade": "level 3", "skills": ["logic"]},
        "record": {"id": "39", "question": "Ingrid has 4 red, 3 blue, 2 green and 1 yellow cube. She uses them to "
                   "build the following object:\n<image1>\nCubes with the same colour don't touch each other. Which "
                   "colour is the cube with the question mark?", "options": YELLOW, "answer": "A",
                   "subject": "logic", "level": 3, "image": "images/39.jpg"},
    }
    float_hint = mv.HINT_FLOAT[1]
    assert {k: problems["250"][k] for k in ("question_type", "answer_type", "precision", "answer", "choices")} == {
        "question_type": "free_form", "answer_type": "float", "precision": 1, "answer": "4.8", "choices": None}
    assert problems["250"]["query"].startswith(float_hint + "\nQuestion: A right-angled triangle")
    assert problems["250"]["query"].endswith("inscribed semicircle shown?")
    assert (problems["4"]["answer_type"], problems["4"]["precision"]) == ("integer", None)
    assert problems["4"]["query"] == (mv.HINT_INTEGER + "\nQuestion: How many different digits can you find in "
                                      "this picture?")
    # a letter or a tuple without options is free-form text
    assert [(problems[i]["answer_type"], problems[i]["answer"]) for i in ("59", "2955")] == [("text", "C"),
                                                                                           ("text", "(3,-4)")]
    assert problems["59"]["query"].startswith("Hint: Please answer the question and provide the final answer at the "
                                              "end.\nQuestion: In the picture above")
    assert problems["44"]["question"] == ("Florian has 10 equally long metal strips with equally many holes. He bolts "
                                          "the metal strips together in pairs. Now he has five long strips (see the "
                                          "diagram). Which of the long strips is the shortest?")
    # a JSONL file instead of the folder: images resolve beside it; a limit keeps the first lines
    first = mathv.load_mathv(MATHV_DIR / "testmini.jsonl", limit=2)
    assert [p["pid"] for p in first] == ["4", "5"]
    assert first[0]["image_path"] == problems["4"]["image_path"]
    # the right letter or value as the whole response is right for every item; the right option's text
    # is right for 235 of them, as the reference judges it (LaTeX options such as "$\\Delta, \\square,
    # \\bullet$" do not survive the extraction)
    truth = {p["pid"]: p["record"] for p in problems.values()}
    letters = [{"id": pid, "response": p["record"]["answer"]} for pid, p in problems.items()]
    assert mathv.score_lines(letters, truth)[1]["-all"] == "304/304=100.0%"
    texts = [{"id": pid, "response": p["answer"]} for pid, p in problems.items()]
    _, scores = mathv.score_lines(texts, truth)
    assert scores["-all"] == "235/304=77.3%"
