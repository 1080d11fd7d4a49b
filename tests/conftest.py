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
# always a fresh port: the tests must never log into a server that `make run` left running
with socket.socket() as _sock:
    _sock.bind(("127.0.0.1", 0))
    os.environ["MLFLOW_PORT"] = str(_sock.getsockname()[1])

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
    from mathllava.synthetic import GeneratorConfig, generate

    out = tmp_path_factory.mktemp("synthetic")
    path = generate(out, GeneratorConfig(n_images=96, seed=11, image_size=160, unclear_fraction=0.2))
    return path
