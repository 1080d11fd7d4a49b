"""How the pipeline's train step runs `mathllava train`: in its own process (one device), as
`torchrun --nproc_per_node N -m mathllava.train` on this machine, or as a Kubeflow job on a cluster
(`mathllava.k8s.remote`), with rank 0 logging into the step's MLflow run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from .config import TrainSettings
from .runner import TrainResult, run_training


def train(base: str | Path, data: str | Path, image_root: str | Path, out: str | Path, settings: TrainSettings,
          on_log=None, cluster=None) -> TrainResult:
    if settings.launcher == "inprocess":
        return run_training(base, data, image_root, out, settings, on_log=on_log)
    if settings.launcher == "kubeflow":
        import mlflow

        from ..k8s.remote import train_on_cluster

        if cluster is None:
            raise ValueError("train.launcher is kubeflow but the run config has no `cluster` parameter")
        run = mlflow.active_run()
        return train_on_cluster(cluster, base, data, image_root, out, settings,
                                mlflow_run_id=run.info.run_id if run else None, tracking_uri=mlflow.get_tracking_uri())
    return torchrun(base, data, image_root, out, settings)


def torchrun_command(base, data, image_root, out, config_path: Path, nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "mathllava.train", "--base", str(base), "--data", str(data), "--image-root", str(image_root),
            "--out", str(out), "--config", str(config_path)]


def torchrun(base, data, image_root, out, settings: TrainSettings) -> TrainResult:
    """Run the training entry point under torchrun and wait; the child's output streams through."""
    import mlflow

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "launch.yaml"
    config_path.write_text(yaml.safe_dump({"train": settings.model_dump()}), encoding="utf-8")
    env = dict(os.environ)
    run = mlflow.active_run()
    if run is not None:  # rank 0 continues the step's run
        env.update({"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(), "MLFLOW_RUN_ID": run.info.run_id})
    command = torchrun_command(base, data, image_root, out, config_path, settings.nproc_per_node)
    completed = subprocess.run(command, env=env)
    if completed.returncode != 0:
        raise RuntimeError(f"torchrun training failed with exit code {completed.returncode}: {' '.join(command)}")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return TrainResult(out / "model", summary, summary.get("history", []))
