"""Question augmentation (the paper's AskImg, CompQ, RephQ, SimpQ) for selected images.

- `config`: typed settings (`parameters.augment`): generator, counts per seed, filters, budget, cache;
- `programmatic`: the embedded default for synthetic scenes (answers computed from the scene);
- `prompts`, `parse`, `filters`: the model generators' prompts, strict reply parsing, quality filters;
- `clients`, `engine`, `cache`: endpoint or local model, bounded concurrent requests, reply cache;
- `runner.augment(selection, settings) -> (curated rows, report)`: the entry point.
"""

from .config import GENERATORS, AugmentSettings
from .runner import augment

__all__ = ["GENERATORS", "AugmentSettings", "augment"]
