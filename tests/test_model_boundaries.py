"""Boundaries of the model lifecycle that a one-character slip would move: the Math-V leading-letter
rule, the registry gate's strictness, truncation at a turn boundary, the encoded-data cache key, the
--resume identity, and promotion's re-check and audit record. Fast: no training; the registry tests use
a real local MLflow server, as tests/test_registry_promotion.py does."""

import json
import os

import pytest

from conftest import unique_name
from mathllava.evaluation import mathv
from mathllava.registry.promotion import (CHALLENGER, CHAMPION, PREVIOUS, PromotionConflict, history, promote,
                                          show)
from mathllava.registry.versions import gate
from mathllava.train.config import TrainSettings
from mathllava.train.data import encode_conversation
from mathllava.train.encoded import cache_key
from mathllava.train.runner import RunConflict, _identity, check_output, write_identity


# ---------------------------------------------------------------- evaluation
@pytest.mark.parametrize("response, expected", [
    ("Each side is 5", "5"),                    # a word starting with E is not option E
    ("Each side has length 5", "eachsidehaslength5"),
    ("Draw the diagonal; it is 7", "7"),
    ("A", "a"),
    ("(B)", "b"),
    ("C.", "c"),
    ("B\nbecause the bars are taller", "b"),    # the letter alone on the first line
    ("(C)\nsince the angles add up", "c"),
    ("(D) D\nas shown", "d"),
    ("So the choice is (D).", "d"),
    ("It must be E.", "e"),
])
def test_mathv_leading_letter_must_stand_alone(response, expected):
    """Guards the leading-option-letter rule against taking a word's first letter ("Each" -> e)."""
    assert mathv.extract_model_answer(response) == expected


def test_mathv_a_word_starting_with_a_letter_is_not_that_choice():
    """Guards against judging "Each side is 5" as choice E: right for answer 5, wrong for answer E."""
    lines = [{"id": "1", "response": "Each side is 5", "answer": "E", "options": ["1", "2", "3", "4", "6"],
              "subject": "metric geometry - length", "level": 1},
             {"id": "2", "response": "Each side is 5", "answer": "5", "options": [],
              "subject": "metric geometry - length", "level": 1}]
    judged, _ = mathv.score_lines(lines)
    assert [line["correct"] for line in judged] == [False, True]


# ---------------------------------------------------------------- registry gate
def test_gate_a_tie_with_the_base_or_the_frequent_answer_fails():
    """Guards the gate's strict '>' (a `>=` would pass a fine-tune that only ties a baseline)."""
    assert not gate(40.0, 40.0, 10.0).passed                 # ties the frequent answer, margins 0
    assert not gate(40.0, 10.0, 40.0).passed                 # ties the base, margins 0
    assert not gate(40.0, 30.0, 10.0, min_margin_over_frequent=10.0).passed   # exactly on frequent + margin
    assert not gate(40.0, 10.0, 30.0, min_margin_over_base=10.0).passed       # exactly on base + margin
    assert gate(40.01, 40.0, 40.0).passed                    # just above both
    assert gate(40.01, 30.0, 30.0, min_margin_over_frequent=10.0, min_margin_over_base=10.0).passed
    assert gate(40.0, 40.0, 10.0).reasons[0] == "model 40.00 <= frequent-answer 40.00 + 0.00"


# ---------------------------------------------------------------- training data
THREE_TURNS = [{"from": "human", "value": "<image>\nHow many bars?"}, {"from": "gpt", "value": "12"},
               {"from": "human", "value": "Which is the tallest?"}, {"from": "gpt", "value": "B"},
               {"from": "human", "value": "And the shortest?"}, {"from": "gpt", "value": "C"}]


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    from mathllava.llava import load_processor
    from mathllava.train.tiny import TinyModelConfig, init_tiny

    cfg = TinyModelConfig(image_size=32, patch_size=16, vision_hidden=32, vision_layers=1, text_hidden=64,
                          text_layers=1, text_intermediate=128, vocab_size=400)
    texts = [t["value"] for t in THREE_TURNS]
    return load_processor(init_tiny(tmp_path_factory.mktemp("base") / "tiny", cfg, texts))


def test_truncation_keeps_every_turn_that_fits(processor):
    """Guards the cut at the LAST fitting turn boundary (two of three turns fit: both are kept, and counted)."""
    from mathllava.conversation import IGNORE_INDEX

    eos = processor.tokenizer.eos_token_id
    full = encode_conversation(processor, THREE_TURNS, True, 4, max_length=4096)
    assert full.status == "ok" and full.turns_kept == 3
    ends = [i + 1 for i, t in enumerate(full.labels) if t == eos]   # each answer closes with eos
    assert len(ends) == 3
    cut = encode_conversation(processor, THREE_TURNS, True, 4, max_length=ends[2] - 1)
    assert cut.status == "truncated" and cut.turns_kept == 2
    assert cut.input_ids == full.input_ids[:ends[1]] and cut.labels == full.labels[:ends[1]]
    learned = [t for t in cut.labels if t != IGNORE_INDEX]
    assert processor.tokenizer.decode(learned).split() == ["12</s>", "B</s>"]   # both answers, no third
    assert learned.count(eos) == cut.turns_kept


