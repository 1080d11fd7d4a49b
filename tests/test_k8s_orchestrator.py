"""The whole pipeline through ZenML's own Kubernetes orchestrator, on the local API server.

Real: ZenML's Kubernetes orchestrator (the client side that submits the orchestrator Job and waits
for it, and the orchestrator pod's entrypoint that runs the DAG by creating one Job per step, in-cluster),
the kube-apiserver with RBAC and service-account tokens, the controller manager (Job controller,
garbage collector, token controller), the ZenML SQLite store, the MLflow server and registry.
Stand-in: the kubelet (tests/k8s_kubelet.py), which runs each pod's command as a local process of the
"image" `mathllava-ops:local`: this checkout and its venv, with the Dockerfile's environment.

The run config is configs/test.yaml with the cluster settings of configs/k8s/pipeline.yaml's kind:
docker settings that name an image and skip the build, pod settings (resources, env, labels, a
hostPath volume for the project's state, as the PVC is on a cluster) and a train step of its own."""

import copy
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import ROOT
from k8s_kubelet import Image, LocalKubelet, mount_namespaces_available

pytestmark = pytest.mark.slow
IMAGE = "mathllava-ops:local"
MODEL = "mathllava-k8s-test"
STEPS = {"generate_synthetic", "ingest_sources", "ingest_heldout", "ingest_scorer_labels", "validate_manifest",
         "clean_manifest", "select_images", "augment_questions", "export_training_data", "train_model",
         "evaluate_model", "log_evaluation", "register_model"}


def local_image() -> Image:
    """What `mathllava-ops` (infra/docker/Dockerfile) holds, on this machine: the project at its
    WORKDIR (this checkout), its Python (this venv) and its ENV."""
    venv_bin = str(Path(sys.executable).parent)
    return Image(workdir=str(ROOT), env={
        "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
        "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}",   # the venv's editable install may point at another checkout
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ZENML_ANALYTICS_OPT_IN": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false", "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8"})


