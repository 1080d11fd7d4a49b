"""Typed settings of one distributed training job on Kubernetes (`mathllava k8s train --config FILE`,
and the pipeline's train step with `train.launcher: kubeflow`). Unknown keys and impossible values are
refused with the key's path, before anything is sent to a cluster."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..settings import Strict, parse, read_yaml
from ..train.config import TrainSettings

PART_OF = {"app.kubernetes.io/part-of": "mathllava-ops"}
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # DNS-1035: the operators name Services after jobs
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|Pi|Ei|M|G|T|P|E)?$")


class SecretEnv(Strict):
    secret: str
    key: str


class JobSettings(Strict):
    """What the job runs on: image, nodes x GPUs, resources, placement, and its lifetime."""

    name: str = "mathllava-train"           # a prefix: the job is named <name>-<6 random characters>
    kind: Literal["trainjob", "pytorchjob"] = "trainjob"
    # the Kubeflow Trainer API a TrainJob is written for: v2.0 (v2.0/v2.1, podSpecOverrides) or v2.2
    # (v2.2+, runtimePatches and activeDeadlineSeconds); auto reads it from the cluster's TrainJob CRD
    trainer_api: Literal["auto", "v2.0", "v2.2"] = "auto"
    runtime: str = "torch-distributed"     # the ClusterTrainingRuntime a TrainJob refers to
    runtime_job: str | None = None          # its replicated job and container to override (None: read from
    runtime_container: str | None = None    # the runtime on submit; "node", Trainer v2's name, for --render)
    image: str
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    image_pull_secrets: list[str] = []
    nodes: int = Field(1, gt=0)
    gpus_per_node: int = Field(1, ge=0)     # 0: CPU-only workers (the tiny model)
    cpu: str | None = None                  # per node, a Kubernetes quantity ("32", "500m")
    memory: str | None = None               # per node ("512Gi")
    shm_size: str | None = "16Gi"           # /dev/shm as a memory-backed emptyDir (NCCL and dataloaders need it)
    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    env: dict[str, str] = {}
    secret_env: dict[str, SecretEnv] = {}   # VAR: {secret, key}: values stay in Kubernetes Secrets
    env_from_secrets: list[str] = []        # whole Secrets as environment (e.g. S3 credentials)
    service_account: str | None = None
    cleanup: Literal["always", "on-success", "never"] = "on-success"
    timeout_s: float = Field(72 * 3600, gt=0)  # --wait gives up (and, unless cleanup is never, deletes) after this
    labels: dict[str, str] = {}
    overrides: dict[str, Any] = {}          # merged into the rendered job: fields this project does not model

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if len(value) > 45 or not _DNS_LABEL.match(value):
            raise ValueError("must be a DNS-1035 label of at most 45 characters (a lower-case letter first, then "
                             "lower case, digits, '-')")
        return value

    @field_validator("cpu", "memory", "shm_size")
    @classmethod
    def _quantity(cls, value: str | None) -> str | None:
        if value is not None and not _QUANTITY.match(str(value)):
            raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. '32', '500m', '512Gi')")
        return None if value is None else str(value)


class StorageSettings(Strict):
    """Where the job finds its inputs and leaves the model: paths on a shared PVC, or s3:// URIs
    (fetched by an init container before training; the output is uploaded by node 0 after it)."""

    pvc: str | None = None                  # a ReadWriteMany claim mounted on every node
    mount_path: str = "/mnt/shared"
    base: str                               # llava-hf checkpoint directory
    data: str                               # LLaVA conversation JSON/JSONL (the MathV360K layout)
    image_root: str
    output: str                             # the run's folder is <output>/<job name>

    @model_validator(mode="after")
    def _reachable(self) -> "StorageSettings":
        for key in ("base", "data", "image_root", "output"):
            value = getattr(self, key)
            if value.startswith("s3://"):
                continue
            if not value.startswith("/"):
                raise ValueError(f"{key}: {value!r} must be an absolute path in the container or an s3:// URI")
            if self.pvc is None:
                raise ValueError(f"{key}: {value!r} is a path, but no pvc is mounted: give storage.pvc or an s3:// URI")
            if not (value + "/").startswith(self.mount_path.rstrip("/") + "/"):
                raise ValueError(f"{key}: {value!r} is not under the PVC's mount_path {self.mount_path!r}")
        return self

    @property
    def uses_s3(self) -> bool:
        return any(v.startswith("s3://") for v in (self.base, self.data, self.image_root, self.output))


class MlflowSettings(Strict):
    tracking_uri: str | None = None         # the cluster's MLflow server; rank 0 logs there
    experiment: str = "mathllava-train"


class Measured(Strict):
    """A throughput measured on one kind of GPU (e.g. bench/gpu_check.sh)."""

    samples_per_s: float = Field(gt=0)
    tokens_per_sample: float = Field(gt=0)
    gpus: int = Field(1, gt=0)
    parameters: float | None = Field(None, gt=0)  # model size it was measured on (for a FLOP-based scaling)
    source: str = ""


class EstimateSettings(Strict):
    """GPU-hours for --render: the token count of the run over a measured rate."""

    measured: Measured | None = None
    model_parameters: float | None = Field(None, gt=0)  # the trained model's size, to scale the measured rate
    tokens: float | None = Field(None, gt=0)            # total tokens of one epoch, when known
    samples: int | None = Field(None, gt=0)             # else samples x tokens_per_sample
    tokens_per_sample: float | None = Field(None, gt=0)
    local_data: str | None = None                       # else count them in a local copy of the data ...
    local_base: str | None = None                       # ... with this model's tokenizer and image size


class ClusterTrainConfig(Strict):
    job: JobSettings
    storage: StorageSettings
    mlflow: MlflowSettings = MlflowSettings()
    train: TrainSettings = TrainSettings()
    estimate: EstimateSettings = EstimateSettings()

    @model_validator(mode="after")
    def _gpus(self) -> "ClusterTrainConfig":
        if self.job.gpus_per_node == 0 and self.train.device == "cuda":
            raise ValueError("train.device is cuda but job.gpus_per_node is 0")
        return self


def load_cluster_config(path: str | Path, section: str | None = None) -> ClusterTrainConfig:
    """A `mathllava k8s train` config file (top-level job/storage/mlflow/train/estimate), or, with
    `section`, that key of a pipeline run config's parameters."""
    data = read_yaml(path)
    if section is not None:
        data = (data.get("parameters") or {}).get(section)
    return parse(ClusterTrainConfig, data, "", str(path))


class ClusterLaunch(Strict):
    """The pipeline's `cluster` parameter, used when `train.launcher` is `kubeflow`: which job config
    (a `mathllava k8s train` file; the pipeline's own `train` section replaces its `train`) and which
    cluster. The step stages its inputs on the job's shared storage and waits for the job."""

    config: str
    namespace: str = "mathllava"
    kubeconfig: str | None = None      # None: the step pod's own service account (in-cluster)
    kind: Literal["trainjob", "pytorchjob"] | None = None  # None: the job config's job.kind

    def job_config(self) -> ClusterTrainConfig:
        return load_cluster_config(self.config)
