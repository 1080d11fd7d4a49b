"""Data-recipe experiments: the typed config, arms at equal compute, the intervals and paired
differences, and a whole experiment killed mid-run and resumed (only the missing cells train), with its
MLflow parent run, nested runs, registered cell models and report."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT
from mathllava.experiment.config import ArmSettings, ExperimentSettings, load
from mathllava.experiment.stats import summarize

TEST_CONFIG = ROOT / "configs" / "experiments" / "recipe-test.yaml"


# ------------------------------------------------------------------------------------------ statistics

def test_identical_arms_differ_by_exactly_zero_and_a_better_arm_s_interval_excludes_zero():
    rng = np.random.default_rng(0)
    base = (rng.random((3, 200)) < 0.4).astype(int)
    better = base.copy()
    flip = np.flatnonzero(base[0] == 0)[:30]          # 30 problems right in every seed that were wrong
    better[:, flip] = 1
    out = summarize({"random": base, "same": base.copy(), "better": better}, "random", resamples=500, seed=1)
    same, gain = out["differences"]["same"], out["differences"]["better"]
    assert (same["mean"], same["low"], same["high"], same["se"]) == (0.0, 0.0, 0.0, 0.0)
    assert not same["excludes_zero"]
    assert gain["mean"] == pytest.approx((better - base).mean() * 100) and gain["excludes_zero"] and gain["low"] > 0
    assert out["arms"]["random"]["low"] < out["arms"]["random"]["mean"] < out["arms"]["random"]["high"]
    assert out["arms"]["better"]["per_seed"] == pytest.approx(list(better.mean(axis=1) * 100))
    assert "random" not in out["differences"]


def test_the_paired_difference_is_tighter_than_the_arms_own_intervals_and_mde_shrinks_with_more_data():
    rng = np.random.default_rng(3)
    hard = rng.random(300) < 0.5                      # problems both arms find hard: shared variation
    a = np.array([(~hard & (rng.random(300) < 0.9)) for _ in range(3)]).astype(int)
    b = a.copy()
    b[:, :12] = 1
    small = summarize({"a": a, "b": b}, "a", resamples=400)
    width = small["differences"]["b"]["high"] - small["differences"]["b"]["low"]
    assert width < small["arms"]["a"]["high"] - small["arms"]["a"]["low"]
    big = summarize({"a": np.tile(a, (2, 4)), "b": np.tile(b, (2, 4))}, "a", resamples=400)
    assert big["differences"]["b"]["mde"] < small["differences"]["b"]["mde"]


def test_arms_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match="same seeds × problems"):
        summarize({"a": np.zeros((3, 10)), "b": np.zeros((2, 10))}, "a", resamples=100)


# ------------------------------------------------------------------------------------------ config

def _write(tmp_path, **changes) -> Path:
    data = yaml.safe_load(TEST_CONFIG.read_text())
    data.update(changes)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("changes, message", [
    ({"arms": [{"name": "random", "selection": "random", "aug": []}, {"name": "b", "selection": "stratified"}]},
     "arms.0.aug: Extra inputs are not permitted"),
    ({"reference": "nope"}, "reference 'nope' is not one of the arms"),
    ({"arms": [{"name": "random", "selection": "random"}, {"name": "x", "selection": "random",
                                                            "augment": ["harder", "rationales"]}]}, "arms.1.augment.1"),
    ({"seeds": [1, 1]}, "seeds repeat"),
    ({"compute": {"steps": 0, "batch_size": 8, "seq_len": 128}}, "compute.steps"),
    ({"base_config": "configs/nope.yaml"}, "configs/nope.yaml: no such base_config"),
    ({"parameters": {"trian": {}}}, "parameters.trian: not a section an experiment uses"),
    ({"parameters": {"train": {"lerning_rate": 1}}}, "parameters.train.lerning_rate: Extra inputs"),
    ({"arms": [{"name": "Random Arm", "selection": "random"}, {"name": "b", "selection": "random"}]}, "arms.0.name"),
])
def test_a_bad_experiment_config_names_the_file_and_key(tmp_path, changes, message):
    with pytest.raises(ValueError) as err:
        load(_write(tmp_path, **changes))
    assert message in str(err.value) and "exp.yaml" in str(err.value)


def test_a_yaml_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nseeds: [0, 1\nreference: random\n")
    with pytest.raises(ValueError, match=r"broken.yaml: line \d+, column \d+: not valid YAML"):
        load(path)


def test_the_recipe_configs_load_with_the_base_config_s_sections():
    settings, recipe = load(ROOT / "configs" / "experiments" / "recipe.yaml")
    assert [a.name for a in settings.arms] == ["random", "stratified", "augmented", "rationales"]
    assert len(settings.seeds) >= 3 and settings.reference == "random"
    assert recipe.select.sampling.target_size == 500 and recipe.model.base is None   # configs/local.yaml's
    settings, recipe = load(ROOT / "configs" / "experiments" / "recipe-test.yaml")
    assert recipe.augment.per_seed.askimg == 1   # the experiment's parameters win over the base config's
    # the GPU file is the same format on the 7B recipe: here it stops only at the checkpoint this machine lacks
    with pytest.raises(ValueError, match=r"parameters.model.base: .*/models/llava-1.5-7b-hf' is not a llava-hf"):
        load(ROOT / "configs" / "experiments" / "recipe-gpu-7b.yaml")
    gpu = ExperimentSettings.model_validate(yaml.safe_load((ROOT / "configs" / "experiments" /
                                                            "recipe-gpu-7b.yaml").read_text()))
    assert [a.name for a in gpu.arms] == ["random", "stratified", "augmented", "rationales"] and len(gpu.seeds) == 3


# ------------------------------------------------------------------------------------------ arms

def test_an_arm_turns_on_only_its_augmentations_with_the_recipe_s_counts():
    from mathllava.augment import AugmentSettings
    from mathllava.experiment.arms import augment_settings

    base = AugmentSettings.model_validate({"per_seed": {"askimg": 3, "compq": 2, "rephq": 1, "simpq": 1}})
    arm = ArmSettings(name="a", selection="stratified", augment=["harder", "rationale"])
    per_seed = augment_settings(arm, base, seed=5).per_seed
    assert per_seed.model_dump() == {"askimg": 0, "compq": 2, "rephq": 0, "simpq": 0, "rationale": 1}
    assert augment_settings(arm, base, seed=5).seed == 5


def test_random_selection_draws_whole_images_per_seed(tmp_path):
    from mathllava.experiment.arms import random_sample

    pool = pd.DataFrame({"image_path": [f"i{k // 2}" for k in range(40)], "id": range(40)})
    a, b, again = random_sample(pool, 5, 1), random_sample(pool, 5, 2), random_sample(pool, 5, 1)
    assert a["image_path"].nunique() == 5 and len(a) == 10           # both rows of each image
    assert a.equals(again) and set(a["image_path"]) != set(b["image_path"])


def test_evaluation_drops_every_image_any_arm_trains_on(tmp_path):
    from mathllava.experiment.ablation import evaluation_sets

    settings = ExperimentSettings.model_validate({
        **yaml.safe_load(TEST_CONFIG.read_text()), "evaluate": {"heldout": True, "math_v_dir": None}})
    heldout = pd.DataFrame({"id": ["h1", "h2", "h3"], "image_sha256": ["s1", "s2", "s3"], "question": ["q"] * 3,
                            "answer": ["1"] * 3, "question_type": ["free_form"] * 3, "answer_type": ["integer"] * 3,
                            "image_path": ["/a", "/b", "/c"]})
    sets = evaluation_sets(settings, heldout, seen={"s2"})
    assert [p["pid"] for p in sets["heldout"]] == ["h1", "h3"]
    with pytest.raises(ValueError, match="no evaluation problem left"):
        evaluation_sets(settings, heldout, seen={"s1", "s2", "s3"})


def test_equal_compute_pads_every_batch_to_the_same_width():
    import torch

    from mathllava.train.trainer import trainer_classes

    _, Collator = trainer_classes()
    short = {"input_ids": np.array([5, 6]), "labels": np.array([5, 6]), "pixels": None}
    long = {"input_ids": np.arange(1, 40), "labels": np.arange(1, 40), "pixels": None}
    for batch in ([short], [short, long]):
        out = Collator(0, None, 64)(batch)
        assert out["input_ids"].shape == (len(batch), 64) and int(out["attention_mask"][0].sum()) == 2
        assert (out["labels"][0, 2:] == -100).all() and torch.equal(out["input_ids"][0, 2:], torch.zeros(62).long())
    assert Collator(0, None)([short, long])["input_ids"].shape == (2, 39)   # without it: the longest


# ------------------------------------------------------------------------------------------ end to end

def _done(folder: Path) -> list[Path]:
    return sorted(folder.glob("cells/*/seed-*/result.json"))


@pytest.mark.slow
def test_a_killed_experiment_reruns_only_the_missing_cells(tmp_path):
    """The test experiment (2 arms × 2 seeds) killed with SIGKILL once a cell has finished, then run
    again: only the cells without a result train; one MLflow parent run holds one finished nested run
    per cell, each cell's model is a registered version, and the report names them."""
    from mlflow.tracking import MlflowClient

    out, uri = tmp_path / "exp", f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)   # artifacts beside the store, not in the working directory
    client.create_experiment("mathllava-experiment-recipe-test", artifact_location=(tmp_path / "artifacts").as_uri())
    command = [sys.executable, "-m", "mathllava.cli", "experiment", "run", "--config", str(TEST_CONFIG),
               "--out", str(out), "--tracking-uri", uri]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    deadline = time.monotonic() + 600
    while not _done(out) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    log = first.communicate()[0].decode(errors="replace")
    finished = len(_done(out))
    assert 1 <= finished < 4, log[-3000:]

    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert len(report["trained"]) == 4 - finished and len(report["reused"]) == finished
    assert f"Cells trained in this run: {4 - finished}; reused: {finished}." in again.stdout
    assert "| random |" in again.stdout and "| rationales |" in again.stdout and (out / "comparison.png").stat().st_size

    # equal compute: every cell the same steps x batch x padded width; the rationale arm's data has rationales
    cells = {(c["arm"], c["seed"]): c for c in report["cells"]}
    assert {c["train"]["positions"] for c in cells.values()} == {6 * 8 * 192}
    assert {c["train"]["global_step"] for c in cells.values()} == {6}
    assert cells[("rationales", 0)]["by_aug_type"]["rationale"] > 0 and "rationale" not in cells[("random", 0)]["by_aug_type"]
    assert cells[("random", 0)]["data_digest"] != cells[("random", 1)]["data_digest"]   # seeds draw other images
    summary = report["sets"]["heldout"]
    assert set(summary["arms"]) == {"random", "rationales"} and set(summary["differences"]) == {"rationales"}

    experiment = client.get_experiment_by_name("mathllava-experiment-recipe-test")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"     # the rerun continued the same parent
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    done = [r for r in nested if r.info.status == "FINISHED"]
    assert sorted(r.info.run_name for r in done) == sorted(f"{a}/seed-{s}" for a in ("random", "rationales")
                                                           for s in (0, 1))
    assert all(r.info.status == "KILLED" for r in nested if r not in done)   # a cell the kill interrupted
    assert {"experiment/report.md", "experiment/comparison.png"} <= {
        f.path for f in client.list_artifacts(parents[0].info.run_id, "experiment")}
    assert "experiment/heldout/rationales_minus_random/mean" in parents[0].data.metrics
    for cell in report["cells"]:   # lineage: each cell's model a registered version, its dataset an input
        version = client.get_model_version("mathllava-recipe-test", cell["mlflow"]["model_version"])
        assert version.tags["arm"] == cell["arm"] and version.tags["dataset_digest"] == cell["data_digest"]
        run = client.get_run(cell["mlflow"]["run_id"])
        assert run.inputs.dataset_inputs[0].dataset.digest == cell["data_digest"]

    # any cell can be promoted like a pipeline model: it becomes the challenger, then the registry compares
    # on the base config's promotion sets (Math-V testmini in ../shared/data; without it nothing moves)
    promoted = subprocess.run([sys.executable, "-m", "mathllava.cli", "experiment", "promote", "--config",
                               str(TEST_CONFIG), "--out", str(out), "--tracking-uri", uri, "--cell", "rationales/seed-1"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if (ROOT.parent / "shared" / "data" / "math-v-testmini" / "images").is_dir():
        assert promoted.returncode == 0, promoted.stdout[-2000:] + promoted.stderr[-2000:]
        version = cells[("rationales", 1)]["mlflow"]["model_version"]
        assert str(client.get_model_version_by_alias("mathllava-recipe-test", "champion").version) == version
    else:
        assert promoted.returncode == 2 and "error: no evaluation set" in promoted.stderr
        assert not client.get_registered_model("mathllava-recipe-test").aliases   # no challenger was set
    wrong = subprocess.run([sys.executable, "-m", "mathllava.cli", "experiment", "promote", "--config",
                            str(TEST_CONFIG), "--out", str(out), "--tracking-uri", uri, "--cell", "rationales/seed-7"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert wrong.returncode == 2 and "no cell 'rationales/seed-7'" in wrong.stderr
