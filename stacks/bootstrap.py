"""Set up the local environment idempotently: ZenML repository, MLflow server, stack from YAML.

    python -m stacks.bootstrap [--stack stacks/local.yaml]
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def expand(value):
    if isinstance(value, str):
        return re.sub(r"\$\{(\w+)\}", lambda m: os.environ[m.group(1)], value)
    if isinstance(value, dict):
        return {k: expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v) for v in value]
    return value


def load_stack(path: str | Path) -> dict:
    return expand(yaml.safe_load(Path(path).read_text()))


def ensure_repository() -> None:
    if not (ROOT / ".zen").is_dir():
        from zenml.client import Client

        Client.initialize(root=ROOT)


def register_stack(spec: dict) -> str:
    """Create each component unless one with the same name exists (updating its configuration),
    then the stack, then activate it."""
    from zenml.client import Client
    from zenml.enums import StackComponentType

    client = Client()
    ids = {}
    for kind, comp in spec["components"].items():
        ctype = StackComponentType(kind)
        try:
            existing = client.get_stack_component(ctype, comp["name"])
            if dict(existing.configuration) != comp["configuration"] and comp["configuration"]:
                client.update_stack_component(comp["name"], ctype, configuration=comp["configuration"])
        except KeyError:
            client.create_stack_component(comp["name"], comp["flavor"], ctype, comp["configuration"])
        ids[ctype] = comp["name"]
    try:
        client.get_stack(spec["name"])
    except KeyError:
        client.create_stack(spec["name"], components=ids)
    client.activate_stack(spec["name"])
    return spec["name"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stack", default=str(ROOT / "stacks" / "local.yaml"))
    parser.add_argument("--no-server", action="store_true", help="do not start the MLflow server")
    args = parser.parse_args(argv)
    spec = load_stack(args.stack)
    if not args.no_server:
        from mathllava.localserver import start

        server = spec["mlflow_server"]
        url = start(server["state_dir"], server["host"], int(server["port"]))
        print(f"MLflow server: {url}")
    ensure_repository()
    print(f"ZenML stack: {register_stack(spec)} (active)")


if __name__ == "__main__":
    main()
