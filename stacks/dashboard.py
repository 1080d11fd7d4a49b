"""The two dashboards of the local stack: start them where users look, and stop them for good.

    python -m stacks.dashboard up --zenml-port 8237      # `make dashboard`
    python -m stacks.dashboard down                      # `make dashboard-stop`

`up` starts the local ZenML server (`zenml login --local`), marks its default user's onboarding as done (else the
dashboard opens on an "Add your account details" form first), and prints the pages to open: the ZenML pipeline
runs, the MLflow runs in the model-training view, and the registered models. `down` stops the ZenML server and the
local MLflow server and returns once their processes are gone.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

RUNS_PAGE = "/projects/default/runs"   # the dashboard's pipeline runs (`/runs` is not a page)


def zenml_config_dir() -> Path:
    from zenml.config.global_config import GlobalConfiguration

    return Path(GlobalConfiguration().config_directory)


def server_pids() -> list[int]:
    """The local ZenML server daemon's process ids, from its service.pid files."""
    pids = []
    for pid_file in zenml_config_dir().rglob("service.pid"):
        try:
            pids.append(int(pid_file.read_text().strip()))
        except (OSError, ValueError):
            continue
    return [p for p in pids if _alive(p)]


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def finish_onboarding() -> None:
    """The default user's onboarding survey counts as answered, so the dashboard opens on its pages. Done on
    the SQL store before the server starts: the server's user endpoint ignores `email_opted_in` (ZenML 0.98),
    and the dashboard asks for "account details" while it is unset."""
    from zenml.client import Client

    client = Client()
    user = client.active_user
    metadata = {**(user.user_metadata or {}), "finished_onboarding_survey": True}
    client.update_user(user.id, updated_email_opt_in=False, updated_metadata=metadata)


def up(port: int, mlflow_uri: str) -> str:
    zenml = str(Path(sys.executable).with_name("zenml"))
    # a server already running is stopped first: the onboarding flag is written to the store it serves
    subprocess.run([zenml, "logout", "--local"], capture_output=True, text=True)
    finish_onboarding()
    done = subprocess.run([zenml, "login", "--local", "--ip-address", "127.0.0.1", "--port", str(port)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: the local ZenML server did not start on port {port}: "
                         f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    url = f"http://127.0.0.1:{port}"
    from mathllava.tracking import ML_VIEW, model_url

    print(f"ZenML dashboard, pipeline runs: {url}{RUNS_PAGE}")
    print(f"MLflow, the experiments:        {mlflow_uri}/#/experiments?{ML_VIEW}")
    for name in registered_models(mlflow_uri):
        print(f"MLflow, registered model:       {model_url(mlflow_uri, name)}")
    print("Stop both: make dashboard-stop")
    return url


def registered_models(mlflow_uri: str) -> list[str]:
    """The registered models' names ([] when the server does not answer within seconds)."""
    from mathllava.tracking import require_server

    try:
        require_server(mlflow_uri, "--mlflow-uri", timeout=3)
        import mlflow

        return sorted(m.name for m in mlflow.MlflowClient(mlflow_uri).search_registered_models())
    except Exception:  # noqa: BLE001 - the links are a convenience; the dashboards are up either way
        return []


def down(mlflow_dir: str | None, wait_s: float = 30.0) -> list[str]:
    """Stop the ZenML server and the MLflow server; return once no process of either is left."""
    stopped = []
    pids = server_pids()
    if pids:
        zenml = str(Path(sys.executable).with_name("zenml"))
        subprocess.run([zenml, "logout", "--local"], capture_output=True, text=True)
        deadline = time.monotonic() + wait_s
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        while any(_alive(p) for p in pids) and time.monotonic() < deadline + 5:
            time.sleep(0.1)
        stopped.append("ZenML server")
    if mlflow_dir:
        from mathllava.localserver import stop

        if stop(mlflow_dir, wait_s):
            stopped.append("MLflow server")
    return stopped


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--zenml-port", type=int, default=int(os.environ.get("ZENML_PORT") or 8237))
    parser.add_argument("--mlflow-uri")
    parser.add_argument("--mlflow-dir", help="the local MLflow server's state folder (down stops it too)")
    args = parser.parse_args(argv)
    if args.action == "up":
        from mathllava.tracking import tracking_source

        up(args.zenml_port, args.mlflow_uri or tracking_source()[0])
    else:
        stopped = down(args.mlflow_dir)
        print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


if __name__ == "__main__":
    main()
