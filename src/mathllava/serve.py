"""`mathllava serve MODEL_DIR`: an OpenAI-compatible chat-completions server over the transformers
backend, bound to 127.0.0.1 by default. It speaks the subset of the API that vLLM's server and the
evaluation client use: POST /v1/chat/completions (text and `image_url` parts, images as base64 data
URLs), GET /v1/models and GET /health. Remote image URLs are refused: nothing here fetches from
the network."""

import asyncio
import base64
import binascii
import io
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000
CHARS_PER_TOKEN_BOUND = 32  # no tokenizer here packs more characters than this into one token


@dataclass(frozen=True)
class ServeLimits:
    """What one request may cost. Requests over a bound are refused before any model work, so a
    hostile request cannot hold the model: 413 for the body, 400 for prompt tokens, images and
    max_tokens, 503 when `max_queue` requests are already waiting or running, 504 when a request
    passes its deadline (waiting or generating: generation stops at the next token)."""

    max_body_bytes: int = 32 * 1024 * 1024  # a 20 MiB image is about 27 MiB as base64
    max_prompt_tokens: int = 4096  # lowered to the model's context where that is shorter
    max_tokens: int = 1024
    max_images: int = 1
    max_queue: int = 16
    timeout_s: float = 120.0  # per request, from arrival to reply
    generation_s: float = 60.0  # per request, on the model: bounds how long one request can make others wait
    drain_s: float = 10.0  # on SIGTERM: how long requests in flight may finish before they are stopped

    def __post_init__(self):
        for key in ("max_body_bytes", "max_prompt_tokens", "max_tokens", "max_images", "max_queue"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"serve limit {key} must be at least 1 (got {getattr(self, key)})")
        if self.timeout_s <= 0 or self.generation_s <= 0 or self.drain_s < 0:
            raise ValueError("serve limits: timeout_s and generation_s must be positive, drain_s not negative")


class BadRequest(ValueError):
    pass


def decode_data_url(url: str):
    """A PIL image (RGB) from `data:image/...;base64,...`."""
    from PIL import Image

    if not url.startswith("data:"):
        raise BadRequest("only data: URLs are accepted for images (this server does not fetch URLs)")
    header, _, payload = url.partition(",")
    if ";base64" not in header:
        raise BadRequest("image data URL must be base64-encoded")
    if len(payload) * 3 // 4 > MAX_IMAGE_BYTES:
        raise BadRequest("image larger than 20 MiB")
    try:
        data = base64.b64decode(payload, validate=True)
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise BadRequest(f"image of {img.width}x{img.height} pixels is too large")
            return img.convert("RGB")
    except (binascii.Error, OSError) as err:
        raise BadRequest(f"image could not be decoded: {err}") from err


