"""The MLflow UI as a user opens it, in headless Chromium (Debian's `chromium`): the experiment's runs in
the model-training view, the registered model with its aliases, and the run's charts grouped by
metric section. The screenshots are kept in .test-artifacts/dashboard/ (git-ignored)."""

import re
import shutil
import subprocess

import pytest

from conftest import ROOT, free_port

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / ".test-artifacts" / "dashboard"


def _browse(url: str, screenshot: str) -> str:
    """The page's text after its scripts ran, and a screenshot of it, in a browser with a new profile (as a
    user's first visit: nothing dismissed or chosen before)."""
    import tempfile

    profile = tempfile.mkdtemp(prefix="chromium-")
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=60000", "--run-all-compositor-stages-before-draw",
             "--window-size=1400,1000"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    subprocess.run([*flags, f"--screenshot={ARTIFACTS / screenshot}", url], capture_output=True, timeout=600)
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=600).stdout
    dom = re.sub(r"<style.*?</style>|<script.*?</script>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom)).replace("&nbsp;", " ")


@pytest.fixture(scope="module")
def populated(tmp_path_factory):
    """A tracking server holding what a pipeline run leaves: a run with sectioned metrics and a chart,
    and a model version with its aliases."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    from mathllava.localserver import start, stop
    from mathllava.registry.versions import register_model_dir, set_alias
    from mathllava.tracking import experiment_url, log_figure, log_metrics, mark_training_experiment

    port = free_port()
    state = tmp_path_factory.mktemp("mlflow-ui")
    uri = start(state, "127.0.0.1", port)
    model_dir = tmp_path_factory.mktemp("model")
    (model_dir / "config.json").write_text("{}")
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("mathllava_training")
    with mlflow.start_run(run_name="nightly-ui-run") as run:
        mark_training_experiment()
        for step in range(4):
            log_metrics({"loss": 4.0 - step}, section="train", step=step)
        log_metrics({"selected": 500, "curated_rows": 2889}, section="data")
        log_metrics({"model_accuracy": 20.7, "base_accuracy": 9.2}, section="eval/heldout")
        fig, ax = plt.subplots()
        ax.bar(["challenger", "champion"], [20.7, 18.0])
        log_figure(fig, "registry/comparison.png")
        version, _ = register_model_dir(str(model_dir), "mathllava-ui", {"heldout_accuracy": 20.7})
    set_alias("mathllava-ui", "champion", version)
    set_alias("mathllava-ui", "challenger", version)
    yield uri, experiment_url(uri, run.info.experiment_id), run.info
    stop(state)
    mlflow.set_tracking_uri("")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_the_dashboard_shows_runs_models_and_sectioned_charts(populated):
    uri, url, run = populated
    runs = _browse(url, "experiment-runs.png")
    assert "Runs" in runs and "nightly-ui-run" in runs and "matching run" in runs  # the training view, not GenAI
    model = _browse(f"{uri}/#/models/mathllava-ui", "model-version.png")
    assert "Version 1" in model and "champion" in model and "challenger" in model
    charts = _browse(f"{uri}/#/experiments/{run.experiment_id}/runs/{run.run_id}/model-metrics"
                     "?workflowType=machine_learning", "run-charts.png")
    for section in ("data (2)", "train (1)", "eval/heldout (2)"):   # one chart section per metric section
        assert section in charts, section
    # the charts in view drew, with their legends (the page draws charts as they scroll into view)
    assert "curated_rows" in charts and "2889.00" in charts
    for name in ("experiment-runs.png", "model-version.png", "run-charts.png"):
        assert (ARTIFACTS / name).stat().st_size > 10_000  # a rendered page, not a blank one


POPUP = "Flexible, governed deployments"   # MLflow's "new Model Registry UI" pop-up


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_every_printed_mlflow_link_opens_in_the_training_view_without_a_popup(populated):
    """The run summary's and `make dashboard`'s links: the model-training view (its side bar has the Model
    registry; the GenAI one has the AI Gateway instead), and no pop-up over the registered model."""
    from mathllava.tracking import ML_VIEW, model_url, run_url

    uri, experiment, run = populated
    for name, url in (("link-experiment.png", experiment), ("link-run.png", run_url(uri, run.run_id)),
                      ("link-model.png", model_url(uri, "mathllava-ui")),
                      ("link-experiments.png", f"{uri}/#/experiments?{ML_VIEW}")):   # make dashboard's
        text = _browse(url, name)
        assert "Model registry" in text and "AI Gateway" not in text, url
        assert POPUP not in text, url
    assert "Version 1" in _browse(model_url(uri, "mathllava-ui"), "link-model-2.png")
    # the list of models (the link the summary no longer prints) is where the pop-up and GenAI mode wait
    listing = _browse(f"{uri}/#/models", "models-list.png")
    assert POPUP in listing and "AI Gateway" in listing


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_the_zenml_dashboard_opens_on_the_pipeline_runs_and_stops_for_good(tmp_path):
    """`make dashboard` on a store with a pipeline run: the runs page lists it (no onboarding form first);
    `make dashboard-stop` returns once the server's process is gone."""
    import os
    import sys

    from conftest import free_port

    env = {**os.environ, "ZENML_CONFIG_PATH": str(tmp_path / "zenml"), "PYTHONPATH": str(ROOT)}
    (tmp_path / "pipe.py").write_text(
        "from zenml import pipeline, step\n@step\ndef one() -> int:\n    return 1\n"
        "@pipeline(name='dashboard_check')\ndef p():\n    one()\nprint('RUN', p().name)\n")
    made = subprocess.run([sys.executable, "pipe.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    port = free_port()
    up = subprocess.run([sys.executable, "-m", "stacks.dashboard", "up", "--zenml-port", str(port),
                         "--mlflow-uri", "http://127.0.0.1:1"], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stderr[-2000:]
        page = f"http://127.0.0.1:{port}/projects/default/runs"
        assert f"ZenML dashboard, pipeline runs: {page}" in up.stdout
        text = _browse(page, "zenml-runs.png")
        assert "dashboard_check" in text and "Add your account details" not in text
        pids = [int(p.read_text()) for p in (tmp_path / "zenml").rglob("service.pid")]
        assert pids
    finally:
        down = subprocess.run([sys.executable, "-m", "stacks.dashboard", "down"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
    assert down.returncode == 0 and "stopped: ZenML server" in down.stdout
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
