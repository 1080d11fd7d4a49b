"""The model behind a generator or a judge: an OpenAI-compatible endpoint (the evaluation's HTTP client,
with its retries and backoff) or a local checkpoint (the one generation path, TransformersBackend).
`complete(prompt, image_path, max_tokens)` -> (reply, prompt tokens, completion tokens)."""

from __future__ import annotations

from .config import EndpointSettings, LocalSettings


class FatalEndpointError(RuntimeError):
    """An answer no retry changes (bad key, unknown model, wrong URL): the run stops."""


class EndpointClient:
    FATAL = {400, 401, 403, 404}

    def __init__(self, cfg: EndpointSettings, *, temperature: float | None = None, max_retries: int = 4,
                 backoff: float = 1.0, concurrency: int = 8, prefix: str = "parameters.augment.endpoint"):
        from ..evaluation.backends import OpenAIChatBackend

        self.cfg, self.prefix = cfg, prefix
        self.temperature = cfg.temperature if temperature is None else temperature
        self.identity = cfg.identity()
        self.backend = OpenAIChatBackend(cfg.base_url, cfg.model, api_key=cfg.api_key(prefix),
                                         max_tokens=cfg.max_tokens, temperature=self.temperature, seed=cfg.seed,
                                         timeout=cfg.timeout, max_retries=max_retries, backoff=backoff,
                                         concurrency=concurrency)

    def settings(self, max_tokens: int) -> dict:
        return {"max_tokens": max_tokens, "temperature": self.temperature, "seed": self.cfg.seed}

    @property
    def retries(self) -> int:
        return self.backend.retries_used

    def complete(self, prompt: str, image_path: str | None, max_tokens: int) -> tuple[str, int, int]:
        from ..evaluation.backends import HTTPStatusError, OpenAIChatBackend, Request

        try:
            body = self.backend.completion(OpenAIChatBackend.messages_for(Request(prompt, image_path)), max_tokens)
        except HTTPStatusError as err:
            if err.status in self.FATAL:
                raise FatalEndpointError(f"{self.prefix} ({self.cfg.base_url}, model {self.cfg.model}): {err}") from err
            raise
        content = body["choices"][0]["message"].get("content") or ""
        usage = body.get("usage") or {}
        prompt_tokens = usage.get("prompt_tokens")
        completion_tokens = usage.get("completion_tokens")
        if prompt_tokens is None or completion_tokens is None:  # a server without usage: about 4 characters a token
            prompt_tokens, completion_tokens = len(prompt) // 4, len(content) // 4
        return str(content), int(prompt_tokens), int(completion_tokens)


class LocalClient:
    def __init__(self, cfg: LocalSettings, *, temperature: float | None = None, backend=None):
        from ..evaluation.backends import TransformersBackend

        self.cfg = cfg
        self.temperature = cfg.temperature if temperature is None else temperature
        self.identity = cfg.identity()
        self.backend = backend or TransformersBackend(cfg.model_dir, batch_size=1, max_new_tokens=cfg.max_tokens,
                                                      temperature=self.temperature, seed=cfg.seed, device=cfg.device)
        self.retries = 0

    def settings(self, max_tokens: int) -> dict:
        return {"max_tokens": max_tokens, "temperature": self.temperature, "seed": self.cfg.seed}

    def complete(self, prompt: str, image_path: str | None, max_tokens: int) -> tuple[str, int, int]:
        from ..evaluation.backends import load_rgb

        counts: list[int] = []
        image = load_rgb(image_path) if image_path else None
        reply = self.backend.generate_images([prompt], [image], max_tokens, self.temperature, self.cfg.seed, counts)[0]
        with self.backend._lock:  # a fast tokenizer used from two threads at once fails ("Already borrowed")
            prompt_tokens = len(self.backend.processor.tokenizer(prompt)["input_ids"])
        return reply, prompt_tokens, counts[0] if counts else 0


def make_client(cfg: EndpointSettings | LocalSettings, prefix: str, *, temperature: float | None = None,
                max_retries: int = 4, backoff: float = 1.0, concurrency: int = 8, shared: dict | None = None):
    """A client for `cfg`; local checkpoints are loaded once per run (`shared` maps model_dir to backend)."""
    if isinstance(cfg, EndpointSettings):
        return EndpointClient(cfg, temperature=temperature, max_retries=max_retries, backoff=backoff,
                              concurrency=concurrency, prefix=prefix)
    shared = {} if shared is None else shared
    client = LocalClient(cfg, temperature=temperature, backend=shared.get(cfg.model_dir))
    shared[cfg.model_dir] = client.backend
    return client
