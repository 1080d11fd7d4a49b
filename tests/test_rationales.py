"""Rationales, the fifth augmentation: verified against the known answer under the benchmark's rules,
computed from synthetic scenes, asked of a model generator over HTTP, exported as training text; and a
model that reasons before answering is scored exactly as one that answers directly."""

import json
from collections import Counter

import pandas as pd
import pytest

from augment_helpers import ScriptedServer, image_names, manifest, settings
from mathllava.augment import AugmentSettings, augment
from mathllava.augment.rationales import scene_rationale, verify
from mathllava.evaluation.benchmarks import get as get_benchmark
from mathllava.formats import export_llava, llava_record
from mathllava.settings import parse

INTEGER = {"pid": "1", "question": "How many bars?", "answer": "4", "question_type": "free_form",
           "answer_type": "integer", "choices": None, "precision": None, "unit": None}
FLOAT = {"pid": "2", "question": "How long is the diagonal?", "answer": "5.4", "question_type": "free_form",
         "answer_type": "float", "choices": None, "precision": 1, "unit": None}
CHOICE = {"pid": "3", "question": "Which fruit is highest?", "answer": "pears", "question_type": "multi_choice",
          "answer_type": "text", "choices": ["apples", "pears", "plums"], "precision": None, "unit": None}


@pytest.mark.parametrize("problem, text, reason", [
    (INTEGER, "Counting the bars: 1, 2, 3, 4.\nThe answer is 4.", None),
    (INTEGER, "Counting the bars: 1, 2, 3.\nThe answer is 3.", "wrong_final_answer"),
    (INTEGER, "Counting the bars: 1, 2, 3, 4.\nSo there are 4 bars.", "malformed_rationale"),
    (INTEGER, "Counting the bars: 1, 2, 3, 4.\nThe answer is 4.\nI hope this helps.", "malformed_rationale"),
    (INTEGER, "The answer is 4.", "no_steps"),
    (INTEGER, "", "malformed_rationale"),
    (FLOAT, "Diagonal = √(2² + 5²) = √29 ≈ 5.39.\nThe answer is 5.4", None),     # the final period is optional
    (FLOAT, "Diagonal = √(2² + 5²) = √29.\nThe answer is 5.3.", "wrong_final_answer"),
    (CHOICE, "The tallest bar is pears.\npears is option (B).\nThe answer is B.", None),
    (CHOICE, "The tallest bar is apples.\nThe answer is A.", "wrong_final_answer"),
    (CHOICE, "The tallest bar is pears.\nThe answer is pears.", None),   # MathVista matches the option text too
])
def test_verify_keeps_a_right_final_answer_and_drops_wrong_or_malformed_ones(problem, text, reason):
    assert verify(problem, text) == reason


@pytest.fixture(scope="module")
def synthetic_rows(tmp_path_factory):
    from mathllava.data.ingest import SourceSpec, ingest_many
    from mathllava.data.synthetic import GeneratorConfig, generate

    out = tmp_path_factory.mktemp("rationale-data")
    path = generate(out, GeneratorConfig(n_images=240, seed=21, image_size=64, unclear_fraction=0.0))
    rows, _ = ingest_many([SourceSpec(annotations=str(path), image_root=str(out / "images"), name="s")])
    return rows


def test_every_synthetic_question_gets_a_computed_rationale_that_verifies(synthetic_rows):
    from mathllava.evaluation.runner import problem_from_row

    keys = Counter()
    for row in synthetic_rows.to_dict("records"):
        text = scene_rationale(row)
        assert text is not None, (row["source"], row["question_key"], row["question"])
        lines = text.split("\n")
        assert len(lines) >= 2 and lines[-1].startswith("The answer is ")
        assert verify(problem_from_row(row), text) is None, text
        keys[(row["source"], row["question_key"])] += 1
    assert len({source for source, _ in keys}) == 12   # every template
    # the steps are computed from the scene: another scene gives another answer, which verify refuses
    row = next(r for r in synthetic_rows.to_dict("records") if r["source"] == "synth-barchart"
               and r["question_key"] == "total")
    scene = json.loads(row["scene"])
    scene["values"] = [v + 1 for v in scene["values"]]
    assert verify(problem_from_row(row), scene_rationale({**row, "scene": json.dumps(scene)})) == "wrong_final_answer"


