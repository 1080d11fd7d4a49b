"""A test kubelet: a node on the local API server whose pods run as local processes.

It stands in for the kubelet and the container runtime, and only for them: the API server, the
controller manager (Job controller, garbage collector, service-account tokens) and whatever creates the
pods are real. `LocalKubelet`

- registers a node (`127.0.0.1`, ready, with the capacity given) and binds every pending pod of its
  namespaces to it (the scheduler's part);
- runs each bound pod's single container as a process: the image is looked up in `images` (name ->
  `Image`: working directory and environment, the way a Dockerfile's WORKDIR and ENV make one; an
  unknown image waits in `ErrImagePull`), the command and args as given (`$(VAR)` expanded), the
  environment from `env` (values; `valueFrom` secrets, config maps and pod fields) and `envFrom`,
  plus the service variables a kubelet injects, pointed at the API server;
- gives the process the pod's name as hostname (its own UTS namespace) and the pod's volumes in a
  private mount namespace (`unshare`): hostPath, emptyDir,
  secret and configMap volumes (the service-account token secret of
  /var/run/secrets/kubernetes.io/serviceaccount included) are bind-mounted at their mountPath,
  read-only where asked, so in-cluster clients find their token and CA where they look;
- reports the pod Running, then Succeeded or Failed with the process's exit code
  (`containerStatuses[0].state.terminated.exitCode`); keeps each container's output in a file and
  serves it on the kubelet port, so `kubectl logs` (read_namespaced_pod_log) works through the API
  server;
- kills a pod's processes when the pod is deleted (then removes it, as a kubelet does), and all of
  them on `stop()`; a pod may not run longer than `max_seconds`.

Not done: init containers, several containers, probes, restarts (restartPolicy: Never only),
resource enforcement (requests and limits are only reported back by the API server), PVCs.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

from kubernetes import client
from kubernetes.client.rest import ApiException


@dataclass
class Image:
    """What a container image would bring: its WORKDIR and ENV (the files are this machine's)."""

    workdir: str
    env: dict = field(default_factory=dict)


def mount_namespaces_available() -> tuple[bool, str]:
    """Whether this machine lets a process have a private mount namespace (unshare), and why not."""
    if not shutil.which("unshare"):
        return False, "no `unshare` on PATH"
    cmd = ["unshare", *_unshare_flags(), "--", "sh", "-c", "mount -t tmpfs none /mnt && echo ok"]
    try:
        probe = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, f"unshare failed: {err}"
    if probe.returncode != 0 or "ok" not in probe.stdout:
        return False, f"no private mount namespace here: {probe.stderr.strip()[-300:]}"
    return True, ""


def _unshare_flags() -> list[str]:
    return ["--mount", "--uts", "--propagation", "private"] + ([] if os.geteuid() == 0 else ["--user", "--map-root-user"])


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def _expand(text: str, env: dict) -> str:
    """Kubernetes' $(VAR) expansion: a known variable is replaced, an unknown one is left as is."""
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), text)


class PodError(Exception):
    """The pod cannot start; `reason` is the waiting reason the kubelet reports."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# Run inside the pod's mount namespace: mount the volumes, then become the container's command.
_RUNNER = r"""
import json, os, subprocess, sys
spec = json.load(open(sys.argv[1]))
def sh(*args):
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"kubelet: {' '.join(args)}: {done.stderr.strip()}")
overlaid = set()
for m in spec["mounts"]:
    target = m["target"]
    if not os.path.lexists(target):
        # the mount point does not exist on this machine: give its nearest existing folder a private
        # writable layer (overlay) in this namespace, and make the mount point there
        parent = os.path.dirname(target)
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        parent = os.path.realpath(parent)
        if parent == "/":
            sys.exit(f"kubelet: cannot make mount point {target} (no parent folder to overlay but /)")
        if parent not in overlaid:
            layer = os.path.join(spec["layers"], str(len(overlaid)))
            os.makedirs(layer + "/upper"); os.makedirs(layer + "/work")
            sh("mount", "-t", "overlay", "overlay", "-o",
               f"lowerdir={parent},upperdir={layer}/upper,workdir={layer}/work", parent)
            overlaid.add(parent)
        if os.path.isdir(m["source"]):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True); open(target, "a").close()
    if os.path.realpath(m["source"]) != os.path.realpath(target):
        sh("mount", "--bind", m["source"], target)
    if m["readOnly"]:
        sh("mount", "-o", "remount,bind,ro", target)
