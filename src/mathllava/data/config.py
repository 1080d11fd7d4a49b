"""`data`: where the pool, the held-out split and the scorer's labelled share come from."""

from __future__ import annotations

from pydantic import Field

from ..settings import Strict
from .clean import ContaminationSettings, DedupSettings
from .ingest import ImageLimits, SourceSpec
from .synthetic import GeneratorConfig


class SplitSettings(Strict):
    """A second synthetic split drawn with the pool's settings, changed where given."""

    n_images: int = Field(ge=0)
    seed: int
    level_weights: tuple[float, float, float, float] | None = None
    unclear_fraction: float | None = Field(None, ge=0, le=1)


class DataSettings(Strict):
    synthetic: GeneratorConfig = GeneratorConfig()   # the procedural source (the embedded default)
    heldout: SplitSettings                           # evaluation split, never trained on
    scorer_labels: SplitSettings | None = None       # labelled share that trains the clarity/complexity scorer
    extra_sources: list[SourceSpec] = []             # annotation files in any supported format
    images: ImageLimits = ImageLimits()
    dedup: DedupSettings = DedupSettings()                  # same image (exact or phash) + same question
    contamination: ContaminationSettings = ContaminationSettings()  # evaluation sets never enter training

    def split(self, which: str) -> GeneratorConfig:
        """The generator settings of `train`, `heldout` or `scorer`."""
        if which == "train":
            return self.synthetic.model_copy(update={"id_prefix": "synth-train"})
        split = self.heldout if which == "heldout" else self.scorer_labels
        if split is None:
            raise ValueError(f"data has no {which} split")
        update = {k: v for k, v in split.model_dump().items() if v is not None}
        if which == "heldout":
            update["unclear_fraction"] = 0.0
        return GeneratorConfig.model_validate({**self.synthetic.model_dump(), **update, "id_prefix": f"synth-{which}"})
