"""The cluster stack and the pods, Jobs and CronJobs that ZenML's Kubernetes orchestrator makes from the
project's configs: stack registration with secrets from the environment, the step pods' GPUs, shm,
env and image (checked against current schemas and created on the real API server), the schedule's
CronJob, and the run-config checks made before anything is sent."""

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT

PIPELINE = ROOT / "configs" / "k8s" / "pipeline.yaml"
STACK_ENV = {"MATHLLAVA_KUBE_CONTEXT": "local", "MATHLLAVA_REGISTRY": "registry.example.com/mathllava",
             "MATHLLAVA_S3_ENDPOINT": "http://minio.mathllava:9000", "MATHLLAVA_MLFLOW_URI": "http://mlflow.mathllava:5000",
             "AWS_ACCESS_KEY_ID": "AKIATESTKEY", "AWS_SECRET_ACCESS_KEY": "s3-secret-from-env",
             "MLFLOW_TRACKING_USERNAME": "mathllava", "MLFLOW_TRACKING_PASSWORD": "mlflow-password-from-env"}


def _bootstrap_env(tmp_path, kubeconfig, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_TRACKING_"))}
    env.update({**STACK_ENV, "KUBECONFIG": str(kubeconfig), "ZENML_CONFIG_PATH": str(tmp_path / "zenml"),
                "PYTHONPATH": str(tmp_path), **extra})
    return env


def _project_copy(tmp_path):
    """stacks/ in a folder of its own: bootstrap makes its ZenML repository (.zen) beside it."""
    shutil.copytree(ROOT / "stacks", tmp_path / "stacks")
    return tmp_path


@pytest.mark.slow
def test_bootstrap_registers_the_cluster_stack_with_secrets_from_the_environment(kube, tmp_path):
    root = _project_copy(tmp_path)
    env = _bootstrap_env(tmp_path, kube.kubeconfig)
    done = subprocess.run([sys.executable, "-m", "stacks.bootstrap", "stacks/kubernetes.yaml"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "ZenML stack: mathllava_kubernetes (active)" in done.stdout
    probe = subprocess.run([sys.executable, "-c", """
import json
from zenml.client import Client
c = Client()
stack = c.active_stack_model
comps = {t.value: [{"flavor": x.flavor_name, "config": x.configuration} for x in v][0]
         for t, v in stack.components.items()}
secrets = {n: c.get_secret(n).secret_values for n in ("mathllava_s3", "mathllava_mlflow")}
print(json.dumps({"name": stack.name, "components": comps, "secrets": secrets}))
"""], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr
    import json

    info = json.loads(probe.stdout.strip().splitlines()[-1])
    comps = info["components"]
    assert info["name"] == "mathllava_kubernetes"
    assert comps["orchestrator"]["flavor"] == "kubernetes"
    assert comps["orchestrator"]["config"]["kubernetes_context"] == "local"
    assert comps["orchestrator"]["config"]["kubernetes_namespace"] == "mathllava"
    assert comps["artifact_store"]["flavor"] == "s3"
    assert comps["artifact_store"]["config"]["path"] == "s3://zenml/artifacts"
    assert comps["artifact_store"]["config"]["client_kwargs"] == {"endpoint_url": "http://minio.mathllava:9000"}
    assert comps["artifact_store"]["config"]["secret"] == "{{mathllava_s3.aws_secret_access_key}}"
    assert comps["experiment_tracker"]["config"]["tracking_uri"] == "http://mlflow.mathllava:5000"
    assert comps["model_registry"]["flavor"] == "mlflow"
    assert comps["container_registry"]["config"]["uri"] == "registry.example.com/mathllava"
    assert info["secrets"]["mathllava_s3"] == {"aws_access_key_id": "AKIATESTKEY",
                                               "aws_secret_access_key": "s3-secret-from-env"}
    assert info["secrets"]["mathllava_mlflow"]["password"] == "mlflow-password-from-env"
    text = (ROOT / "stacks" / "kubernetes.yaml").read_text()
    assert "s3-secret-from-env" not in text and "{{mathllava_s3.aws_secret_access_key}}" in text

    # a second run without the variables keeps the stored secret; with half of them it is refused
    env2 = {k: v for k, v in env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    again = subprocess.run([sys.executable, "-m", "stacks.bootstrap", "stacks/kubernetes.yaml"], cwd=root, env=env2,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "mathllava_s3 (kept)" in again.stdout, again.stderr
    half = subprocess.run([sys.executable, "-m", "stacks.bootstrap", "stacks/kubernetes.yaml"], cwd=root,
                          env={**env2, "AWS_ACCESS_KEY_ID": "AKIANEW"}, capture_output=True, text=True, timeout=300)
    assert half.returncode != 0 and "$AWS_SECRET_ACCESS_KEY missing" in half.stderr


def test_bootstrap_refuses_literal_credentials_and_names_missing_variables(tmp_path):
    from stacks.bootstrap import StackError, load_stack

    spec = yaml.safe_load((ROOT / "stacks" / "kubernetes.yaml").read_text())
    spec["components"]["artifact_store"]["configuration"]["secret"] = "hunter2"
    path = tmp_path / "leaky.yaml"
    path.write_text(yaml.safe_dump(spec))
    saved = dict(os.environ)
    os.environ.update(STACK_ENV)
    try:
        with pytest.raises(StackError, match=r"components\.artifact_store\.configuration\.secret holds a literal"):
            load_stack(path)
        spec["components"]["artifact_store"]["configuration"]["secret"] = "{{mathllava_s3.aws_secret_access_key}}"
        spec["components"]["artifact_store"]["configuration"]["client_kwargs"]["aws_secret_access_key"] = "hunter2"
        path.write_text(yaml.safe_dump(spec))
        with pytest.raises(StackError, match=r"configuration\.client_kwargs\.aws_secret_access_key holds a literal"):
            load_stack(path)
        del os.environ["MATHLLAVA_REGISTRY"]
        with pytest.raises(StackError, match=r"\$\{MATHLLAVA_REGISTRY\} is not set"):
            load_stack(ROOT / "stacks" / "kubernetes.yaml")
        assert load_stack(ROOT / "stacks" / "local.yaml")["components"]["orchestrator"]["flavor"] == "local"
    finally:
        os.environ.clear()
        os.environ.update(saved)


# --- what ZenML's Kubernetes orchestrator builds from configs/k8s/pipeline.yaml -----------------------------

def _settings(step: str | None):
    """The orchestrator settings a step runs with: the pipeline's, overridden key by key by the step's
    (ZenML's merge of pipeline and step settings)."""
    from zenml.integrations.kubernetes.flavors.kubernetes_orchestrator_flavor import KubernetesOrchestratorSettings

    config = yaml.safe_load(PIPELINE.read_text())
    merged = dict(config["settings"]["orchestrator.kubernetes"])
    if step:
        merged.update(config["steps"][step].get("settings", {}).get("orchestrator.kubernetes", {}))
    return KubernetesOrchestratorSettings.model_validate(merged), config


def _step_pod(step: str):
    from kubernetes.client import ApiClient
    from zenml.integrations.kubernetes.manifest_utils import build_pod_manifest

    settings, config = _settings(step)
    pod = build_pod_manifest(pod_name=f"mathllava-{step.replace('_', '-')}", image_name=config["settings"]["docker"]["parent_image"],
                             command=["python", "-m", "zenml.entrypoints.step_entrypoint"],
                             args=["--step_name", step], privileged=settings.privileged,
                             pod_settings=settings.pod_settings,
                             service_account_name=settings.step_pod_service_account_name or settings.service_account_name,
                             env={"ZENML_STORE_URL": "https://zenml.example.com"}, labels={"step": step})
    return ApiClient().sanitize_for_serialization(pod), config


@pytest.mark.parametrize("step, gpus", [("train_model", "8"), ("evaluate_model", "1")])
def test_gpu_step_pods_have_gpus_shm_env_and_the_image(step, gpus):
    import kubernetes_validate

    pod, config = _step_pod(step)
    kubernetes_validate.validate(pod, "1.33.0", strict=True)
    container = pod["spec"]["containers"][0]
    assert container["image"] == config["settings"]["docker"]["parent_image"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus
    shm = next(v for v in pod["spec"]["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory")
    assert {"name": shm["name"], "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert {"name": "shared", "mountPath": "/mnt/shared"} in container["volumeMounts"]
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert {"secretRef": {"name": "mathllava-s3"}} in container["envFrom"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["ZENML_STORE_URL"] == "https://zenml.example.com" and "MLFLOW_S3_ENDPOINT_URL" in env
    assert pod["spec"]["serviceAccountName"] == "mathllava-pipeline"


def test_cpu_step_pods_get_no_gpu():
    pod, _ = _step_pod("select_images")
    container = pod["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in (container.get("resources", {}).get("limits") or {})
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "8Gi"}


def test_the_train_step_pod_is_accepted_by_the_api_server(kube, namespace):
    from kubernetes import client

    pod, _ = _step_pod("train_model")
    pod["spec"]["serviceAccountName"] = "default"   # the test namespace's own account
    created = client.CoreV1Api(kube.api).create_namespaced_pod(namespace, pod)
    stored = client.ApiClient().sanitize_for_serialization(created)
    assert stored["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in stored["spec"]["volumes"])


def test_the_schedule_becomes_a_cronjob_that_forbids_overlap():
    import kubernetes_validate
    from kubernetes.client import ApiClient
    from zenml.integrations.kubernetes.manifest_utils import (build_cron_job_manifest, build_job_manifest,
                                                              job_template_manifest_from_job,
                                                              pod_template_manifest_from_pod)

    settings, config = _settings(None)
    pod, _ = _step_pod("ingest_sources")
    from zenml.integrations.kubernetes.manifest_utils import build_pod_manifest

    orchestrator_pod = build_pod_manifest(pod_name=None, image_name=config["settings"]["docker"]["parent_image"],
                                          command=["python", "-m", "zenml.integrations.kubernetes.orchestrators."
                                                   "kubernetes_orchestrator_entrypoint"], args=[], privileged=False,
                                          pod_settings=settings.orchestrator_pod_settings,
                                          service_account_name=settings.service_account_name)
    job = build_job_manifest(job_name="mathllava-orchestrator", pod_template=pod_template_manifest_from_pod(orchestrator_pod),
                             backoff_limit=settings.orchestrator_job_backoff_limit,
                             ttl_seconds_after_finished=settings.ttl_seconds_after_finished,
                             active_deadline_seconds=settings.active_deadline_seconds)
    # as KubernetesOrchestrator._submit_orchestrator_job does for a run with a schedule
    cron = build_cron_job_manifest(cron_expression=config["schedule"]["cron_expression"],
                                   job_template=job_template_manifest_from_job(job),
                                   successful_jobs_history_limit=settings.successful_jobs_history_limit,
                                   failed_jobs_history_limit=settings.failed_jobs_history_limit,
                                   concurrency_policy=settings.concurrency_policy,
                                   starting_deadline_seconds=settings.starting_deadline_seconds)
    manifest = ApiClient().sanitize_for_serialization(cron)
    manifest["metadata"] = {"name": "mathllava-nightly", "namespace": "mathllava"}
    for version in ("1.30.0", "1.33.0"):
        kubernetes_validate.validate(manifest, version, strict=True)
    spec = manifest["spec"]
    assert manifest["apiVersion"] == "batch/v1" and spec["schedule"] == "0 3 * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["successfulJobsHistoryLimit"] == 3 and spec["failedJobsHistoryLimit"] == 5


# --- checks before anything is sent -------------------------------------------------------------------------

@pytest.mark.parametrize("expression, ok", [
    ("0 3 * * *", True), ("*/15 9-17 * * 1-5", True), ("@daily", True), ("0 3  * * *", True),
    ("0 3 * JUL WED", True), ("30 2 * * MON-FRI", True), ("0 0 LW * *", False),
    ("61 * * * *", False), ("0 3 * *", False), ("0 3 L * *", False), ("0 0 * * 5#2", False),
    ("TZ=UTC 0 3 * * *", False), ("every day", False),
])
def test_cron_expressions_are_validated(expression, ok):
    from mathllava.schedule import validate_cron

    if ok:
        assert validate_cron(expression) == " ".join(expression.split())
    else:
        with pytest.raises(ValueError, match=repr(expression).replace("*", r"\*").replace("$", r"\$")):
            validate_cron(expression)


def _variant(tmp_path, edit):
    data = yaml.safe_load(PIPELINE.read_text())
    edit(data)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["schedule"].update(cron_expression="0 25 * * *"), "schedule.cron_expression"),
    (lambda d: d["schedule"].update(every="day"), "schedule.every"),
    (lambda d: d["settings"]["orchestrator.kubernetes"].update(concurrency_policy="Allow"), "concurrency_policy must be Forbid"),
    (lambda d: d["settings"]["orchestrator.kubernetes"].pop("failed_jobs_history_limit"), "failed_jobs_history_limit must be set"),
    (lambda d: d["parameters"].pop("cluster") and d["parameters"]["train"].update(launcher="kubeflow"),
     "parameters.cluster is not set"),
    (lambda d: d["parameters"]["cluster"].update(config="configs/k8s/missing.yaml"), "no such config file"),
    (lambda d: d["parameters"]["cluster"].update(namespaces="x"), ": cluster.namespaces"),   # as --set names it
])
def test_run_config_is_refused_before_anything_is_sent(tmp_path, edit, message):
    from run import check_config

    check_config(str(PIPELINE))  # the shipped config passes (its model paths are the pods')
    with pytest.raises(SystemExit, match=message.replace(".", r"\.")):
        check_config(_variant(tmp_path, edit))


def test_run_once_drops_only_the_schedule(tmp_path):
    from run import without_schedule, yaml_file

    copy = yaml_file(without_schedule(str(PIPELINE)))
    original = yaml_file(str(PIPELINE))
    assert "schedule" not in copy and original.pop("schedule")
    assert copy == original
