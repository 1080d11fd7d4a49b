"""`mathllava k8s train`: rendering (no cluster), and submit / watch / succeed / fail / time out / clean up
against the real kube-apiserver of ../shared/k8s-local with the real Kubeflow CRDs. No operator runs
there, so the tests play it: they create the job's pods (driven by the fake kubelet) and patch the
job's status."""

import datetime
import sys
import threading
import time

import pytest
import yaml

from conftest import K8S_LOCAL, ROOT
from mathllava.cli import main
from mathllava.k8s.config import load_cluster_config
from mathllava.k8s.manifests import TRAINJOB, PYTORCHJOB, render

ZERO3 = str(ROOT / "configs" / "deepspeed" / "zero3.json")


def write_config(tmp_path, job=None, storage=None, train=None, estimate=None):
    data = {
        "job": {"name": "t", "image": "registry.local/mathllava-ops:test", "nodes": 2, "gpus_per_node": 8,
                "cpu": "16", "memory": "64Gi", "shm_size": "8Gi", "tolerations": [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "node_selector": {"gpu": "h100"}, "env": {"NCCL_DEBUG": "INFO"}, **(job or {})},
        "storage": {"pvc": "shared", "mount_path": "/mnt/shared", "base": "/mnt/shared/models/base",
                    "data": "/mnt/shared/data/train.json", "image_root": "/mnt/shared/data/images",
                    "output": "/mnt/shared/runs", **(storage or {})},
        "mlflow": {"tracking_uri": "http://mlflow.mathllava:5000"},
        "train": {"epochs": 1, "batch_size": 4, "deepspeed": ZERO3, "device": "cuda", **(train or {})},
    }
    if estimate:
        data["estimate"] = estimate
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def rendered_documents(text):
    comments = [line for line in text.splitlines() if line.startswith("#")]
    return comments, [d for d in yaml.safe_load_all(text) if d]


# --- rendering, no cluster ---------------------------------------------------------------------------

def test_render_of_the_readme_example_is_a_trainjob_on_8_gpus_with_zero3(capsys):
    assert main(["k8s", "train", "--config", "configs/k8s/train.yaml", "--kubeconfig", "/nonexistent",
                 "--namespace", "mathllava", "--render"]) == 0
    comments, docs = rendered_documents(capsys.readouterr().out)
    config_map, job = docs
    assert job["kind"] == "TrainJob" and job["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 1 and trainer["numProcPerNode"] == 8
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 8
    assert job["spec"]["runtimeRef"]["name"] == "torch-distributed"
    script = trainer["command"][2]
    assert "torchrun" in script and "--nproc-per-node=8" in script and "-m mathllava.train" in script
    assert f"--out /mnt/shared/runs/{job['metadata']['name']}" in script
    settings = yaml.safe_load(config_map["data"]["train.yaml"])["train"]
    assert settings["deepspeed"] == "configs/deepspeed/zero3.json" and settings["learning_rate"] == 2e-5
    assert settings["epochs"] == 2 and settings["gradient_checkpointing"] is True
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "mathllava-ops"
        assert doc["metadata"]["namespace"] == "mathllava"
    override = job["spec"]["podSpecOverrides"][0]
    shm = next(v for v in override["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "128Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in override["containers"][0]["volumeMounts"]
    assert override["tolerations"][0]["key"] == "nvidia.com/gpu"
    # the estimate: 360,000 samples x 700 tokens x 2 epochs at the measured rate scaled from 1.35B to 7.06B
    rate = 35.4 * 701 * 1.35e9 / 7.06e9
    gpu_hours = 360_000 * 700 * 2 / rate / 3600
    assert comments[0] == f"# estimate: {gpu_hours:,.1f} GPU-hours, {gpu_hours / 8:,.1f} h on 8 GPUs (linear scaling assumed)"


def test_render_pytorchjob_has_a_master_and_workers_and_the_same_script(tmp_path, capsys):
    path = write_config(tmp_path, job={"nodes": 3})
    assert main(["k8s", "train", "--config", str(path), "--kubeconfig", "x", "--namespace", "ns",
                 "--kind", "pytorchjob", "--render"]) == 0
    comments, (config_map, job) = rendered_documents(capsys.readouterr().out)
    assert comments == ["# estimate: none (set estimate.measured and a token count in the config)"]
    assert job["kind"] == "PyTorchJob" and job["spec"]["nprocPerNode"] == "8"
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] == 2
    container = specs["Worker"]["template"]["spec"]["containers"][0]
    assert container["name"] == "pytorch" and container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert container["resources"]["requests"] == {"cpu": "16", "memory": "64Gi"}
    script = container["command"][2].splitlines()
    assert script[1].startswith('[ -n "${PET_NODE_RANK:-${RANK:-}}" ] || {')  # 3 nodes: no rank, no start
    torchrun = next(line for line in script if line.startswith("torchrun"))
    assert torchrun.split(" -m mathllava.train")[0] == (
        "torchrun --nnodes=${PET_NNODES:-3} --nproc-per-node=8 --node-rank=${PET_NODE_RANK:-${RANK:-0}}"
        " --master-addr=${PET_MASTER_ADDR:-${MASTER_ADDR:-127.0.0.1}}"
        " --master-port=${PET_MASTER_PORT:-${MASTER_PORT:-29500}}")
    assert specs["Worker"]["restartPolicy"] == "Never" and job["spec"]["runPolicy"]["cleanPodPolicy"] == "Running"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.mathllava:5000" and env["NCCL_DEBUG"] == "INFO"
    volumes = {v["name"]: v for v in specs["Master"]["template"]["spec"]["volumes"]}
    assert volumes["train-config"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert volumes["shared"]["persistentVolumeClaim"]["claimName"] == "shared"


def test_s3_storage_fetches_inputs_on_every_node_and_uploads_from_node_0(tmp_path):
    config = load_cluster_config(write_config(tmp_path, storage={
        "pvc": None, "base": "s3://models/llava", "data": "s3://data/train.json", "image_root": "s3://data/images",
        "output": "s3://runs"}))
    rendered = render(config, "ns", name="run-1")
    script = rendered.job["spec"]["trainer"]["command"][2]
    lines = script.splitlines()
    fetches = [line for line in lines if "stage fetch" in line]
    assert len(fetches) == 3 and lines.index(fetches[-1]) < next(i for i, l in enumerate(lines) if "torchrun" in l)
    assert "--base /workspace/inputs/base" in script and "--out /workspace/out/run-1" in script
    assert lines[-1].startswith('if [ "${PET_NODE_RANK:-${RANK:-0}}" = 0 ]') and "s3://runs/run-1" in lines[-1]
    assert rendered.output == "s3://runs/run-1"


def test_stage_copies_folders_both_ways(tmp_path):
    from mathllava.k8s.stage import fetch, upload

    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "sub" / "a.txt").write_text("x")
    fetch(f"file://{tmp_path}/src", str(tmp_path / "got"))
    assert (tmp_path / "got" / "sub" / "a.txt").read_text() == "x"
    upload(str(tmp_path / "got"), f"file://{tmp_path}/back")
    assert (tmp_path / "back" / "sub" / "a.txt").read_text() == "x"


@pytest.mark.parametrize("job, storage, key", [
    ({"gpus": 8}, {}, "job.gpus: Extra inputs are not permitted"),
    ({"gpus_per_node": "eight"}, {}, "job.gpus_per_node"),
    ({"memory": "lots"}, {}, "job.memory"),
    ({"name": "Bad_Name"}, {}, "job.name"),
    ({"name": "7b-run"}, {}, "job.name"),
    ({"image_pull_secrets": ["regcred"]}, {}, "job.image_pull_secrets: a TrainJob cannot set them"),
    ({}, {"base": "models/base"}, "base: 'models/base' must be an absolute path"),
    ({}, {"data": "/elsewhere/train.json"}, "is not under the PVC's mount_path"),
])
def test_bad_config_names_the_key_and_submits_nothing(tmp_path, capsys, job, storage, key):
    path = write_config(tmp_path, job=job, storage=storage)
    assert main(["k8s", "train", "--config", str(path), "--kubeconfig", "x", "--namespace", "ns", "--render"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and key in err


# --- against the real API server -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kubelet(kube):
    """The fake kubelet: binds pods to a GPU node and moves them to Succeeded (or Failed)."""
    sys.path.insert(0, str(K8S_LOCAL))
    import fake_kubelet
    from kubernetes import client

    stop = threading.Event()
    thread = threading.Thread(target=fake_kubelet.run, args=(client.CoreV1Api(kube.api), stop), daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=10)


# the label each operator really puts on a job's pods (JobSet for Trainer v2; Training Operator v1)
OPERATOR_POD_LABEL = {"trainjob": "jobset.sigs.k8s.io/jobset-name", "pytorchjob": "training.kubeflow.org/job-name"}


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Operator:
    """Plays Kubeflow's controller for one job: makes its pod and patches its status."""

    def __init__(self, kube, namespace, kind):
        from kubernetes import client

        self.core, self.custom = client.CoreV1Api(kube.api), client.CustomObjectsApi(kube.api)
        self.namespace, self.kind = namespace, kind
        self.group, self.version, self.plural, _ = TRAINJOB if kind == "trainjob" else PYTORCHJOB

    def job(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            items = self.custom.list_namespaced_custom_object(self.group, self.version, self.namespace,
                                                              self.plural)["items"]
            if items:
                return items[0]
            time.sleep(0.05)
        raise AssertionError("no job was submitted")

    def condition(self, name, ctype, reason="", message=""):
        condition = {"type": ctype, "status": "True", "reason": reason or ctype, "message": message or f"{ctype} (test operator)",
                     "lastTransitionTime": _now()}
        if self.kind == "pytorchjob":
            condition["lastUpdateTime"] = _now()
        current = self.custom.get_namespaced_custom_object(self.group, self.version, self.namespace, self.plural, name)
        conditions = [*(current.get("status") or {}).get("conditions", []), condition]
        self.custom.patch_namespaced_custom_object_status(self.group, self.version, self.namespace, self.plural, name,
                                                          {"status": {"conditions": conditions}})

    def pod(self, name, exit_code=0):
        pod = self.core.create_namespaced_pod(self.namespace, {
            "metadata": {"name": f"{name}-node-0-0", "labels": {OPERATOR_POD_LABEL[self.kind]: name},
                         "annotations": {"fake-kubelet/exit-code": str(exit_code)}},
            "spec": {"containers": [{"name": "node", "image": "registry.local/mathllava-ops:test"}]}})
        deadline = time.monotonic() + 30
        while self.core.read_namespaced_pod(pod.metadata.name, self.namespace).status.phase not in ("Succeeded", "Failed"):
            assert time.monotonic() < deadline, "the fake kubelet did not finish the pod"
            time.sleep(0.05)

    def exists(self, name):
        from kubernetes import client

        try:
            self.custom.get_namespaced_custom_object(self.group, self.version, self.namespace, self.plural, name)
            return True
        except client.ApiException as err:
            assert err.status == 404
            return False


def run_cli(args):
    """`mathllava k8s train ...` in a thread; returns (thread, result dict)."""
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("rc", main(args)), daemon=True)
    thread.start()
    return thread, result


def _args(kube, path, namespace, *extra):
    return ["k8s", "train", "--config", str(path), "--kubeconfig", str(kube.kubeconfig), "--namespace", namespace,
            *extra]


@pytest.mark.parametrize("kind", ["trainjob", "pytorchjob"])
def test_jobs_are_accepted_by_the_real_crds_unchanged(kube, namespace, tmp_path, kind):
    """The server prunes fields its CRD schema does not know: what comes back must be what was sent."""
    from kubernetes import client

    from mathllava.k8s.launcher import fit_runtime, submit

    config = load_cluster_config(write_config(tmp_path, job={"env_from_secrets": ["mathllava-s3"]}))
    rendered = render(config, namespace, kind=kind)
    fit_runtime(kube.api, rendered, False, False)
    if kind == "trainjob":  # the local runtime names its trainer job and container the older way
        override = rendered.job["spec"]["podSpecOverrides"][0]
        assert override["targetJobs"] == [{"name": "trainer-node"}] and override["containers"][0]["name"] == "trainer"
    created = submit(kube.api, rendered)
    group, version, plural, _ = rendered.api
    stored = client.CustomObjectsApi(kube.api).get_namespaced_custom_object(group, version, namespace, plural,
                                                                            rendered.name)
    for default in ("managedBy", "suspend"):  # the defaults the CRDs fill in
        stored["spec"].pop(default, None)
        stored["spec"].get("runPolicy", {}).pop(default, None)
    assert stored["spec"] == rendered.job["spec"]
    assert stored["metadata"]["labels"]["app.kubernetes.io/part-of"] == "mathllava-ops"
    config_map = client.CoreV1Api(kube.api).read_namespaced_config_map(f"{rendered.name}-config", namespace)
    assert config_map.metadata.owner_references[0].uid == created["metadata"]["uid"]
    assert config_map.metadata.labels["app.kubernetes.io/part-of"] == "mathllava-ops"
    assert yaml.safe_load(config_map.data["train.yaml"])["train"] == config.train.model_dump(mode="json")


@pytest.mark.parametrize("kind", ["trainjob", "pytorchjob"])
def test_wait_follows_the_job_to_success_and_cleans_up(kube, kubelet, namespace, tmp_path, capsys, kind):
    path = write_config(tmp_path)
    thread, result = run_cli(_args(kube, path, namespace, "--kind", kind, "--wait", "--timeout", "60"))
    operator = Operator(kube, namespace, kind)
    name = operator.job()["metadata"]["name"]
    operator.condition(name, "Created", "JobCreated")
    if kind == "pytorchjob":
        operator.condition(name, "Running", "JobRunning")
    operator.pod(name)
    operator.condition(name, "Complete" if kind == "trainjob" else "Succeeded", "JobSucceeded", "all nodes finished")
    thread.join(timeout=30)
    out, err = capsys.readouterr()
    assert result.get("rc") == 0, err
    kind_name = ("TrainJob/" if kind == "trainjob" else "PyTorchJob/") + name
    assert out.splitlines()[0] == kind_name
    assert f"succeeded; the run is in /mnt/shared/runs/{name}" in out
    assert f"pod {name}-node-0-0: Running" in err and f"pod {name}-node-0-0: Succeeded" in err
    assert "Created" in err  # the job's own progress
    from kubernetes import client

    assert not operator.exists(name)  # cleanup: on-success
    with pytest.raises(client.ApiException):
        client.CoreV1Api(kube.api).read_namespaced_config_map(f"{name}-config", namespace)


def test_failure_exits_1_with_the_jobs_reason_and_keeps_the_job(kube, kubelet, namespace, tmp_path, capsys):
    path = write_config(tmp_path)
    thread, result = run_cli(_args(kube, path, namespace, "--wait", "--timeout", "60"))
    operator = Operator(kube, namespace, "trainjob")
    name = operator.job()["metadata"]["name"]
    operator.pod(name, exit_code=3)
    operator.condition(name, "Failed", "JobSetFailed", "jobset failed: trainer-node-0 exited with code 3")
    thread.join(timeout=30)
    out, err = capsys.readouterr()
    assert result.get("rc") == 1
    assert "JobSetFailed: jobset failed: trainer-node-0 exited with code 3" in err
    assert f"pod {name}-node-0-0: Failed (node: Error, exit code 3)" in err
    assert operator.exists(name)  # on-success keeps a failed job for its logs


def test_timeout_exits_124_and_deletes_the_job(kube, namespace, tmp_path, capsys):
    path = write_config(tmp_path)
    start = time.monotonic()
    rc = main(_args(kube, path, namespace, "--wait", "--timeout", "3"))
    elapsed = time.monotonic() - start
    out, err = capsys.readouterr()
    assert rc == 124 and "no end within 3 s" in err and 3 <= elapsed < 20
    name = out.splitlines()[0].split("/")[1]
    assert not Operator(kube, namespace, "trainjob").exists(name)


@pytest.mark.parametrize("policy, exists_after", [("always", False), ("never", True)])
def test_cleanup_policy_on_failure(kube, namespace, tmp_path, capsys, policy, exists_after):
    path = write_config(tmp_path, job={"cleanup": policy})
    thread, result = run_cli(_args(kube, path, namespace, "--kind", "pytorchjob", "--wait", "--timeout", "60"))
    operator = Operator(kube, namespace, "pytorchjob")
    name = operator.job()["metadata"]["name"]
    operator.condition(name, "Failed", "BackoffLimitExceeded", "master-0 failed")
    thread.join(timeout=30)
    assert result.get("rc") == 1 and "BackoffLimitExceeded: master-0 failed" in capsys.readouterr().err
    assert operator.exists(name) is exists_after


def test_a_malformed_job_is_refused_by_the_server_with_its_reason(kube, namespace, tmp_path, capsys):
    from kubernetes import client

    path = write_config(tmp_path, job={"overrides": {"spec": {"trainer": {"numNodes": "two"}}}})
    assert main(_args(kube, path, namespace)) == 2
    err = capsys.readouterr().err
    assert "the API server refused TrainJob" in err and "spec.trainer.numNodes" in err and "integer" in err
    assert client.CoreV1Api(kube.api).list_namespaced_config_map(
        namespace, label_selector="app.kubernetes.io/part-of=mathllava-ops").items == []  # nothing left behind


def test_a_missing_runtime_is_named(kube, namespace, tmp_path, capsys):
    path = write_config(tmp_path, job={"runtime": "deepspeed-distributed"})
    assert main(_args(kube, path, namespace, "--wait")) == 2
    assert "ClusterTrainingRuntime 'deepspeed-distributed' not found" in capsys.readouterr().err


def test_submit_without_wait_prints_the_job_and_leaves_it_running(kube, namespace, tmp_path, capsys):
    path = write_config(tmp_path)
    assert main(_args(kube, path, namespace, "--kind", "pytorchjob")) == 0
    kind, name = capsys.readouterr().out.strip().split("/")
    assert kind == "PyTorchJob" and Operator(kube, namespace, "pytorchjob").exists(name)


def test_a_job_deleted_while_waiting_fails_the_wait(kube, namespace, tmp_path, capsys):
    from kubernetes import client

    path = write_config(tmp_path)
    thread, result = run_cli(_args(kube, path, namespace, "--wait", "--timeout", "60"))
    operator = Operator(kube, namespace, "trainjob")
    name = operator.job()["metadata"]["name"]
    client.CustomObjectsApi(kube.api).delete_namespaced_custom_object(*TRAINJOB[:2], namespace, TRAINJOB[2], name)
    thread.join(timeout=30)
    assert result.get("rc") == 1 and f"TrainJob/{name} was deleted before it finished" in capsys.readouterr().err


def test_only_transient_errors_keep_the_wait_going():
    import urllib3
    from kubernetes import client

    from mathllava.k8s.launcher import _transient

    assert _transient(urllib3.exceptions.ProtocolError("connection reset"))
    assert _transient(urllib3.exceptions.ReadTimeoutError(None, "/", "timed out"))
    assert _transient(client.ApiException(status=503)) and _transient(client.ApiException(status=429))
    assert not _transient(client.ApiException(status=403)) and not _transient(client.ApiException(status=404))
    assert not _transient(KeyError("status"))