def parse_messages(messages: list[dict], max_images: int = 1) -> tuple[str, Any]:
    """(text of the last user message, its image or None). Earlier turns and system messages are
    not used: the model's own template supplies the system prompt."""
    users = [m for m in messages or [] if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise BadRequest("messages must contain a user message")
    content = users[-1].get("content")
    if isinstance(content, str):
        return content, None
    if not isinstance(content, list):
        raise BadRequest("message content must be a string or a list of parts")
    texts, images = [], []
    if sum(isinstance(p, dict) and p.get("type") == "image_url" for p in content) > max_images:
        raise BadRequest(f"at most {max_images} image(s) per request (LLaVA-1.5 takes a single image)")
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            images.append(decode_data_url(str(url or "")))
        else:
            raise BadRequest(f"unsupported content part: {kind!r}")
    return "\n".join(texts), (images[0] if images else None)


class Stats:
    """Counters shown on /health: what the server answered, refused and cut short."""

    def __init__(self) -> None:
        self.answered = self.refused = self.busy = self.timed_out = self.cancelled = self.generations = 0
        self.waiting = self.running = 0
        self.last_cancelled_tokens: int | None = None

    def as_dict(self) -> dict:
        return {"requests": self.answered, "generations": self.generations, "refused": self.refused, "busy": self.busy, "timed_out": self.timed_out,
                "cancelled": self.cancelled, "waiting": self.waiting, "running": self.running,
                "last_cancelled_tokens": self.last_cancelled_tokens}


async def read_body(request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes `limit` bytes: by its Content-Length when
    the client sends one, else while it streams in."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


class TooLarge(Exception):
    def __init__(self, size: int, limit: int):
        super().__init__(f"request body of {size} bytes or more is over the limit of {limit} bytes")


def context_length(model) -> int | None:
    config = getattr(model.config, "text_config", model.config)
    return getattr(config, "max_position_embeddings", None)


def image_tokens(model) -> int:
    vision = getattr(model.config, "vision_config", None)
    if vision is None:
        return 0
    return (int(vision.image_size) // int(vision.patch_size)) ** 2 + 1


def create_app(model_dir: str | Path, model_name: str | None = None, limits: ServeLimits | None = None,
               device: str = "auto"):
    import json

    import anyio
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from .conversation import prompt
    from .evaluation.backends import TransformersBackend

    limits = limits or ServeLimits()
    backend = TransformersBackend(model_dir, batch_size=1, device=device)
    tokenizer = backend.processor.tokenizer
    context = context_length(backend.model)
    max_prompt = min(limits.max_prompt_tokens, context) if context else limits.max_prompt_tokens
    name = model_name or Path(model_dir).name
    app = FastAPI(title="mathllava serve")
    stats = Stats()
    turn = asyncio.Lock()  # one generation at a time; waiters queue here, up to their deadline
    app.state.stats, app.state.limits, app.state.max_prompt_tokens = stats, limits, max_prompt

    def error(status: int, message: str, **headers) -> JSONResponse:
        kind = {413: "request_too_large", 503: "server_busy", 504: "timeout"}.get(status, "invalid_request_error")
        if status in (400, 404, 413):
            stats.refused += 1
        return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status,
                            headers=headers)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": name, **stats.as_dict(),
                "limits": {**limits.__dict__, "max_prompt_tokens": max_prompt}}

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "mathllava",
                                            "max_model_len": context}]}

    def check(body: dict) -> tuple[str, Any, int, float, int | None, bool, int]:
        """The request's settings, or BadRequest naming the bound it breaks. Runs before any model
        work: the prompt is measured by its characters first, so a 2 MB prompt is never tokenized."""
        query, image = parse_messages(body.get("messages"), limits.max_images)
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        max_tokens = 64 if max_tokens is None else int(max_tokens)
        if not 0 < max_tokens <= limits.max_tokens:
            raise BadRequest(f"max_tokens must be in 1..{limits.max_tokens}")
        if len(query) > max_prompt * CHARS_PER_TOKEN_BOUND:
            raise BadRequest(f"prompt of {len(query)} characters is over the limit of {max_prompt} tokens")
        templated = len(tokenizer(prompt(backend.processor, query, with_image=image is not None))["input_ids"])
        if templated > max_prompt:
            raise BadRequest(f"prompt of {templated} tokens is over the limit of {max_prompt} tokens")
        extra = image_tokens(backend.model) if image is not None else 0
        if context and templated + extra + max_tokens > context:
            raise BadRequest(f"prompt ({templated + extra} tokens) plus max_tokens ({max_tokens}) is over the "
                             f"model's context of {context} tokens")
        temperature = float(body.get("temperature") or 0.0)
        seed = body.get("seed")
        seed = None if seed is None else int(seed)
        prompt_tokens = len(tokenizer(query)["input_ids"])
        return query, image, max_tokens, temperature, seed, bool(body.get("ignore_eos")), prompt_tokens

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        deadline = time.monotonic() + limits.timeout_s
        try:
            raw = await read_body(request, limits.max_body_bytes)
        except TooLarge as err:
            return error(413, str(err))
        try:
            body = json.loads(raw)
        except ValueError:
            return error(400, "body must be JSON")
        if not isinstance(body, dict):
            return error(400, "body must be a JSON object")
        if body.get("model") not in (None, name):
            return error(404, f"model {body.get('model')!r} is not served here (serving {name!r})")
        try:
            query, image, max_tokens, temperature, seed, ignore_eos, prompt_tokens = await anyio.to_thread.run_sync(
                check, body)
        except BadRequest as err:
            return error(400, str(err))
        except (TypeError, ValueError) as err:
            return error(400, f"bad parameter: {err}")
        if stats.waiting + stats.running >= limits.max_queue:
            stats.busy += 1
            return error(503, f"server busy: {limits.max_queue} requests are waiting or running; retry later",
                         **{"Retry-After": "1"})
        stats.waiting += 1
        try:
            await asyncio.wait_for(turn.acquire(), timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            stats.timed_out += 1
            return error(504, f"request waited past its deadline of {limits.timeout_s:g} s for the model")
        finally:
            stats.waiting -= 1
        cancel = threading.Event()
        counts: list[int] = []
        cut: list[str] = []
        budget = min(deadline, time.monotonic() + limits.generation_s)

        def stop() -> bool:
            if cancel.is_set():
                return True
            if time.monotonic() > budget:
                cut.append(f"its deadline of {limits.timeout_s:g} s" if budget == deadline
                           else f"the limit of {limits.generation_s:g} s on the model per request")
                return True
            return False

        async def watch() -> None:
            while not cancel.is_set():
                if await request.is_disconnected():
                    cancel.set()
                    return
                await asyncio.sleep(0.05)

        stats.running += 1
        stats.generations += 1
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(watch)
                try:
                    reply = await anyio.to_thread.run_sync(
                        lambda: backend.generate_images([query], [image], max_tokens, temperature,
                                                        0 if seed is None else seed, counts, stop,
                                                        max_tokens if ignore_eos else 0)[0],
                        abandon_on_cancel=True)
                except anyio.get_cancelled_exc_class():
                    logging.getLogger("uvicorn.error").warning(
                        "stopping the generation of a request cancelled at shutdown (after the %g s drain)",
                        limits.drain_s)
                    raise
                finally:
                    disconnected = cancel.is_set()
                    cancel.set()  # ends the watcher; and stops the generation if this task was cancelled
        finally:
            stats.running -= 1
            turn.release()
        completion_tokens = counts[0] if counts else 0
        if disconnected:
            stats.cancelled += 1
            stats.last_cancelled_tokens = completion_tokens
            return error(499, "client disconnected")
        if cut:
            stats.timed_out += 1
            return error(504, f"generation stopped at {cut[0]} after {completion_tokens} tokens")
        stats.answered += 1
        finish = "length" if completion_tokens >= max_tokens else "stop"
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:16]}", "object": "chat.completion", "created": int(time.time()),
            "model": name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    return app