import socket
socket.sethostname(spec["hostname"])   # a pod's hostname is its name (its own UTS namespace)
os.chdir(spec["workdir"])
try:
    os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
except OSError as err:
    sys.exit(f"kubelet: cannot run {spec['argv'][0]}: {err}")
"""


class _Pod:
    def __init__(self, uid: str, namespace: str, name: str, folder: Path):
        self.uid, self.namespace, self.name, self.folder = uid, namespace, name, folder
        self.log = folder / "main.log"
        self.process: subprocess.Popen | None = None
        self.exit_code: int | None = None
        self.started = time.monotonic()
        self.done = threading.Event()


class LocalKubelet:
    def __init__(self, api: client.ApiClient, images: dict[str, Image], workdir: Path,
                 node_name: str | None = None, namespaces: set[str] | None = None, capacity: dict | None = None,
                 max_seconds: float = 1800, poll: float = 0.3):
        self.core = client.CoreV1Api(api)
        self.images = images
        self.workdir = Path(workdir)
        self.node_name = node_name or f"local-node-{os.urandom(3).hex()}"
        self.namespaces = set(namespaces) if namespaces else None   # None: pods of every namespace
        self.capacity = capacity or {"cpu": "96", "memory": "1Ti", "pods": "110", "nvidia.com/gpu": "8"}
        self.max_seconds = max_seconds
        self.poll = poll
        server = urlparse(api.configuration.host)
        self.api_host, self.api_port = server.hostname, str(server.port or 443)
        self.pods: dict[str, _Pod] = {}
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: ThreadingHTTPServer | None = None
        self.errors: list[str] = []

    # --- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> "LocalKubelet":
        self.workdir.mkdir(parents=True, exist_ok=True)
        port = self._serve_logs()
        self.core.create_node({
            "metadata": {"name": self.node_name, "labels": {"kubernetes.io/hostname": self.node_name}},
            "status": {"capacity": self.capacity, "allocatable": self.capacity,
                       "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                       "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
                       "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                       "message": "test kubelet: pods run as local processes",
                                       "lastHeartbeatTime": _now(), "lastTransitionTime": _now()}],
                       "nodeInfo": {"kubeletVersion": "v1.20.2-local", "containerRuntimeVersion": "local-process://1",
                                    "operatingSystem": "linux", "architecture": "amd64", "machineID": "",
                                    "systemUUID": "", "bootID": "", "kernelVersion": os.uname().release,
                                    "osImage": "", "kubeProxyVersion": ""}}})
        # a node's status is its kubelet's to write: set it through the status subresource as well
        self.core.patch_node_status(self.node_name, {"status": {
            "capacity": self.capacity, "allocatable": self.capacity,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "test kubelet: pods run as local processes",
                            "lastHeartbeatTime": _now(), "lastTransitionTime": _now()}]}})
        loop = threading.Thread(target=self._loop, name="local-kubelet", daemon=True)
        loop.start()
        self._threads.append(loop)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=10)
        with self.lock:
            pods = list(self.pods.values())
        for pod in pods:
            self._kill(pod, grace=2)
        try:
            self.core.delete_node(self.node_name)
        except ApiException:
            pass

    def __enter__(self) -> "LocalKubelet":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_of(self, namespace: str, name: str) -> str:
        """The output of the pod's container (the latest pod of that name)."""
        with self.lock:
            found = [p for p in self.pods.values() if p.namespace == namespace and p.name == name]
        return found[-1].log.read_text(errors="replace") if found and found[-1].log.exists() else ""

    def logs(self) -> dict[str, str]:
        """namespace/name -> output, for every pod this kubelet ran."""
        with self.lock:
            pods = list(self.pods.values())
        return {f"{p.namespace}/{p.name}": p.log.read_text(errors="replace") for p in pods if p.log.exists()}

    # --- the loop -------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception as err:  # the API server restarting etc.: report, keep going
                self.errors.append(f"{type(err).__name__}: {err}")
            self._stop.wait(self.poll)

    def _sync(self) -> None:
        for pod in self.core.list_pod_for_all_namespaces().items:
            meta, spec = pod.metadata, pod.spec
            if self.namespaces is not None and meta.namespace not in self.namespaces:
                continue
            if spec.node_name is None:
                if meta.deletion_timestamp is None:
                    self._bind(pod)
                continue
            if spec.node_name != self.node_name:
                continue
            with self.lock:
                mine = self.pods.get(meta.uid)
            if meta.deletion_timestamp is not None:
                if mine:
                    self._kill(mine, grace=min(pod.spec.termination_grace_period_seconds or 30, 5))
                self._remove(pod)
                continue
            if mine is None and pod.status.phase == "Pending":
                self._start(pod)
            elif mine and mine.process and mine.exit_code is None \
                    and time.monotonic() - mine.started > self.max_seconds:
                with open(mine.log, "a") as out:
                    out.write(f"\nkubelet: killed after {self.max_seconds:.0f} s\n")
                self._kill(mine, grace=2)

    def _bind(self, pod) -> None:
        body = client.V1Binding(metadata=client.V1ObjectMeta(name=pod.metadata.name),
                                target=client.V1ObjectReference(kind="Node", name=self.node_name, api_version="v1"))
        try:
            self.core.create_namespaced_pod_binding(pod.metadata.name, pod.metadata.namespace, body,
                                                    _preload_content=False)
        except ApiException as err:
            if err.status not in (404, 409):
                raise

    def _remove(self, pod) -> None:
        try:
            self.core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0,
                                            body=client.V1DeleteOptions(grace_period_seconds=0,
                                                                        preconditions={"uid": pod.metadata.uid}))
        except ApiException as err:
            if err.status not in (404, 409):
                raise

    # --- running a pod --------------------------------------------------------------------------------

    def _start(self, pod) -> None:
        meta = pod.metadata
        folder = Path(tempfile.mkdtemp(prefix=f"{meta.namespace}-{meta.name}-"[:60], dir=self.workdir))
        record = _Pod(meta.uid, meta.namespace, meta.name, folder)
        with self.lock:
            self.pods[meta.uid] = record
        container = pod.spec.containers[0]
        try:
            if len(pod.spec.containers) != 1 or pod.spec.init_containers:
                raise PodError("CreateContainerConfigError", "the test kubelet runs pods of one container only")
            image = self.images.get(container.image)
            if image is None:
                raise PodError("ErrImagePull", f"image {container.image!r} is not one of this node's images "
                                               f"({', '.join(sorted(self.images))})")
            env = self._home(self._environment(pod, container, image), folder)
            argv = [_expand(a, env) for a in (container.command or []) + (container.args or [])]
            if not argv:
                raise PodError("CreateContainerConfigError", "no command: the test images have no entrypoint")
            mounts = self._mounts(pod, container, folder)
        except PodError as err:
            self._patch(pod, "Pending", {"waiting": {"reason": err.reason, "message": str(err)}}, ready=False)
            record.done.set()
            return
        spec = {"argv": argv, "env": env, "hostname": (pod.spec.hostname or meta.name)[:63],
                "workdir": container.working_dir or image.workdir, "mounts": mounts,
                "layers": str(folder / "layers")}
        (folder / "spec.json").write_text(json.dumps(spec))
        (folder / "runner.py").write_text(_RUNNER)
        out = open(record.log, "wb")
        record.process = subprocess.Popen(
            ["unshare", *_unshare_flags(), "--", sys.executable, str(folder / "runner.py"), str(folder / "spec.json")],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        out.close()
        started = _now()
        self._patch(pod, "Running", {"running": {"startedAt": started}}, ready=True, started=started)
        watcher = threading.Thread(target=self._wait, args=(pod, record, started), daemon=True,
                                   name=f"pod-{meta.name}")
        watcher.start()

    def _wait(self, pod, record: _Pod, started: str) -> None:
        code = record.process.wait()
        if code < 0:               # killed by a signal: report it as a shell would (128 + signal)
            code = 128 - code
        record.exit_code = code
        terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                      "startedAt": started, "finishedAt": _now()}
        if code:
            tail = record.log.read_text(errors="replace")[-1500:] if record.log.exists() else ""
            terminated["message"] = tail
        try:
            self._patch(pod, "Succeeded" if code == 0 else "Failed", {"terminated": terminated}, ready=False,
                        started=started)
        except ApiException as err:
            if err.status != 404:   # a pod deleted while it ran has no status to write
                self.errors.append(f"status of {pod.metadata.name}: {err.reason}")
        record.done.set()

    def _kill(self, record: _Pod, grace: float) -> None:
        process = record.process
        if process is None or process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def _patch(self, pod, phase: str, state: dict, ready: bool, started: str | None = None) -> None:
        container = pod.spec.containers[0]
        status = {"phase": phase, "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
                  "podIPs": [{"ip": "127.0.0.1"}], "startTime": started or _now(),
                  "conditions": [{"type": t, "status": "True" if ok else "False", "lastTransitionTime": _now()}
                                 for t, ok in (("Initialized", True), ("PodScheduled", True),
                                               ("ContainersReady", ready), ("Ready", ready))],
                  "containerStatuses": [{"name": container.name, "image": container.image,
                                         "imageID": f"local://{container.image}", "ready": ready,
                                         "restartCount": 0, "started": "running" in state, "state": state}]}
        self.core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, {"status": status})

    # --- environment and volumes ------------------------------------------------------------------------

    def _secret(self, namespace: str, name: str) -> dict:
        try:
            data = self.core.read_namespaced_secret(name, namespace).data or {}
        except ApiException as err:
            raise PodError("CreateContainerConfigError", f"secret {name!r} not found") from err
        return {k: base64.b64decode(v) for k, v in data.items()}

    def _config_map(self, namespace: str, name: str) -> dict:
        try:
            cm = self.core.read_namespaced_config_map(name, namespace)
        except ApiException as err:
            raise PodError("CreateContainerConfigError", f"configmap {name!r} not found") from err
        return {k: v.encode() for k, v in (cm.data or {}).items()}

    def _field(self, pod, path: str) -> str:
        meta = pod.metadata
        fields = {"metadata.name": meta.name, "metadata.namespace": meta.namespace, "metadata.uid": meta.uid,
                  "spec.nodeName": self.node_name, "spec.serviceAccountName": pod.spec.service_account_name,
                  "status.hostIP": "127.0.0.1", "status.podIP": "127.0.0.1"}
        match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if match:
            return (getattr(meta, match.group(1)) or {}).get(match.group(2), "")
        if path not in fields:
            raise PodError("CreateContainerConfigError", f"fieldRef {path} is not supported")
        return fields[path] or ""

    def _environment(self, pod, container, image: Image) -> dict:
        ns = pod.metadata.namespace
        env = dict(image.env)
        for source in container.env_from or []:
            if source.secret_ref:
                values = self._secret(ns, source.secret_ref.name)
            elif source.config_map_ref:
                values = self._config_map(ns, source.config_map_ref.name)
            else:
                continue
            env.update({(source.prefix or "") + k: v.decode() for k, v in values.items()})
        for var in container.env or []:
            if var.value_from is None:
                env[var.name] = _expand(var.value or "", env)
                continue
            ref = var.value_from
            if ref.secret_key_ref:
                values, key = self._secret(ns, ref.secret_key_ref.name), ref.secret_key_ref.key
            elif ref.config_map_key_ref:
                values, key = self._config_map(ns, ref.config_map_key_ref.name), ref.config_map_key_ref.key
            elif ref.field_ref:
                env[var.name] = self._field(pod, ref.field_ref.field_path)
                continue
            else:
                raise PodError("CreateContainerConfigError", f"env {var.name}: valueFrom not supported")
            if key not in values:
                raise PodError("CreateContainerConfigError", f"env {var.name}: key {key!r} not found")
            env[var.name] = values[key].decode()
        # what a kubelet adds for the `kubernetes` service; its cluster IP is not routable from here, so the
        # stand-in gives the API server's own address (a node-local proxy would do the same)
        env.setdefault("KUBERNETES_SERVICE_HOST", self.api_host)
        env.setdefault("KUBERNETES_SERVICE_PORT", self.api_port)
        env.setdefault("KUBERNETES_SERVICE_PORT_HTTPS", self.api_port)
        env.setdefault("HOSTNAME", pod.metadata.name)
        return env

    @staticmethod
    def _home(env: dict, folder: Path) -> dict:
        """Each container has a home folder of its own (a container's /root), not this machine's."""
        if "HOME" not in env:
            (folder / "home").mkdir(exist_ok=True)
            env["HOME"] = str(folder / "home")
        return env

    def _mounts(self, pod, container, folder: Path) -> list[dict]:
        volumes = {v.name: v for v in pod.spec.volumes or []}
        mounts = []
        for mount in container.volume_mounts or []:
            volume = volumes.get(mount.name)
            if volume is None:
                raise PodError("CreateContainerConfigError", f"volumeMount {mount.name}: no such volume")
            source = self._volume(pod, volume, folder)
            if mount.sub_path:
                source = os.path.join(source, mount.sub_path)
                if not os.path.exists(source):
                    os.makedirs(source)
            mounts.append({"source": source, "target": mount.mount_path, "readOnly": bool(mount.read_only)})
        return mounts

    def _volume(self, pod, volume, folder: Path) -> str:
        place = folder / "volumes" / volume.name
        if volume.host_path:
            path, kind = volume.host_path.path, volume.host_path.type or ""
            if kind == "DirectoryOrCreate":
                os.makedirs(path, exist_ok=True)
            elif kind == "Directory" and not os.path.isdir(path):
                raise PodError("CreateContainerConfigError", f"hostPath {path} is not a directory")
            elif kind == "File" and not os.path.isfile(path):
                raise PodError("CreateContainerConfigError", f"hostPath {path} is not a file")
            return path
        if volume.empty_dir is not None:
            place.mkdir(parents=True, exist_ok=True)
            return str(place)
        if volume.secret or volume.config_map:
            src = volume.secret or volume.config_map
            values = (self._secret(pod.metadata.namespace, src.secret_name) if volume.secret
                      else self._config_map(pod.metadata.namespace, src.name))
            place.mkdir(parents=True, exist_ok=True)
            wanted = {i.key: i.path for i in src.items} if src.items else {k: k for k in values}
            for key, rel in wanted.items():
                target = place / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(values[key])
                target.chmod(src.default_mode or 0o644)
            return str(place)
        raise PodError("CreateContainerConfigError",
                       f"volume {volume.name}: only hostPath, emptyDir, secret and configMap volumes run here")

    # --- the kubelet's log endpoint -------------------------------------------------------------------

    def _serve_logs(self) -> int:
        """HTTPS on 127.0.0.1 (a throwaway self-signed certificate; the API server does not check kubelet
        certificates unless told to): GET /containerLogs/<ns>/<pod>/<container>."""
        key, cert = self.workdir / "kubelet.key", self.workdir / "kubelet.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                        "-out", str(cert), "-days", "2", "-subj", f"/CN={self.node_name}",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
        kubelet = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                parts = urlparse(self.path).path.strip("/").split("/")
                if len(parts) == 4 and parts[0] == "containerLogs":
                    text = kubelet.log_of(parts[1], parts[2]).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(text)))
                    self.end_headers()
                    self.wfile.write(text)
                else:
                    self.send_error(404)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="kubelet-logs")
        thread.start()
        self._threads.append(thread)
        return self._server.server_address[1]
