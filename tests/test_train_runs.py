"""Fine-tuning runs of `mathllava train` from a tiny llava-hf base saved to disk: full and LoRA (merged),
a 2-process torchrun with DeepSpeed ZeRO-3 over gloo against a single process, and a SIGKILL
followed by --resume. All on CPU."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mathllava.train.tiny import TinyModelConfig, init_tiny

from conftest import ROOT

pytestmark = pytest.mark.slow
TINY = TinyModelConfig(image_size=32, patch_size=16, vision_hidden=32, vision_layers=1, text_hidden=64, text_layers=1,
                       text_intermediate=128, vocab_size=500)
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, "MLFLOW_DISABLE_TELEMETRY": "true",
       "PYTHONWARNINGS": "ignore", "DS_ACCELERATOR": "cpu"}
# Losses of the same global batch agree across world sizes up to float reduction order.
LOSS_TOLERANCE = 1e-3  # relative, per logged step


@pytest.fixture(autouse=True)
def _no_inherited_mlflow_run():
    """`mathllava train` logs wherever MLFLOW_TRACKING_URI points; mlflow.set_tracking_uri (the pipeline
    tests, the launcher test) leaves it in the environment, pointing at servers long stopped."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_") and k != "MLFLOW_DISABLE_TELEMETRY"}
    for key in saved:
        del os.environ[key]
    yield
    for key in [k for k in os.environ if k.startswith("MLFLOW_") and k != "MLFLOW_DISABLE_TELEMETRY"]:
        del os.environ[key]
    os.environ.update(saved)


@pytest.fixture(scope="module")
def base(tmp_path_factory, small_dataset):
    records = json.loads(small_dataset.read_text())
    return init_tiny(tmp_path_factory.mktemp("base") / "tiny", TINY,
                     [t["value"] for r in records for t in r["conversations"]])


@pytest.fixture(scope="module")
def data(small_dataset):
    return ["--data", str(small_dataset), "--image-root", str(small_dataset.parent / "images")]


def _config(path: Path, **train) -> str:
    path.write_text(json.dumps({"train": {"learning_rate": 0.003, "logging_steps": 1, "warmup_ratio": 0.0,
                                          "device": "cpu", **train}}))
    return str(path)


def _cli(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mathllava.train", *args], env=ENV, capture_output=True, text=True,
                          timeout=600, **kwargs)


