"""The test kubelet (tests/k8s_kubelet.py) against the real API server and controller manager: a Job's
pod runs as a local process with its env, volumes and service-account token, talks to the API server
in-cluster, and its exit code becomes the pod's phase and the Job's condition."""

import sys
import time

import pytest

from k8s_kubelet import Image, LocalKubelet, mount_namespaces_available

IMAGE = "local/python:test"


@pytest.fixture
def kubelet(kube, namespace, tmp_path):
    ok, why = mount_namespaces_available()
    if not ok:
        pytest.skip(f"the test kubelet needs private mount namespaces: {why}")
    with LocalKubelet(kube.api, {IMAGE: Image(workdir=str(tmp_path), env={"PATH": "/usr/bin:/bin"})},
                      tmp_path / "kubelet", namespaces={namespace}) as k:
        yield k


def _job(name, script, env=(), volumes=(), mounts=(), backoff=0):
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": backoff, "template": {"metadata": {"labels": {"app": name}}, "spec": {
                "restartPolicy": "Never", "volumes": list(volumes),
                "containers": [{"name": "main", "image": IMAGE, "command": [sys.executable, "-c"], "args": [script],
                                "env": list(env), "volumeMounts": list(mounts)}]}}}}


def _wait_job(batch, name, namespace, timeout=600):   # a hang guard: the loop waits for the job's condition
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = batch.read_namespaced_job(name, namespace)
        for cond in job.status.conditions or []:
            if cond.status == "True" and cond.type in ("Complete", "Failed"):
                return cond.type
        time.sleep(0.3)
    raise AssertionError(f"job {name} did not finish in {timeout} s")


SCRIPT = """
import os, pathlib, socket
from kubernetes import client, config
config.load_incluster_config()                    # the mounted service-account token and CA
core = client.CoreV1Api()
me = core.read_namespaced_pod(os.environ["POD_NAME"], os.environ["POD_NAMESPACE"])
pathlib.Path(os.environ["OUT"], "seen.txt").write_text(
    f"{me.metadata.labels['app']} {os.environ['FROM_SECRET']} {os.environ['FROM_CONFIGMAP']} {os.getcwd()} "
    f"{socket.gethostname() == me.metadata.name}")
print("pod can see itself:", me.metadata.name)
"""


@pytest.mark.slow
def test_job_pod_runs_with_env_volumes_and_in_cluster_credentials(kube, namespace, kubelet, tmp_path):
    from kubernetes import client

    core, batch, rbac = client.CoreV1Api(kube.api), client.BatchV1Api(kube.api), client.RbacAuthorizationV1Api(kube.api)
    core.create_namespaced_secret(namespace, {"metadata": {"name": "s"}, "stringData": {"token": "from-a-secret"}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "c"}, "data": {"k": "from-a-configmap"}})
    rbac.create_namespaced_role_binding(namespace, {  # the pod's default service account may read pods
        "metadata": {"name": "view"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                                  "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": namespace}]})
    out = tmp_path / "out"
    out.mkdir()
    env = [{"name": "OUT", "value": "/mnt/results"},
           {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
           {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
           {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
           {"name": "FROM_CONFIGMAP", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]
    batch.create_namespaced_job(namespace, _job("ok", SCRIPT, env,
                                                [{"name": "results", "hostPath": {"path": str(out)}}],
                                                [{"name": "results", "mountPath": "/mnt/results"}]))
    assert _wait_job(batch, "ok", namespace) == "Complete", kubelet.logs()
    assert (out / "seen.txt").read_text() == f"ok from-a-secret from-a-configmap {tmp_path} True"
    pod = core.list_namespaced_pod(namespace, label_selector="job-name=ok").items[0]
    assert pod.status.phase == "Succeeded" and pod.spec.node_name == kubelet.node_name
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0
    # the container's output through the API server (the kubelet's log endpoint)
    assert f"pod can see itself: {pod.metadata.name}" in core.read_namespaced_pod_log(pod.metadata.name, namespace)


@pytest.mark.slow
def test_failing_pod_fails_its_job_with_the_exit_code_and_unknown_images_wait(kube, namespace, kubelet):
    from kubernetes import client

    core, batch = client.CoreV1Api(kube.api), client.BatchV1Api(kube.api)
    batch.create_namespaced_job(namespace, _job("bad", "import sys; print('boom'); sys.exit(3)", backoff=1))
    assert _wait_job(batch, "bad", namespace) == "Failed"
    pods = core.list_namespaced_pod(namespace, label_selector="job-name=bad").items
    assert len(pods) == 2   # backoffLimit 1: the Job controller made a second pod
    for pod in pods:
        assert pod.status.phase == "Failed"
        assert pod.status.container_statuses[0].state.terminated.exit_code == 3
        assert "boom" in kubelet.log_of(namespace, pod.metadata.name)
    job = _job("nope", "pass")
    job["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.example.com/nowhere:1"
    batch.create_namespaced_job(namespace, job)
    deadline = time.monotonic() + 600  # a hang guard: the loop waits for an event
    while time.monotonic() < deadline:
        pods = core.list_namespaced_pod(namespace, label_selector="job-name=nope").items
        waiting = pods and pods[0].status.container_statuses and pods[0].status.container_statuses[0].state.waiting
        if waiting:
            break
        time.sleep(0.3)
    assert waiting and waiting.reason == "ErrImagePull" and pods[0].status.phase == "Pending"
    # deleting a running pod's Job stops its process (the garbage collector deletes the pod)
    batch.create_namespaced_job(namespace, _job("sleeper", "import time; time.sleep(600)"))
    deadline = time.monotonic() + 600  # a hang guard: the loop waits for an event
    while not any(p.process and p.exit_code is None for p in kubelet.pods.values() if p.namespace == namespace):
        assert time.monotonic() < deadline, "the sleeper never started"
        time.sleep(0.3)
    batch.delete_namespaced_job("sleeper", namespace, propagation_policy="Foreground")
    deadline = time.monotonic() + 600  # a hang guard: the loop waits for an event
    while any(p.exit_code is None and p.process for p in kubelet.pods.values() if p.namespace == namespace):
        assert time.monotonic() < deadline, "the sleeper's process was not stopped"
        time.sleep(0.3)
