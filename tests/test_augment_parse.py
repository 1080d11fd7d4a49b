"""Strict reply parsing and the quality filters, on the hand-written recorded replies
(tests/data/augment/recorded_replies.json) and a few more broken ones; settings and prompts."""

import json

import pytest

from augment_helpers import RECORDED
from mathllava.augment import filters, parse, prompts
from mathllava.augment.config import AugmentSettings, FilterSettings
from mathllava.settings import parse as parse_settings

R = RECORDED["replies"]


def test_good_replies_parse_whole():
    bar = parse.parse_items(R["bar"]["askimg"], 4)
    assert [i["question"] for i in bar] == ["What is the value of the smallest bar?", "What is the sum of all bar values?",
                                            "What is the value of the largest bar?", "What is the value of the second bar?"]
    assert [i["answer"] for i in bar] == ["2", "15", "7", "3.50"]           # a JSON number becomes its text
    assert [i["answer_type"] for i in bar] == ["integer", "integer", None, "float"]
    assert parse.parse_items(R["bar"]["askimg"], 2) == bar[:2]            # items beyond the number asked: ignored
    fenced = parse.parse_items(R["bar"]["compq"], 1)                       # prose around one ```json block
    assert fenced == [{"question": "What is the difference between the largest and the smallest bar values?",
                       "choices": None, "answer": "5", "answer_type": "integer"}]
    tri = parse.parse_items(R["tri"]["askimg"], 4)
    assert tri[0]["choices"] == ["AB", "BC", "CA"] and tri[0]["answer"] == "B"
    assert parse.parse_texts(R["count"]["simpq"], 1) == ["How many circles?"]


@pytest.mark.parametrize("reply,reason", [
    (R["bar"]["simpq"], "not_json"),                    # prose, no JSON
    (R["tri"]["compq"], "bad_schema"),                  # answer null
    (R["count"]["askimg"], "empty"),
    ("   \n", "empty"),
    ('{"questions": []}', "bad_schema"),
    ('[{"question": "What is x?", "answer": "1"}]', "bad_schema"),     # a list, not {"questions": [...]}
    ('{"questions": [{"question": "What is x?", "answer": "1"}, "What is y?"]}', "bad_schema"),
    ('{"questions": [{"question": "What is x?", "answer": "1"}, {"question": "", "answer": "2"}]}', "bad_schema"),
    ('{"questions": [{"question": "Which?", "choices": ["a"], "answer": "A"}]}', "bad_schema"),
    ('{"questions": [{"question": "Which?", "choices": ["a", "a"], "answer": "A"}]}', "bad_schema"),
    ('{"questions": [{"question": "What is x?", "answer": "1", "answer_type": "number"}]}', "bad_schema"),
    ('{"questions": [{"question": "What is x?", "answer": true}]}', "bad_schema"),
    ('```json\n{"questions": [{"question": "a?", "answer": "1"}]}\n```\n```json\n{}\n```', "not_json"),
    ('{"questions": [{"question": "What is x?", "answer": "1"}', "not_json"),         # cut off mid-reply
])
def test_broken_replies_are_refused_whole(reply, reason):
    """One broken item refuses the reply: the good first item is not kept (never half-parsed)."""
    with pytest.raises(parse.Malformed) as err:
        parse.parse_items(reply, 4)
    assert err.value.reason == reason


def test_text_replies():
    assert parse.parse_texts('{"questions": ["  What   is x? ", "What is y?"]}', 1) == ["What is x?"]
    for reply in ('{"questions": [{"question": "q"}]}', '{"questions": [""]}', "What is x?"):
        with pytest.raises(parse.Malformed):
            parse.parse_texts(reply, 1)


