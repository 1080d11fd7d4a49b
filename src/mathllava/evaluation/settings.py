"""`evaluate` (and a promotion's `promotion.eval`): which sets are scored and how answers are generated."""

from __future__ import annotations

from pydantic import Field

from ..settings import Strict


class EvalSettings(Strict):
    math_v_dir: str | None = "../shared/data/math-v-testmini"   # scored when it holds images/
    math_v_limit: int | None = Field(60, gt=0)
    heldout_annotations: str | None = None   # a LLaVA JSON with MathVista metadata (a promotion's held-out split)
    batch_size: int = Field(32, gt=0)
    max_new_tokens: int = Field(12, gt=0)
    device: str = "auto"
