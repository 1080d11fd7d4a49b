"""Typed augmentation settings (`parameters.augment`). Unknown keys and impossible values are refused
with the key's path; an endpoint's API key is read from the environment variable `api_key_env` names,
never from the config (a literal key in the file is refused)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, model_validator

from ..settings import Strict

# the paper's four generators and the aug_type each one's rows carry
GENERATORS = {"askimg": "new_question", "compq": "harder", "rephq": "rephrased", "simpq": "underspecified",
              "rationale": "rationale"}
_SECRET_KEYS = ("api_key", "key", "token", "apikey", "api_token", "secret", "password", "authorization")


class PerSeed(Strict):
    """Outputs asked per seed image, per generator. The defaults are the paper's ratio: 40K seed
    images -> 200K AskImg + 40K each of CompQ, RephQ and SimpQ = 320K new pairs (8 per seed)."""

    askimg: int = Field(5, ge=0, le=10)   # new question-answer pairs (the paper: up to 5)
    compq: int = Field(1, ge=0, le=5)     # harder, multi-step versions of the seed question
    rephq: int = Field(1, ge=0, le=5)     # rewordings of the seed question (same answer)
    simpq: int = Field(1, ge=0, le=5)     # the seed question with conditions removed (same answer)
    rationale: int = Field(0, ge=0, le=1)  # a step-by-step solution of the seed question, verified (rationales.py)

    def count(self, generator: str) -> int:
        return int(getattr(self, generator))


def _refuse_secrets(data):
    if isinstance(data, dict):
        for key in data:
            if str(key).lower() in _SECRET_KEYS:
                raise ValueError(f"a literal `{key}` is not accepted in a config file: name the environment "
                                 f"variable that holds it with `api_key_env`")
    return data


class EndpointSettings(Strict):
    """An OpenAI-compatible chat-completions server that takes images (vLLM, `mathllava serve`, a
    hosted API). `base_url` ends in /v1."""

    base_url: str
    model: str
    api_key_env: str | None = None          # the environment variable holding the key (sent as Bearer)
    timeout: float = Field(120.0, gt=0)     # seconds per request
    max_tokens: int = Field(512, gt=0)      # per reply
    temperature: float = Field(0.7, ge=0)
    seed: int | None = 0

    @model_validator(mode="before")
    @classmethod
    def _no_literal_key(cls, data):
        return _refuse_secrets(data)

    @model_validator(mode="after")
    def _url(self) -> "EndpointSettings":
        parsed = urlparse(self.base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"base_url {self.base_url!r} must be an http(s) URL such as http://127.0.0.1:8000/v1")
        return self

    def identity(self) -> str:
        return f"endpoint:{self.model}@{urlparse(self.base_url).netloc}"

    def api_key(self, prefix: str = "parameters.augment.endpoint") -> str | None:
        if self.api_key_env is None:
            return None
        value = os.environ.get(self.api_key_env)
        if not value:
            raise ValueError(f"{prefix}.api_key_env: the environment variable {self.api_key_env} is not set")
        return value


class LocalSettings(Strict):
    """A local llava-hf checkpoint, run through the project's one generation path (TransformersBackend)."""

    model_dir: str
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_tokens: int = Field(512, gt=0)
    temperature: float = Field(0.0, ge=0)
    seed: int = 0

    def identity(self) -> str:
        """`local:<dir name>:<weights digest>`: a retrained model in the same folder is another generator."""
        digest = hashlib.sha256()
        for path in sorted(Path(self.model_dir).glob("*.safetensors")) + sorted(Path(self.model_dir).glob("*.bin")):
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return f"local:{Path(self.model_dir).name}:{digest.hexdigest()[:12]}"


class JudgeSettings(Strict):
    """The consistency check: a model answers each generated question on its own; the pair is kept
    only when its answer agrees. `judge`: same (the generating model) | endpoint | local."""

    enabled: bool = True
    judge: Literal["same", "endpoint", "local"] = "same"
    endpoint: EndpointSettings | None = None
    local: LocalSettings | None = None
    max_tokens: int = Field(64, gt=0)

    @model_validator(mode="after")
    def _judge_given(self) -> "JudgeSettings":
        if self.judge in ("endpoint", "local") and getattr(self, self.judge) is None:
            raise ValueError(f"judge is {self.judge} but {self.judge}: is not set")
        return self


class FilterSettings(Strict):
    min_question_chars: int = Field(10, ge=1)
    max_question_chars: int = Field(1000, gt=0)
    max_answer_chars: int = Field(100, gt=0)
    near_duplicate: float = Field(0.9, gt=0, le=1)   # similarity (0..1) at or above which a question is a near duplicate
    consistency: JudgeSettings = JudgeSettings()


class AugmentSettings(Strict):
    """`generator`: programmatic (scene images only, answers computed; rule-based rewrites elsewhere:
    the embedded default) | endpoint | local. With a model generator, images that carry a synthetic
    scene still go to the programmatic generator unless `scenes_programmatic` is false."""

    generator: Literal["programmatic", "endpoint", "local"] = "programmatic"
    per_seed: PerSeed = PerSeed()
    seed: int = 0
    endpoint: EndpointSettings | None = None
    local: LocalSettings | None = None
    scenes_programmatic: bool = True
    sources: list[str] | None = None           # model generators only for these sources (None: all)
    exemplars: int = Field(5, ge=0, le=10)     # AskImg few-shot exemplars per source (TF-IDF + KMeans clusters)
    filters: FilterSettings = FilterSettings()
    concurrency: int = Field(8, ge=1, le=256)  # requests in flight
    max_retries: int = Field(4, ge=0)          # per request, on 429, 5xx and transport errors
    backoff: float = Field(1.0, ge=0)          # seconds, doubled per retry (Retry-After honoured)
    max_requests: int | None = Field(None, ge=0)   # budget: requests sent (cache hits are free)
    max_tokens: int | None = Field(None, ge=0)     # budget: tokens spent (prompt + completion)
    cache_dir: str | None = None               # replies, one file per request key (default: the state folder)
    progress: bool = True

    @model_validator(mode="after")
    def _generator_given(self) -> "AugmentSettings":
        if self.generator in ("endpoint", "local") and getattr(self, self.generator) is None:
            raise ValueError(f"generator is {self.generator} but {self.generator}: is not set")
        return self

    def model_settings(self) -> EndpointSettings | LocalSettings | None:
        return getattr(self, self.generator) if self.generator != "programmatic" else None

    def judge_settings(self) -> EndpointSettings | LocalSettings | None:
        judge = self.filters.consistency
        if not judge.enabled:
            return None
        return self.model_settings() if judge.judge == "same" else getattr(judge, judge.judge)
