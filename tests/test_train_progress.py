"""Live progress in the TrainJob status (Kubeflow Trainer v2.2+): `mathllava train` under the three
status-server variables POSTs trainerStatus to a local HTTPS server, as Trainer's status server
takes it. That server does what the real one does with a payload: writes it to the TrainJob's
status subresource on the real API server with the v2.3.0 CRD, whose schema checks it. A server that
answers 500 does not stop training, and the failure is logged once."""

import datetime
import http.server
import json
import ssl
import subprocess
import sys
import threading

import pytest

from conftest import ROOT
from test_train_runs import ENV, base  # noqa: F401  (base: the tiny llava-hf checkpoint fixture)

METRICS = {"loss", "learning_rate", "samples_per_second", "epoch"}


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (the CA file the pod would get)."""
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(folder / "key.pem"),
                    "-out", str(folder / "ca.crt")], check=True, capture_output=True)
    return folder


class StatusServer:
    """An HTTPS endpoint at the status server's path for one TrainJob. It checks the bearer token and
    the body's shape, then (answer 200) applies the trainerStatus to the TrainJob's status on the API
    server, answering 422 with the server's message if the schema refuses it, or (answer 500) fails."""

    def __init__(self, certificate, token, answer, custom=None, job=None):
        self.requests, self.errors = [], []
        namespace, name = job or ("ns", "job")
        self.path = f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{namespace}/trainjobs/{name}/status"
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, self.headers.get("Authorization"), body))
                code = answer
                if self.path != outer.path or self.headers.get("Authorization") != f"Bearer {token}":
                    code = 403
                elif answer == 200 and custom is not None:
                    try:
                        custom.patch_namespaced_custom_object_status(
                            "trainer.kubeflow.org", "v1alpha1", namespace, "trainjobs", name,
                            {"status": {"trainerStatus": body["trainerStatus"]}})
                    except Exception as err:
                        outer.errors.append(str(err))
                        code = 422
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps(body if code == 200 else {"status": "Failure", "code": code}).encode())

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate / "ca.crt", certificate / "key.pem")
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}{self.path}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _train(base, small_dataset, tmp_path, server, certificate, steps=6):
    token = tmp_path / "token"
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"train": {"learning_rate": 0.003, "logging_steps": 1, "warmup_ratio": 0.0,
                                            "device": "cpu", "max_steps": steps, "batch_size": 8}}))
    env = {**ENV, "KUBEFLOW_TRAINER_SERVER_URL": server.url, "KUBEFLOW_TRAINER_SERVER_CA_CERT": str(certificate / "ca.crt"),
           "KUBEFLOW_TRAINER_SERVER_TOKEN": str(token)}
    return subprocess.run([sys.executable, "-m", "mathllava.train", "--base", str(base), "--data", str(small_dataset),
                           "--image-root", str(small_dataset.parent / "images"), "--out", str(tmp_path / "run"),
                           "--config", str(config)], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)


@pytest.mark.slow
def test_rank_0_posts_valid_trainer_status_that_the_trainjob_takes(kube, namespace, base, small_dataset, tmp_path,
                                                                   certificate):
    from kubernetes import client

    from mathllava.k8s.config import ClusterTrainConfig
    from mathllava.k8s.launcher import progress_of, render_for_cluster, submit

    config = ClusterTrainConfig.model_validate({
        "job": {"image": "registry.local/mathllava-ops:test", "gpus_per_node": 0, "shm_size": None},
        "storage": {"pvc": "shared", "base": "/mnt/shared/b", "data": "/mnt/shared/d.json",
                    "image_root": "/mnt/shared/i", "output": "/mnt/shared/runs"}})
    rendered = render_for_cluster(kube.api, config, namespace)
    assert rendered.trainer_api == "v2.2"
    submit(kube.api, rendered)
    custom = client.CustomObjectsApi(kube.api)
    (tmp_path / "token").write_text("projected-sa-token\n")
    server = StatusServer(certificate, "projected-sa-token", 200, custom, (namespace, rendered.name))
    try:
        done = _train(base, small_dataset, tmp_path, server, certificate)
    finally:
        server.close()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "training progress: POST" not in done.stderr   # nothing failed
    assert server.errors == [] and len(server.requests) >= 7    # a log event per step, and the end
    percents = []
    for path, auth, body in server.requests:
        assert path == server.path and auth == "Bearer projected-sa-token" and set(body) == {"trainerStatus"}
        status = body["trainerStatus"]
        datetime.datetime.strptime(status["lastUpdatedTime"], "%Y-%m-%dT%H:%M:%SZ")
        assert isinstance(status["progressPercentage"], int) and 0 <= status["progressPercentage"] <= 100
        assert status.get("estimatedRemainingSeconds", 0) >= 0
        for metric in status.get("metrics", []):
            assert metric["name"] in METRICS and 1 <= len(metric["value"]) <= 64
            float(metric["value"])
        percents.append(status["progressPercentage"])
    assert percents == sorted(percents) and percents[-1] == 100 and max(percents[:-1]) <= 99
    middle = server.requests[2][2]["trainerStatus"]
    assert {m["name"] for m in middle["metrics"]} == METRICS and middle["estimatedRemainingSeconds"] >= 0
    assert middle["progressPercentage"] == 50   # step 3 of 6 (the first log is step 1; logging_first_step)
    job = custom.get_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", namespace, "trainjobs",
                                              rendered.name)
    assert job["status"]["trainerStatus"]["progressPercentage"] == 100
    assert "training: 100%, 0 s left, loss " in progress_of(job)   # what --wait prints


@pytest.mark.slow
def test_a_status_server_that_fails_never_stops_training(base, small_dataset, tmp_path, certificate):
    (tmp_path / "token").write_text("t")
    server = StatusServer(certificate, "t", 500)
    try:
        done = _train(base, small_dataset, tmp_path, server, certificate, steps=4)
    finally:
        server.close()
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    assert len(server.requests) >= 5                                  # it kept trying at every log
    assert done.stderr.count("training progress: POST to") == 1        # and said so once
    assert "500" in done.stderr and server.url in done.stderr


def test_the_payload_counts_from_this_process_start_and_caps_at_99_until_done():
    from mathllava.train.progress import trainer_status

    # resumed at step 40 of 100: 20 steps run in 50 s, 16 samples a step
    status = trainer_status(60, 100, 50.0, 20, 16, {"loss": 0.123456789, "learning_rate": 2e-5}, 1.5)
    assert status["progressPercentage"] == 60 and status["estimatedRemainingSeconds"] == 100   # 40 steps at 2.5 s
    assert status["metrics"] == [{"name": "loss", "value": "0.123457"}, {"name": "learning_rate", "value": "2e-05"},
                                 {"name": "samples_per_second", "value": "6.4"}, {"name": "epoch", "value": "1.5"}]
    assert trainer_status(100, 100, 9.0, 100, 1, {}, None)["progressPercentage"] == 99   # the last step, not yet ended
    end = trainer_status(100, 100, 9.0, 100, 1, {}, None, done=True)
    assert end["progressPercentage"] == 100 and end["estimatedRemainingSeconds"] == 0
    assert "estimatedRemainingSeconds" not in trainer_status(0, 100, 0.0, 0, 1, {}, None)  # nothing to go on yet
