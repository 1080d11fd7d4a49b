"""What a cluster's Kubeflow CRDs take: the Trainer API generation its TrainJob schema serves, and
what a server kept of a job it was sent (a server without strict field validation prunes what its
schema does not know, silently)."""

from __future__ import annotations

import json

from .errors import ClusterError, api_error
from .manifests import TRAINJOB

TRAINJOB_CRD = "trainjobs.trainer.kubeflow.org"


def detect_trainer_api(api) -> str:
    """The Kubeflow Trainer API generation the cluster serves, from its TrainJob schema: v2.2 when spec
    has runtimePatches (Trainer v2.2+), v2.0 when it has podSpecOverrides (v2.0/v2.1). The schema is
    read from the CRD, or, for a user who may not read CRDs (a namespaced role), from the server's
    published OpenAPI document, which every authenticated user may read."""
    from kubernetes import client

    try:
        crd = json.loads(client.ApiextensionsV1Api(api).read_custom_resource_definition(
            TRAINJOB_CRD, _preload_content=False).data)
        version = next((v for v in crd["spec"]["versions"] if v["name"] == TRAINJOB[1] and v.get("served")), {})
        schema, where = (version.get("schema") or {}).get("openAPIV3Schema") or {}, f"the CRD {TRAINJOB_CRD}"
    except client.ApiException as err:
        if err.status == 404:
            raise ClusterError(f"the cluster has no TrainJob CRD ({TRAINJOB_CRD}): install Kubeflow Trainer v2 "
                               "or use --kind pytorchjob") from None
        if err.status != 403:
            raise api_error(err, f"reading the CRD {TRAINJOB_CRD}") from None
        schema, where = _published_schema(api), "the server's OpenAPI document (the CRD itself is forbidden)"
    fields = set(((schema.get("properties") or {}).get("spec") or {}).get("properties") or {})
    if "runtimePatches" in fields:
        return "v2.2"
    if "podSpecOverrides" in fields:
        return "v2.0"
    raise ClusterError(f"the TrainJob schema in {where} has neither runtimePatches nor podSpecOverrides: set "
                       "job.trainer_api to v2.0 (Trainer v2.0/v2.1) or v2.2 (Trainer v2.2+)")


def _published_schema(api) -> dict:
    """The TrainJob definition in /openapi/v2 (CRD schemas are published there), found by its kind."""
    from kubernetes import client

    try:
        response = api.call_api("/openapi/v2", "GET", auth_settings=["BearerToken"], _preload_content=False,
                                _request_timeout=60)
        definitions = json.loads(response.data).get("definitions") or {}
    except client.ApiException as err:
        raise ClusterError(f"cannot read the TrainJob schema (the CRD is forbidden, and /openapi/v2 answered HTTP "
                           f"{err.status}): set job.trainer_api to v2.0 (Trainer v2.0/v2.1) or v2.2 (Trainer v2.2+)"
                           ) from None
    gvk = {"group": TRAINJOB[0], "version": TRAINJOB[1], "kind": TRAINJOB[3]}
    found = next((d for d in definitions.values() if gvk in (d.get("x-kubernetes-group-version-kind") or [])), None)
    if found is None:
        raise ClusterError(f"the cluster publishes no TrainJob ({TRAINJOB[0]}/{TRAINJOB[1]}) schema: install "
                           "Kubeflow Trainer v2, use --kind pytorchjob, or set job.trainer_api")
    return found


def dropped_fields(sent, kept, path: str = "") -> list[str]:
    """The paths of what `sent` holds and `kept` lacks: fields a server pruned because its schema does
    not know them. Lists of named items are matched by name, other lists by position; values the
    server filled in or normalised are not counted."""
    if isinstance(sent, dict):
        if not isinstance(kept, dict):
            return [path or "."]
        out = []
        for key, value in sent.items():
            where = f"{path}.{key}" if path else key
            if key not in kept:
                out.append(where)
            else:
                out += dropped_fields(value, kept[key], where)
        return out
    if isinstance(sent, list) and sent and all(isinstance(v, dict) and "name" in v for v in sent):
        if not isinstance(kept, list):
            return [path]
        by_name = {v.get("name"): v for v in kept if isinstance(v, dict)}
        return [p for v in sent for p in (dropped_fields(v, by_name[v["name"]], f"{path}[{v['name']}]")
                                          if v["name"] in by_name else [f"{path}[{v['name']}]"])]
    if isinstance(sent, list):
        if not isinstance(kept, list):
            return [path]
        return [p for i, v in enumerate(sent) for p in (dropped_fields(v, kept[i], f"{path}[{i}]")
                                                        if i < len(kept) else [f"{path}[{i}]"])]
    return []
