"""Third-party messages that say nothing to a user of this pipeline, silenced where the steps run (this
process with the local orchestrator, each pod with Kubernetes). Each is named: anything else still shows."""

import logging
import os
import warnings

NOISE = [  # (logger, start of the message)
    # ZenML's MLflow tracker tries to switch off autologging for every framework, fastai included (not installed)
    ("zenml.integrations.mlflow.experiment_trackers.mlflow_experiment_tracker",
     "Failed to disable MLflow autologging"),
    # urllib3's retries of a tracking server that went away: the run ends with one line that says so
    ("urllib3.connectionpool", "Retrying ("),
]
WARNINGS = [  # message patterns
    r'Field name "(validate|register)" in "PipelineInput" shadows',   # the pipeline's parameter names
    r"The specified dataset source can be interpreted in multiple ways",   # mlflow.data.from_pandas
    r"Hint: Inferred schema contains integer column",
]


class _Drop(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


# MLflow's HTTP client: a few quick retries, so that a step whose tracking server is gone fails within seconds
# (MLflow's defaults retry for minutes); here, and in every pod, since the steps import this module
FAST_FAIL = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
             "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def quiet_third_party() -> None:
    # MLflow prints a "View run at" link per step, into the GenAI view; the run's summary prints the links
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    for key, value in FAST_FAIL.items():
        os.environ.setdefault(key, value)
    for name, prefix in NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_Drop(prefix))
    logging.getLogger("mlflow.store.model_registry.abstract_store").setLevel(logging.WARNING)  # "Waiting up to 300 s"
    for pattern in WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
