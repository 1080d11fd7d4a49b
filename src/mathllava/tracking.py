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


def tracking_source(given: str | None = None) -> tuple[str, str]:
    """(tracking URI, what set it): the command line's, $MLFLOW_TRACKING_URI, else the local server's
    port ($MLFLOW_PORT, 5077 when unset)."""
    import os

    if given:
        return given, "--tracking-uri"
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_URI"
    port = os.environ.get("MLFLOW_PORT")
    return f"http://127.0.0.1:{port or 5077}", "MLFLOW_PORT" if port else "the default local port (MLFLOW_PORT unset)"


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


def experiment_url(tracking_uri: str, experiment_id: str) -> str:
    """The experiment's runs in MLflow's model-training view (the UI otherwise starts in GenAI mode)."""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


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
