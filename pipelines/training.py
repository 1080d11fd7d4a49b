from typing import Optional

from zenml import pipeline

from mathllava.augment import AugmentSettings
from mathllava.data.config import DataSettings
from mathllava.data.selection import SelectSettings
from mathllava.data.validation import ValidationRules
from mathllava.evaluation.settings import EvalSettings
from mathllava.registry.promotion import RegisterSettings

from steps import (augment_questions, clean_manifest, evaluate_model, export_training_data, generate_synthetic,
                   ingest_sources, log_evaluation, register_model, select_images, train_model, validate_manifest)


@pipeline(name="mathllava_training")
def mathllava_training(data: DataSettings, validate: ValidationRules, select: SelectSettings, augment: AugmentSettings, model: dict, train: dict,
                       evaluate: EvalSettings, register: RegisterSettings, cluster: Optional[dict] = None) -> None:
    """ingest -> validate -> clean (dedup, contamination) -> select -> augment -> export -> train -> evaluate -> log evaluation -> register."""
    inputs = data.fingerprint()  # files on disk are part of the cache key of the steps that read them
    train_annotations, heldout_annotations, scorer_annotations = generate_synthetic(data=data)
    manifest, ingest_quarantine = ingest_sources(annotations=train_annotations, data=data, inputs=inputs)
    heldout_manifest, _ = ingest_sources(annotations=heldout_annotations, data=data, include_extra=False,
                                         id="ingest_heldout")
    labelled, _ = ingest_sources(annotations=scorer_annotations, data=data, include_extra=False, id="ingest_scorer_labels")
    valid, _quarantine, _report = validate_manifest(manifest=manifest, ingest_quarantine=ingest_quarantine, rules=validate)
    clean, _removed, _clean_report = clean_manifest(valid_manifest=valid, data=data, inputs=inputs)
    selection, _scored, _selection_report = select_images(valid_manifest=clean, select=select, labelled_manifest=labelled)
    curated = augment_questions(selection=selection, augment_cfg=augment)
    training_data = export_training_data(curated_dataset=curated)
    model_dir, base_model, _summary = train_model(training_data=training_data, model_cfg=model, train_cfg=train,
                                                cluster_cfg=cluster)
    eval_report, predictions = evaluate_model(model_dir=model_dir, base_model=base_model, curated_dataset=curated,
                                               heldout_manifest=heldout_manifest, evaluate_cfg=evaluate)
    log_evaluation(eval_report=eval_report, predictions=predictions)
    register_model(model_dir=model_dir, curated_dataset=curated, eval_report=eval_report, register_cfg=register)
