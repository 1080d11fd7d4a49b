"""Fault drills on the whole pipeline (the real ZenML store and MLflow server of the test session):
a second run while one holds the state folder, SIGKILL mid-training and the rerun, the MLflow server
killed mid-step and the rerun, which also shows that identical weights are not registered twice.
Every wait is for an event (a step's status in the store, a folder on disk, a process exit)."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import ROOT

pytestmark = pytest.mark.slow
MODEL = "mathllava-test-faults"


@pytest.fixture(scope="module")
def stack(state_dir):
    from stacks import bootstrap

    bootstrap.main([])
    yield f"http://127.0.0.1:{os.environ['MLFLOW_PORT']}"


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    data = yaml.safe_load((ROOT / "configs" / "test.yaml").read_text())
    data["model"]["name"] = data["parameters"]["register"]["model_name"] = MODEL
    path = tmp_path_factory.mktemp("faults") / "faults.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def wait_for(condition, what: str, proc=None, limit: float = 900.0):
    """Polls for an event; the limit only turns a hang into a failure."""
    end = time.monotonic() + limit
    while True:
        found = condition()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended (code {proc.returncode}) before {what}:\n{proc.stdout.read()}")
        assert time.monotonic() < end, f"never saw {what}"
        time.sleep(0.2)


def newest_run(after: float):
    from zenml.client import Client

    runs = Client().list_pipeline_runs(pipeline_name="mathllava_training", sort_by="desc:created", size=1).items
    if runs and runs[0].created.timestamp() >= after - 1:
        return Client().get_pipeline_run(runs[0].id)
    return None


def step_status(after: float, step: str) -> str | None:
    run = newest_run(after)
    if run is None or step not in run.steps:
        return None
    return run.steps[step].status.value


def start(config: str, *sets: str) -> subprocess.Popen:
    """`python run.py` in a process of its own, on the stack this test process has active (earlier tests of
    the session switch stacks and back in memory; the child must not read another from the config files)."""
    from zenml.client import Client

    command = [sys.executable, "run.py", "--config", config] + [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "ZENML_ACTIVE_STACK_ID": str(Client().active_stack_model.id)}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def mlflow_runs(uri: str, run_name: str):
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("mathllava_training")
    return client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{run_name}'")


def test_a_second_run_is_refused_and_a_killed_run_leaves_nothing_stale(stack, config, state_dir, capsys):
    import run
    from zenml.client import Client

    started = time.time()
    killed = start(config, "train.epochs=30")   # long enough to be killed while it trains
    name = wait_for(lambda: step_status(started, "train_model") == "running" and newest_run(started).name,
                    "the train step running", killed)
    wait_for(lambda: any((state_dir / "training" / "runs" / name).glob("*")), "training output on disk", killed)

    # a second run of the same state folder exits at once, naming the holder
    with pytest.raises(SystemExit) as busy:
        run.main(["--config", config])
    assert busy.value.code == run.BUSY
    said = capsys.readouterr().err
    assert said.startswith("error: another pipeline run holds ") and "pipeline.lock (pid " in said
    assert f"pid {killed.pid} " in said and "--wait" in said

    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=600)
    assert Client().get_pipeline_run(name).status.value == "running"  # what a kill leaves
    assert [r.info.status for r in mlflow_runs(stack, name)] == ["RUNNING"]

    info = run.main(["--config", config])
    out = capsys.readouterr().out
    assert f"recovered: marked failed (its process is gone): {name}" in out
    assert f"removed unfinished run folders: training/runs/{name}" in out
    stale = Client().get_pipeline_run(name)
    assert stale.status.value == "failed" and stale.steps["train_model"].status.value == "failed"
    assert [r.info.status for r in mlflow_runs(stack, name)] == ["FAILED"]
    assert not (state_dir / "training" / "runs" / name).exists()
    assert not (state_dir / "training" / "runs" / f"{name}-base").exists()
    # the steps the killed run finished stay: the rerun took them from the cache
    assert "export_training_data" in info["cached_steps"]
    assert (state_dir / "exports").is_dir()
    assert info["model"].startswith(f"{MODEL} v")


def test_mlflow_killed_mid_step_fails_in_one_line_and_the_rerun_keeps_the_scores(stack, config, state_dir):
    import mlflow
    import run
    from zenml.client import Client

    from mathllava.localserver import start as start_server, stop as stop_server

    first = run.main(["--config", config])   # the model as registered (from the cache after the test above)
    versions_before = len(mlflow.MlflowClient(stack).search_model_versions(f"name='{MODEL}'"))

    started = time.time()
    proc = start(config, "evaluate.math_v_limit=12")   # an evaluation-only change: the weights stay the same
    name = wait_for(lambda: step_status(started, "evaluate_model") == "running" and newest_run(started).name,
                    "the evaluate step running", proc)
    assert stop_server(state_dir / "mlflow")
    killed_at = time.monotonic()
    out, _ = proc.communicate(timeout=600)
    took = time.monotonic() - killed_at
    lines = [line for line in out.splitlines() if line.strip()]
    assert proc.returncode != 0, out
    print(out)
    assert lines[-1] == (f"error: the MLflow tracking server at {stack} does not answer. Steps that finished are "
                         "kept and reused by the next run. `make run` restarts the local server (or: python -m "
                         "mathllava.localserver start); for a remote server, check it and set MLFLOW_TRACKING_URI")
    assert "Traceback" not in out, out
    assert took < 300, f"the run took {took:.0f} s to give up"   # not MLflow's default minutes of retries
    failed = Client().get_pipeline_run(name)
    assert failed.status.value == "failed" and failed.steps["evaluate_model"].status.value == "completed"

    port = int(stack.rsplit(":", 1)[1])
    start_server(state_dir / "mlflow", port=port)
    info = run.main(["--config", config, "--set", "evaluate.math_v_limit=12"])
    assert "evaluate_model" in info["cached_steps"]   # the scores computed before the outage were kept
    assert "log_evaluation" not in info["cached_steps"]
    # its MLflow run (if one was made before the outage) is ended, not left RUNNING
    assert "RUNNING" not in [r.info.status for r in mlflow_runs(stack, name)]
    scored = mlflow_runs(stack, info["run"])[0]
    assert "eval/heldout/model_accuracy" in scored.data.metrics
    # identical weights: no new version; the existing one is tagged with this run
    registration = info["facts"].registration
    assert registration["identical_to"] == first["model"].split(" v")[1]
    versions = mlflow.MlflowClient(stack).search_model_versions(f"name='{MODEL}'")
    assert len(versions) == versions_before
    tagged = mlflow.MlflowClient(stack).get_model_version(MODEL, registration["identical_to"])
    assert tagged.tags[f"also_produced_by.{info['run']}"] == registration["mlflow_run_id"]
    from mathllava.runreport import promotion_lines

    assert promotion_lines(info["facts"], None)[0].startswith(
        f"nothing new to compare: this run's weights are identical to v{registration['identical_to']}'s")
