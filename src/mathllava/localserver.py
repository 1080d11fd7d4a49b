"""Start, reuse and stop a local MLflow tracking server (SQLite store, local artifacts, pid file)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as r:
            return r.status == 200
    except Exception:
        return False


def start(state_dir: str | Path, host: str = "127.0.0.1", port: int = 5077, wait_s: float = 90.0) -> str:
    """Start the server unless one already answers at the address; returns its URL."""
    url = f"http://{host}:{port}"
    root = Path(state_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    (root / "server.port").write_text(f"{port}\n")   # where the CLIs, the Makefile and cron entries find it
    if healthy(url):
        return url
    log = open(root / "server.log", "ab")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--host", host, "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    (root / "server.pid").write_text(str(proc.pid))
    deadline = time.time() + wait_s
    while time.time() < deadline:
        if healthy(url):
            return url
        if proc.poll() is not None:
            raise RuntimeError(f"MLflow server exited with code {proc.returncode}; see {root / 'server.log'}")
        time.sleep(0.5)
    raise TimeoutError(f"MLflow server did not answer at {url} within {wait_s:.0f}s; see {root / 'server.log'}")


def _group_alive(pid: int) -> bool:
    try:  # a server this process started stays a zombie (still in its group) until it is reaped
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.killpg(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def stop(state_dir: str | Path, wait_s: float = 30.0) -> bool:
    """Stop the server and its workers (its process group) and return once they are gone: SIGTERM,
    then SIGKILL for whatever is left after `wait_s`. A server on its way out is never reused."""
    pid_file = Path(state_dir) / "server.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + wait_s
    while _group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while _group_alive(pid) and time.monotonic() < deadline + 5:
            time.sleep(0.1)
    pid_file.unlink()
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5077)
    args = parser.parse_args(argv)
    if args.action == "start":
        print(start(args.dir, args.host, args.port))
    else:
        print("stopped" if stop(args.dir) else "not running")


if __name__ == "__main__":
    main()
