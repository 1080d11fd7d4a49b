"""ZenML pipelines: wiring only."""

from .training import mathllava_training

__all__ = ["mathllava_training"]
