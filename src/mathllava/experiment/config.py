"""Typed data-recipe experiment settings (`configs/experiments/*.yaml`).

An experiment takes the data, validate, select, augment, model and train sections of a pipeline run
config (`base_config`), changed where its own `parameters` say, and trains one model per arm × seed:

    name: recipe
    base_config: configs/local.yaml
    parameters: {data: {synthetic: {n_images: 600}}}     # merged into the base config's parameters
    seeds: [0, 1, 2]
    reference: random                                    # the arm every other is compared with, pairwise
    arms:
      - {name: random, selection: random}
      - {name: stratified, selection: stratified}
      - {name: augmented, selection: stratified, augment: [new_question, harder, rephrased, underspecified]}
    compute: {steps: 300, batch_size: 16, seq_len: 256}  # the same for every arm
    evaluate: {heldout: true, math_v_dir: ../shared/data/math-v-testmini, max_new_tokens: 96}

Unknown keys and impossible values are refused with the key's path, before anything runs."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..augment import AugmentSettings
from ..data.config import DataSettings
from ..data.selection import SelectSettings
from ..data.validation import ValidationRules
from ..settings import Strict, parse, read_yaml
from ..train.config import ModelSettings, TrainSettings

class ArmSettings(Strict):
    """One data recipe. `selection`: random (images drawn uniformly from the cleaned pool, clear or
    not, as the paper's random baseline) or stratified (the learned clarity filter and the 2:3:4:1
    complexity sample of `select`); both draw `select.sampling.target_size` images. `augment`: the
    augmentations added to the seeds (their counts per seed come from `augment.per_seed`)."""

    name: str
    selection: Literal["random", "stratified"]
    augment: list[Literal["new_question", "harder", "rephrased", "underspecified", "rationale"]] = []

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,40}", value):
            raise ValueError(f"{value!r}: use lower-case letters, digits, - and _ (it names folders and runs)")
        return value


class ComputeSettings(Strict):
    """Equal compute: every arm trains `steps` optimizer steps of `batch_size` sequences, each padded to
    `seq_len` tokens (image placeholders included), so every step costs the same whatever the data."""

    steps: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    seq_len: int = Field(gt=0)


class EvaluateSettings(Strict):
    """The held-out sets every cell is scored on, with each benchmark's own rules."""

    heldout: bool = True                  # the held-out synthetic split (MathVista rules)
    heldout_limit: int | None = Field(None, gt=0)
    math_v_dir: str | None = None         # Math-V testmini (Math-V rules), when the folder exists
    math_v_limit: int | None = Field(None, gt=0)
    batch_size: int = Field(32, gt=0)
    max_new_tokens: int = Field(96, gt=0)  # room for a rationale before its final line
    device: Literal["auto", "cpu", "cuda"] = "auto"


class StatsSettings(Strict):
    resamples: int = Field(2000, ge=100)   # bootstrap over problems and seeds
    confidence: float = Field(0.95, gt=0.5, lt=1)
    seed: int = 0


class RegistrySettings(Strict):
    """Each trained cell's model is registered as a version of `model_name` (tags: arm, seed, data
    digest, scores), so it can be promoted like a pipeline model; null: logged to its run only."""

    model_name: str | None = None


class RecipeParameters(Strict):
    """The pipeline sections an experiment uses, from the base config (its `parameters`)."""

    data: DataSettings
    validate_rules: ValidationRules = Field(alias="validate")
    select: SelectSettings
    augment: AugmentSettings = AugmentSettings()
    model: ModelSettings = ModelSettings()
    train: TrainSettings = TrainSettings()


class ExperimentSettings(Strict):
    name: str
    base_config: str
    parameters: dict = {}
    seeds: list[int] = Field(min_length=1)
    reference: str
    arms: list[ArmSettings] = Field(min_length=2)
    compute: ComputeSettings
    evaluate: EvaluateSettings = EvaluateSettings()
    stats: StatsSettings = StatsSettings()
    registry: RegistrySettings = RegistrySettings()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return ArmSettings._name(value)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"seeds repeat: {value}")
        return value

    @model_validator(mode="after")
    def _arms(self) -> "ExperimentSettings":
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names repeat: {names}")
        if self.reference not in names:
            raise ValueError(f"reference {self.reference!r} is not one of the arms {names}")
        if not self.evaluate.heldout and not self.evaluate.math_v_dir:
            raise ValueError("evaluate: no evaluation set (heldout is false and math_v_dir is not set)")
        return self

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load(path: str | Path) -> tuple[ExperimentSettings, RecipeParameters]:
    """The experiment file and the pipeline sections it runs on, both checked; a ValueError naming the
    file and the key's path otherwise."""
    path = Path(path)
    settings = parse(ExperimentSettings, read_yaml(path, "experiment config"), "", str(path))
    base_path = Path(settings.base_config)
    base = read_yaml(base_path, f"base_config (named in {path})").get("parameters") or {}
    merged = _merge({k: v for k, v in base.items() if k in RecipeParameters.model_fields or k == "validate"},
                    settings.parameters)
    unknown = sorted(set(settings.parameters) - set(RecipeParameters.model_fields) - {"validate"})
    if unknown:
        raise ValueError(f"{path}: parameters.{unknown[0]}: not a section an experiment uses "
                         f"(data, validate, select, augment, model, train)")
    recipe = parse(RecipeParameters, merged, "parameters", f"{path} (on {base_path})")
    if recipe.train.launcher == "kubeflow":
        raise ValueError(f"{path}: parameters.train.launcher: kubeflow is not supported by experiments yet; "
                         f"use inprocess or torchrun")
    return settings, recipe
