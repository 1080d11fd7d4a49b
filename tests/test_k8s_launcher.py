"""`mathllava k8s train`: rendering (no cluster), and submit / watch / succeed / fail / time out / clean up
against the real kube-apiserver of ../shared/k8s-local with the real Kubeflow CRDs: both the latest
Kubeflow Trainer (v2.3.0, runtimePatches) and the v2.0-era set (podSpecOverrides), each on its own API
server. No operator runs there, so the tests play it: they create the job's pods (driven by the fake
kubelet) and patch the job's status."""

import datetime
import sys
import threading
import time

import pytest
import yaml

from conftest import K8S_LOCAL, ROOT, make_namespace
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
    # no cluster was read: the latest Trainer API, and the comment says it was assumed
    assert comments[0].startswith("# trainer API v2.2: Kubeflow Trainer v2.2+ (runtimePatches") and "assumed" in comments[0]
    assert job["kind"] == "TrainJob" and job["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    assert "podSpecOverrides" not in job["spec"] and "labels" not in job["spec"]
    assert job["spec"]["activeDeadlineSeconds"] == 172800   # job.timeout_s
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
    (patch,) = job["spec"]["runtimePatches"]
    assert patch["manager"] == "mathllava-ops/launcher"
    (target,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert target["name"] == "node"
    pod = target["template"]["spec"]["template"]
    assert pod["metadata"]["labels"]["app.kubernetes.io/part-of"] == "mathllava-ops"
    shm = next(v for v in pod["spec"]["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "128Gi"}
    (container,) = pod["spec"]["containers"]
    assert container == {"name": "node", "volumeMounts": [
        {"name": "train-config", "mountPath": "/etc/mathllava", "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"}, {"name": "shared", "mountPath": "/mnt/shared"}]}
    assert pod["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    env = {e["name"]: e for e in trainer["env"]}   # Trainer v2.2+ takes env on the trainer only
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "mathllava-s3", "key": "AWS_SECRET_ACCESS_KEY"}}
    # the estimate: 360,000 samples x 700 tokens x 2 epochs at the measured rate scaled from 1.35B to 7.06B
    rate = 35.4 * 701 * 1.35e9 / 7.06e9
    gpu_hours = 360_000 * 700 * 2 / rate / 3600
    assert comments[1] == f"# estimate: {gpu_hours:,.1f} GPU-hours, {gpu_hours / 8:,.1f} h on 8 GPUs (linear scaling assumed)"


def test_render_pytorchjob_has_a_master_and_workers_and_the_same_script(tmp_path, capsys):
    path = write_config(tmp_path, job={"nodes": 3})
    assert main(["k8s", "train", "--config", str(path), "--kubeconfig", "x", "--namespace", "ns",
                 "--kind", "pytorchjob", "--render"]) == 0
    comments, (config_map, job) = rendered_documents(capsys.readouterr().out)
    assert comments == ["# PyTorchJob (Kubeflow Training Operator v1, kubeflow.org/v1)",
                        "# estimate: none (set estimate.measured and a token count in the config)"]
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
    ({"image_pull_secrets": ["regcred"], "trainer_api": "v2.0"}, {},
     "job.image_pull_secrets: a Trainer v2.0 TrainJob cannot set them"),
    ({"env_from_secrets": ["mathllava-s3"]}, {}, "job.env_from_secrets: Kubeflow Trainer v2.2+ has no envFrom"),
    ({"trainer_api": "v2.1"}, {}, "job.trainer_api"),
    ({}, {"base": "models/base"}, "base: 'models/base' must be an absolute path"),
    ({}, {"data": "/elsewhere/train.json"}, "is not under the PVC's mount_path"),
])
def test_bad_config_names_the_key_and_submits_nothing(tmp_path, capsys, job, storage, key):
    path = write_config(tmp_path, job=job, storage=storage)
    assert main(["k8s", "train", "--config", str(path), "--kubeconfig", "x", "--namespace", "ns", "--render"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and key in err


def test_render_for_trainer_v20_puts_pod_settings_in_pod_spec_overrides(tmp_path, capsys):
    path = write_config(tmp_path, job={"trainer_api": "v2.0", "env_from_secrets": ["mathllava-s3"]})
    assert main(["k8s", "train", "--config", str(path), "--kubeconfig", "x", "--namespace", "ns", "--render"]) == 0
    comments, (_, job) = rendered_documents(capsys.readouterr().out)
    assert comments[0] == "# trainer API v2.0: Kubeflow Trainer v2.0/v2.1 (podSpecOverrides); set by job.trainer_api"
    spec = job["spec"]
    assert "runtimePatches" not in spec and "activeDeadlineSeconds" not in spec
    (override,) = spec["podSpecOverrides"]
    assert override["targetJobs"] == [{"name": "node"}] and override["nodeSelector"] == {"gpu": "h100"}
    assert override["containers"][0]["envFrom"] == [{"secretRef": {"name": "mathllava-s3"}}]
    assert spec["labels"]["app.kubernetes.io/part-of"] == "mathllava-ops"


def test_pruned_paths_are_listed_by_name_and_position():
    from mathllava.k8s.schema import dropped_fields

    sent = {"spec": {"a": 1, "runtimePatches": [{"manager": "m"}], "vols": [{"name": "x", "pvc": 1}, {"name": "y"}],
                     "cmd": ["a", "b"], "keep": {"x": 1}}}
    kept = {"spec": {"a": 2, "vols": [{"name": "y"}, {"name": "x"}], "cmd": ["a"], "keep": {"x": 1, "default": 0}}}
    # a changed value or a field the server added is not a loss; a missing key, item or list entry is
    assert dropped_fields(sent, kept) == ["spec.runtimePatches", "spec.vols[x].pvc", "spec.cmd[1]"]
    assert dropped_fields(sent, sent) == []


# --- against the real API servers -------------------------------------------------------------------------

@pytest.fixture(params=["v2.3", "v2.0"])
def cluster(request):
    """A namespace on the Trainer v2.3.0 server (today's clusters) or on the v2.0-era one."""
    from types import SimpleNamespace

    kube = request.getfixturevalue("kube" if request.param == "v2.3" else "kube_v20")
    return SimpleNamespace(kube=kube, namespace=make_namespace(kube, request.node.name), crds=request.param,
                           api_version="v2.2" if request.param == "v2.3" else "v2.0")


def _kubelet(kube):
    """The fake kubelet of one API server: binds every pending pod to a GPU node and moves it to
    Succeeded (or Failed) without running it. Module-scoped: it must be gone before other modules
    (the orchestrator test's kubelet runs pods for real) use the same server."""
    sys.path.insert(0, str(K8S_LOCAL))
    import fake_kubelet
    from kubernetes import client

    stop = threading.Event()
    thread = threading.Thread(target=fake_kubelet.run, args=(client.CoreV1Api(kube.api), stop), daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def kubelet(kube):
    yield from _kubelet(kube)


@pytest.fixture(scope="module")
def kubelet_v20(kube_v20):
    yield from _kubelet(kube_v20)


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

    def job(self, timeout=600):
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

    def trainer_status(self, name, percent, remaining, metrics):
        """What Trainer v2.2+'s status server writes from rank 0's POST."""
        self.custom.patch_namespaced_custom_object_status(self.group, self.version, self.namespace, self.plural, name, {
            "status": {"trainerStatus": {"progressPercentage": percent, "estimatedRemainingSeconds": remaining,
                                         "metrics": [{"name": k, "value": v} for k, v in metrics.items()],
                                         "lastUpdatedTime": _now()}}})

    def pod(self, name, exit_code=0):
        pod = self.core.create_namespaced_pod(self.namespace, {
            "metadata": {"name": f"{name}-node-0-0", "labels": {OPERATOR_POD_LABEL[self.kind]: name},
                         "annotations": {"fake-kubelet/exit-code": str(exit_code)}},
            "spec": {"containers": [{"name": "node", "image": "registry.local/mathllava-ops:test"}]}})
        deadline = time.monotonic() + 600  # a hang guard: the loop waits for an event
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
def test_jobs_are_accepted_by_the_real_crds_unchanged(cluster, tmp_path, kind):
    """The server prunes fields its CRD schema does not know: what comes back must be what was sent,
    for the Trainer API the launcher read from the cluster's CRD."""
    from kubernetes import client

    from mathllava.k8s.launcher import render_for_cluster, submit
    from mathllava.k8s.schema import detect_trainer_api

    kube, namespace = cluster.kube, cluster.namespace
    assert detect_trainer_api(kube.api) == cluster.api_version
    # envFrom exists on the older API (and PyTorchJob) only; Trainer v2.2+ takes named secret variables
    job = ({"secret_env": {"AWS_ACCESS_KEY_ID": {"secret": "mathllava-s3", "key": "AWS_ACCESS_KEY_ID"}}}
           if cluster.api_version == "v2.2" and kind == "trainjob" else {"env_from_secrets": ["mathllava-s3"]})
    config = load_cluster_config(write_config(tmp_path, job={**job, "image_pull_secrets": []}))
    rendered = render_for_cluster(kube.api, config, namespace, kind=kind)
    if kind == "trainjob":
        assert rendered.trainer_api == cluster.api_version and rendered.api_source == "cluster"
        target, container = rendered.trainer_patch()
        # the runtime's own names: the local v2.0-era runtime names them the older way
        assert (target["name"], container["name"]) == (("node", "node") if cluster.crds == "v2.3"
                                                       else ("trainer-node", "trainer"))
        assert ("runtimePatches" in rendered.job["spec"]) is (cluster.api_version == "v2.2")
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


def _count_leaves(node) -> int:
    if isinstance(node, dict):
        return sum(_count_leaves(v) for v in node.values()) or 1
    if isinstance(node, list):
        return sum(_count_leaves(v) for v in node) or 1
    return 1


def test_the_readme_job_keeps_every_field_on_either_trainer(cluster, capsys):
    """The documented command, against each server: the API is read from the CRD, and what the server
    kept is every field that was rendered (the volumes, /dev/shm, the GPU toleration and selector, the
    S3 secret, the labels)."""
    from kubernetes import client

    from mathllava.k8s.launcher import render_for_cluster
    from mathllava.k8s.schema import dropped_fields

    rc = main(["k8s", "train", "--config", "configs/k8s/train.yaml", "--kubeconfig", str(cluster.kube.kubeconfig),
               "--namespace", cluster.namespace])
    out, err = capsys.readouterr()
    assert rc == 0, err
    kind, name = out.strip().split("/")
    assert kind == "TrainJob" and f"trainer API {cluster.api_version}" in err and "read from the cluster" in err
    stored = client.CustomObjectsApi(cluster.kube.api).get_namespaced_custom_object(
        *TRAINJOB[:2], cluster.namespace, TRAINJOB[2], name)
    config = load_cluster_config("configs/k8s/train.yaml")
    sent = render_for_cluster(cluster.kube.api, config, cluster.namespace, name=name).job
    assert dropped_fields(sent["spec"], stored["spec"]) == []
    if cluster.api_version == "v2.2":
        pod = stored["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
            "template"]["spec"]["template"]
        assert stored["spec"]["activeDeadlineSeconds"] == 172800
    else:
        override = stored["spec"]["podSpecOverrides"][0]
        pod = {"metadata": {"labels": stored["spec"]["labels"]}, "spec": override}
    assert {v["name"] for v in pod["spec"]["volumes"]} == {"train-config", "dshm", "shared"}
    assert pod["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["metadata"]["labels"]["app.kubernetes.io/part-of"] == "mathllava-ops"
    env = {e["name"]: e for e in stored["spec"]["trainer"]["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "mathllava-s3"
    assert _count_leaves(stored["spec"]) >= _count_leaves(sent["spec"]) > 40


def _namespaced_user(kube, namespace, tmp_path):
    """A kubeconfig for a service account that may run jobs in `namespace` and read the cluster's
    training runtimes, but not read CRDs: how many clusters give data scientists access."""
    import base64

    from kubernetes import client

    core, rbac = client.CoreV1Api(kube.api), client.RbacAuthorizationV1Api(kube.api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "launcher"}})
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "launcher"}, "rules": [
        {"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs"], "verbs": ["*"]},
        {"apiGroups": [""], "resources": ["configmaps", "pods"], "verbs": ["*"]}]})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "launcher"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                                      "name": "launcher"},
        "subjects": [{"kind": "ServiceAccount", "name": "launcher", "namespace": namespace}]})
    role = f"{namespace}-runtimes"
    rbac.create_cluster_role({"metadata": {"name": role}, "rules": [
        {"apiGroups": ["trainer.kubeflow.org"], "resources": ["clustertrainingruntimes"], "verbs": ["get", "list"]}]})
    rbac.create_cluster_role_binding({
        "metadata": {"name": role}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                                "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": "launcher", "namespace": namespace}]})
    deadline = time.monotonic() + 600  # a hang guard: the loop waits for an event
    while not (secrets := core.read_namespaced_service_account("launcher", namespace).secrets):
        assert time.monotonic() < deadline, "the controller manager made no token for the service account"
        time.sleep(0.1)
    token = base64.b64decode(core.read_namespaced_secret(secrets[0].name, namespace).data["token"]).decode()
    config = yaml.safe_load(kube.kubeconfig.read_text())
    config["users"] = [{"name": config["users"][0]["name"], "user": {"token": token}}]
    path = tmp_path / "launcher.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_user_who_may_not_read_crds_gets_the_api_from_the_published_schema(kube, namespace, tmp_path, capsys):
    from kubernetes import client, config

    kubeconfig = _namespaced_user(kube, namespace, tmp_path)
    with pytest.raises(client.ApiException) as refused:   # the precondition: this user cannot read the CRD
        client.ApiextensionsV1Api(config.new_client_from_config(config_file=str(kubeconfig))) \
            .read_custom_resource_definition("trainjobs.trainer.kubeflow.org")
    assert refused.value.status == 403
    rc = main(["k8s", "train", "--config", "configs/k8s/train.yaml", "--kubeconfig", str(kubeconfig),
               "--namespace", namespace])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "trainer API v2.2" in err and "read from the cluster" in err
    name = out.strip().split("/")[1]
    stored = client.CustomObjectsApi(kube.api).get_namespaced_custom_object(*TRAINJOB[:2], namespace, TRAINJOB[2], name)
    assert "runtimePatches" in stored["spec"]


