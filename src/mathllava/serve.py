"""`mathllava serve MODEL_DIR`: an OpenAI-compatible chat-completions server over the transformers
backend, bound to 127.0.0.1 by default. It speaks the subset of the API that vLLM's server and the
evaluation client use: POST /v1/chat/completions (text and `image_url` parts, images as base64 data
URLs), GET /v1/models and GET /health. Remote image URLs are refused: nothing here fetches from
the network."""

import base64
import binascii
import io
import threading
import time
import uuid
from pathlib import Path
from typing import Any

MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000


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


def parse_messages(messages: list[dict]) -> tuple[str, Any]:
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
    if len(images) > 1:
        raise BadRequest("one image per request (LLaVA-1.5 takes a single image)")
    return "\n".join(texts), (images[0] if images else None)


def create_app(model_dir: str | Path, model_name: str | None = None, max_tokens_limit: int = 1024,
               device: str = "auto"):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from .evaluation.backends import TransformersBackend

    backend = TransformersBackend(model_dir, batch_size=1, device=device)
    name = model_name or Path(model_dir).name
    app = FastAPI(title="mathllava serve")
    counter = {"requests": 0}
    lock = threading.Lock()

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "code": status}},
                            status_code=status)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": name, "requests": counter["requests"]}

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "mathllava"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        try:
            body = await request.json()
        except Exception:
            return error(400, "body must be JSON")
        if not isinstance(body, dict):
            return error(400, "body must be a JSON object")
        if body.get("model") not in (None, name):
            return error(404, f"model {body.get('model')!r} is not served here (serving {name!r})")
        try:
            query, image = parse_messages(body.get("messages"))
            max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
            max_tokens = 64 if max_tokens is None else int(max_tokens)
            temperature = float(body.get("temperature") or 0.0)
            seed = body.get("seed")
            seed = None if seed is None else int(seed)
        except BadRequest as err:
            return error(400, str(err))
        except (TypeError, ValueError) as err:
            return error(400, f"bad parameter: {err}")
        if not 0 < max_tokens <= max_tokens_limit:
            return error(400, f"max_tokens must be in 1..{max_tokens_limit}")
        import anyio

        counts: list[int] = []
        reply = await anyio.to_thread.run_sync(
            lambda: backend.generate_images([query], [image], max_tokens, temperature, 0 if seed is None else seed,
                                            counts)[0])
        with lock:
            counter["requests"] += 1
        prompt_tokens = len(backend.processor.tokenizer(query)["input_ids"])
        completion_tokens = counts[0] if counts else 0
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
                 device: str = "auto"):
        import socket

        import uvicorn

        if port == 0:
            with socket.socket() as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
        self.host, self.port = host, port
        config = uvicorn.Config(create_app(model_dir, model_name, device=device), host=host, port=port,
                                log_level="warning")
        self.server = uvicorn.Server(config)
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


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, model_name: str | None = None,
          device: str = "auto") -> None:
    import uvicorn

    if not (Path(model_dir) / "config.json").exists():
        raise FileNotFoundError(f"{model_dir} is not a model directory (no config.json)")
    print(f"serving {model_name or Path(model_dir).name} at http://{host}:{port}/v1 (OpenAI chat completions)")
    uvicorn.run(create_app(model_dir, model_name, device=device), host=host, port=port, log_level="info")
