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
    """The page's text after its scripts ran, and a screenshot of it."""
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--virtual-time-budget=60000", "--run-all-compositor-stages-before-draw", "--window-size=1400,1000"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    subprocess.run([*flags, f"--screenshot={ARTIFACTS / screenshot}", url], capture_output=True, timeout=120)
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
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
