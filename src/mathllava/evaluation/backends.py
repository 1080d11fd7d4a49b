"""Generation backends behind one interface: `generate(requests, on_result) -> replies`.

- `TransformersBackend`: a local LLaVA checkpoint (the tiny CPU model or a real LLaVA-1.5 on GPU),
  batched with left padding, greedy by default, seeded when sampling.
- `OpenAIChatBackend`: any OpenAI-compatible chat-completions server (vLLM's, or `mathllava serve`),
  the image sent as a base64 data URL, with timeouts, retries with exponential backoff and a cap on
  requests in flight.

`on_result(index, reply)` is called as soon as each reply exists so that callers can store it.
"""

from __future__ import annotations

import base64
import io
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

OnResult = Callable[[int, str], None]


@dataclass(frozen=True)
class Request:
    query: str
    image_path: str | None = None


class TransformersBackend:
    """The one local generation path (the pipeline's evaluate step, `mathllava eval run` and
    `mathllava serve` all go through it): the model's own chat template, left padding, inputs moved
    to the model's device and dtype, greedy unless a temperature is given (then seeded sampling)."""

    def __init__(self, model_dir: str | Path | None = None, *, model=None, processor=None, batch_size: int = 8,
                 max_new_tokens: int = 64, temperature: float = 0.0, seed: int = 0, name: str | None = None,
                 device: str = "auto", dtype=None):
        from ..llava import load

        if model is None:
            if model_dir is None:
                raise ValueError("TransformersBackend needs a model_dir or a loaded model and processor")
            model, processor = load(model_dir, device, dtype)
        self.model, self.processor = model, processor
        self.batch_size, self.max_new_tokens = int(batch_size), int(max_new_tokens)
        self.temperature, self.seed = float(temperature), int(seed)
        self.name = name or (Path(model_dir).name if model_dir else "in-memory")
        self._lock = threading.Lock()  # one generate() at a time per model (the server is threaded)

    def describe(self) -> dict:
        return {"kind": "transformers", "model": self.name, "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature, "seed": self.seed}

    def generate(self, requests: Sequence[Request], on_result: OnResult | None = None,
                 progress: str | None = None) -> list[str]:
        """Replies in request order; `progress` names a progress bar (none when None)."""
        from tqdm import tqdm

        replies: list[str] = []
        bar = tqdm(total=len(requests), desc=progress, unit="problem", disable=progress is None, dynamic_ncols=True)
        for start in range(0, len(requests), self.batch_size):
            batch = requests[start:start + self.batch_size]
            images = [load_rgb(r.image_path) if r.image_path else None for r in batch]
            out = self.generate_images([r.query for r in batch], images)
            for offset, reply in enumerate(out):
                if on_result:
                    on_result(start + offset, reply)
            replies.extend(out)
            bar.update(len(batch))
        bar.close()
        return replies

    def generate_images(self, queries: list[str], images: list, max_new_tokens: int | None = None,
                        temperature: float | None = None, seed: int | None = None,
                        token_counts: list | None = None, stop: Callable[[], bool] | None = None,
                        min_new_tokens: int = 0) -> list[str]:
        """Generation from in-memory PIL images (or None for text-only), one generate() at a time.
        Mixed batches are split by kind. With a `token_counts` list, the number of generated tokens
        per reply is appended to it. `stop()` is asked after every token: when it says True,
        generation ends there (a cancelled or timed-out request frees the model at once)."""
        if len(queries) != len(images):
            raise ValueError("one image (or None) per query")
        max_new_tokens = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        temperature = self.temperature if temperature is None else temperature
        seed = self.seed if seed is None else seed
        with_image = [i for i, im in enumerate(images) if im is not None]
        without = [i for i, im in enumerate(images) if im is None]
        out = [""] * len(queries)
        counts = [0] * len(queries)
        with self._lock:
            for group, has_image in ((with_image, True), (without, False)):
                if not group:
                    continue
                group_counts: list[int] = []
                replies = self._generate([queries[i] for i in group], [images[i] for i in group] if has_image
                                         else None, max_new_tokens, temperature, seed, group_counts, stop,
                                         min_new_tokens)
                for i, reply, n in zip(group, replies, group_counts):
                    out[i], counts[i] = reply, n
        if token_counts is not None:
            token_counts.extend(counts)
        return out

    def _generate(self, queries: list[str], images: list | None, max_new_tokens: int, temperature: float,
                  seed: int | None, token_counts: list, stop: Callable[[], bool] | None = None,
                  min_new_tokens: int = 0) -> list[str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        from ..conversation import prompt

        tok = self.processor.tokenizer
        tok.padding_side = "left"
        prompts = [prompt(self.processor, q, with_image=images is not None) for q in queries]
        if images is not None:
            enc = self.processor(images=images, text=prompts, return_tensors="pt", padding=True)
        else:
            enc = tok(prompts, return_tensors="pt", padding=True)
        device = self.model.device
        enc = {k: v.to(device) for k, v in enc.items()}
        if "pixel_values" in enc:
            enc["pixel_values"] = enc["pixel_values"].to(self.model.dtype)
        if seed is not None:
            torch.manual_seed(seed)
        options = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        if min_new_tokens:
            options["min_new_tokens"] = min_new_tokens
        if stop is not None:
            class Asked(StoppingCriteria):
                def __call__(self, input_ids, scores, **kwargs):
                    return torch.full((input_ids.shape[0],), bool(stop()), dtype=torch.bool, device=input_ids.device)

            options["stopping_criteria"] = StoppingCriteriaList([Asked()])
        with torch.inference_mode():
            generated = self.model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                                            eos_token_id=tok.eos_token_id, **options)
        new = generated[:, enc["input_ids"].shape[1]:].cpu()
        token_counts.extend(int((row != tok.pad_token_id).sum()) for row in new)
        return [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]


def load_rgb(path: str | Path):
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


def image_data_url(path: str | Path) -> str:
    """`data:image/<format>;base64,...` for an image file (format read from its header)."""
    from PIL import Image

    data = Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        fmt = (img.format or "png").lower()
    return f"data:image/{fmt};base64,{base64.b64encode(data).decode('ascii')}"


class HTTPStatusError(RuntimeError):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status


class OpenAIChatBackend:
    RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, max_tokens: int = 64,
                 temperature: float = 0.0, seed: int | None = 0, timeout: float = 60.0, max_retries: int = 4,
                 backoff: float = 0.5, concurrency: int = 8, name: str | None = None):
        import requests

        self.base_url = base_url.rstrip("/")
        self.model, self.api_key = model, api_key
        self.max_tokens, self.temperature, self.seed = int(max_tokens), float(temperature), seed
        self.timeout, self.max_retries, self.backoff = float(timeout), int(max_retries), float(backoff)
        self.concurrency = max(1, int(concurrency))
        self.name = name or model
        self._session = requests.Session()
        self.retries_used = 0

    def describe(self) -> dict:
        return {"kind": "openai", "model": self.name, "max_new_tokens": self.max_tokens,
                "temperature": self.temperature, "seed": self.seed}

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def chat(self, messages: list[dict], max_tokens: int | None = None) -> str:
        """One chat completion's text; retries connection errors, timeouts, 429 and 5xx with exponential
        backoff (honouring Retry-After), fails at once on other 4xx."""
        return self.completion(messages, max_tokens)["choices"][0]["message"]["content"] or ""

    def completion(self, messages: list[dict], max_tokens: int | None = None) -> dict:
        """The whole chat-completion response (choices, usage), with `chat`'s retries."""
        import requests

        payload = {"model": self.model, "messages": messages, "temperature": self.temperature,
                   "max_tokens": self.max_tokens if max_tokens is None else max_tokens}
        if self.seed is not None:
            payload["seed"] = self.seed
        last_error: Exception | None = None
        for attempt in range(self.max_retries + 1):
            wait = self.backoff * (2 ** attempt) + random.uniform(0, self.backoff)
            try:
                response = self._session.post(f"{self.base_url}/chat/completions", json=payload,
                                              headers=self._headers(), timeout=self.timeout)
                if response.status_code == 200:
                    body = response.json()
                    body["choices"][0]["message"]  # a 200 without a message is a broken server: KeyError
                    return body
                last_error = HTTPStatusError(response.status_code, response.text)
                if response.status_code not in self.RETRY_STATUS:
                    raise last_error
                retry_after = response.headers.get("Retry-After")
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    wait = max(wait, float(retry_after))
            except (requests.ConnectionError, requests.Timeout) as err:
                last_error = err
            if attempt < self.max_retries:
                self.retries_used += 1
                time.sleep(wait)
        raise RuntimeError(f"{self.base_url}: no answer after {self.max_retries + 1} attempts: {last_error}")

    @staticmethod
    def messages_for(request: Request) -> list[dict]:
        content: list[dict] = []
        if request.image_path:
            content.append({"type": "image_url", "image_url": {"url": image_data_url(request.image_path)}})
        content.append({"type": "text", "text": request.query})
        return [{"role": "user", "content": content}]

    def generate(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[str]:
        replies: list[str | None] = [None] * len(requests)
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="chat")
        try:
            # images are read and encoded in the workers, only for requests about to be sent
            futures = {pool.submit(lambda r=r: self.chat(self.messages_for(r))): i for i, r in enumerate(requests)}
            for future in as_completed(futures):
                index = futures[future]
                replies[index] = future.result()
                if on_result:
                    on_result(index, replies[index])
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: drop what has not started
        return [r or "" for r in replies]