def test_programmatic_rationales_are_added_per_seed_and_exported_as_the_answer_turn(synthetic_rows, tmp_path,
                                                                                    monkeypatch):
    seeds = synthetic_rows.head(24)
    cfg = parse(AugmentSettings, {"per_seed": {"askimg": 0, "compq": 0, "rephq": 1, "simpq": 0, "rationale": 1},
                                  "progress": False}, "augment")
    curated, report = augment(seeds, cfg)
    rationale = curated[curated["aug_type"] == "rationale"]
    assert len(rationale) == 24 and set(rationale["parent_id"]) == set(seeds["id"])
    assert report["kept_by_aug_type"]["rationale"] == 24 and report["dropped"] == {}
    record = next(r for r in json.loads(export_llava(curated.to_dict("records"), tmp_path / "x").read_text())
                  if r["metadata"].get("aug_type") == "rationale")
    seed = next(r for r in curated.to_dict("records") if r["id"] == record["metadata"]["parent_id"])
    assert record["conversations"][1]["value"] == scene_rationale(seed)
    assert record["conversations"][0]["value"] == llava_record(seed, "x")["conversations"][0]["value"]  # same query
    # a step generator that gets a scene wrong has its rationale dropped, with the reason counted
    import mathllava.augment.rationales as rationales

    original = rationales.scene_rationale
    monkeypatch.setattr(rationales, "scene_rationale",
                        lambda row: original(row).rsplit("\n", 1)[0] + "\nThe answer is 999999."
                        if row["id"] == seeds["id"].iloc[0] else original(row))
    curated, report = augment(seeds, cfg)
    assert (curated["aug_type"] == "rationale").sum() == 23 and report["dropped"] == {"wrong_final_answer": 1}


def test_a_model_generator_s_rationales_are_verified_not_judged(tmp_path):
    """Over HTTP (the scripted server's recorded replies): the bar's rationale ends in the right
    answer and is kept, the triangle's gives a wrong option and is dropped, the count's has no
    final-answer line and is dropped as malformed; none goes to the consistency judge."""
    rows = manifest(tmp_path / "mysrc")
    cfg = settings("http://placeholder/v1", tmp_path / "cache",
                   per_seed={"askimg": 0, "compq": 0, "rephq": 0, "simpq": 0, "rationale": 1})
    with ScriptedServer(image_names(tmp_path / "mysrc")) as server:
        cfg["endpoint"]["base_url"] = server.url
        curated, report = augment(rows, parse(AugmentSettings, cfg, "parameters.augment"))
        assert len(server.received) == 3    # one rationale request per seed, no judge request
    assert report["dropped"] == {"wrong_final_answer": 1, "malformed_rationale": 1}
    kept = curated[curated["aug_type"] == "rationale"]
    assert list(kept["parent_id"]) == ["mysrc-bar"] and list(kept["answer"]) == ["7"]
    record = llava_record(kept.iloc[0].to_dict(), "x.png")
    assert record["conversations"][1]["value"].endswith("\nThe answer is 7.")
    assert record["conversations"][1]["value"].startswith("The bars show 2, 3, 7 and 3.")


# ------------------------------------------------ reasoning before answering scores as answering directly

def _mathvista_problem(base: dict) -> dict:
    from mathllava.evaluation.mathvista import build_query

    return {**base, "query": build_query(base["question"], base["question_type"], base["answer_type"],
                                         base["precision"], base["choices"]),
            "metadata": {"language": "english", "source": "s", "category": "c", "task": "t", "context": "c",
                         "grade": "g", "skills": ["s"]}}


@pytest.mark.parametrize("problem, direct, final", [
    (INTEGER, "4", "4"), (INTEGER, "3", "3"), (FLOAT, "5.4", "5.4"), (FLOAT, "5.3", "5.3"),
    (CHOICE, "B", "B"), (CHOICE, "A", "A"),
])
def test_mathvista_scores_a_reasoned_answer_as_the_direct_one(problem, direct, final):
    problems = [_mathvista_problem(problem)]
    benchmark = get_benchmark("mathvista")
    plain = benchmark.judge(problems, [direct]).predictions[problem["pid"]]
    reasoned = benchmark.judge(problems, [f"First I read the figure.\nThen I compute.\nThe answer is {final}."]
                               ).predictions[problem["pid"]]
    assert (plain["prediction"], plain["true_false"]) == (reasoned["prediction"], reasoned["true_false"])
    assert plain["true_false"] == (direct in ("4", "5.4", "B"))


@pytest.mark.parametrize("answer, options, direct", [
    ("C", ["1", "2", "3", "4", "5"], "C"), ("C", ["1", "2", "3", "4", "5"], "A"),
    ("12", [], "12"), ("12", [], "13"), ("\\frac{1}{2}", [], "0.5"),
])
def test_mathv_scores_a_reasoned_answer_as_the_direct_one(answer, options, direct):
    problem = {"pid": "7", "record": {"answer": answer, "options": options, "subject": "arithmetic", "level": 1}}
    benchmark = get_benchmark("mathv")
    plain = benchmark.judge([problem], [direct]).predictions[0]
    reasoned = benchmark.judge([problem], [f"Each side is 5, so I add them.\nThe answer is {direct}."]).predictions[0]
    assert plain["correct"] == reasoned["correct"]
    assert plain["correct"] == (direct in ("C", "12", "0.5"))


def test_evaluation_sets_drop_nothing_when_a_frame_has_no_rationale_column():
    """A curated frame without rationales exports the direct target text (the default path)."""
    row = pd.Series({"id": "a", "question": "How many?", "answer": "3", "question_type": "free_form",
                     "answer_type": "integer", "image_path": "/x.png", "rationale": float("nan")}).to_dict()
    assert llava_record(row, "x.png")["conversations"][1]["value"] == "3"
