"""Shared by tests/test_augment_*.py: a MathV360K-format source of three real images written on disk,
and a scripted OpenAI-compatible server on 127.0.0.1 that answers with the recorded replies of
tests/data/augment/recorded_replies.json and counts every request it receives and answers."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "augment"
RECORDED = json.loads((DATA / "recorded_replies.json").read_text())

SEEDS = {  # image name -> the seed record's question, choices and answer
    "bar": {"question": "What is the value of the largest bar?", "choices": None, "answer": "7"},
    "tri": {"question": "Which angle is the largest?", "choices": ["30 degrees", "60 degrees", "90 degrees"],
            "answer": "90 degrees"},
    "count": {"question": "How many circles are in the image?", "choices": None, "answer": "4"},
}


def draw(name: str, path: Path) -> None:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (96, 96), "white")
    pen = ImageDraw.Draw(img)
    if name == "bar":
        for i, h in enumerate([2, 3, 7, 3]):
            pen.rectangle([8 + i * 20, 90 - h * 11, 22 + i * 20, 90], fill=(40 + 50 * i, 90, 160))
    elif name == "tri":
        pen.polygon([(10, 85), (85, 85), (10, 20)], outline="black")
    else:
        for i in range(4):
            pen.ellipse([8 + i * 21, 38, 26 + i * 21, 56], outline="red", width=2)
    img.save(path)


def write_source(root: Path, names=("bar", "tri", "count")) -> Path:
    """A MathV360K-format source (conversations JSON + images/), as `data.extra_sources` takes it."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for name in names:
        draw(name, images / f"{name}.png")
        seed = SEEDS[name]
        human = f"<image>\n{seed['question']}"
        answer = seed["answer"]
        if seed["choices"]:
            human += "\nChoices:\n" + "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(seed["choices"]))
            answer = chr(65 + seed["choices"].index(answer))
        records.append({"id": f"mysrc-{name}", "image": f"images/{name}.png",
                        "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": answer}],
                        "metadata": {"source": "mysrc", "task": "FQA"}})
    path = root / "train.json"
    path.write_text(json.dumps(records, indent=1))
    return path


def manifest(root: Path, names=("bar", "tri", "count")):
    from mathllava.data.ingest import ingest_source

    rows, quarantine = ingest_source(write_source(root, names), root, "mysrc")
    assert len(quarantine) == 0 and rows["image_ok"].all()
    return rows


def image_names(root: Path) -> dict[str, str]:
    """sha256 of each image file -> its name."""
    return {hashlib.sha256(p.read_bytes()).hexdigest(): p.stem for p in (root / "images").glob("*.png")}


class ScriptedServer:
    """POST /v1/chat/completions answered from the recorded replies: the task comes from the prompt's
    `Task: X.` line (no such line: a judge question, answered by its `Question:` line), the image from
    the sha256 of the data URL's bytes. `received`/`answered`: request keys (sha256 of the body).
    `failures`: statuses returned (with Retry-After: 0) to the next requests, one each. `hold_after`:
    the requests that arrive after that many wait until `release()`, and with `abandon` set
    they are then dropped unanswered (the client is gone)."""

    def __init__(self, names: dict[str, str], api_key: str | None = None):
        self.names, self.api_key = names, api_key
        self.received: list[str] = []
        self.answered: list[str] = []
        self.auth: Counter = Counter()
        self.failures: list[int] = []
        self.hold_after: int | None = None
        self.abandon = False
        self.held = 0
        self.dropped = 0   # held requests dropped unanswered after release() with abandon set
        self._release = threading.Event()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                server.handle(self, raw)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/v1"

    def __enter__(self) -> "ScriptedServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()

    def release(self) -> None:
        self._release.set()

    def reply_for(self, body: dict) -> str:
        content = body["messages"][-1]["content"]
        text = "\n".join(p["text"] for p in content if p["type"] == "text")
        url = next(p["image_url"]["url"] for p in content if p["type"] == "image_url")
        name = self.names[hashlib.sha256(base64.b64decode(url.split(",", 1)[1])).hexdigest()]
        first = text.split("\n", 1)[0]
        if first.startswith("Task: "):
            return RECORDED["replies"][name][first[len("Task: "):].split(".")[0].lower()]
        question = next(line for line in text.split("\n") if line.startswith("Question: "))[len("Question: "):]
        return RECORDED["judge"].get(question.split(" (Unit:")[0], "I cannot tell.")

    def handle(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        key = hashlib.sha256(raw).hexdigest()
        with self.lock:
            self.received.append(key)
            self.auth[handler.headers.get("Authorization")] += 1
            status = self.failures.pop(0) if self.failures else 200
            # by arrival order, not by replies sent: a request can arrive while an earlier one is still being
            # answered, and counting answers then let an 8th through (the crash drill waited for ever)
            hold = self.hold_after is not None and len(self.received) > self.hold_after and status == 200
            if hold:
                self.held += 1
        if hold:
            self._release.wait()
            if self.abandon:
                with self.lock:
                    self.dropped += 1
                handler.close_connection = True
                return
        if status == 200 and self.api_key and handler.headers.get("Authorization") != f"Bearer {self.api_key}":
            status = 401
        if status != 200:
            payload = json.dumps({"error": {"message": f"scripted {status}"}}).encode()
            handler.send_response(status)
            handler.send_header("Retry-After", "0")
        else:
            reply = self.reply_for(json.loads(raw))
            payload = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}
                                 ).encode()
            handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)
        handler.wfile.flush()
        if status == 200:
            with self.lock:
                self.answered.append(key)


def settings(url: str, cache_dir: Path, **extra) -> dict:
    """`parameters.augment` for the scripted server: 4 AskImg pairs per image, one of each other
    generator per seed, the same model as the consistency judge."""
    cfg = {"generator": "endpoint", "per_seed": {"askimg": 4, "compq": 1, "rephq": 1, "simpq": 1},
           "endpoint": {"base_url": url, "model": "scripted", "max_tokens": 256, "temperature": 0.0},
           "filters": {"max_question_chars": 120}, "concurrency": 3, "backoff": 0.01, "cache_dir": str(cache_dir),
           "progress": False, "exemplars": 2}
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


# what the recorded replies give (tests/data/augment/recorded_replies.json), reply by reply
EXPECTED_KEPT = {"new_question": 3, "harder": 2, "rephrased": 1, "underspecified": 1}
EXPECTED_DROPPED = {"inconsistent": 2, "duplicate": 2, "malformed_reply": 3, "answer_type": 1, "near_duplicate": 1,
                    "too_short": 1, "too_long": 1}
GENERATION_REQUESTS = 12   # 3 images x (AskImg + CompQ + RephQ + SimpQ)
JUDGE_REQUESTS = 9         # the pairs that pass parsing, length, type and duplicate checks
