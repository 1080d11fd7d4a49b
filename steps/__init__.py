"""ZenML steps: thin wrappers around the `mathllava` library."""

from ._quiet import quiet_third_party

quiet_third_party()

from .augment import augment_questions
from .clean import clean_manifest
from .data import generate_synthetic, ingest_sources
from .evaluate import evaluate_model, log_evaluation
from .register import register_model
from .select import select_images
from .train import export_training_data, train_model
from .validate import validate_manifest

__all__ = ["augment_questions", "clean_manifest", "generate_synthetic", "ingest_sources", "evaluate_model", "log_evaluation", "export_training_data",
           "register_model", "select_images", "train_model", "validate_manifest"]
