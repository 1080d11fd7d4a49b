"""The pipeline's train step on a cluster (`train.launcher: kubeflow`): put the step's inputs on the
job's shared storage, run the job through the launcher, and bring the trained run back as the step's
output. The step pod mounts the same PVC at the same path, or reaches the same s3:// bucket."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from ..train.config import TrainSettings
from ..train.runner import TrainResult
from .config import ClusterLaunch, StorageSettings
from .launcher import ClusterError, api_client, render_for_cluster, run, should_delete
from .manifests import job_name
from .stage import fetch, upload


def _under(path: str, root: str) -> bool:
    return (str(path).rstrip("/") + "/").startswith(root.rstrip("/") + "/")


def stage_inputs(storage: StorageSettings, name: str, base: str | Path, data: str | Path,
                 image_root: str | Path) -> StorageSettings:
    """Storage settings whose base/data/image_root are copies the job can read: inputs already on the
    PVC (or in S3) stay where they are; the rest go to <output>/<name>-inputs/."""
    target = f"{storage.output.rstrip('/')}/{name}-inputs"
    update = {}
    for key, local in (("base", base), ("data", data), ("image_root", image_root)):
        local = str(local)
        if local.startswith("s3://") or (storage.pvc and _under(local, storage.mount_path)):
            update[key] = local
            continue
        dest = f"{target}/{key}" + (Path(local).suffix if key == "data" else "")
        if dest.startswith("s3://"):
            upload(local, dest)
        elif Path(local).is_dir():
            shutil.copytree(local, dest, dirs_exist_ok=True)
        else:
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(local, dest)
        update[key] = dest
    return storage.model_copy(update=update)


def train_on_cluster(launch: ClusterLaunch, base, data, image_root, out: str | Path, settings: TrainSettings,
                     mlflow_run_id: str | None = None, tracking_uri: str | None = None,
                     log: Callable[[str], None] = print) -> TrainResult:
    """Rank 0 of the job continues the MLflow run `mlflow_run_id` on the job config's tracking server
    (or `tracking_uri`, the step's, when the config names none)."""
    config = launch.job_config()
    if config.mlflow.tracking_uri is None and tracking_uri and tracking_uri.startswith("http"):
        config = config.model_copy(update={"mlflow": config.mlflow.model_copy(update={"tracking_uri": tracking_uri})})
    # the job encodes its data on its own nodes, and its pods run one process per GPU under torchrun
    settings = settings.model_copy(update={"launcher": "inprocess", "cache_dir": None})
    name = job_name(config.job.name)
    storage = stage_inputs(config.storage, name, base, data, image_root)
    config = config.model_copy(update={"train": settings, "storage": storage})
    api = api_client(launch.kubeconfig)
    rendered = render_for_cluster(api, config, launch.namespace, kind=launch.kind, name=name,
                                  mlflow_run_id=mlflow_run_id)
    outcome = run(api, rendered, config.job.timeout_s, config.job.cleanup, log)
    staged = Path(f"{config.storage.output.rstrip('/')}/{name}-inputs")
    if should_delete(config.job.cleanup, outcome) and not str(staged).startswith("s3:") and staged.is_dir():
        shutil.rmtree(staged)  # the copies go with the job; the run's own folder stays
    if not outcome.ok:
        raise ClusterError(f"{rendered.job['kind']}/{name} {outcome.describe()}")
    run_dir = Path(out)
    if rendered.output.startswith("s3://"):
        fetch(rendered.output, str(run_dir))
    else:
        run_dir = Path(rendered.output)
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise ClusterError(f"{rendered.job['kind']}/{name} succeeded but left no {summary_path}: is the step pod "
                           f"mounting the job's storage ({config.storage.pvc or config.storage.output}) at the same path?")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    return TrainResult(run_dir / "model", summary, summary.get("history", []))