def test_answer_type_check():
    mc = {"question": "Which side?", "choices": ["AB", "BC", "CA"], "answer_type": None}
    assert filters.typed_answer({**mc, "answer": "(B)"})["answer"] == "BC"
    assert filters.typed_answer({**mc, "answer": "B."})["question_type"] == "multi_choice"
    assert filters.typed_answer({**mc, "answer": "D"}) == "answer_type"          # no option D
    assert filters.typed_answer({**mc, "answer": "BC"}) == "answer_type"         # the text, not the letter
    assert filters.typed_answer({**mc, "answer": "B", "answer_type": "integer"}) == "answer_type"
    free = {"question": "What is x?", "choices": None}
    assert filters.typed_answer({**free, "answer": "12", "answer_type": None})["answer_type"] == "integer"
    assert filters.typed_answer({**free, "answer": "-3", "answer_type": "integer"})["answer"] == "-3"
    as_float = filters.typed_answer({**free, "answer": "3.50", "answer_type": "float"})
    assert (as_float["answer"], as_float["precision"], as_float["answer_type"]) == ("3.50", 2, "float")
    assert filters.typed_answer({**free, "answer": "90", "answer_type": "float"})["answer"] == "90.0"
    assert filters.typed_answer({**free, "answer": "3.5", "answer_type": "integer"}) == "answer_type"
    assert filters.typed_answer({**free, "answer": "thirty degrees", "answer_type": "text"}) == "answer_type"
    assert filters.typed_answer({**free, "answer": "7 cm", "answer_type": None}) == "answer_type"


def test_length_bounds():
    rules = FilterSettings(min_question_chars=10, max_question_chars=40, max_answer_chars=5)
    assert filters.length_reason("Largest?", "1", rules) == "too_short"
    assert filters.length_reason("x" * 41, "1", rules) == "too_long"
    assert filters.length_reason("What is the value?", "123456", rules) == "answer_too_long"
    assert filters.length_reason("What is the value?", "12345", rules) is None


def test_duplicates_per_image_and_against_the_seed():
    seen = filters.ImageQuestions(0.9)
    seen.add("Which angle is the largest?", "90 degrees")                     # the seed
    assert seen.reason("which angle is the LARGEST ", "90 degrees") == "duplicate"   # normalised
    assert seen.reason("Which angle is the largest?", "60 degrees") == "duplicate"   # a contradiction too
    assert seen.reason("Which angle is largest?", "90 degrees") == "near_duplicate"
    assert seen.reason("Which angle is largest?", "60 degrees") is None      # close wording, another question
    assert seen.reason("Which side is the longest?", "BC") is None
    seen.add("Which side is the longest?", "BC")
    assert seen.reason("Which side is longest?", "BC") == "near_duplicate"
    seen.add("What is the value of the largest bar?", "7")
    assert seen.reason("What is the value of the smallest bar?", "2") is None
    assert filters.ImageQuestions(1.0).reason("anything", "1") is None


@pytest.mark.parametrize("item,reply,agree", [
    ({"question_type": "free_form", "answer_type": "integer", "answer": "5"}, "The answer is 5", True),
    ({"question_type": "free_form", "answer_type": "integer", "answer": "5"}, "There are 2 and 3, so 5.", True),
    ({"question_type": "free_form", "answer_type": "integer", "answer": "5"}, "14", False),
    ({"question_type": "free_form", "answer_type": "integer", "answer": "5"}, "I cannot tell.", False),
    ({"question_type": "free_form", "answer_type": "float", "answer": "3.50", "precision": 2}, "3.5", True),
    ({"question_type": "free_form", "answer_type": "float", "answer": "3.50", "precision": 2}, "3.56", False),
    ({"question_type": "multi_choice", "answer_type": "text", "answer": "BC", "choices": ["AB", "BC", "CA"]}, "(B)", True),
    ({"question_type": "multi_choice", "answer_type": "text", "answer": "BC", "choices": ["AB", "BC", "CA"]}, "BC", True),
    ({"question_type": "multi_choice", "answer_type": "text", "answer": "BC", "choices": ["AB", "BC", "CA"]}, "A", False),
    # text that is merely close to an option is no answer (the evaluation would guess the nearest)
    ({"question_type": "multi_choice", "answer_type": "text", "answer": "BC", "choices": ["AB", "BC", "CA"]}, "bc?", False),
])
def test_consistency_agreement(item, reply, agree):
    assert filters.agrees({"question": "q", "choices": None, **item}, reply) is agree