def _losses(out: Path) -> list[float]:
    return [h["loss"] for h in json.loads((out / "summary.json").read_text())["history"] if "loss" in h]


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def _changed(a: dict, b: dict, part: str) -> bool:
    keys = [k for k in a if part in k]
    assert keys, part
    return any(not torch.equal(a[k], b[k]) for k in keys)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_fine_tune_from_a_saved_base_gives_a_plain_llava_hf_model_that_serves(mode, base, data, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mathllava import cli
    from mathllava.evaluation.backends import OpenAIChatBackend, Request, TransformersBackend
    from mathllava.serve import BackgroundServer

    out = tmp_path / mode
    config = _config(tmp_path / "c.yaml", batch_size=8, lora={"r": 8, "alpha": 16})
    assert cli.main(["train", "--base", str(base), *data, "--out", str(out), "--mode", mode, "--epochs", "2",
                     "--config", config, "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == mode and summary["global_step"] == 24  # 96 samples, batch 8, 2 epochs
    losses = _losses(out)
    assert losses[-1] < losses[0]
    model_dir = out / "model"
    model = LlavaForConditionalGeneration.from_pretrained(model_dir)  # a plain llava-hf directory
    AutoProcessor.from_pretrained(model_dir)
    assert not any("lora" in name for name, _ in model.named_parameters())
    before, after = _weights(Path(base)), _weights(model_dir)
    assert after.keys() == before.keys()  # same layout as the base: vLLM and from_pretrained load it
    assert _changed(before, after, "multi_modal_projector") and _changed(before, after, "language_model")
    assert not _changed(before, after, "vision_tower")  # frozen, as in the recipe
    requests = [Request(r["conversations"][0]["value"].replace("<image>\n", ""), str(Path(data[3]) / r["image"]))
                for r in json.loads(Path(data[1]).read_text())[:6]]
    greedy = TransformersBackend(model_dir, batch_size=3, max_new_tokens=6, device="cpu").generate(requests)
    sampled = TransformersBackend(model_dir, batch_size=1, max_new_tokens=6, temperature=1.0, seed=5,
                                  device="cpu").generate(requests)
    with BackgroundServer(model_dir, model_name="tuned", device="cpu") as server:
        assert OpenAIChatBackend(server.url, "tuned", max_tokens=6, concurrency=2).generate(requests) == greedy
        assert OpenAIChatBackend(server.url, "tuned", max_tokens=6, temperature=1.0, seed=5,
                                 concurrency=2).generate(requests) == sampled
    assert any(sampled)


def test_lora_under_zero3_merges_into_a_plain_model(base, data, tmp_path):
    """The adapter is trained under ZeRO-3 (partitioned weights); the merge must not be."""
    from transformers import LlavaForConditionalGeneration

    out = tmp_path / "lora-z3"
    run = _cli(["--base", str(base), *data, "--out", str(out), "--mode", "lora", "--max-steps", "3",
                "--deepspeed", str(ROOT / "configs" / "deepspeed" / "zero3.json"),
                "--config", _config(tmp_path / "c.yaml", batch_size=8, lora={"r": 4, "alpha": 8})])
    assert run.returncode == 0, run.stderr[-3000:]
    merged = LlavaForConditionalGeneration.from_pretrained(out / "model")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    before, after = _weights(Path(base)), _weights(out / "model")
    assert after.keys() == before.keys() and all(after[k].shape == before[k].shape for k in before)
    assert _changed(before, after, "multi_modal_projector") and _changed(before, after, "language_model")


def test_projector_learning_rate_gets_its_own_group(base, data, tmp_path):
    from mathllava.train.config import TrainSettings
    from mathllava.train.runner import run_training

    settings = TrainSettings(device="cpu", max_steps=2, batch_size=4, projector_learning_rate=1e-2,
                             learning_rate=1e-3, warmup_ratio=0.0, lr_scheduler="constant")
    seen = []
    result = run_training(base, data[1], data[3], tmp_path / "run", settings, on_log=lambda s, logs: seen.append(s))
    assert result.summary["global_step"] == 2 and seen
    before, after = _weights(Path(base)), _weights(result.model_dir)
    keys = [k for k in before if "multi_modal_projector" in k and k.endswith("weight")]
    # Adam's first steps move each weight by about the learning rate: 10x more in the projector
    projector_step = max(float((after[k] - before[k]).abs().max()) for k in keys)
    lm_step = max(float((after[k] - before[k]).abs().max()) for k in before if "language_model" in k)
    assert projector_step > 5 * lm_step


def test_torchrun_zero3_on_two_processes_matches_one_process(base, data, tmp_path):
    """Same global batch (2 x 4 against 1 x 8), same seed: the same loss at every step. Rank 0 alone
    writes the model and logs to MLflow."""
    import mlflow

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    two = tmp_path / "two"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "mathllava.train"]
    run = subprocess.run([*torchrun, "--base", str(base), *data, "--out", str(two),
                          "--deepspeed", str(ROOT / "configs" / "deepspeed" / "zero3.json"), "--max-steps", "6",
                          "--config", _config(tmp_path / "two.yaml", batch_size=4)],
                         env={**ENV, "MLFLOW_TRACKING_URI": tracking, "MLFLOW_EXPERIMENT_NAME": "zero3"},
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    one = tmp_path / "one"
    single = _cli(["--base", str(base), *data, "--out", str(one), "--max-steps", "6",
                   "--config", _config(tmp_path / "one.yaml", batch_size=8)])
    assert single.returncode == 0, single.stderr[-3000:]
    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["deepspeed"].endswith("zero3.json")
    assert _losses(two) == pytest.approx(_losses(one), rel=LOSS_TOLERANCE)
    assert len(_losses(one)) == 6
    mlflow.set_tracking_uri(tracking)
    runs = mlflow.search_runs(experiment_names=["zero3"])
    assert len(runs) == 1  # rank 1 never opened a run
    history = mlflow.MlflowClient().get_metric_history(runs.iloc[0]["run_id"], "train/loss")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(_losses(two))


@pytest.mark.parametrize("grouped", [False, True], ids=["random-order", "grouped-by-length"])
def test_sigkill_then_resume_reaches_the_same_final_step_and_weights(grouped, base, data, tmp_path):
    config = _config(tmp_path / "c.yaml", batch_size=8, save_steps=5, group_by_length=grouped)
    args = ["--base", str(base), *data, "--max-steps", "60", "--config", config]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "mathllava.train", *args, "--out", str(killed)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = killed / "checkpoints" / "checkpoint-10" / "COMPLETE"
    deadline = time.time() + 1800  # a hang guard: the loop waits for the checkpoint marker
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists() and not (killed / "model").exists()
    torn = killed / "checkpoints" / "checkpoint-59"  # as if killed while writing a later checkpoint
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"half")

    refused = _cli([*args, "--out", str(killed)])
    assert refused.returncode == 2 and "pass --resume" in refused.stderr
    resumed = _cli([*args, "--out", str(killed), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "removed incomplete checkpoints" in resumed.stdout and "checkpoint-59" in resumed.stdout
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["global_step"] == 60 and summary["resumed_from"].endswith(("checkpoint-10", "checkpoint-15"))

    straight = tmp_path / "straight"
    assert _cli([*args, "--out", str(straight)]).returncode == 0
    assert _losses(killed) == pytest.approx(_losses(straight), rel=1e-6)
    a, b = _weights(killed / "model"), _weights(straight / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)  # resumed == never interrupted
    again = _cli([*args, "--out", str(killed), "--resume"])
    assert again.returncode == 0 and "already finished at step 60" in again.stdout


def test_pipeline_launcher_runs_torchrun_and_rank0_logs_into_the_callers_run(base, data, tmp_path):
    """`train.launcher: torchrun` (what the pipeline's train step uses for several GPUs): two CPU
    processes under DDP, and rank 0's metrics land in the MLflow run that was active in the caller."""
    import mlflow

    from mathllava.train.config import TrainSettings
    from mathllava.train.launch import train

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("launcher")
    settings = TrainSettings(device="cpu", max_steps=4, batch_size=4, logging_steps=1, launcher="torchrun",
                             nproc_per_node=2)
    os.environ["DS_ACCELERATOR"] = "cpu"
    with mlflow.start_run() as run:
        result = train(base, data[1], data[3], tmp_path / "out", settings)
    assert result.summary["world_size"] == 2 and result.summary["global_step"] == 4
    assert (result.model_dir / "config.json").is_file()
    steps = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in steps) == [1, 2, 3, 4]
    assert len(mlflow.search_runs(experiment_names=["launcher"])) == 1


def test_group_by_length_batches_samples_of_similar_length(base, small_dataset, tmp_path):
    from transformers import LlavaForConditionalGeneration

    from mathllava.train.config import TrainSettings
    from mathllava.train.data import read_conversations
    from mathllava.train.encoded import ensure_encoded
    from mathllava.train.trainer import trainer_classes, training_args

    records = read_conversations(small_dataset)
    records = [{**r, "conversations": r["conversations"] * (1 + i % 3)} for i, r in enumerate(records)]  # 1-3 turns
    encoded = ensure_encoded(small_dataset, records, small_dataset.parent / "images", base, 2048, tmp_path / "c",
                             workers=0, progress=False)
    LlavaTrainer, Collator = trainer_classes()
    for grouped in (True, False):
        args = training_args(tmp_path / f"o{grouped}", TrainSettings(group_by_length=grouped, batch_size=8),
                              "cpu", False, 0)
        trainer = LlavaTrainer(model=LlavaForConditionalGeneration.from_pretrained(base), args=args,
                               train_dataset=encoded, data_collator=Collator(0, None), normalizer={},
                               lengths=encoded.lengths)
        order = list(trainer._get_train_sampler())
        assert sorted(order) == list(range(len(encoded)))
        spread = [float(encoded.lengths[order[i:i + 8]].std()) for i in range(0, len(order), 8)]
        if grouped:
            grouped_spread = sum(spread)
        else:
            assert grouped_spread < 0.5 * sum(spread)  # batches mix far less in length when grouped
