"""What a killed run leaves behind, cleared at the start of the next one (`run.py`, under the state folder's
pipeline lock).

Every pipeline run of a state folder holds its lock (`mathllava.state.pipeline_lock`) and the kernel frees
the lock when its holder dies. So once a new run holds it, a run of the local orchestrator that the store
still calls running, initializing or provisioning has no process left: it is marked failed in ZenML, with
its unfinished steps, and its MLflow runs still RUNNING are ended as FAILED. The MLflow runs of earlier
failed runs are ended too: a step that failed because the tracking server was down could not end its own.
Runs of remote orchestrators (Kubernetes) are left alone: their pods outlive the client that started them.

Run folders are named by the pipeline run: a folder whose step did not complete is referenced by no
artifact, so it is removed; one whose step completed stays, since a later run may reuse that step."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

LOCAL_FLAVORS = ("local",)  # orchestrators whose steps run inside the process that started the run
# state-folder paths a step writes under its run's name (steps/train.py)
RUN_FOLDERS = {"export_training_data": ("exports/{run}",),
               "train_model": ("training/runs/{run}", "training/runs/{run}-base")}
SCAN = 50  # failed runs looked at, newest first, for MLflow runs left RUNNING


@dataclass
class Recovery:
    marked_failed: list[str] = field(default_factory=list)
    mlflow_ended: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = []
        if self.marked_failed:
            out.append(f"marked failed (its process is gone): {', '.join(self.marked_failed)}")
        if self.mlflow_ended:
            out.append(f"MLflow runs ended as FAILED: {len(self.mlflow_ended)} of runs "
                       f"{', '.join(sorted(set(self.mlflow_ended)))}")
        if self.removed:
            out.append(f"removed unfinished run folders: {', '.join(self.removed)}")
        return out


def _orchestrator_flavor(run) -> str | None:
    from zenml.enums import StackComponentType

    try:
        return run.stack.components[StackComponentType.ORCHESTRATOR][0].flavor_name
    except (AttributeError, KeyError, IndexError, TypeError):
        return None


def mark_stale_runs(client, pipeline: str) -> list:
    """Mark this pipeline's in-progress runs of a local orchestrator, and their unfinished steps, failed."""
    from zenml.enums import ExecutionStatus
    from zenml.models import PipelineRunUpdate, StepRunUpdate

    now = datetime.now(timezone.utc)
    stale = [r for r in client.list_pipeline_runs(pipeline_name=pipeline, in_progress=True, size=200,
                                                  hydrate=True).items
             if _orchestrator_flavor(r) in LOCAL_FLAVORS]
    for run in stale:
        for step in run.steps.values():
            if not step.status.is_finished:
                client.zen_store.update_run_step(step.id, StepRunUpdate(status=ExecutionStatus.FAILED, end_time=now))
        client.zen_store.update_run(run.id, PipelineRunUpdate(
            status=ExecutionStatus.FAILED, status_reason="its process was gone when the next run started"))
    return stale


def end_mlflow_runs(tracking_uri: str, experiment: str, run_names: list[str]) -> list[str]:
    """End as FAILED the MLflow runs still RUNNING of the given pipeline runs (ZenML's MLflow tracker makes
    one per pipeline run, named after it, and one nested run per step). Returns the pipeline run names."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None or not run_names:
        return []
    ended = []
    open_runs = client.search_runs([found.experiment_id], filter_string="attributes.status = 'RUNNING'",
                                   max_results=1000)
    parents = {r.info.run_id: r.info.run_name for r in open_runs if r.info.run_name in run_names}
    for run in open_runs:
        owner = parents.get(run.info.run_id) or parents.get(run.data.tags.get("mlflow.parentRunId", ""))
        if owner is None:
            parent = run.data.tags.get("mlflow.parentRunId")
            if parent:  # a step's run whose parent was already ended
                try:
                    name = client.get_run(parent).info.run_name
                except mlflow.exceptions.MlflowException:
                    continue
                owner = name if name in run_names else None
        if owner is not None:
            client.set_terminated(run.info.run_id, status="FAILED")
            ended.append(owner)
    return ended


def remove_unfinished_folders(state: Path, runs: list) -> list[str]:
    """Remove the run folders of steps that did not complete in the given (failed) runs."""
    from zenml.enums import ExecutionStatus

    removed = []
    for run in runs:
        for step_name, patterns in RUN_FOLDERS.items():
            step = run.steps.get(step_name)
            if step is not None and step.status in (ExecutionStatus.COMPLETED, ExecutionStatus.CACHED):
                continue
            for pattern in patterns:
                folder = state / pattern.format(run=run.name)
                if folder.is_dir():
                    shutil.rmtree(folder)
                    removed.append(str(folder.relative_to(state)))
    return removed


def recover(state: Path, tracking_uri: str | None, pipeline: str) -> Recovery:
    """Call with the pipeline lock held, before the run starts."""
    from zenml.client import Client
    from zenml.enums import ExecutionStatus

    client = Client()
    result = Recovery()
    stale = mark_stale_runs(client, pipeline)
    result.marked_failed = [r.name for r in stale]
    failed = client.list_pipeline_runs(pipeline_name=pipeline, status=ExecutionStatus.FAILED.value, size=SCAN,
                                       hydrate=True).items
    if tracking_uri:
        result.mlflow_ended = end_mlflow_runs(tracking_uri, pipeline, [r.name for r in failed])
    local_failed = [r for r in failed if _orchestrator_flavor(r) in LOCAL_FLAVORS]
    result.removed = remove_unfinished_folders(state, local_failed)
    return result