def test_encoded_cache_key_changes_when_an_image_is_replaced_in_place(tmp_path):
    """Guards the cache key's dependence on each image file itself, not only on its path."""
    data, root, model = tmp_path / "data.json", tmp_path / "images", tmp_path / "model"
    root.mkdir()
    model.mkdir()
    data.write_text("[]")
    image = root / "a.png"
    image.write_bytes(b"\x89PNG first version")
    stat = image.stat()
    key = cache_key(data, [image], root, model, 512)
    assert cache_key(data, [image], root, model, 512) == key
    image.write_bytes(b"\x89PNG the second, longer version")              # other bytes, other size
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))                # same modification time
    assert cache_key(data, [image], root, model, 512) != key
    image.write_bytes(b"\x89PNG first versioX")                             # other bytes, the same size
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # written 5 s later
    assert cache_key(data, [image], root, model, 512) != key


def test_resume_refuses_other_data_or_another_base_with_the_same_settings(tmp_path):
    """Guards check_output comparing the whole run identity (base, data digest), not only the settings."""
    base, other_base, root = tmp_path / "base", tmp_path / "other-base", tmp_path / "images"
    for folder in (base, other_base, root):
        folder.mkdir()
    data = tmp_path / "train.json"
    data.write_text('[{"id": 1}]')
    out = tmp_path / "out"
    settings = TrainSettings(epochs=1.0)
    first = _identity(base, data, root, settings)
    write_identity(out, first)
    assert check_output(out, _identity(base, data, root, settings), resume=True) is None   # the same run
    data.write_text('[{"id": 22}]')                                 # same path and settings, other data
    other_data = _identity(base, data, root, settings)
    assert other_data["data_sha256"] != first["data_sha256"]
    assert other_data["settings"] == first["settings"] and other_data["base"] == first["base"]
    with pytest.raises(RunConflict, match="data_sha256"):
        check_output(out, other_data, resume=True)
    data.write_text('[{"id": 1}]')
    with pytest.raises(RunConflict, match=r"\(base\)"):
        check_output(out, _identity(other_base, data, root, settings), resume=True)


# ---------------------------------------------------------------- promotion on a real MLflow registry
@pytest.fixture(scope="module")
def server(mlflow_server):
    return mlflow_server


def _version(uri, name, alias=None) -> str:
    """A new registered version (the scorer is scripted, so it needs no weights)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, source="s3://bucket/none", await_creation_for=0).version
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return version


def _aliases(uri, name):
    return {v.version: sorted(v.aliases) for v in show(name, uri) if v.aliases}


def test_a_challenger_moved_during_the_comparison_is_not_promoted(server, tmp_path):
    """Guards the re-check under the lock covering the challenger alias too, not only the champion."""
    from mlflow.tracking import MlflowClient

    name = unique_name("bounds-challenger-moved")
    v1, v2 = _version(server, name, CHAMPION), _version(server, name, CHALLENGER)
    v3 = _version(server, name)

    def evaluate_while_the_challenger_moves(client, model, versions):
        MlflowClient(server).set_registered_model_alias(name, CHALLENGER, v3)   # a newer challenger lands
        return {v1: {"mathv": 10.0}, v2: {"mathv": 50.0}}

    with pytest.raises(PromotionConflict, match=rf"challenger v{v2} -> v{v3}"):
        promote(name, evaluate_while_the_challenger_moves, {"mathv": 0.0}, tmp_path / "lock", server)
    assert _aliases(server, name) == {v1: [CHAMPION], v3: [CHALLENGER]}   # v3 keeps its alias, unscored
    assert history(name, server) == []


def test_the_audit_record_names_challenger_and_champion_the_right_way_round(server, tmp_path):
    """Guards the promotion record against swapping the challenger and champion versions."""
    from mlflow.tracking import MlflowClient

    name = unique_name("bounds-audit")
    v1, v2 = _version(server, name, CHAMPION), _version(server, name, CHALLENGER)
    scores = {v1: {"mathv": 10.0}, v2: {"mathv": 20.0}}
    decision, entry = promote(name, lambda client, model, versions: {v: scores[v] for v in versions},
                              {"mathv": 0.0}, tmp_path / "lock", server)
    assert decision.promote and _aliases(server, name) == {v1: [PREVIOUS], v2: [CHAMPION]}
    assert (entry["challenger"], entry["champion"]) == (v2, v1)
    assert entry["scores"] == {"mathv": {"challenger": 20.0, "champion": 10.0}}
    client = MlflowClient(server)
    for version in (v1, v2):   # the record on each moved version says the same
        tags = [json.loads(v) for k, v in client.get_model_version(name, version).tags.items()
                if k.startswith("audit.")]
        assert [(t["challenger"], t["champion"]) for t in tags] == [(v2, v1)]
    [event] = history(name, server)
    assert (event["event"], event["version"], event["challenger"], event["champion"]) == ("promote", v2, v2, v1)
    assert event["stages"] == {v1: "archived", v2: "production"}


def test_file_digest_is_read_again_when_the_file_changes_in_place(tmp_path):
    """Guards the memo of file digests: its key holds the size and the modification time, so a training file
    rewritten under the same path is hashed again (a stale digest would reuse another run's encoding)."""
    import hashlib

    from mathllava.train.encoded import file_digest

    path = tmp_path / "data.json"
    path.write_text("[1]")
    stat = path.stat()
    assert file_digest(path) == hashlib.sha256(b"[1]").hexdigest()
    path.write_text("[1, 2]")                                           # other size, the same mtime
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_digest(path) == hashlib.sha256(b"[1, 2]").hexdigest()
    path.write_text("[3]")                                              # the first size, a later mtime
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1000))
    assert file_digest(path) == hashlib.sha256(b"[3]").hexdigest()