@pytest.mark.parametrize("server, forced", [("v2.0", "v2.2"), ("v2.3", "v2.0")])
def test_a_job_the_server_prunes_is_refused_naming_the_fields_and_deleted(request, tmp_path, capsys, server, forced):
    """A TrainJob written for the other Trainer generation: a v1.20 server (like one without strict field
    validation) drops what its CRD does not know. The launcher reads the job back, deletes it and exits
    2 naming each dropped field: never a success for a job without its volumes."""
    from kubernetes import client

    kube = request.getfixturevalue("kube" if server == "v2.3" else "kube_v20")
    namespace = make_namespace(kube, request.node.name)
    path = write_config(tmp_path, job={"trainer_api": forced})
    rc = main(_args(kube, path, namespace, "--wait", "--timeout", "30"))
    out, err = capsys.readouterr()
    assert rc == 2
    assert "the API server dropped" in err and "so the job was deleted" in err
    lost = {line.strip() for line in err.splitlines() if line.startswith("  spec.")}
    if forced == "v2.2":
        assert lost == {"spec.activeDeadlineSeconds", "spec.runtimePatches"}
    else:
        assert lost == {"spec.labels", "spec.podSpecOverrides"}
    custom = client.CustomObjectsApi(kube.api)
    assert custom.list_namespaced_custom_object(*TRAINJOB[:2], namespace, TRAINJOB[2])["items"] == []
    assert client.CoreV1Api(kube.api).list_namespaced_config_map(
        namespace, label_selector="app.kubernetes.io/part-of=mathllava-ops").items == []  # nothing left behind


