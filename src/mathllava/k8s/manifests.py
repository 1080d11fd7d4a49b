"""The Kubernetes objects of one training run: a ConfigMap with the training settings and a Kubeflow
job (TrainJob, trainer.kubeflow.org/v1alpha1, or PyTorchJob, kubeflow.org/v1) whose every node runs
`mathllava train` under torchrun. Plain dicts, as `kubectl apply` would take them.

A TrainJob is written for one of the two Kubeflow Trainer API generations: v2.0 (Trainer v2.0 and
v2.1: the pods' volumes, placement and mounts in `podSpecOverrides`, labels in `spec.labels`) or v2.2
(Trainer v2.2 and later: the same in a `runtimePatches` entry of this project's manager, labels on the
pod template, and the deadline in `spec.activeDeadlineSeconds`). A server of the other generation
prunes what it does not know, so the launcher reads the job back after creating it."""

from __future__ import annotations

import copy
import secrets
import shlex
from dataclasses import dataclass

import yaml

from .config import PART_OF, ClusterTrainConfig

CONFIG_DIR = "/etc/mathllava"
WORKSPACE = "/workspace"
TRAINJOB = ("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob")
PYTORCHJOB = ("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob")
# the label each operator puts on the pods of a job (JobSet for Trainer v2, Training Operator v1)
POD_SELECTOR = {"trainjob": "jobset.sigs.k8s.io/jobset-name", "pytorchjob": "training.kubeflow.org/job-name"}
TRAINER_APIS = {"v2.0": "Kubeflow Trainer v2.0/v2.1 (podSpecOverrides)",
                "v2.2": "Kubeflow Trainer v2.2+ (runtimePatches, activeDeadlineSeconds)"}
LATEST_TRAINER_API = "v2.2"
# the owner of this project's runtimePatches entry (Trainer's webhook wants a domain-prefixed path)
PATCH_MANAGER = "mathllava-ops/launcher"