def test_exemplars_are_one_per_kmeans_cluster():
    groups = [[f"What is the value of bar {i}?" for i in range(6)], [f"How many {x} are there?" for x in "abcdef"],
              [f"Which angle is larger, {i} or {i + 1}?" for i in range(6)], [f"Find the area of square {i}." for i in range(6)],
              [f"Is the line number {i} parallel?" for i in range(6)]]
    questions = [q for g in groups for q in g]
    chosen = prompts.choose_exemplars(questions, k=5, seed=0)
    assert len(chosen) == 5 and sorted({i // 6 for i in chosen}) == [0, 1, 2, 3, 4]   # one per topic
    assert prompts.choose_exemplars(questions, k=5, seed=0) == chosen                  # deterministic
    assert prompts.choose_exemplars(["a?", "a?", "b?"], k=5) == [0, 2]                 # fewer than k: all distinct


def test_prompts_carry_the_task_and_the_schema():
    seed = {"question": "Which angle is the largest?", "choices": ["30", "60", "90"], "answer": "90"}
    assert prompts.askimg(5, [{"question": "How many?", "choices": None, "answer": "3"}]).startswith("Task: AskImg.")
    assert "1. Question: How many? Answer: 3" in prompts.askimg(5, [{"question": "How many?", "answer": "3"}])
    for name, build in prompts.PROMPTS.items():
        text = build(2, seed)
        assert text.startswith(f"Task: {dict(compq='CompQ', rephq='RephQ', simpq='SimpQ')[name]}.")
        assert "Question: Which angle is the largest?\nChoices: (A) 30; (B) 60; (C) 90\nAnswer: 90" in text
        assert "JSON only" in text
    query = prompts.judge({"question": "Which side?", "question_type": "multi_choice", "answer_type": "text",
                           "choices": ["AB", "BC"]})
    assert "Question: Which side?\nChoices:\n(A) AB\n(B) BC" in query


def test_settings_refuse_a_literal_key_and_name_the_path(monkeypatch):
    endpoint = {"base_url": "http://127.0.0.1:1/v1", "model": "m"}
    with pytest.raises(ValueError, match=r"cfg.yaml: parameters.augment.endpoint: .*literal `api_key`"):
        parse_settings(AugmentSettings, {"generator": "endpoint", "endpoint": {**endpoint, "api_key": "sk-x"}},
                       "parameters.augment", "cfg.yaml")
    with pytest.raises(ValueError, match=r"parameters.augment.filters.consistency.endpoint: .*literal `token`"):
        parse_settings(AugmentSettings, {"filters": {"consistency": {"judge": "endpoint",
                                                                     "endpoint": {**endpoint, "token": "t"}}}},
                       "parameters.augment")
    with pytest.raises(ValueError, match=r"parameters.augment: .*generator is endpoint but endpoint: is not set"):
        parse_settings(AugmentSettings, {"generator": "endpoint"}, "parameters.augment")
    with pytest.raises(ValueError, match=r"parameters.augment.endpoint.base_url|must be an http"):
        parse_settings(AugmentSettings, {"generator": "endpoint", "endpoint": {**endpoint, "base_url": "x"}},
                       "parameters.augment")
    with pytest.raises(ValueError, match=r"parameters.augment.per_seed.askimg"):
        parse_settings(AugmentSettings, {"per_seed": {"askimg": -1}}, "parameters.augment")
    with pytest.raises(ValueError, match=r"parameters.augment.new_per_image: Extra inputs"):
        parse_settings(AugmentSettings, {"new_per_image": 2}, "parameters.augment")
    cfg = parse_settings(AugmentSettings, {"generator": "endpoint", "endpoint": {**endpoint, "api_key_env": "AUG_KEY"}},
                         "parameters.augment")
    monkeypatch.delenv("AUG_KEY", raising=False)
    with pytest.raises(ValueError, match=r"parameters.augment.endpoint.api_key_env: .*AUG_KEY is not set"):
        cfg.endpoint.api_key()
    monkeypatch.setenv("AUG_KEY", "sk-from-env")
    assert cfg.endpoint.api_key() == "sk-from-env"
    assert "sk-from-env" not in json.dumps(cfg.model_dump())
    paper = AugmentSettings().per_seed                     # the paper's ratio: 40K seeds -> 320K new pairs
    assert 40_000 * sum(paper.count(g) for g in ("askimg", "compq", "rephq", "simpq")) == 320_000


def _items(*questions):
    return json.dumps({"questions": list(questions)})


_Q = {"question": "How many bars?", "answer": "3"}


@pytest.mark.parametrize("reply, message", [
    ("", "empty: empty reply"),
    ("   \n", "empty: empty reply"),
    ("```json\n{}\n```\n```json\n{}\n```", "not_json: more than one fenced block"),
    ("[1, 2", "not_json: Expecting ',' delimiter: line 1 column 6 (char 5)"),
    ("[1, 2]", 'bad_schema: expected an object with a "questions" list'),
    ('{"questions": {}}', 'bad_schema: expected an object with a "questions" list'),
    ('{"questions": []}', "bad_schema: no questions"),
    (_items("just text"), "bad_schema: questions[0] must be an object"),
    (_items(_Q, {"answer": "3"}), "bad_schema: questions[1].question must be a string"),
    (_items({"question": "  ", "answer": "3"}), "bad_schema: questions[0].question is empty"),
    (_items({"question": "Q?", "answer": True}), "bad_schema: questions[0].answer must be a string"),
    (_items({**_Q, "choices": ["only"]}), "bad_schema: questions[0].choices must be a list of 2 to 26 options or null"),
    (_items({**_Q, "choices": [str(i) for i in range(27)]}),
     "bad_schema: questions[0].choices must be a list of 2 to 26 options or null"),
    (_items({**_Q, "choices": "A, B"}), "bad_schema: questions[0].choices must be a list of 2 to 26 options or null"),
    (_items({**_Q, "choices": ["1", None]}), "bad_schema: questions[0].choices must be a string"),
    (_items({**_Q, "choices": ["1", " 1 "]}), "bad_schema: questions[0].choices repeat an option"),
    (_items({**_Q, "answer_type": "number"}),
     "bad_schema: questions[0].answer_type must be one of ('integer', 'float', 'text')"),
])
def test_a_malformed_item_reply_names_what_is_wrong(reply, message):
    """The drop report shows the detail: which question, which field, which rule."""
    with pytest.raises(parse.Malformed) as err:
        parse.parse_items(reply, 4)
    assert str(err.value) == message
    assert err.value.reason == message.split(":")[0] and err.value.detail == message.split(": ", 1)[1]


def test_choices_from_two_to_twenty_six_are_accepted():
    """The bounds of a multiple-choice question: 2 and 26 options (A to Z) are fine."""
    for count in (2, 26):
        items = parse.parse_items(_items({**_Q, "choices": [f"option {i}" for i in range(count)]}), 1)
        assert len(items[0]["choices"]) == count


@pytest.mark.parametrize("reply, message", [
    (_items("Q one?", ""), "bad_schema: questions[1] is empty"),
    (_items("Q one?", ["list"]), "bad_schema: questions[1] must be a string"),
])
def test_a_malformed_text_reply_names_the_question(reply, message):
    with pytest.raises(parse.Malformed) as err:
        parse.parse_texts(reply, 4)
    assert str(err.value) == message
