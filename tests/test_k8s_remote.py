"""The pipeline's train step on a cluster (`train.launcher: kubeflow`): inputs staged on the shared
volume, a TrainJob whose own script trains (the test plays the operator by running it), the model
back as the step's output; and the GPU-hours estimate counted in a local copy of the data."""

import json
import os
import sys
import threading
from pathlib import Path

import pytest
import yaml

from test_k8s_launcher import Operator

TINY_SHAPE = dict(image_size=32, patch_size=16, vision_hidden=32, vision_layers=1, text_hidden=64, text_layers=1,
                  text_intermediate=128, vocab_size=500)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, small_dataset):
    from mathllava.train.tiny import TinyModelConfig, init_tiny

    records = yaml.safe_load(small_dataset.read_text())
    return init_tiny(tmp_path_factory.mktemp("base") / "tiny", TinyModelConfig(**TINY_SHAPE),
                     [t["value"] for r in records for t in r["conversations"]])


def test_inputs_already_on_the_shared_volume_are_not_copied(tmp_path):
    from mathllava.k8s.config import StorageSettings
    from mathllava.k8s.remote import stage_inputs

    shared = tmp_path / "shared"
    (shared / "models" / "base").mkdir(parents=True)
    (tmp_path / "local" / "images").mkdir(parents=True)
    (tmp_path / "local" / "images" / "a.png").write_bytes(b"png")
    (tmp_path / "local" / "data.jsonl").write_text("{}\n")
    storage = StorageSettings(pvc="shared", mount_path=str(shared), base=f"{shared}/x", data=f"{shared}/x.json",
                              image_root=f"{shared}/x", output=f"{shared}/runs")
    staged = stage_inputs(storage, "job-1", shared / "models" / "base", tmp_path / "local" / "data.jsonl",
                          tmp_path / "local" / "images")
    assert staged.base == str(shared / "models" / "base")            # already shared: used in place
    assert staged.data == f"{shared}/runs/job-1-inputs/data.jsonl"   # copied, keeping its format's suffix
    assert (Path(staged.image_root) / "a.png").read_bytes() == b"png"
    assert staged.output == storage.output and staged.pvc == "shared"


def test_estimate_counts_tokens_in_a_local_copy_of_the_data(tmp_path, tiny_base, small_dataset):
    from mathllava.k8s.config import ClusterTrainConfig
    from mathllava.k8s.estimate import count_tokens, estimate

    records = yaml.safe_load(small_dataset.read_text())
    n, tokens = count_tokens(small_dataset, tiny_base)
    text_only = tmp_path / "text.json"
    text_only.write_text(json.dumps([{k: v for k, v in r.items() if k != "image"} for r in records]))
    n2, text_tokens = count_tokens(text_only, tiny_base)
    image_tokens = (32 // 16) ** 2  # one placeholder per patch of the tiny tower
    assert n == n2 == len(records) and tokens - text_tokens == len(records) * image_tokens
    config = ClusterTrainConfig.model_validate({
        "job": {"image": "x", "nodes": 2, "gpus_per_node": 4},
        "storage": {"base": "s3://b/base", "data": "s3://b/d.json", "image_root": "s3://b/i", "output": "s3://b/o"},
        "train": {"epochs": 3},
        "estimate": {"local_data": str(small_dataset), "local_base": str(tiny_base),
                     "measured": {"samples_per_s": 10, "tokens_per_sample": 50, "gpus": 2}}})
    result = estimate(config)
    assert result.gpus == 8 and result.tokens_per_s_per_gpu == 250
    assert result.gpu_hours == pytest.approx(tokens * 3 / 250 / 3600)
    capped = estimate(config.model_copy(update={"train": config.train.model_copy(update={"max_steps": 10})}))
    samples = 10 * config.train.batch_size * 8
    assert capped.tokens_per_epoch == pytest.approx(samples * tokens / n) and capped.epochs == 1


# --- the pipeline's train step on a cluster, with an operator that runs the job's own script -------------------

def _run_node_script(kube, namespace, kind, workdir):
    """Play Kubeflow for one node: run the job's container script here, with the ConfigMap where the
    pod would mount it and the job's environment, then report the outcome in the job's status."""
    import subprocess

    from kubernetes import client

    operator = Operator(kube, namespace, kind)
    job = operator.job(timeout=600)
    name = job["metadata"]["name"]
    config_map = client.CoreV1Api(kube.api).read_namespaced_config_map(f"{name}-config", namespace)
    (workdir / "etc").mkdir()
    (workdir / "etc" / "train.yaml").write_text(config_map.data["train.yaml"])
    trainer = job["spec"]["trainer"]
    script = trainer["command"][2].replace("/etc/mathllava", str(workdir / "etc"))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
           **{e["name"]: e["value"] for e in trainer["env"] if "value" in e},
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=600)
    (workdir / "node.log").write_text(done.stdout + done.stderr)
    if done.returncode == 0:
        operator.condition(name, "Complete", "JobSetCompleted", "1/1 nodes succeeded")
    else:
        operator.condition(name, "Failed", "JobSetFailed", f"node-0 exited with code {done.returncode}")
    return name, done, script


