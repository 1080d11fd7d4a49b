"""ZenML Model Control Plane stages that follow the MLflow registry, the one source of a version's stage
(`mathllava.registry.promotion.show`: champion -> production, challenger -> staging, a version that lost its
alias -> archived). Called by the pipeline's register step and, as a `mathllava.stage_listeners` entry point,
after every `mathllava registry promote` or `rollback`."""

from __future__ import annotations

import os

# none first, production last: ZenML keeps one version per stage, and a forced move archives the version that held
# it (a challenger replaced by a newer one holds no alias: `none` in the registry, so `none` here too)
ORDER = {"none": 0, "archived": 1, "staging": 2, "production": 3}


def _stage(mv) -> str:
    stage = mv.stage.value if hasattr(mv.stage, "value") else mv.stage
    return str(stage) if stage else "none"


def mirror(name: str, tracking_uri: str | None = None) -> dict[str, str]:
    """Set each ZenML version of model `name` linked to an MLflow version to that version's stage; returns
    {ZenML version number: stage} afterwards ({} when ZenML has no such model)."""
    from mathllava.registry.promotion import show
    from mathllava.state import state_home

    os.environ.setdefault("ZENML_CONFIG_PATH", str(state_home() / "zenml"))   # the state the Makefile uses
    from zenml.client import Client

    client = Client()
    try:
        versions = client.list_model_versions(model=name, size=1000).items
    except KeyError:
        return {}
    wanted_of = {str(row.version): row.stage for row in show(name, tracking_uri)}
    targets = []
    for mv in versions:
        linked = (mv.run_metadata or {}).get("mlflow") or {}
        if linked.get("registered_model") != name:
            continue   # not linked to this MLflow model: its aliases say nothing of it
        wanted = wanted_of.get(str(linked.get("version")))
        if wanted in ORDER and wanted != _stage(mv):
            targets.append((ORDER[wanted], mv, wanted))
    for _, mv, wanted in sorted(targets, key=lambda t: t[0]):
        client.update_model_version(model_name_or_id=name, version_name_or_id=mv.id, stage=wanted, force=True)
    return {str(mv.number): _stage(mv) for mv in client.list_model_versions(model=name, size=1000).items}
