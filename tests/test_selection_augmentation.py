import json
import random

import pytest

from mathllava.data import synthetic
from mathllava.augment import AugmentSettings, augment
from mathllava.augment.programmatic import rule_rephrase, rule_underspecify
from mathllava.data.imagestats import ClarityRules, defects, image_stats
from mathllava.data.ingest import ingest_source
from mathllava.data.selection import (SamplingPlan, SelectSettings, even_quota, level_targets, score_images,
                                      stratified_sample)

CLARITY = ClarityRules(max_blockiness=1.45)


@pytest.mark.parametrize("kind,defect", [("blur", "blur"), ("noise", "noise"), ("tiny", "low resolution")])
def test_clarity_flags_degraded_images(tmp_path, kind, defect):
    rng = random.Random(3)
    scene = synthetic._bar_scene(rng, 2)
    clean = synthetic._bar_render(scene, 224)
    clean.save(tmp_path / "clean.png")
    synthetic.degrade(clean, kind, rng).save(tmp_path / "bad.png")
    assert defects(image_stats(str(tmp_path / "clean.png")), CLARITY) == []
    assert defect in defects(image_stats(str(tmp_path / "bad.png")), CLARITY)


def test_level_targets_follow_proportions_and_keep_all_top_level():
    plan = SamplingPlan(target_size=100, proportions=(2, 3, 4, 1), seed=0)
    plenty = level_targets({0: 500, 1: 500, 2: 500, 3: 5}, plan)
    assert plenty[3] == 5                       # every scarce level-3 image kept
    assert sum(plenty.values()) == 100
    assert plenty[0] < plenty[1] < plenty[2]    # 2:3:4 over the rest
    assert abs(plenty[2] / plenty[0] - 2.0) < 0.1
    short = level_targets({0: 3, 1: 500, 2: 500, 3: 0}, plan)
    assert short[0] == 3 and sum(short.values()) == 100   # the shortfall goes to other levels


def test_level_targets_keep_all_top_level_up_to_its_share_and_the_tolerance():
    plan = SamplingPlan(target_size=100, seed=0)
    assert level_targets({0: 100, 1: 100, 2: 100, 3: 14}, plan)[3] == 14
    out = level_targets({0: 100, 1: 100, 2: 100, 3: 30}, plan)
    assert out[3] == 15 and sum(out.values()) == 100   # 10% share + 5% tolerance


def test_even_quota_spreads_over_sources():
    assert even_quota({"a": 100, "b": 100, "c": 100}, 30) == {"a": 10, "b": 10, "c": 10}
    assert even_quota({"a": 2, "b": 100, "c": 100}, 30) == {"a": 2, "b": 14, "c": 14}
    assert sum(even_quota({"a": 1, "b": 1}, 10).values()) == 2


@pytest.fixture(scope="module")
def scored(small_dataset):
    manifest, _ = ingest_source(small_dataset, small_dataset.parent / "images")
    cfg = SelectSettings(clarity=CLARITY, complexity={"cuts": (3.4, 3.8, 4.4)}, scorer={"enabled": False},
                         sampling={"target_size": 40, "seed": 1})
    scored, report, model = score_images(manifest, cfg)
    assert report["method"] == "rules" and model is None
    return scored


def test_scoring_finds_the_unclear_images(scored):
    truth = scored["clear_label"].astype(bool)
    assert (truth == scored["clear"]).mean() > 0.85
    assert (~scored.loc[~truth, "clear"]).mean() >= 0.6


def test_stratified_sample_drops_unclear_and_spreads_sources(scored):
    fitted = scored
    selection, rep = stratified_sample(fitted, SamplingPlan(target_size=40, seed=1))
    assert len(selection) == rep["selected"] == 40
    assert selection["clear"].all()
    top = len(fitted[fitted["clear"] & (fitted["complexity"] == 3)])
    # level 3 is kept whole up to its 10% share plus the 5% tolerance of the 40
    assert len(selection[selection["complexity"] == 3]) == min(top, int(40 * 0.1 + 0.05 * 40))
    again, _ = stratified_sample(fitted, SamplingPlan(target_size=40, seed=1))
    assert list(again["id"]) == list(selection["id"])


def test_augmentation_answers_match_the_scene(small_dataset):
    manifest, _ = ingest_source(small_dataset, small_dataset.parent / "images")
    seeds = manifest.iloc[:30]
    out, report = augment(seeds, AugmentSettings(seed=2, per_seed={"askimg": 2}), progress=False)
    assert report["generator"] == "programmatic" and report["kept"] == len(out) - len(seeds)
    aug = out[out["aug_type"] != "original"]
    assert set(aug["aug_type"]) == {"new_question", "harder", "rephrased", "underspecified"}
    assert set(aug["parent_id"]) <= set(seeds["id"])
    assert set(aug["generator"]) == {"programmatic"} and out.loc[:29, "generator"].isna().all()
    assert out["id"].is_unique
    for _, row in aug.iterrows():
        parent = seeds.set_index("id").loc[row["parent_id"]]
        scene = json.loads(parent["scene"])
        specs = {s.key: s for s in synthetic.scene_questions(
            scene["template"], {k: v for k, v in scene.items() if k not in ("template", "seed", "level")}, scene["seed"])}
        assert row["answer"] == specs[row["question_key"]].answer
        if row["aug_type"] in ("rephrased", "underspecified"):
            assert row["answer"] == parent["answer"] and row["question"] != parent["question"]
        if row["aug_type"] == "harder":
            assert specs[row["question_key"]].steps >= 2


def test_rule_based_rewrites_for_items_without_a_scene():
    assert rule_underspecify("As shown in the figure, given that AB = 4, what is x?") == "What is x?"
    assert rule_underspecify("What is x?") is None
    assert rule_rephrase("In the figure, what is x?", random.Random(0)).endswith("what is x?")
