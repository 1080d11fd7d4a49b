"""Submit a rendered training job to a cluster, follow it through watches (the job's conditions and
its pods' phases, reported as they change), and end it per the cleanup policy. Errors carry the API
server's or the job's own reason."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .config import ClusterTrainConfig
from .errors import ClusterError, api_error
from .manifests import POD_SELECTOR, Rendered, render
from .schema import detect_trainer_api, dropped_fields

SUCCESS = {"Succeeded", "Complete"}     # PyTorchJob, TrainJob
FAILURE = {"Failed"}


@dataclass
class Outcome:
    state: str                       # succeeded | failed | timeout
    reason: str = ""
    message: str = ""
    pods: list[str] = field(default_factory=list)   # one line per pod that failed

    @property
    def ok(self) -> bool:
        return self.state == "succeeded"

    def describe(self) -> str:
        text = f"{self.state}: {self.reason}" + (f": {self.message}" if self.message else "")
        return text + "".join(f"\n  {line}" for line in self.pods)


def api_client(kubeconfig: str | None = None):
    """An ApiClient from a kubeconfig file, or the in-cluster service account without one."""
    from kubernetes import client, config

    if kubeconfig:
        return config.new_client_from_config(config_file=str(kubeconfig))
    config.load_incluster_config()
    return client.ApiClient()


def _runtime_names(api, rendered: Rendered) -> tuple[str, str] | None:
    """(replicated job, container) of the TrainJob's ClusterTrainingRuntime, read from the cluster."""
    from kubernetes import client

    name = rendered.job["spec"]["runtimeRef"]["name"]
    try:
        runtime = client.CustomObjectsApi(api).get_cluster_custom_object(
            "trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes", name)
    except client.ApiException as err:
        if err.status == 404:
            raise ClusterError(f"ClusterTrainingRuntime {name!r} not found: is Kubeflow Trainer v2 installed, and "
                               f"is job.runtime right? (or use --kind pytorchjob)") from None
        raise api_error(err, f"reading ClusterTrainingRuntime {name!r}") from None
    jobs = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    ancestor = "trainer.kubeflow.org/trainjob-ancestor-step"
    chosen = next((j for j in jobs if (j.get("template", {}).get("metadata", {}).get("labels") or {})
                   .get(ancestor) == "trainer"), None)
    chosen = chosen or next((j for j in jobs if j["name"] in ("node", "trainer-node")), None)
    if chosen is None and len(jobs) == 1:
        chosen = jobs[0]
    if chosen is None:
        raise ClusterError(f"ClusterTrainingRuntime {name!r}: cannot tell which of {[j['name'] for j in jobs]} "
                           "runs the trainer; set job.runtime_job and job.runtime_container")
    containers = chosen["template"]["spec"]["template"]["spec"]["containers"]
    return chosen["name"], containers[0]["name"]


def fit_runtime(api, rendered: Rendered, job_given: bool, container_given: bool) -> None:
    """Point the TrainJob's pod overrides at the runtime's own trainer job and container names."""
    if rendered.kind != "trainjob" or (job_given and container_given):
        return
    job_name, container = _runtime_names(api, rendered)
    target, trainer = rendered.trainer_patch()
    if not job_given:
        target["name"] = job_name
    if not container_given:
        trainer["name"] = container


def render_for_cluster(api, config: ClusterTrainConfig, namespace: str, kind: str | None = None,
                       name: str | None = None, mlflow_run_id: str | None = None) -> Rendered:
    """The job written for this cluster: a TrainJob for the Trainer API its CRD serves (unless
    job.trainer_api names one), aimed at its runtime's own trainer job and container."""
    kind = kind or config.job.kind
    api_version = detect_trainer_api(api) if kind == "trainjob" and config.job.trainer_api == "auto" else None
    rendered = render(config, namespace, kind=kind, name=name, mlflow_run_id=mlflow_run_id, trainer_api=api_version)
    fit_runtime(api, rendered, config.job.runtime_job is not None, config.job.runtime_container is not None)
    return rendered


