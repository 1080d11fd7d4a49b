"""Test environment: all state in a temporary folder, telemetry off, offline hub, one torch thread."""

import os
import socket
import tempfile
from pathlib import Path

_STATE = Path(tempfile.mkdtemp(prefix="mathllava-test-"))
os.environ["MATHLLAVA_HOME"] = str(_STATE)
os.environ["ZENML_CONFIG_PATH"] = str(_STATE / "zenml")
os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("ZENML_LOGGING_VERBOSITY", "WARN")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def unique_name(prefix: str) -> str:
    """A registered-model or experiment name no other test (or earlier run on a shared server) used."""
    import uuid

    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# always a fresh port: the tests must never log into a server that `make run` left running
os.environ["MLFLOW_PORT"] = str(free_port())

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def state_dir() -> Path:
    return _STATE


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """A generated dataset shared by several tests (LLaVA JSON + PNGs)."""
    from mathllava.data.synthetic import GeneratorConfig, generate

    out = tmp_path_factory.mktemp("synthetic")
    path = generate(out, GeneratorConfig(n_images=96, seed=11, image_size=160, unclear_fraction=0.2))
    return path


K8S_LOCAL = ROOT.parent / "shared" / "k8s-local"


def _free_ports(count: int, stride: int = 1) -> int:
    """A base port such that base, base+stride, ... are all free on 127.0.0.1."""
    import random

    for _ in range(200):
        base = random.randint(20000, 40000)
        try:
            for i in range(count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", base + i * stride))
            return base
        except OSError:
            continue
    raise RuntimeError("no free ports")


# Kubeflow Trainer CRDs: v2.3.0, the latest release (runtimePatches), and the v2.0-era set (podSpecOverrides)
# with the Training Operator's PyTorchJob
CRDS_V23, CRDS_V20 = K8S_LOCAL / "crds-v2.3", K8S_LOCAL / "crds"


def _control_plane(tmp_path_factory, crd_dirs):
    """A real kube-apiserver v1.20, kube-controller-manager (garbage collector, service accounts, Job
    controller) and etcd (../shared/k8s-local) on free ports, with the CRDs of `crd_dirs` installed in
    order (a CRD or runtime already there is kept: the first folder wins). `make test` builds the
    binaries once (outside the clone); without them the tests that use this skip and say why."""
    import subprocess
    import sys
    from types import SimpleNamespace

    prefix = Path(os.environ.get("K8S_LOCAL_PREFIX") or Path.home() / ".cache" / "k8s-local")
    if not K8S_LOCAL.is_dir():
        pytest.skip(f"no {K8S_LOCAL}: the local Kubernetes control plane is not available")
    if not (prefix / "bin" / "kube-apiserver").exists():
        log = prefix / "build.log"
        why = log.read_text(errors="replace")[-800:] if log.exists() else "never built"
        pytest.skip(f"kube-apiserver not built in {prefix} (`bash {K8S_LOCAL}/build.sh`, which `make test` runs): {why}")
    for folder in crd_dirs:
        if not folder.is_dir():
            pytest.skip(f"no {folder}: these Kubeflow CRDs are not available")
    run = tmp_path_factory.mktemp("k8s-run")
    env = {**os.environ, "PREFIX": str(prefix), "RUN": str(run), "API_PORT": str(_free_ports(1)),
           "ETCD_PORT": str(_free_ports(3, 10)), "KCM_PORT": str(_free_ports(1)), "WITH_KCM": "1"}
    started = subprocess.run(["bash", str(K8S_LOCAL / "up.sh")], env=env, capture_output=True, text=True)
    if started.returncode != 0:
        subprocess.run(["bash", str(K8S_LOCAL / "down.sh")], env=env)
        pytest.fail(f"k8s-local up.sh failed:\n{started.stdout}\n{started.stderr}")
    kubeconfig = run / "kubeconfig"
    try:
        for folder in crd_dirs:
            subprocess.run([sys.executable, str(K8S_LOCAL / "install_crds.py"), str(folder)],
                           env={**env, "KUBECONFIG": str(kubeconfig)}, check=True, capture_output=True, text=True)
        from kubernetes import config

        yield SimpleNamespace(kubeconfig=kubeconfig, api=config.new_client_from_config(config_file=str(kubeconfig)),
                              fake_kubelet=K8S_LOCAL / "fake_kubelet.py", crds=crd_dirs[0].name)
    finally:
        subprocess.run(["bash", str(K8S_LOCAL / "down.sh")], env=env)


@pytest.fixture(scope="session")
def kube(tmp_path_factory):
    """The local control plane as today's clusters have it: Kubeflow Trainer v2.3.0's CRDs and
    torch-distributed runtime, plus the Training Operator's PyTorchJob."""
    yield from _control_plane(tmp_path_factory, [CRDS_V23, CRDS_V20])


@pytest.fixture(scope="session")
def kube_v20(tmp_path_factory):
    """A second control plane with the v2.0-era Trainer CRDs (Trainer v2.0/v2.1: podSpecOverrides)."""
    yield from _control_plane(tmp_path_factory, [CRDS_V20])


def make_namespace(kube, name: str) -> str:
    """A fresh namespace (from a test's name), once its default service account exists."""
    import re
    import time

    from kubernetes import client

    name = re.sub(r"[^a-z0-9-]", "-", name.lower())[:40].strip("-") + "-" + os.urandom(2).hex()
    core = client.CoreV1Api(kube.api)
    core.create_namespace({"metadata": {"name": name}})
    deadline = time.monotonic() + 600  # a hang guard: the loop waits for an event
    while not any(s.metadata.name == "default" and s.secrets for s in core.list_namespaced_service_account(name).items):
        assert time.monotonic() < deadline, "the controller manager made no default service account"
        time.sleep(0.1)
    return name


@pytest.fixture
def namespace(kube, request):
    """A fresh namespace per test (named after the test) on `kube`."""
    return make_namespace(kube, request.node.name)


# a server that is already running, shared by every test module that asks for `mlflow_server` (scripts/
# mutation.py starts one for a whole mutmut run, whose every mutant would otherwise start its own)
SHARED_MLFLOW = "MATHLLAVA_TEST_MLFLOW_URI"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A local MLflow server (SQLite store) of the module's own, on a free port; its tracking URI. With
    MATHLLAVA_TEST_MLFLOW_URI set, the server there instead, which earlier runs may have filled: so
    the tests name their registered models and experiments uniquely (unique_name)."""
    from mathllava.localserver import healthy, start, stop

    shared = os.environ.get(SHARED_MLFLOW)
    if shared:
        if not healthy(shared, timeout=30.0):
            pytest.fail(f"{SHARED_MLFLOW}={shared}: no MLflow server answers there")
        yield shared.rstrip("/")
        return
    state = tmp_path_factory.mktemp("mlflow")
    uri = start(state, "127.0.0.1", free_port())
    yield uri
    stop(state)