@pytest.mark.slow
def test_the_train_step_trains_through_a_trainjob_and_returns_the_model(kube, namespace, tmp_path, small_dataset,
                                                                         tiny_base):
    """`train.launcher: kubeflow`: inputs staged on the shared volume, the TrainJob's own script runs
    `mathllava train` under torchrun, and the trained model comes back as the step's output."""
    from mathllava.k8s.config import ClusterLaunch
    from mathllava.train.config import TrainSettings
    from mathllava.train.launch import train

    shared = tmp_path / "shared"   # the PVC, mounted at the same path in the step and in the job
    records = yaml.safe_load(small_dataset.read_text())
    base = tiny_base
    job_config = {"job": {"name": "step", "image": "registry.local/mathllava-ops:cpu", "gpus_per_node": 0,
                          "shm_size": None, "cleanup": "always", "timeout_s": 600},
                  "storage": {"pvc": "shared", "mount_path": str(shared), "base": f"{shared}/unused",
                              "data": f"{shared}/unused.json", "image_root": f"{shared}/unused", "output": f"{shared}/runs"}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job_config))
    launch = ClusterLaunch(config=str(tmp_path / "job.yaml"), namespace=namespace, kubeconfig=str(kube.kubeconfig))
    settings = TrainSettings(epochs=1, max_steps=3, batch_size=8, learning_rate=0.003, device="cpu", logging_steps=1,
                             launcher="kubeflow", cache_dir=str(tmp_path / "local-cache"))
    box = {}
    thread = threading.Thread(target=lambda: box.update(zip(("name", "done", "script"), _run_node_script(
        kube, namespace, "trainjob", tmp_path))), daemon=True)
    thread.start()
    import mlflow

    # no tracking server here: the job's rank 0 would log into the step's server (an earlier module's,
    # stopped by now, when mlflow still points at it); a non-HTTP URI leaves the job's MLflow unset
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        result = train(base, small_dataset, small_dataset.parent / "images", tmp_path / "step-out", settings,
                       cluster=launch)
    except Exception as err:
        thread.join(timeout=600)
        log = (tmp_path / "node.log").read_text()[-3000:] if (tmp_path / "node.log").exists() else "(no node log)"
        raise AssertionError(f"{err}\n--- the node's output:\n{log}") from err
    finally:
        mlflow.set_tracking_uri(before)
    thread.join(timeout=600)
    assert box["done"].returncode == 0, (tmp_path / "node.log").read_text()[-3000:]
    name = box["name"]
    assert result.model_dir == shared / "runs" / name / "model"
    assert (result.model_dir / "config.json").is_file() and result.summary["global_step"] == 3
    assert result.summary["world_size"] == 1 and result.summary["samples"] == len(records)
    staged = shared / "runs" / f"{name}-inputs"   # the step's inputs were put where the job read them ...
    assert f"--data {staged}/data.json" in box["script"] and f"--base {staged}/base" in box["script"]
    assert not staged.exists()                    # ... and went with the job (cleanup: always)
    assert not Operator(kube, namespace, "trainjob").exists(name)  # cleanup: always
    assert not (tmp_path / "local-cache").exists()  # the job encodes on its own storage, not the step's cache