def submit(api, rendered: Rendered) -> dict:
    """Create the ConfigMap, then the job; the ConfigMap is owned by the job so it goes with it. On a
    refusal nothing is left behind."""
    from kubernetes import client

    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    group, version, plural, kind = rendered.api
    try:
        core.create_namespaced_config_map(rendered.namespace, rendered.config_map)
    except client.ApiException as err:
        raise api_error(err, f"creating ConfigMap {rendered.name}-config in {rendered.namespace!r}") from None
    try:
        # Strict: a server that validates fields refuses what its CRD does not know (v1.20 ignores this
        # and prunes instead; the tests read the job back to catch that)
        created = custom.create_namespaced_custom_object(group, version, rendered.namespace, plural, rendered.job,
                                                         field_validation="Strict")
    except client.ApiException as err:
        _delete_config_map(core, rendered)
        if err.status == 404:
            raise ClusterError(f"the cluster has no {kind} ({group}/{version}) resource: install "
                               f"{'Kubeflow Trainer v2' if kind == 'TrainJob' else 'the Kubeflow Training Operator'}"
                               f" or choose the other --kind") from None
        raise api_error(err, f"the API server refused {kind} {rendered.name}") from None
    kept = custom.get_namespaced_custom_object(group, version, rendered.namespace, plural, rendered.name)
    lost = dropped_fields({"metadata": {"labels": rendered.job["metadata"].get("labels") or {}},
                           "spec": rendered.job["spec"]}, kept)
    if lost:  # a server without strict field validation pruned them: a job without its volumes or GPUs
        delete(api, rendered)
        api_line = f" (rendered for {rendered.describe_api()})" if rendered.kind == "trainjob" else ""
        raise ClusterError(f"the API server dropped {len(lost)} field(s) of {kind} {rendered.name} that its "
                           f"CRD does not know, so the job was deleted{api_line}:"
                           + "".join(f"\n  {p}" for p in lost)
                           + ("\n  set job.trainer_api to the cluster's Kubeflow Trainer (v2.0 or v2.2), or "
                              "leave it auto" if rendered.kind == "trainjob" else ""))
    owner = {"apiVersion": f"{group}/{version}", "kind": kind, "name": rendered.name,
             "uid": created["metadata"]["uid"], "blockOwnerDeletion": False}
    try:
        core.patch_namespaced_config_map(f"{rendered.name}-config", rendered.namespace,
                                         {"metadata": {"ownerReferences": [owner]}})
    except client.ApiException as err:
        delete(api, rendered)
        raise api_error(err, f"linking ConfigMap {rendered.name}-config to its job") from None
    return created


def _delete_config_map(core, rendered: Rendered) -> None:
    from kubernetes import client

    try:
        core.delete_namespaced_config_map(f"{rendered.name}-config", rendered.namespace)
    except client.ApiException as err:
        if err.status != 404:
            raise


def state_of(job: dict) -> tuple[str, str, str]:
    """(running | succeeded | failed, reason, message) from a job's status conditions."""
    conditions = (job.get("status") or {}).get("conditions") or []
    for condition in reversed(conditions):
        if condition.get("status") != "True":
            continue
        if condition["type"] in SUCCESS:
            return "succeeded", condition.get("reason", ""), condition.get("message", "")
        if condition["type"] in FAILURE:
            return "failed", condition.get("reason", ""), condition.get("message", "")
    return "running", "", ""


