"""End to end: the real ZenML store, a real MLflow server and registry, the full DAG on a tiny config."""

import os

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow
MATHV = ROOT.parent / "shared" / "data" / "math-v-testmini"


@pytest.fixture(scope="module")
def stack(state_dir):
    from stacks import bootstrap

    bootstrap.main([])
    yield f"http://127.0.0.1:{os.environ['MLFLOW_PORT']}"
    from mathllava.localserver import stop

    stop(state_dir / "mlflow")


@pytest.fixture(scope="module")
def first_run(stack):
    import run

    return run.main(["--config", str(ROOT / "configs" / "test.yaml")])


def test_pipeline_runs_end_to_end_and_registers(first_run, stack):
    import mlflow
    from mlflow.tracking import MlflowClient

    info = first_run
    assert info["ingested"] == info["valid"] + info["quarantined"]
    assert info["selected"] == sum(int(v.split()[0]) for v in info["selected_by_level"].values())
    assert info["scorer"]["method"] == "learned"   # the labelled split trained the CNN scorer
    assert info["curated"] > info["selected"]
    assert set(info["augmented_by_type"]) == {"original", "new_question", "harder", "rephrased", "underspecified"}
    assert info["loss_last"] < info["loss_first"]

    mlflow.set_tracking_uri(stack)
    client = MlflowClient()
    name, version = info["model"].split(" v")
    mv = client.get_model_version(name, version)
    assert {"zenml_run_id", "dataset_digest", "git_commit", "heldout_accuracy", "gate_passed"} <= set(mv.tags)
    assert mv.tags["gate_passed"] == "True"  # register.promotion.auto: the first challenger becomes champion
    if MATHV.exists():
        assert client.get_model_version_by_alias(name, "champion").version == version
        assert info["promotion"]["promoted"] and info["promotion"]["champion_before"] is None
    else:   # nothing to score both versions on: the challenger stays, and the run says why
        assert info["promotion"] == {"promoted": False, "reasons": [
            "promotion skipped: no evaluation set: set promotion.eval.math_v_dir (with images/) or heldout_annotations"]}
    # the ZenML Model Control Plane: this run is a model version in production (staging when it could not be
    # compared), with its data and model
    from zenml.client import Client

    zmv = Client().get_model_version(name, "production" if MATHV.exists() else "staging")
    assert zmv.run_metadata["mlflow"]["version"] == version
    assert zmv.run_metadata["dataset_digest"] == mv.tags["dataset_digest"]
    assert {"curated_dataset"} <= set(zmv.data_artifact_ids) and {"model_dir"} <= set(zmv.model_artifact_ids)
    run = client.get_run(mv.run_id)
    # the experiment opens in MLflow's model-training view (runs and charts), not the GenAI one
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    for metric in ("eval/heldout/model_accuracy", "eval/heldout/frequent_accuracy", "eval/heldout/base_accuracy",
                   "data/validation_failure_rate", "data/selected", "data/curated_rows", "train/loss",
                   "data/scorer/complexity_exact", "data/scorer/clarity_accuracy", "data/selected_share_level_3",
                   "train/samples", "registry/gate_passed"):
        assert metric in run.data.metrics, metric
    assert any(k.startswith("train.") for k in run.data.params)
    assert [d.dataset.digest for d in run.inputs.dataset_inputs] == [mv.tags["dataset_digest"]]
    selection_files = {a.path for a in client.list_artifacts(run.info.run_id, "selection")}
    assert {"selection/complexity_confusion.png", "selection/levels_vs_targets.png",
            "selection/scorer.pt"} <= selection_files
    assert "validation/data_docs.html" in {a.path for a in client.list_artifacts(run.info.run_id, "validation")}
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/heldout_by_task.png" in artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "training")} == {"training/loss_curve.png"}
    model_files = {a.path.split("/")[-1] for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= model_files


def test_second_run_reuses_cached_steps(first_run):
    import run
    from zenml.client import Client

    info = run.main(["--config", str(ROOT / "configs" / "test.yaml")])
    assert {"train_model", "select_images", "validate_manifest", "evaluate_model"} <= set(info["cached_steps"])
    assert info["model"] == first_run["model"]  # nothing new to register when nothing changed
    runs = Client().list_pipeline_runs(pipeline_id=Client().get_pipeline("mathllava_training").id)
    assert runs.total >= 2


@pytest.mark.skipif(not MATHV.exists(), reason="no Math-V data")
def test_pipeline_model_on_mathv_local_and_served_alike(first_run, stack, tmp_path):
    """The registered model, fetched back from the MLflow registry, scored on all of Math-V testmini
    through the local backend and through `mathllava serve` + the HTTP client: the same predictions."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from mathllava.evaluation.backends import OpenAIChatBackend, TransformersBackend
    from mathllava.evaluation.benchmarks import get
    from mathllava.evaluation.harness import run_benchmark
    from mathllava.serve import BackgroundServer

    mlflow.set_tracking_uri(stack)
    name, version = first_run["model"].split(" v")
    run_id = MlflowClient().get_model_version(name, version).run_id
    model_dir = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model", dst_path=str(tmp_path))
    benchmark = get("mathv")
    problems = benchmark.load(ROOT.parent / "shared" / "data" / "math-v-testmini")
    assert len(problems) == 304
    local = run_benchmark(benchmark, problems, TransformersBackend(model_dir, batch_size=16, max_new_tokens=8),
                          tmp_path / "local", progress=False)
    with BackgroundServer(model_dir, model_name=name) as server:
        remote = run_benchmark(benchmark, problems, OpenAIChatBackend(server.url, name, max_tokens=8, concurrency=4),
                               tmp_path / "http", progress=False)
    keys = ("id", "response", "model_answer", "correct")
    assert [{k: line[k] for k in keys} for line in local.predictions] == \
           [{k: line[k] for k in keys} for line in remote.predictions]
    assert local.scores == remote.scores and local.scores["-all"].endswith("%")
    # the test configuration's model is too small to say much on Math-V (it mostly stops at once);
    # test_eval_backends checks the same identity on a model that emits text for every problem
    assert all(line["id"] == p["pid"] for line, p in zip(local.predictions, problems))


@pytest.mark.skipif(not MATHV.exists(), reason="no Math-V data: the promotion it checks cannot score")
def test_pipeline_fine_tunes_a_given_base_with_lora(first_run, stack, tmp_path):
    """`model.base` (a llava-hf directory) and `train.mode: lora`: the data steps come from the cache,
    the train step starts from the given base and registers a merged, plain llava-hf model."""
    import run
    import yaml
    from transformers import LlavaForConditionalGeneration
    from zenml.client import Client

    from mathllava.train.tiny import TinyModelConfig, init_tiny

    config = yaml.safe_load((ROOT / "configs" / "test.yaml").read_text())
    params = config["parameters"]
    base = init_tiny(tmp_path / "base", TinyModelConfig(**params["model"]["tiny"]), ["What is the value?"])
    # overrides on the command line, as `make run SET="..."` passes them
    info = run.main(["--config", str(ROOT / "configs" / "test.yaml"), "--set", f"model.base={base}",
                     "--set", "train.mode=lora", "--set", "train.lora={r: 8, alpha: 16}"])
    assert info["overrides"] == {"model.base": str(base), "train.mode": "lora", "train.lora": {"r": 8, "alpha": 16}}
    assert {"select_images", "augment_questions", "export_training_data"} <= set(info["cached_steps"])
    assert "train_model" not in info["cached_steps"] and info["model"] != first_run["model"]
    # the new challenger was compared with the first run's champion, on the same sets, in this run
    assert info["promotion"]["champion_before"] == first_run["model"].split(" v")[1]
    assert info["promotion"]["reasons"][0].startswith("mathv: challenger ")
    import mlflow

    run_id = Client().get_pipeline_run(info["run"]).steps["register_model"].outputs["registration"][0] \
        .load()["mlflow_run_id"]
    files = {a.path for a in mlflow.MlflowClient(stack).list_artifacts(run_id, "registry")}
    assert {"registry/comparison.json", "registry/comparison.png"} <= files
    # the overrides are recorded with the run, in MLflow and in ZenML
    params = mlflow.MlflowClient(stack).get_run(run_id).data.params
    assert params["override.train.mode"] == '"lora"' and params["override.train.lora"] == '{"r": 8, "alpha": 16}'
    assert Client().get_pipeline_run(info["run"]).run_metadata["overrides"]["train.mode"] == '"lora"'
    assert info["stage_now"] in ("production", "staging") and info["model_dir"].endswith("/model")
    # every ZenML model version's stage follows its MLflow alias
    from mathllava.registry.promotion import STAGES

    aliases = mlflow.MlflowClient(stack).get_registered_model("mathllava-test").aliases
    stage_of = {str(v): STAGES[a] for a, v in aliases.items()}
    for zmv in Client().list_model_versions(model_name_or_id="mathllava-test", size=100).items:
        linked = (zmv.run_metadata or {}).get("mlflow", {}).get("version")
        if linked in stage_of:
            assert (zmv.stage.value if hasattr(zmv.stage, "value") else zmv.stage) == stage_of[linked], linked
    steps = Client().get_pipeline_run(info["run"]).steps
    assert steps["train_model"].outputs["base_model"][0].load() == str(base)
    summary = steps["train_model"].outputs["train_summary"][0].load()
    assert summary["mode"] == "lora" and summary["loss_last"] < summary["loss_first"]
    model_dir = steps["train_model"].outputs["model_dir"][0].load()
    merged = LlavaForConditionalGeneration.from_pretrained(model_dir)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    with pytest.raises(SystemExit, match=r"with --set train.mode=qlora: train\.mode"):  # refused before any step
        run.main(["--config", str(ROOT / "configs" / "test.yaml"), "--set", "train.mode=qlora"])


def test_pipeline_augments_an_extra_source_through_the_configured_endpoint(stack, tmp_path):
    """A MathV360K-format extra source (no task anywhere) flows through ingest, validation, selection and
    the augment step, which asks the endpoint set in the config (a scripted OpenAI-compatible server on
    127.0.0.1); the exported training data carries the new pairs with their generator and parent."""
    import json

    import run
    import yaml
    from zenml.client import Client

    from augment_helpers import ScriptedServer, image_names, settings, write_source

    source = write_source(tmp_path / "mysrc")
    config = yaml.safe_load((ROOT / "configs" / "test.yaml").read_text())
    config["model"]["name"] = "mathllava-test-augment"
    params = config["parameters"]
    params["register"]["model_name"] = "mathllava-test-augment"
    params["data"]["extra_sources"] = [{"annotations": str(source), "image_root": str(source.parent),
                                        "name": "mysrc"}]
    params["select"]["scorer"]["enabled"] = False                    # the rules: every clear image is taken
    params["data"]["contamination"]["min_question_words"] = 8       # short questions match too
    params["select"]["sampling"]["target_size"] = 1000
    with ScriptedServer(image_names(source.parent)) as server:
        params["augment"] = {**settings(server.url, tmp_path / "cache"), "cache_dir": None}
        path = tmp_path / "augment.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        info = run.main(["--config", str(path)])
    assert info["failure_rate_by_dataset"]["mysrc"] == 0.0
    steps = Client().get_pipeline_run(info["run"]).steps
    curated = steps["augment_questions"].outputs["curated_dataset"][0].load()
    extra = curated[curated["dataset"] == "mysrc"]
    removed = steps["clean_manifest"].outputs["removed"][0].load()
    guarded = set(removed.loc[removed["stage"] == "contamination", "id"])
    if (ROOT.parent / "shared" / "data" / "mathvista-testmini").exists():
        # "What is the value of the largest bar?" is a MathVista testmini question, word for word
        assert "mysrc-bar" in guarded and "question matches mathvista-testmini" in " ".join(removed["reason"])
    seeds = {"mysrc-bar", "mysrc-tri", "mysrc-count"} - guarded
    assert set(extra.loc[extra["aug_type"] == "original", "id"]) == seeds
    assert set(extra.loc[extra["aug_type"] == "original", "task_type"]) == {"FQA"}   # from the record's metadata
    new = extra[extra["aug_type"] != "original"]
    assert len(new) > 0 and set(new["generator"]) == {f"endpoint:scripted@127.0.0.1:{server.httpd.server_port}"}
    assert set(new["parent_id"]) <= seeds and set(new["aug_type"]) <= {"new_question", "harder", "rephrased",
                                                                        "underspecified"}
    synthetic = curated[curated["dataset"] != "mysrc"]
    assert set(synthetic["generator"].dropna()) == {"programmatic"}   # scenes stay with the computed answers
    exported = steps["export_training_data"].outputs["training_data"][0].load()
    records = {r["id"]: r for r in json.loads((exported / "conversations.json").read_text())}
    for row in new.itertuples():
        assert records[row.id]["metadata"]["generator"] == row.generator
        assert records[row.id]["metadata"]["parent_id"] == row.parent_id