class BackgroundServer:
    """Runs the app with uvicorn in a thread (tests, benchmarks); `url` is the /v1 base URL."""

    def __init__(self, model_dir: str | Path, host: str = "127.0.0.1", port: int = 0, model_name: str | None = None,
                 device: str = "auto", limits: ServeLimits | None = None):
        import socket

        import uvicorn

        if port == 0:
            with socket.socket() as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
        self.host, self.port = host, port
        self.app = create_app(model_dir, model_name, limits, device=device)
        self.server = uvicorn.Server(uvicorn_config(self.app, host, port, "warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError("mathllava serve did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def uvicorn_config(app, host: str, port: int, log_level: str):
    """On SIGTERM uvicorn stops accepting, lets requests in flight run for `drain_s`, then cancels
    them; a cancelled request stops its generation at the next token, so the process exits."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level,
                          timeout_graceful_shutdown=app.state.limits.drain_s)


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, model_name: str | None = None,
          device: str = "auto", limits: ServeLimits | None = None) -> None:
    import uvicorn

    if not (Path(model_dir) / "config.json").exists():
        raise FileNotFoundError(f"{model_dir} is not a model directory (no config.json)")
    limits = limits or ServeLimits()
    app = create_app(model_dir, model_name, limits, device=device)
    print(f"serving {model_name or Path(model_dir).name} at http://{host}:{port}/v1 (OpenAI chat completions); "
          f"limits: body {limits.max_body_bytes} bytes, prompt {app.state.max_prompt_tokens} tokens, "
          f"max_tokens {limits.max_tokens}, queue {limits.max_queue}, deadline {limits.timeout_s:g} s, "
          f"drain {limits.drain_s:g} s", flush=True)
    uvicorn.Server(uvicorn_config(app, host, port, "info")).run()