def progress_of(job: dict) -> str:
    """A one-line account of the job's replicas or child jobs, from its status."""
    status = job.get("status") or {}
    parts = [c["type"] for c in status.get("conditions") or [] if c.get("status") == "True"]
    for name, counts in (status.get("replicaStatuses") or {}).items():
        parts.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in counts.items() if isinstance(v, int)))
    for entry in status.get("jobsStatus") or []:
        parts.append(f"{entry['name']}: " + ", ".join(f"{k} {entry[k]}" for k in
                                                      ("active", "ready", "succeeded", "failed") if entry.get(k)))
    trainer = status.get("trainerStatus")
    if trainer:   # what rank 0 reported to Trainer v2.2+'s status server (mathllava.train.progress)
        line = [f"{trainer['progressPercentage']}%"] if trainer.get("progressPercentage") is not None else []
        if trainer.get("estimatedRemainingSeconds") is not None:
            line.append(f"{trainer['estimatedRemainingSeconds']} s left")
        line += [f"{m.get('name')} {m.get('value')}" for m in trainer.get("metrics") or []]
        parts.append("training: " + ", ".join(line or ["reported"]))
    return "; ".join(parts) or "submitted"


def _pod_line(pod) -> str:
    line = f"pod {pod.metadata.name}: {pod.status.phase}"
    for status in pod.status.container_statuses or []:
        done = status.state.terminated if status.state else None
        waiting = status.state.waiting if status.state else None
        if done is not None:
            line += f" ({status.name}: {done.reason or 'terminated'}, exit code {done.exit_code}" \
                    + (f", {done.message}" if done.message else "") + ")"
        elif waiting is not None and waiting.reason:
            line += f" ({status.name}: {waiting.reason}" + (f", {waiting.message}" if waiting.message else "") + ")"
    return line


class PodReporter(threading.Thread):
    """Reports the job's pods as their phase changes, through a watch, until stopped."""

    def __init__(self, api, rendered: Rendered, log: Callable[[str], None]):
        super().__init__(daemon=True)
        self.api, self.rendered, self.log = api, rendered, log
        self.stop = threading.Event()
        self.seen: dict[str, str] = {}

    def run(self) -> None:
        from kubernetes import client, watch

        core = client.CoreV1Api(self.api)
        selector = f"{POD_SELECTOR[self.rendered.kind]}={self.rendered.name}"
        while not self.stop.is_set():
            try:
                for event in watch.Watch().stream(core.list_namespaced_pod, self.rendered.namespace,
                                                  label_selector=selector, timeout_seconds=2):
                    pod = event["object"]
                    line = _pod_line(pod)
                    if self.seen.get(pod.metadata.name) != line:
                        self.seen[pod.metadata.name] = line
                        self.log(line)
                    if self.stop.is_set():
                        return
            except Exception as err:  # a dropped watch only costs progress lines, never the run
                if self.stop.wait(1.0):
                    return
                self.log(f"(pod watch interrupted: {err}; reconnecting)")


def failed_pods(api, rendered: Rendered) -> list[str]:
    from kubernetes import client

    try:
        pods = client.CoreV1Api(api).list_namespaced_pod(
            rendered.namespace, label_selector=f"{POD_SELECTOR[rendered.kind]}={rendered.name}").items
    except Exception as err:  # the job's own reason is what matters; the pods only add detail
        return [f"(pods not listed: {err})"]
    return [_pod_line(p) for p in pods if p.status.phase == "Failed"]