@dataclass(frozen=True)
class Rendered:
    kind: str               # trainjob | pytorchjob
    name: str
    namespace: str
    config_map: dict
    job: dict
    output: str             # where the run's folder (checkpoints, model/, summary.json) ends up
    trainer_api: str | None = None   # a TrainJob's API generation (v2.0 | v2.2); None for a PyTorchJob
    api_source: str = "config"       # where trainer_api came from: cluster (its schema) | config | assumed

    def describe_api(self) -> str:
        """One line on the API the job is written for, and whether it was read from the cluster."""
        if self.kind != "trainjob":
            return "PyTorchJob (Kubeflow Training Operator v1, kubeflow.org/v1)"
        how = {"cluster": "read from the cluster's TrainJob schema", "config": "set by job.trainer_api",
               "assumed": "assumed, the latest: job.trainer_api is auto and no cluster was read; set "
                          "job.trainer_api: v2.0 for Trainer v2.0/v2.1"}[self.api_source]
        return f"trainer API {self.trainer_api}: {TRAINER_APIS[self.trainer_api]}; {how}"

    def trainer_patch(self) -> tuple[dict, dict]:
        """(the replicated-job target, the trainer container) of a TrainJob's pod patch, either API."""
        spec = self.job["spec"]
        if self.trainer_api == "v2.0":
            override = spec["podSpecOverrides"][0]
            return override["targetJobs"][0], override["containers"][0]
        target = spec["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
        return target, target["template"]["spec"]["template"]["spec"]["containers"][0]

    @property
    def api(self) -> tuple[str, str, str, str]:
        return TRAINJOB if self.kind == "trainjob" else PYTORCHJOB

    def documents(self) -> list[dict]:
        return [self.config_map, self.job]

    def yaml(self) -> str:
        return yaml.dump_all(self.documents(), Dumper=_Dumper, sort_keys=False)


class _Dumper(yaml.SafeDumper):
    """No anchors, and multi-line strings (scripts, embedded YAML) as literal blocks."""

    def ignore_aliases(self, data) -> bool:
        return True


_Dumper.add_representer(str, lambda dumper, value: dumper.represent_scalar(
    "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None))


def job_name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def nproc(config: ClusterTrainConfig) -> int:
    return config.job.gpus_per_node or config.train.nproc_per_node


def _local(uri: str, slot: str) -> str:
    """Where an input is read inside the container: its path on the PVC, or the fetched copy."""
    return f"{WORKSPACE}/inputs/{slot}" if uri.startswith("s3://") else uri


def node_script(config: ClusterTrainConfig, name: str) -> str:
    """The shell script every node runs: fetch s3:// inputs, torchrun `mathllava train`, and on node 0
    upload the run when the output is an s3:// URI. Node rank and rendezvous come from the operator's
    environment (PET_* from Kubeflow Trainer and Training Operator, else MASTER_*/RANK)."""
    s = config.storage
    lines = ["set -euo pipefail"]
    for slot in ("base", "data", "image_root"):
        uri = getattr(s, slot)
        if uri.startswith("s3://"):
            lines.append(f"python -m mathllava.k8s.stage fetch {shlex.quote(uri)} {_local(uri, slot)}")
    out = f"{WORKSPACE}/out/{name}" if s.output.startswith("s3://") else f"{s.output.rstrip('/')}/{name}"
    n = config.job.nodes
    if n > 1:  # without the operator's rank every node would be rank 0 and wait for the others forever
        lines.append('[ -n "${PET_NODE_RANK:-${RANK:-}}" ] || { echo "no node rank (PET_NODE_RANK or RANK) from '
                     'the operator: is this the runtime\'s trainer container?" >&2; exit 1; }')
    lines.append(
        "torchrun"
        f" --nnodes=${{PET_NNODES:-{n}}} --nproc-per-node={nproc(config)}"
        " --node-rank=${PET_NODE_RANK:-${RANK:-0}}"
        " --master-addr=${PET_MASTER_ADDR:-${MASTER_ADDR:-127.0.0.1}}"
        " --master-port=${PET_MASTER_PORT:-${MASTER_PORT:-29500}}"
        " -m mathllava.train"
        f" --base {shlex.quote(_local(s.base, 'base'))} --data {shlex.quote(_local(s.data, 'data'))}"
        f" --image-root {shlex.quote(_local(s.image_root, 'image_root'))} --out {shlex.quote(out)}"
        f" --config {CONFIG_DIR}/train.yaml")
    if s.output.startswith("s3://"):
        target = f"{s.output.rstrip('/')}/{name}"
        lines.append(f'if [ "${{PET_NODE_RANK:-${{RANK:-0}}}}" = 0 ]; then '
                     f"python -m mathllava.k8s.stage upload {shlex.quote(out)} {shlex.quote(target)}; fi")
    return "\n".join(lines) + "\n"


def output_location(config: ClusterTrainConfig, name: str) -> str:
    return f"{config.storage.output.rstrip('/')}/{name}"


def _env(config: ClusterTrainConfig, name: str, mlflow_run_id: str | None) -> list[dict]:
    env = {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", **config.job.env}
    if config.mlflow.tracking_uri:
        env.update({"MLFLOW_TRACKING_URI": config.mlflow.tracking_uri,
                    "MLFLOW_EXPERIMENT_NAME": config.mlflow.experiment, "MLFLOW_RUN_NAME": name})
    if mlflow_run_id:
        env["MLFLOW_RUN_ID"] = mlflow_run_id
    items = [{"name": k, "value": str(v)} for k, v in env.items()]
    items += [{"name": k, "valueFrom": {"secretKeyRef": {"name": ref.secret, "key": ref.key}}}
              for k, ref in config.job.secret_env.items()]
    return items


def _volumes(config: ClusterTrainConfig, name: str) -> tuple[list[dict], list[dict]]:
    volumes = [{"name": "train-config", "configMap": {"name": f"{name}-config"}}]
    mounts = [{"name": "train-config", "mountPath": CONFIG_DIR, "readOnly": True}]
    if config.job.shm_size:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": config.job.shm_size}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    if config.storage.pvc:
        volumes.append({"name": "shared", "persistentVolumeClaim": {"claimName": config.storage.pvc}})
        mounts.append({"name": "shared", "mountPath": config.storage.mount_path})
    if config.storage.uses_s3:
        volumes.append({"name": "workspace", "emptyDir": {}})
        mounts.append({"name": "workspace", "mountPath": WORKSPACE})
    return volumes, mounts


def _resources(config: ClusterTrainConfig) -> dict:
    limits, requests = {}, {}
    if config.job.gpus_per_node:
        limits["nvidia.com/gpu"] = config.job.gpus_per_node
    for key in ("cpu", "memory"):
        value = getattr(config.job, key)
        if value is not None:
            limits[key] = requests[key] = value
    out = {}
    if limits:
        out["limits"] = limits
    if requests:
        out["requests"] = requests
    return out


def _merge(base: dict, extra: dict) -> dict:
    """`extra` merged into `base` (mappings recursively, anything else replaced)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def render(config: ClusterTrainConfig, namespace: str, kind: str | None = None, name: str | None = None,
           mlflow_run_id: str | None = None, trainer_api: str | None = None) -> Rendered:
    """`trainer_api`: the cluster's Trainer API generation when known (the launcher reads it from the
    CRD); else job.trainer_api, where auto assumes the latest."""
    kind = kind or config.job.kind
    api = trainer_api or config.job.trainer_api
    source = "cluster" if trainer_api else "assumed" if api == "auto" else "config"
    api = LATEST_TRAINER_API if api == "auto" else api
    if api not in TRAINER_APIS:
        raise ValueError(f"trainer API must be one of {sorted(TRAINER_APIS)}, not {api!r}")
    name = name or job_name(config.job.name)
    labels = {**config.job.labels, **PART_OF, "app.kubernetes.io/name": "mathllava-train",
              "app.kubernetes.io/instance": name}
    settings = config.train.model_dump(mode="json")
    config_map = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": f"{name}-config", "namespace": namespace, "labels": labels},
                  "data": {"train.yaml": yaml.safe_dump({"train": settings}, sort_keys=False)}}
    volumes, mounts = _volumes(config, name)
    command = ["bash", "-c", node_script(config, name)]
    env = _env(config, name, mlflow_run_id)
    env_from = [{"secretRef": {"name": s}} for s in config.job.env_from_secrets]
    pod_spec = {k: v for k, v in {
        "nodeSelector": config.job.node_selector or None, "tolerations": config.job.tolerations or None,
        "serviceAccountName": config.job.service_account, "volumes": volumes,
        "imagePullSecrets": [{"name": s} for s in config.job.image_pull_secrets] or None}.items() if v is not None}
    if kind == "trainjob":
        job = (_trainjob_v20 if api == "v2.0" else _trainjob_v22)(
            config, name, namespace, labels, command, env, env_from, pod_spec, mounts)
    elif kind == "pytorchjob":
        job = _pytorchjob(config, name, namespace, labels, command, env, env_from, pod_spec, mounts)
    else:
        raise ValueError(f"kind must be trainjob or pytorchjob, not {kind!r}")
    if config.job.overrides:
        job = _merge(job, config.job.overrides)
    return Rendered(kind, name, namespace, config_map, job, output_location(config, name),
                    trainer_api=api if kind == "trainjob" else None, api_source=source)


def _trainjob_spec(config, command, env) -> dict:
    """What both Trainer API generations share: the runtime, and the trainer's image, command, env,
    nodes and resources."""
    trainer = {"image": config.job.image, "command": command, "env": env, "numNodes": config.job.nodes,
               "numProcPerNode": nproc(config)}
    resources = _resources(config)
    if resources:
        trainer["resourcesPerNode"] = resources
    return {"runtimeRef": {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                           "name": config.job.runtime}, "trainer": trainer}


def _trainjob_v20(config, name, namespace, labels, command, env, env_from, pod_spec, mounts) -> dict:
    if config.job.image_pull_secrets:
        raise ValueError("job.image_pull_secrets: a Trainer v2.0 TrainJob cannot set them (its pod overrides have "
                         "no such field); give them to the service account (job.service_account) instead")
    container = {"name": config.job.runtime_container or "node", "volumeMounts": mounts}
    if env_from:
        container["envFrom"] = env_from
    override = {"targetJobs": [{"name": config.job.runtime_job or "node"}],
                **{k: v for k, v in pod_spec.items() if k != "imagePullSecrets"}, "containers": [container]}
    return {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {**_trainjob_spec(config, command, env), "labels": labels, "podSpecOverrides": [override]}}


def _trainjob_v22(config, name, namespace, labels, command, env, env_from, pod_spec, mounts) -> dict:
    if env_from:  # a patch sets a container's env, volumeMounts and securityContext only; the trainer has env
        raise ValueError("job.env_from_secrets: Kubeflow Trainer v2.2+ has no envFrom (a runtime patch sets only "
                         "a container's env, volumeMounts and securityContext): name each variable in "
                         "job.secret_env ({VAR: {secret: NAME, key: KEY}}), or set job.trainer_api: v2.0 for an "
                         "older cluster")
    container = {"name": config.job.runtime_container or "node", "volumeMounts": mounts}
    pod = {"metadata": {"labels": labels}, "spec": {**pod_spec, "containers": [container]}}
    patch = {"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
        {"name": config.job.runtime_job or "node", "template": {"spec": {"template": pod}}}]}}}}
    return {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {**_trainjob_spec(config, command, env),
                     "activeDeadlineSeconds": max(1, int(config.job.timeout_s)), "runtimePatches": [patch]}}


def _pytorchjob(config, name, namespace, labels, command, env, env_from, pod_spec, mounts) -> dict:
    container = {"name": "pytorch", "image": config.job.image, "imagePullPolicy": config.job.image_pull_policy,
                 "command": command, "env": env, "volumeMounts": mounts}
    if env_from:
        container["envFrom"] = env_from
    resources = _resources(config)
    if resources:
        container["resources"] = resources

    def replica(count: int) -> dict:
        # a crashed node is not restarted in place (a fixed-size rendezvous cannot take it back): the
        # job fails, and its running pods are removed so no GPU stays held
        return {"replicas": count, "restartPolicy": "Never",
                "template": {"metadata": {"labels": labels}, "spec": {**pod_spec, "containers": [container]}}}

    specs = {"Master": replica(1)}
    if config.job.nodes > 1:
        specs["Worker"] = replica(config.job.nodes - 1)
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"nprocPerNode": str(nproc(config)), "pytorchReplicaSpecs": specs,
                     "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": 0,
                                   "activeDeadlineSeconds": max(1, int(config.job.timeout_s))}}}
