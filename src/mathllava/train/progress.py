"""Live training progress in the TrainJob's status (Kubeflow Trainer v2.2+).

With its TrainJobStatus feature on, the Trainer controller gives every trainer container three
variables: the status server's URL for this job, the path of its CA certificate and the path of a
projected service-account token (rotated: it is read again for every request). Rank 0 POSTs
`{"trainerStatus": {...}}` there at the logging interval: progress, time left, and the loss, learning
rate, samples/s and epoch as strings (the API's metric values are strings of 1-64 characters). The
server writes it to `status.trainerStatus`, where `mathllava k8s train --wait` reads it.

A failed POST is logged once and never stops training. transformers' own KubeflowCallback (switched on
by the same variables) is turned off in `trainer.training_args`, so that each update is sent once."""

from __future__ import annotations

import datetime
import json
import logging
import os
import ssl
import time
import urllib.request

log = logging.getLogger(__name__)

ENV_URL = "KUBEFLOW_TRAINER_SERVER_URL"
ENV_CA_CERT = "KUBEFLOW_TRAINER_SERVER_CA_CERT"
ENV_TOKEN = "KUBEFLOW_TRAINER_SERVER_TOKEN"
METRIC_MAX_CHARS = 64


class StatusPoster:
    """POSTs trainerStatus payloads to the Trainer status server; a failure is logged once."""

    def __init__(self, url: str, ca_cert: str, token_file: str, timeout_s: float = 5.0):
        self.url, self.ca_cert, self.token_file, self.timeout_s = url, ca_cert, token_file, timeout_s
        self.sent = self.failed = 0
        self._context: ssl.SSLContext | None = None

    @classmethod
    def from_env(cls, env=os.environ) -> "StatusPoster | None":
        """The poster the controller's variables describe, or None when any of the three is unset."""
        values = [env.get(k) for k in (ENV_URL, ENV_CA_CERT, ENV_TOKEN)]
        return cls(*values) if all(values) else None

    def post(self, status: dict) -> bool:
        try:
            if self._context is None:
                self._context = ssl.create_default_context(cafile=self.ca_cert)
            with open(self.token_file, encoding="utf-8") as handle:
                token = handle.read().strip()
            request = urllib.request.Request(
                self.url, data=json.dumps({"trainerStatus": status}).encode("utf-8"), method="POST",
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=self.timeout_s, context=self._context) as response:
                response.read()
            self.sent += 1
            return True
        except Exception as err:  # progress is a courtesy: it must never stop or slow a run
            self.failed += 1
            if self.failed == 1:
                detail = err.read().decode("utf-8", "replace")[:200] if hasattr(err, "read") else ""
                log.warning("training progress: POST to %s failed (%s%s); training goes on, and later failures "
                            "are not logged", self.url, err, f": {detail}" if detail else "")
            return False


def _value(number: float) -> str:
    return f"{number:.6g}"[:METRIC_MAX_CHARS]


def trainer_status(step: int, max_steps: int, elapsed_s: float, steps_run: int, samples_per_step: int, logs: dict,
                   epoch: float | None, done: bool = False) -> dict:
    """One trainerStatus payload: percent done (99 at most until the run has ended), seconds left at
    this process's rate so far (`steps_run` steps in `elapsed_s`), and the loss, learning rate,
    samples/s and epoch."""
    samples = steps_run * samples_per_step
    percent = 100 if done else min(99, int(100 * step / max_steps)) if max_steps else 0
    status = {"progressPercentage": percent,
              "lastUpdatedTime": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    if done:
        status["estimatedRemainingSeconds"] = 0
    elif steps_run > 0 and max_steps:
        status["estimatedRemainingSeconds"] = max(0, int(elapsed_s / steps_run * (max_steps - step)))
    metrics = {"loss": logs.get("loss"), "learning_rate": logs.get("learning_rate"),
               "samples_per_second": samples / elapsed_s if elapsed_s > 0 and samples else None, "epoch": epoch}
    items = [{"name": k, "value": _value(v)} for k, v in metrics.items() if isinstance(v, (int, float))]
    if items:
        status["metrics"] = items
    return status


def reporter(poster: StatusPoster):
    """A TrainerCallback: rank 0 posts at every log event and once more when training ends."""
    from transformers import TrainerCallback

    class TrainerStatusReporter(TrainerCallback):
        def __init__(self):
            self.start, self.first_step, self.logs = None, 0, {}

        def _post(self, args, state, done=False):
            elapsed = time.monotonic() - self.start
            per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
            poster.post(trainer_status(state.global_step, state.max_steps, elapsed, state.global_step - self.first_step,
                                       per_step, self.logs, state.epoch, done))

        def on_train_begin(self, args, state, control, **kwargs):
            self.start, self.first_step = time.monotonic(), state.global_step  # a resumed run counts from here

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs and self.start is not None:
                self.logs.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
                self._post(args, state)

        def on_train_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero and self.start is not None:
                self._post(args, state, done=True)

    return TrainerStatusReporter()
