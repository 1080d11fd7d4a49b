"""`data`: where the pool, the held-out split and the scorer's labelled share come from."""

from __future__ import annotations

from pydantic import Field, field_validator

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

    @field_validator("extra_sources")
    @classmethod
    def _distinct_names(cls, specs: list[SourceSpec]) -> list[SourceSpec]:
        names = [s.dataset_name() for s in specs]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"two sources share the dataset name {twice}: give each a distinct `name` (the "
                             f"failure-rate gate is per dataset)")
        return specs

    def check_files(self) -> None:
        """Every extra source's annotation file and image root exist (before any step runs)."""
        from .ingest import check_spec

        for i, spec in enumerate(self.extra_sources):
            check_spec(spec, f"data.extra_sources[{i}]")

    def fingerprint(self) -> str:
        """Size and modification time of every input file this section names (extra sources, evaluation
        sets): a step parameter, so that a changed file is not served from the step cache."""
        import hashlib
        import os

        paths = [s.annotations for s in self.extra_sources] + [b.annotations for b in self.contamination.benchmarks]
        parts = []
        for path in paths:
            try:
                st = os.stat(path)
                parts.append(f"{path}:{st.st_size}:{st.st_mtime_ns}")
            except OSError:
                parts.append(f"{path}:missing")
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

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
