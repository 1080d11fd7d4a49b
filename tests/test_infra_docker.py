"""The pipeline image (infra/docker/Dockerfile): both variants, the torch pin, what it copies and what
.dockerignore keeps out, and that the MLflow server of infra/ can run from it."""

import fnmatch
import re
import tomllib
from pathlib import Path

from conftest import ROOT
from test_infra_cluster import INFRA, _one, _render

def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in (INFRA / "docker" / "Dockerfile").read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        current += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            instruction, _, rest = current.strip().partition(" ")
            lines.append((instruction.upper(), rest.strip()))
            current = ""
    return lines


def _stages(instructions) -> dict[str, list[tuple[str, str]]]:
    stages, name = {}, None
    for instruction, rest in instructions:
        if instruction == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) > 2 and parts[1].lower() == "as" else f"final:{parts[0]}"
            stages[name] = []
        if name:
            stages[name].append((instruction, rest))
    return stages


def _dockerignored(path: str) -> bool:
    patterns = [p.strip().lstrip("/") for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    parts = Path(path).parts
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        for prefix in prefixes:
            if fnmatch.fnmatch(prefix, pattern) or (pattern.startswith("**/") and
                                                    any(fnmatch.fnmatch(p, pattern[3:]) for p in prefix.split("/"))):
                return True
    return False


def test_dockerfile_builds_both_variants_the_project_expects():
    instructions = _dockerfile()
    args = dict(rest.partition("=")[::2] for i, rest in instructions if i == "ARG" and "=" in rest)
    stages = _stages(instructions)
    assert args["VARIANT"] in ("cpu", "cuda")
    final = [s for s in stages if s.startswith("final:")]
    assert final == ["final:base-${VARIANT}"], list(stages)
    for variant in ("cpu", "cuda"):
        assert f"base-{variant}" in stages, f"no stage for VARIANT={variant}"

    cpu_base = stages["base-cpu"][0][1].split()[0]
    assert cpu_base == "python:3.11-slim"
    cuda_base = stages["base-cuda"][0][1].split()[0]
    cuda_base = args.get(cuda_base.strip("${}"), cuda_base)
    assert re.fullmatch(r"pytorch/pytorch:[\w.]+-cuda[\d.]+-cudnn\d+-runtime|nvidia/cuda:[\w.-]+", cuda_base), cuda_base

    torch_pin = next(d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
                     if d.replace(" ", "").startswith("torch=="))
    assert args["TORCH_VERSION"] == torch_pin.replace(" ", "").split("==")[1]
    cpu_runs = " ".join(rest for i, rest in stages["base-cpu"] if i == "RUN")
    assert '"torch==${TORCH_VERSION}"' in cpu_runs and "--index-url https://download.pytorch.org/whl/cpu" in cpu_runs
    cuda_runs = " ".join(rest for i, rest in stages["base-cuda"] if i == "RUN")
    assert '"torch==${TORCH_VERSION}"' in cuda_runs and "https://download.pytorch.org/whl/${TORCH_CUDA}" in cuda_runs
    assert args["TORCH_CUDA"].startswith("cu")

    final_stage = stages["final:base-${VARIANT}"]
    kinds = [i for i, _ in instructions]
    assert "ENTRYPOINT" not in kinds
    assert ("WORKDIR", "/app") in final_stage
    env = {}
    for instruction, rest in final_stage:
        if instruction == "ENV":
            env.update(pair.split("=", 1) for pair in rest.split())
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["ZENML_ANALYTICS_OPT_IN"] == "false" and env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert env["TOKENIZERS_PARALLELISM"] == "false" and env["PYTHONUNBUFFERED"] == "1"
    install = next(rest for i, rest in final_stage if i == "RUN" and "pip install" in rest)
    for requirement in ('".[distributed]"', "s3fs", "boto3", "psycopg2"):
        assert requirement in install, requirement
    # the torch build is checked after the project install, so pip cannot swap it silently
    assert install.index("pip install") < install.index("torch.version.cuda")
    users = [rest for i, rest in final_stage if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")


def test_dockerfile_copies_only_what_the_context_holds():
    copies = [rest.split() for i, rest in _dockerfile() if i == "COPY"]
    assert copies
    sources = []
    for words in copies:
        words = [w for w in words if not w.startswith("--")]
        assert not any(w.startswith("--from") for w in words)
        sources += words[:-1]
    assert {"pyproject.toml", "src", "."} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        if source != ".":
            assert not _dockerignored(source), f"COPY {source}: excluded by .dockerignore"
    # what runs from /app must reach the image; local state and caches must not
    for needed in ("configs/deepspeed/zero3.json", "pipelines", "steps", "stacks", "run.py", "README.md"):
        assert (ROOT / needed).exists() and not _dockerignored(needed), needed
    for excluded in (".venv", ".git", ".mathllava", ".zen", "mlruns", ".whl", "src/mathllava/__pycache__",
                     "src/mathllava_ops.egg-info"):
        assert _dockerignored(excluded), excluded


def test_mlflow_runs_from_the_project_image_which_has_its_drivers():
    docs = _render("overlays/local")
    image = _one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.split(":")[0] == "mathllava-ops"
    install = next(rest for i, rest in _dockerfile() if i == "RUN" and '".[distributed]"' in rest)
    assert "psycopg2" in install and "boto3" in install  # postgresql:// store, s3:// artifacts
    assert "CMD" in [i for i, _ in _dockerfile()] and "ENTRYPOINT" not in [i for i, _ in _dockerfile()]
