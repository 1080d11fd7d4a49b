"""Small MLflow helpers shared by the steps (no-ops when no MLflow run is active)."""

from __future__ import annotations

import json
from typing import Any


def _active() -> bool:
    try:
        import mlflow
    except ImportError:  # a bare training image (e.g. a GPU worker) may run without MLflow
        return False
    return mlflow.active_run() is not None


EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # MLflow's model-training view


def mark_training_experiment() -> None:
    """Open the active run's experiment in MLflow's model-training view (runs, metrics, charts), not
    the GenAI view, whose empty Traces overview is what an untagged experiment shows first."""
    if not _active():
        return
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment_id = mlflow.active_run().info.experiment_id
    if client.get_experiment(experiment_id).tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
        client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND)


def recorded_port() -> str | None:
    """The port the local MLflow server of this state folder was last started on (`make run`, bootstrap)."""
    from .state import state_home

    path = state_home() / "mlflow" / "server.port"
    try:
        port = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return port if port.isdigit() else None


def tracking_source(given: str | None = None) -> tuple[str, str]:
    """(tracking URI, what set it): the command line's, $MLFLOW_TRACKING_URI, $MLFLOW_PORT, else the port the
    local server of this state folder was started on ($MATHLLAVA_HOME/mlflow/server.port), else 5077."""
    import os

    if given:
        return given, "--tracking-uri"
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_URI"
    if os.environ.get("MLFLOW_PORT"):
        return f"http://127.0.0.1:{os.environ['MLFLOW_PORT']}", "MLFLOW_PORT"
    port = recorded_port()
    if port:
        from .state import state_home

        return f"http://127.0.0.1:{port}", f"the local server's port in {state_home() / 'mlflow' / 'server.port'}"
    return "http://127.0.0.1:5077", "the default local port (no MLFLOW_PORT, no local server started yet)"


def require_server(uri: str, source: str, timeout: float = 5.0) -> None:
    """For an HTTP tracking URI: a ValueError in one line, within `timeout` seconds, when nothing answers
    there (instead of MLflow's minutes of retries), naming the address and what set it; MLflow's own
    retries are bounded for the rest of the process."""
    import os
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return   # something answers (a server behind auth or a proxy): MLflow's own errors take it from here
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise ValueError(f"no MLflow tracking server answers at {uri} (set by {source}): {reason}. Start the "
                         f"local one with `make bootstrap`, or point --tracking-uri or MLFLOW_TRACKING_URI at "
                         f"yours") from None


ML_VIEW = "workflowType=machine_learning"   # MLflow's model-training view; without it the UI starts in GenAI mode


def experiment_url(tracking_uri: str, experiment_id: str) -> str:
    """The experiment's runs in MLflow's model-training view."""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}?{ML_VIEW}"


def run_url(tracking_uri: str, run_id: str) -> str:
    """One run's page (metrics, parameters, charts, artifacts) in the model-training view."""
    import mlflow

    experiment_id = mlflow.MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{ML_VIEW}"


def model_url(tracking_uri: str, name: str) -> str:
    """A registered model's versions and aliases. The model's own page, not the list (`#/models`), which
    opens under a "new Model Registry UI" pop-up until a browser dismisses it once."""
    from urllib.parse import quote

    return f"{tracking_uri.rstrip('/')}/#/models/{quote(name)}?{ML_VIEW}"


def log_params(params: dict[str, Any], prefix: str = "") -> None:
    if not _active():
        return
    import mlflow

    flat = {}
    for key, value in params.items():
        if isinstance(value, dict):
            for k, v in value.items():
                flat[f"{prefix}{key}.{k}"] = json.dumps(v) if isinstance(v, (list, dict)) else v
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, (list, tuple)) else value
    mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})


def metric_name(*parts) -> str:
    """The one metric-name rule: sections joined by '/', so MLflow groups the charts by section
    (`data/selected`, `train/loss`, `eval/mathv/accuracy`, `eval/mathv/subject/algebra`)."""
    return "/".join("".join(c if c.isalnum() or c in "_-. " else "_" for c in str(p)) for p in parts if p != "")


def log_metrics(metrics: dict[str, float], section: str = "", step: int | None = None) -> None:
    """Log under `section` (data, train, eval/<set>, registry)."""
    if not _active():
        return
    import mlflow

    mlflow.log_metrics({metric_name(*section.split("/"), k): float(v) for k, v in metrics.items()}, step=step)


def log_figure(fig, name: str) -> None:
    import matplotlib.pyplot as plt

    if _active():
        import mlflow

        mlflow.log_figure(fig, name)
    plt.close(fig)


def log_table(data: dict, name: str) -> None:
    if _active():
        import mlflow

        mlflow.log_table(data, name)


def log_dict(data: dict, name: str) -> None:
    if _active():
        import mlflow

        mlflow.log_dict(data, name)


def log_artifact(path, artifact_path: str | None = None) -> None:
    if _active():
        import mlflow

        mlflow.log_artifact(str(path), artifact_path)


def log_text(text: str, name: str) -> None:
    if _active():
        import mlflow

        mlflow.log_text(text, name)