def _transient(err: BaseException) -> bool:
    """A dropped connection, a timeout or an overloaded server: worth reconnecting, never a reason to
    give up on (and clean up) a running job."""
    import urllib3
    from kubernetes import client

    if isinstance(err, client.ApiException):
        return err.status in (0, 429) or err.status >= 500
    return isinstance(err, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


def wait(api, rendered: Rendered, timeout_s: float, log: Callable[[str], None] = print) -> Outcome:
    """Follow the job through a watch on it until it succeeds, fails, disappears or `timeout_s`
    passes. Dropped watches and transient API errors reconnect (listing again); they never end it."""
    from kubernetes import client, watch

    custom = client.CustomObjectsApi(api)
    group, version, plural, kind = rendered.api
    selector = f"metadata.name={rendered.name}"
    deadline = time.monotonic() + timeout_s
    reporter = PodReporter(api, rendered, log)
    reporter.start()
    last, version_seen, job = "", None, None
    gone = Outcome("failed", "Deleted", f"{kind}/{rendered.name} was deleted before it finished")
    try:
        while True:
            remaining = deadline - time.monotonic()
            try:
                if version_seen is None:   # (re)start from a list: the job's state now, and where to watch from
                    listed = custom.list_namespaced_custom_object(group, version, rendered.namespace, plural,
                                                                  field_selector=selector)
                    if not listed["items"]:
                        return gone
                    version_seen, job = listed["metadata"]["resourceVersion"], listed["items"][0]
                if job is not None:
                    line = progress_of(job)
                    if line != last:
                        log(f"{kind}/{rendered.name}: {line}")
                        last = line
                    state, reason, message = state_of(job)
                    if state == "succeeded":
                        return Outcome(state, reason, message)
                    if state == "failed":
                        return Outcome(state, reason or "Failed", message, failed_pods(api, rendered))
                    job = None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return Outcome("timeout", "Timeout",
                                   f"no end within {timeout_s:g} s; last seen: {last or 'submitted'}")
                for event in watch.Watch().stream(custom.list_namespaced_custom_object, group, version,
                                                  rendered.namespace, plural, field_selector=selector,
                                                  resource_version=version_seen,
                                                  timeout_seconds=max(1, min(int(remaining + 0.999), 60)),
                                                  _request_timeout=min(remaining, 60) + 10):  # remaining > 0
                    if event["type"] == "ERROR":   # e.g. 410 Gone: the watched version is too old
                        version_seen = None
                        break
                    if event["type"] == "DELETED":
                        return gone
                    job = event["object"]
                    version_seen = job["metadata"]["resourceVersion"]
                    break
            except client.ApiException as err:
                if err.status == 410:
                    version_seen = None
                elif _transient(err):
                    log(f"({kind}/{rendered.name}: API server answered {err.status}; reconnecting)")
                    version_seen = None
                    time.sleep(min(2.0, max(0.0, remaining)))
                else:
                    raise api_error(err, f"watching {kind}/{rendered.name}") from None
            except Exception as err:
                if not _transient(err):
                    raise
                log(f"({kind}/{rendered.name}: watch interrupted: {err}; reconnecting)")
                version_seen = None
                time.sleep(min(2.0, max(0.0, remaining)))
    finally:
        reporter.stop.set()
        reporter.join(timeout=5)


def should_delete(policy: str, outcome: Outcome) -> bool:
    """always: after any end; on-success: after success, and after a timeout (a job left running keeps
    its GPUs); a failed job is kept for its logs; never: nothing is deleted."""
    if policy == "always":
        return True
    if policy == "on-success":
        return outcome.state in ("succeeded", "timeout")
    return False


def delete(api, rendered: Rendered) -> None:
    """Delete the job (its pods go with it) and its ConfigMap."""
    from kubernetes import client

    group, version, plural, _ = rendered.api
    try:
        client.CustomObjectsApi(api).delete_namespaced_custom_object(
            group, version, rendered.namespace, plural, rendered.name,
            body=client.V1DeleteOptions(propagation_policy="Background"))
    except client.ApiException as err:
        if err.status != 404:
            raise api_error(err, f"deleting {rendered.job['kind']}/{rendered.name}") from None
    _delete_config_map(client.CoreV1Api(api), rendered)


def run(api, rendered: Rendered, timeout_s: float, cleanup: str, log: Callable[[str], None] = print) -> Outcome:
    """Submit, wait, clean up per `cleanup`; the outcome (the caller decides what a failure means)."""
    submit(api, rendered)
    log(f"{rendered.job['kind']}/{rendered.name} submitted in namespace {rendered.namespace}")
    try:
        outcome = wait(api, rendered, timeout_s, log)
    except BaseException:
        if cleanup != "never":
            delete(api, rendered)
        raise
    if should_delete(cleanup, outcome):
        delete(api, rendered)
        log(f"{rendered.job['kind']}/{rendered.name} deleted (cleanup: {cleanup})")
    return outcome