@pytest.mark.parametrize("kind", ["trainjob", "pytorchjob"])
def test_wait_follows_the_job_to_success_and_cleans_up(cluster, request, tmp_path, capsys, kind):
    kube, namespace = cluster.kube, cluster.namespace
    request.getfixturevalue("kubelet" if cluster.crds == "v2.3" else "kubelet_v20")
    path = write_config(tmp_path)
    thread, result = run_cli(_args(kube, path, namespace, "--kind", kind, "--wait", "--timeout", "60"))
    operator = Operator(kube, namespace, kind)
    name = operator.job()["metadata"]["name"]
    operator.condition(name, "Created", "JobCreated")
    if kind == "pytorchjob":
        operator.condition(name, "Running", "JobRunning")
    if kind == "trainjob" and cluster.api_version == "v2.2":   # rank 0's report through the status server
        operator.trainer_status(name, 45, 120, {"loss": "0.1500", "learning_rate": "2e-05", "epoch": "0.90"})
    operator.pod(name)
    operator.condition(name, "Complete" if kind == "trainjob" else "Succeeded", "JobSucceeded", "all nodes finished")
    thread.join(timeout=600)
    out, err = capsys.readouterr()
    assert result.get("rc") == 0, err
    kind_name = ("TrainJob/" if kind == "trainjob" else "PyTorchJob/") + name
    assert out.splitlines()[0] == kind_name
    assert f"succeeded; the run is in /mnt/shared/runs/{name}" in out
    assert f"pod {name}-node-0-0: Running" in err and f"pod {name}-node-0-0: Succeeded" in err
    assert "Created" in err  # the job's own progress
    if kind == "trainjob" and cluster.api_version == "v2.2":
        assert "training: 45%, 120 s left, loss 0.1500, learning_rate 2e-05, epoch 0.90" in err
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
    thread.join(timeout=600)
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
    thread.join(timeout=600)
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
    thread.join(timeout=600)
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
