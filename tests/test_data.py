import json
import random
from collections import defaultdict

import pytest
from PIL import Image

from mathllava.data import synthetic
from mathllava.formats import parse_gpt_turn, parse_human_turn
from mathllava.data.ingest import ImageLimits, ingest_source, manifest_digest
from mathllava.paths import UnsafePathError, resolve_image_path
from mathllava.data.validation import ValidationRules, validate_manifest


def test_generator_is_deterministic(tmp_path):
    cfg = synthetic.GeneratorConfig(n_images=24, seed=5, image_size=96)
    a = synthetic.generate(tmp_path / "a", cfg)
    b = synthetic.generate(tmp_path / "b", cfg)
    assert a.read_text() == b.read_text()
    rec = json.loads(a.read_text())[3]
    assert (tmp_path / "a" / "images" / rec["image"]).read_bytes() == (tmp_path / "b" / "images" / rec["image"]).read_bytes()


def test_generator_covers_five_task_types_with_two_templates_each():
    by_task = defaultdict(set)
    for t in synthetic.TEMPLATES.values():
        by_task[t.task].add(t.source)
    assert set(by_task) == {"FQA", "GPS", "MWP", "TQA", "VQA"}
    assert all(len(v) >= 2 for v in by_task.values())


def test_records_follow_llava_format_with_metadata(small_dataset):
    records = json.loads(small_dataset.read_text())
    assert len(records) == 96
    for rec in records:
        human, gpt = rec["conversations"]
        assert human["from"] == "human" and human["value"].startswith("<image>\n")
        assert gpt["from"] == "gpt"
        meta = rec["metadata"]
        assert meta["question_type"] in ("multi_choice", "free_form")
        assert 0 <= meta["complexity"] <= 3
        assert (small_dataset.parent / "images" / rec["image"]).is_file()
        if meta["question_type"] == "multi_choice":
            assert meta["answer"] in meta["choices"]
            assert meta["choices"][ord(gpt["value"]) - ord("A")] == meta["answer"]
    unclear = [r for r in records if not r["metadata"]["clear"]]
    assert unclear and all(r["metadata"]["degradation"] in synthetic.DEGRADATIONS for r in unclear)


def test_answers_are_computed_from_the_scene():
    rng = random.Random(0)
    for _ in range(20):
        scene = synthetic._bar_scene(rng, 2)
        specs = {s.key: s for s in synthetic._bar_questions(scene, random.Random(1))}
        assert specs["highest"].answer == scene["categories"][scene["values"].index(max(scene["values"]))]
        assert specs["total"].answer == str(sum(scene["values"]))
        tri = synthetic._triangle_scene(rng, 1)
        third = {s.key: s for s in synthetic._triangle_questions(tri, random.Random(1))}["third_angle"]
        assert int(third.answer) == 180 - tri["angles"][0] - tri["angles"][1]


def test_parse_turns():
    parsed = parse_human_turn("<image>\nHint: pick one.\nQuestion: Which is red? (Unit: cm)\nChoices:\n(A) ball\n(B) box")
    assert parsed == {"question": "Which is red?", "choices": ["ball", "box"], "unit": "cm"}
    assert parse_gpt_turn("The answer is B", ["ball", "box"]) == "box"
    assert parse_gpt_turn("The answer is 100", None) == "100"
    assert parse_gpt_turn("7", None) == "7"


def test_resolve_image_path_refuses_escapes(tmp_path):
    (tmp_path / "ok").mkdir()
    assert resolve_image_path(tmp_path, "ok/a.png") == (tmp_path / "ok" / "a.png").resolve()
    for bad in ["../secret.png", "ok/../../x.png", "/etc/passwd", "", "C:/x.png"]:
        with pytest.raises(UnsafePathError):
            resolve_image_path(tmp_path, bad)
    (tmp_path / "ok" / "link").symlink_to("/etc")
    with pytest.raises(UnsafePathError):
        resolve_image_path(tmp_path, "ok/link/passwd")


def _write_bad_source(tmp_path):
    root = tmp_path / "images"
    (root / "src").mkdir(parents=True)
    Image.new("RGB", (80, 80), "red").save(root / "src" / "good.png")
    Image.new("RGB", (400, 400), "blue").save(root / "src" / "huge.png")
    (root / "src" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    conv = [{"from": "human", "value": "<image>\nHow many?"}, {"from": "gpt", "value": "3"}]
    records = [
        {"id": "good", "image": "src/good.png", "conversations": conv},
        {"id": "good", "image": "src/good.png", "conversations": conv},          # duplicate id
        {"id": "escape", "image": "../../etc/passwd", "conversations": conv},     # path traversal
        {"id": "missing", "image": "src/nope.png", "conversations": conv},
        {"id": "corrupt", "image": "src/corrupt.png", "conversations": conv},
        {"id": "huge", "image": "src/huge.png", "conversations": conv},
        {"id": "noconv", "image": "src/good.png"},                                # wrong schema
        {"id": "noanswer", "image": "src/good.png",
         "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "  "}]},
        "not even an object",
    ]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return path, root


def test_bad_input_is_quarantined_with_reasons_and_nothing_is_lost(tmp_path):
    path, root = _write_bad_source(tmp_path)
    manifest, ingest_q = ingest_source(path, root, "bad", ImageLimits(max_pixels=100_000), task="MWP")
    assert set(ingest_q["reason"].str.split(":").str[0]) == {"unsafe image path", "missing conversations",
                                                             "record is not an object", "missing answer"}
    assert set(ingest_q["stage"]) == {"ingest"} and ingest_q["origin"].str.startswith(str(path)).all()
    outcome = validate_manifest(manifest, ValidationRules(max_failure_rate=1.0))
    flat = " | ".join(outcome.quarantine["reason"])
    assert "duplicate id" in flat and "image does not decode" in flat
    assert list(outcome.valid["id"]) == ["good"]
    # every input record is accounted for: valid + quarantined at ingest + quarantined at validation
    assert len(outcome.valid) + len(ingest_q) + len(outcome.quarantine) == 9
    huge = manifest.set_index("id").loc["huge"]
    assert not huge["image_ok"] and huge["image_error"].startswith("decompression bomb refused: 400x400")
    assert manifest.set_index("id").loc["missing", "image_error"] == f"image file missing: {root.resolve() / 'src' / 'nope.png'}"
    # each quarantine reason names the row's own image fault, not a generic one
    reasons = outcome.quarantine.set_index("id")["reason"]
    assert reasons["missing"].startswith("image file missing") and reasons["huge"].startswith("decompression bomb")
    assert outcome.counts_by_reason["duplicate id"] == 1


def test_validation_accepts_clean_manifest_and_logs_gx_result(small_dataset):
    manifest, quarantine = ingest_source(small_dataset, small_dataset.parent / "images")
    assert quarantine.empty and manifest["image_ok"].all()
    outcome = validate_manifest(manifest, ValidationRules(min_side=16))
    assert outcome.passed and outcome.quarantine.empty and len(outcome.valid) == len(manifest)
    assert {r["expectation_config"]["type"] for r in outcome.result["results"]} >= {
        "expect_column_values_to_be_unique", "expect_column_values_to_be_in_set", "expect_column_values_to_be_between"}


def test_manifest_digest_is_order_independent(small_dataset):
    manifest, _ = ingest_source(small_dataset, small_dataset.parent / "images")
    assert manifest_digest(manifest) == manifest_digest(manifest.iloc[::-1])
    changed = manifest.copy()
    changed.loc[0, "answer"] = "something else"
    assert manifest_digest(changed) != manifest_digest(manifest)
