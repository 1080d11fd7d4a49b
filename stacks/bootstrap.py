"""Register a ZenML stack from YAML, idempotently, and make it active.

    python -m stacks.bootstrap [stacks/local.yaml]       # also starts the local MLflow server
    python -m stacks.bootstrap stacks/kubernetes.yaml    # the cluster stack; secrets from the environment

`${VAR}` and `${VAR:-default}` are read from the environment. A `secrets:` block maps ZenML secret
names to {key: ENVIRONMENT_VARIABLE}; bootstrap stores them as ZenML secrets, and components refer
to them as "{{secret.key}}". A credential written literally into a remote stack's file is refused.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SENSITIVE = re.compile(r"(^|_)(key|secret|token|password)$")
REFERENCE = re.compile(r"^\{\{\s*[\w-]+\.[\w-]+\s*\}\}$")


class StackError(ValueError):
    pass


def expand(value, source: str = "stack"):
    def var(match: re.Match) -> str:
        name, default = match.group(1), match.group(3)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise StackError(f"{source}: ${{{name}}} is not set in the environment")

    if isinstance(value, str):
        return re.sub(r"\$\{(\w+)(:-([^}]*))?\}", var, value)
    if isinstance(value, dict):
        return {k: expand(v, source) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v, source) for v in value]
    return value


def load_stack(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise StackError(f"{path}: no such stack file")
    spec = expand(yaml.safe_load(path.read_text(encoding="utf-8")), str(path))
    orchestrator = spec["components"].get("orchestrator", {})
    # a stack whose orchestrator runs on this machine (the local flavor, or a Kubernetes orchestrator on a
    # local cluster: `local: true`) keeps the local components' placeholder credentials
    if orchestrator.get("flavor") != "local" and not (orchestrator.get("configuration") or {}).get("local"):
        for kind, comp in spec["components"].items():
            _no_literal_credentials(comp.get("configuration") or {}, f"components.{kind}.configuration", path)
    return spec


def _no_literal_credentials(node, where: str, path) -> None:
    for key, value in node.items() if isinstance(node, dict) else []:
        if isinstance(value, dict):
            _no_literal_credentials(value, f"{where}.{key}", path)
        elif SENSITIVE.search(str(key).lower()) and value and not REFERENCE.match(str(value)):
            raise StackError(f"{path}: {where}.{key} holds a literal credential; refer to a ZenML secret as "
                             "\"{{secret.key}}\" (see the secrets: block)")


def ensure_repository() -> None:
    if not (ROOT / ".zen").is_dir():
        from zenml.client import Client

        Client.initialize(root=ROOT)


def register_secrets(spec: dict, source: str) -> list[str]:
    """Create or update each ZenML secret of the `secrets:` block from the environment. A secret whose
    variables are unset is kept if it already exists in the store, else refused."""
    from zenml.client import Client

    client = Client()
    done = []
    for name, keys in (spec.get("secrets") or {}).items():
        missing = [env for env in keys.values() if not os.environ.get(env)]
        try:
            existing = client.get_secret(name)
        except KeyError:
            existing = None
        if missing and len(missing) < len(keys):
            raise StackError(f"{source}: secret {name!r} is half set: {', '.join('$' + m for m in missing)} missing "
                             "from the environment (set all of its variables, or none to keep the stored secret)")
        if missing:
            if existing is None:
                raise StackError(f"{source}: secret {name!r} needs {', '.join('$' + m for m in missing)} in the "
                                 f"environment (or create it once: zenml secret create {name} ...)")
            done.append(f"{name} (kept)")
            continue
        values = {key: os.environ[env] for key, env in keys.items()}
        if existing is None:
            client.create_secret(name, values)
        else:
            client.update_secret(name, add_or_update_values=values)
        done.append(name)
    return done


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stack", nargs="?", default=str(ROOT / "stacks" / "local.yaml"))
    parser.add_argument("--no-server", action="store_true", help="do not start the local MLflow server")
    args = parser.parse_args(argv)
    try:
        spec = load_stack(args.stack)
    except StackError as err:
        raise SystemExit(f"error: {err}") from None
    server = spec.get("mlflow_server")
    if server and not args.no_server:
        from mathllava.localserver import start

        url = start(server["state_dir"], server["host"], int(server["port"]))
        print(f"MLflow server: {url}")
    ensure_repository()
    try:
        secrets = register_secrets(spec, args.stack)
    except StackError as err:
        raise SystemExit(f"error: {err}") from None
    if secrets:
        print(f"ZenML secrets: {', '.join(secrets)}")
    print(f"ZenML stack: {register_stack(spec)} (active)")


if __name__ == "__main__":
    main()