def run_config(path: Path, state: Path, **parameters) -> Path:
    """configs/test.yaml with cluster settings; `parameters` replace sections of its parameters."""
    config = yaml.safe_load((ROOT / "configs" / "test.yaml").read_text())
    # a model of its own: the local pipeline tests check the first version and champion of theirs
    config["model"]["name"] = MODEL
    config["parameters"]["register"]["model_name"] = MODEL
    config["parameters"].update(parameters)
    state_volume = {"name": "state", "hostPath": {"path": str(state), "type": "Directory"}}
    pod = {"resources": {"requests": {"cpu": "250m", "memory": "768Mi"}, "limits": {"memory": "6Gi"}},
           "env": [{"name": "MATHLLAVA_HOME", "value": str(state)}, {"name": "MATHLLAVA_ENV", "value": "k8s-local"},
                   {"name": "OMP_NUM_THREADS", "value": "1"}],
           "labels": {"app": "mathllava", "tier": "pipeline"},
           "volumes": [state_volume], "volume_mounts": [{"name": "state", "mountPath": str(state)}]}
    config["settings"] = {
        "docker": {"parent_image": IMAGE, "skip_build": True, "allow_download_from_artifact_store": False,
                   "allow_download_from_code_repository": False},
        "orchestrator.kubernetes": {
            "pod_settings": pod,
            "orchestrator_pod_settings": {"labels": {"app": "mathllava", "role": "orchestrator"},
                                          "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}}},
            "max_parallelism": 2,               # two cores: at most two step pods at a time
            "orchestrator_job_backoff_limit": 0,  # a failed orchestrator pod is not started again
            "job_monitoring_interval": 1}}
    train_pod = copy.deepcopy(pod)          # a step's pod_settings replace the pipeline's
    train_pod["resources"] = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "8Gi"}}
    train_pod["labels"]["tier"] = "train"
    config["steps"]["train_model"]["settings"] = {"orchestrator.kubernetes": {"pod_settings": train_pod}}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def cluster(kube, state_dir, tmp_path_factory):
    """The stack of stacks/kubernetes-local.yaml on a namespace of the local API server, and a kubelet."""
    import time

    from kubernetes import client

    ok, why = mount_namespaces_available()
    if not ok:
        pytest.skip(f"the test kubelet needs private mount namespaces: {why}")
    core = client.CoreV1Api(kube.api)
    namespace = f"mathllava-{os.urandom(3).hex()}"
    core.create_namespace({"metadata": {"name": namespace}})
    deadline = time.monotonic() + 600  # a hang guard: the loop waits for an event
    while not any(s.metadata.name == "default" and s.secrets for s in core.list_namespaced_service_account(namespace).items):
        assert time.monotonic() < deadline, "the controller manager made no default service account"
        time.sleep(0.1)
    env = pytest.MonkeyPatch()
    env.setenv("KUBECONFIG", str(kube.kubeconfig))   # the orchestrator's kubernetes_context: local
    # the kubernetes client reads $KUBECONFIG once, on import (this process imported it already)
    env.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(kube.kubeconfig))
    env.setenv("MATHLLAVA_KUBE_CONTEXT", "local")
    env.setenv("MATHLLAVA_NAMESPACE", namespace)
    kubelet = LocalKubelet(kube.api, {IMAGE: local_image()}, tmp_path_factory.mktemp("kubelet"),
                           namespaces={namespace}, max_seconds=1200).start()
    from zenml.client import Client

    from stacks import bootstrap

    import mlflow

    before = Client().active_stack_model.name
    # run.main points mlflow (and MLFLOW_TRACKING_URI) at the server this module stops: put back what was
    mlflow_before = (mlflow.get_tracking_uri(), {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")})
    try:
        bootstrap.main([str(ROOT / "stacks" / "kubernetes-local.yaml")])
        yield SimpleNamespace(namespace=namespace, kubelet=kubelet, core=core, batch=client.BatchV1Api(kube.api),
                              state=state_dir, configs=tmp_path_factory.mktemp("k8s-configs"))
    finally:
        kubelet.stop()
        Client().activate_stack(before)
        env.undo()
        from mathllava.localserver import healthy, stop

        stop(state_dir / "mlflow")   # returns once the server is gone: the next module starts a fresh one
        mlflow.set_tracking_uri(mlflow_before[0])
        for key in [k for k in os.environ if k.startswith("MLFLOW_")]:   # set_tracking_uri exports it too
            del os.environ[key]
        os.environ.update(mlflow_before[1])
        assert not healthy(f"http://127.0.0.1:{os.environ['MLFLOW_PORT']}", timeout=1)


def _pods(cluster, **labels):
    selector = ",".join(f"{k}={v}" for k, v in labels.items())
    return cluster.core.list_namespaced_pod(cluster.namespace, label_selector=selector).items


def _show_logs(cluster) -> str:
    return "\n".join(f"--- {name}\n{text[-3000:]}" for name, text in cluster.kubelet.logs().items())


@pytest.fixture(scope="module")
def k8s_run(cluster):
    import time

    import run

    config = yaml.safe_load((ROOT / "configs" / "test.yaml").read_text())
    path = run_config(cluster.configs / "pipeline-local.yaml", cluster.state)
    raw = yaml.safe_load(path.read_text())
    raw["enable_cache"] = False   # every step runs in a pod of its own
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    start = time.monotonic()
    try:
        info = run.main(["--config", str(path)])
    except BaseException:
        print(_show_logs(cluster))
        raise
    print(f"pipeline through the Kubernetes orchestrator: {time.monotonic() - start:.0f} s")
    return SimpleNamespace(info=info, config=config)


def test_every_step_runs_as_a_pod_and_the_model_is_registered(cluster, k8s_run):
    import mlflow
    from mlflow.tracking import MlflowClient
    from zenml.client import Client
    from zenml.enums import ExecutionStatus

    info = k8s_run.info
    run = Client().get_pipeline_run(info["run"])
    assert run.status == ExecutionStatus.COMPLETED, _show_logs(cluster)
    assert run.stack.name == "mathllava_kubernetes_local"
    assert {name: s.status for name, s in run.steps.items()} == {name: ExecutionStatus.COMPLETED for name in STEPS}

    # the orchestrator: one Job (ZenML's), its pod with the orchestrator pod settings and ZenML's
    # service account, which it used in-cluster to create one Job per step
    orchestrators = _pods(cluster, role="orchestrator")
    assert len(orchestrators) == 1 and orchestrators[0].status.phase == "Succeeded"
    orch = orchestrators[0]
    assert orch.spec.service_account_name == "zenml-service-account"
    assert orch.spec.containers[0].resources.requests == {"cpu": "100m", "memory": "512Mi"}
    assert orch.spec.containers[0].args[:1] == ["--snapshot_id"]
    jobs = cluster.batch.list_namespaced_job(cluster.namespace, label_selector=f"run_id={run.id}").items
    step_jobs = {j.metadata.labels["step_name"]: j for j in jobs if "step_name" in j.metadata.labels}
    assert set(step_jobs) == STEPS
    assert all(any(c.type == "Complete" and c.status == "True" for c in j.status.conditions) for j in step_jobs.values())
    # the orchestrator pod belongs to ZenML's orchestrator Job, and each step Job to that Job too (the
    # garbage collector removes them with it)
    (owner,) = orch.metadata.owner_references
    orchestrator_job = cluster.batch.read_namespaced_job(owner.name, cluster.namespace)
    assert owner.kind == "Job" and owner.uid == orchestrator_job.metadata.uid
    assert any(c.type == "Complete" and c.status == "True" for c in orchestrator_job.status.conditions)
    assert all([(r.kind, r.uid) for r in j.metadata.owner_references] == [("Job", owner.uid)]
               for j in step_jobs.values())

    # the step pods carry the config's settings: resources, env, labels, the state volume; the train step its own
    state = str(cluster.state)
    for step in STEPS:
        pods = _pods(cluster, step_name=step, run_id=str(run.id))
        assert len(pods) == 1, step
        pod = pods[0]
        container = pod.spec.containers[0]
        assert pod.status.phase == "Succeeded" and pod.spec.node_name == cluster.kubelet.node_name, step
        assert pod.status.container_statuses[0].state.terminated.exit_code == 0, step
        assert container.image == IMAGE and container.command[-1] == "zenml.entrypoints.entrypoint", step
        env = {e.name: e.value for e in container.env}
        assert env["MATHLLAVA_HOME"] == state and env["MATHLLAVA_ENV"] == "k8s-local", step
        assert env["ZENML_STORE_URL"].startswith("sqlite:") and "--step_name" in container.args, step
        assert {"name": "state", "mountPath": state} in [{"name": m.name, "mountPath": m.mount_path}
                                                         for m in container.volume_mounts], step
        assert any(v.host_path and v.name == "local-stores" for v in pod.spec.volumes), step  # local: true
        assert pod.metadata.labels["app"] == "mathllava"
        if step == "train_model":
            assert pod.metadata.labels["tier"] == "train"
            assert container.resources.requests == {"cpu": "1", "memory": "2Gi"}
            assert container.resources.limits == {"memory": "8Gi"}
        else:
            assert pod.metadata.labels["tier"] == "pipeline", step
            assert container.resources.requests == {"cpu": "250m", "memory": "768Mi"}, step
    # the steps' env reached their processes: the register step records it
    registration = run.steps["register_model"].outputs["registration"][0].load()
    assert registration["environment"] == "k8s-local"

    # the model version is in the MLflow registry, from this run
    assert info["loss_last"] < info["loss_first"]
    mlflow.set_tracking_uri(registration["tracking_uri"])
    name, version = info["model"].split(" v")
    assert name == MODEL
    mv = MlflowClient().get_model_version(name, version)
    assert mv.tags["zenml_run_id"] == str(run.id)
    assert {"config.json", "model.safetensors"} <= {
        a.path.split("/")[-1] for a in MlflowClient().list_artifacts(mv.run_id, "model")}


def test_a_failing_step_fails_the_run_and_names_the_step(cluster, k8s_run):
    """A config whose validation step raises (every question longer than the limit): its pod exits 1,
    its Job fails, and the orchestrator fails the run, naming the step; the steps after it never start."""
    from zenml.client import Client
    from zenml.enums import ExecutionStatus

    import run as run_py

    validate = {**k8s_run.config["parameters"]["validate"], "max_question_chars": 5}
    path = run_config(cluster.configs / "pipeline-local-failing.yaml", cluster.state, validate=validate)
    pipeline = Client().get_pipeline("mathllava_training")
    before = {r.id for r in Client().list_pipeline_runs(pipeline_id=pipeline.id, size=100).items}
    with pytest.raises(SystemExit, match=r"pipeline run .* failed in step\(s\): validate_manifest$"):
        run_py.main(["--config", str(path)])
    runs = [r for r in Client().list_pipeline_runs(pipeline_id=pipeline.id, size=100).items if r.id not in before]
    assert len(runs) == 1
    run = Client().get_pipeline_run(runs[0].id)
    assert run.status == ExecutionStatus.FAILED, _show_logs(cluster)
    assert run.steps["validate_manifest"].status == ExecutionStatus.FAILED
    assert not {"clean_manifest", "train_model", "register_model"} & set(run.steps)
    pods = _pods(cluster, step_name="validate_manifest", run_id=str(run.id))
    assert len(pods) == 1 and pods[0].status.phase == "Failed"   # backoffLimit 0: no second try
    terminated = pods[0].status.container_statuses[0].state.terminated
    assert terminated.exit_code == 1
    log = cluster.core.read_namespaced_pod_log(pods[0].metadata.name, cluster.namespace)
    assert "validation failure rate above the limit" in log
    job = cluster.batch.list_namespaced_job(cluster.namespace,
                                            label_selector=f"run_id={run.id},step_name=validate_manifest").items[0]
    assert any(c.type == "Failed" and c.status == "True" for c in job.status.conditions)
    orch = [p for p in _pods(cluster, role="orchestrator") if p.metadata.labels.get("run_id") == str(run.id)]
    assert len(orch) == 1
    orch_log = cluster.core.read_namespaced_pod_log(orch[0].metadata.name, cluster.namespace)
    assert "The following steps failed: validate_manifest" in orch_log
