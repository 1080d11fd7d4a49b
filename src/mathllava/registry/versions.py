"""Model versions in the MLflow registry: registration with lineage tags, the challenger gate, aliases."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class GateResult:
    passed: bool
    reasons: list[str]


def gate(model_accuracy: float, frequent_accuracy: float, base_accuracy: float,
         min_margin_over_frequent: float = 0.0, min_margin_over_base: float = 0.0) -> GateResult:
    """The challenger gate: the trained model must beat the frequent-answer baseline and the
    base model it was fine-tuned from on the same held-out split by the configured margins
    (accuracy points)."""
    reasons = []
    ok_freq = model_accuracy > frequent_accuracy + min_margin_over_frequent
    ok_base = model_accuracy > base_accuracy + min_margin_over_base
    reasons.append(f"model {model_accuracy:.2f} {'>' if ok_freq else '<='} frequent-answer "
                   f"{frequent_accuracy:.2f} + {min_margin_over_frequent:.2f}")
    reasons.append(f"model {model_accuracy:.2f} {'>' if ok_base else '<='} base "
                   f"{base_accuracy:.2f} + {min_margin_over_base:.2f}")
    return GateResult(ok_freq and ok_base, reasons)


def register_model_dir(model_dir: str, name: str, tags: dict[str, str], description: str = "",
                       artifact_path: str = "model") -> tuple[str, str]:
    """Log a saved model directory to the active MLflow run and register it as a new version of
    `name`; returns (version, source URI)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("register_model_dir needs an active MLflow run")
    mlflow.log_artifacts(model_dir, artifact_path)
    source = mlflow.get_artifact_uri(artifact_path)
    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except Exception:
        client.create_registered_model(name, description="Math-LLaVA-style models trained by mathllava-ops")
    version = client.create_model_version(name, source=source, run_id=run.info.run_id,
                                          tags={k: str(v) for k, v in tags.items()}, description=description)
    return version.version, source


WEIGHTS_TAG = "weights_sha256"
WEIGHT_FILES = (".safetensors", ".bin", ".pt")


def weights_digest(model_dir: str | Path) -> str:
    """sha256 over a model folder's weight files (names and bytes, in name order)."""
    import hashlib

    digest = hashlib.sha256()
    root = Path(model_dir)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in WEIGHT_FILES)
    if not files:
        raise ValueError(f"{model_dir}: no weight files ({', '.join(WEIGHT_FILES)})")
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def identical_version(name: str, digest: str) -> str | None:
    """The registered version of `name` whose weights have this digest (the oldest), or None."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        versions = MlflowClient().search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    same = [int(v.version) for v in versions if (v.tags or {}).get(WEIGHTS_TAG) == digest]
    return str(min(same)) if same else None


def tag_with_run(name: str, version: str, run_name: str, run_id: str) -> None:
    """Record that another pipeline run produced version `version`'s weights again."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    client.set_model_version_tag(name, version, f"also_produced_by.{run_name}", run_id)
    client.set_model_version_tag(name, version, "last_produced_by", run_name)


def set_alias(name: str, alias: str, version: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient().set_registered_model_alias(name, alias, version)
