"""`mathllava serve` under hostile requests, on a tiny model built in code with a 16K context (so a
request can ask for a generation far longer than any test waits for). Each check waits for events
the server reports on /health (a generation running, a cancellation counted), not for idle time."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests

from mathllava.serve import BackgroundServer, ServeLimits

LONG = 16000  # tokens: tens of seconds of generation on any CPU, so a cut is never a finished reply


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from mathllava.train.tiny import TinyModelConfig, init_tiny

    cfg = TinyModelConfig(image_size=32, patch_size=16, vision_hidden=32, vision_layers=1, text_hidden=48,
                          text_layers=1, text_intermediate=96, vocab_size=400, seed=1, max_positions=16384)
    return init_tiny(tmp_path_factory.mktemp("serve") / "tiny", cfg, ["What is 2 + 2? A B C D E 0 1 2 3"])


def chat(url, content="What is 2 + 2?", timeout=60, **extra):
    return requests.post(f"{url}/chat/completions", timeout=timeout,
                         json={"messages": [{"role": "user", "content": content}], **extra})


def health(url) -> dict:
    return requests.get(url.removesuffix("/v1") + "/health", timeout=30).json()


def wait_for(condition, what: str, limit: float = 120.0) -> None:
    """Polls an event the server reports; the limit only turns a hang into a failure."""
    end = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < end, f"never saw {what}"
        time.sleep(0.05)


def long_request(url, **extra):
    return chat(url, "Count on.", timeout=300, max_tokens=LONG, ignore_eos=True, **extra)


def test_oversized_requests_are_refused_before_any_model_work(model_dir):
    limits = ServeLimits(max_body_bytes=4 * 1024 * 1024, max_tokens=LONG, timeout_s=60)
    with BackgroundServer(model_dir, model_name="tiny", limits=limits) as srv:
        before = health(srv.url)["generations"]
        started = time.monotonic()
        prompt = chat(srv.url, "x " * 1_000_000)  # the drill's 2 MB prompt
        assert prompt.status_code == 400 and "over the limit of 4096 tokens" in prompt.json()["error"]["message"]
        assert time.monotonic() - started < 30  # refused by its length, never tokenized or generated
        # just over the token bound, under the character pre-check: the tokenizer measures it
        words = chat(srv.url, "seven " * 4200)
        assert words.status_code == 400 and "tokens is over the limit of 4096" in words.json()["error"]["message"]
        body = requests.post(f"{srv.url}/chat/completions", data=b"{" + b" " * (50 * 1024 * 1024) + b"}",
                             headers={"Content-Type": "application/json"}, timeout=60)
        assert body.status_code == 413 and "4194304 bytes" in body.json()["error"]["message"]

        def chunks():  # no Content-Length: the body is cut off while it streams in
            for _ in range(80):
                yield b" " * 65536

        streamed = requests.post(f"{srv.url}/chat/completions", data=chunks(), timeout=60)
        assert streamed.status_code == 413
        tiny_png = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4//8/AAX+Av4N70a4"
                    "AAAAAElFTkSuQmCC")
        two = chat(srv.url, [{"type": "image_url", "image_url": {"url": tiny_png}}] * 2 + [{"type": "text", "text": "q"}])
        assert two.status_code == 400 and "at most 1 image" in two.json()["error"]["message"]
        over = chat(srv.url, max_tokens=LONG + 1)
        assert over.status_code == 400 and f"1..{LONG}" in over.json()["error"]["message"]
        context = chat(srv.url, "seven " * 300, max_tokens=LONG)
        assert context.status_code == 400 and "context of 16384 tokens" in context.json()["error"]["message"]
        after = health(srv.url)
        assert after["generations"] == before and after["refused"] == 7
        ok = chat(srv.url, max_tokens=4)
        assert ok.status_code == 200 and health(srv.url)["generations"] == before + 1


def test_a_hostile_request_never_delays_a_normal_one_beyond_its_deadline(model_dir):
    limits = ServeLimits(max_body_bytes=4 * 1024 * 1024, max_tokens=LONG, timeout_s=60, generation_s=1.0)
    with BackgroundServer(model_dir, model_name="tiny", limits=limits) as srv:
        hostile: dict = {}

        def hold_the_model():  # a legal request asking for 16K tokens: stopped by the per-request limit
            hostile["long"] = long_request(srv.url)

        def abuse():
            hostile["prompt"] = chat(srv.url, "x " * 1_000_000)
            hostile["body"] = requests.post(f"{srv.url}/chat/completions", data=b" " * (50 * 1024 * 1024),
                                            timeout=60)

        threads = [threading.Thread(target=hold_the_model), threading.Thread(target=abuse)]
        threads[0].start()
        wait_for(lambda: health(srv.url)["generations"] >= 1, "the long request on the model")
        threads[1].start()
        normal = []
        for _ in range(5):
            started = time.monotonic()
            reply = chat(srv.url, max_tokens=8, timeout=limits.timeout_s + 30)
            normal.append((reply.status_code, time.monotonic() - started))
        for thread in threads:
            thread.join()
        assert [status for status, _ in normal] == [200] * 5
        assert all(elapsed < limits.timeout_s for _, elapsed in normal)
        assert hostile["long"].status_code == 504
        message = hostile["long"].json()["error"]["message"]
        assert "limit of 1 s on the model per request" in message
        assert int(message.split("after ")[1].split()[0]) < LONG
        assert hostile["prompt"].status_code == 400 and hostile["body"].status_code == 413


def test_a_generation_is_stopped_at_the_request_deadline(model_dir):
    limits = ServeLimits(max_tokens=LONG, timeout_s=2.0, generation_s=600)
    with BackgroundServer(model_dir, model_name="tiny", limits=limits) as srv:
        cut = long_request(srv.url)
        assert cut.status_code == 504 and "deadline of 2 s" in cut.json()["error"]["message"]
        assert int(cut.json()["error"]["message"].split("after ")[1].split()[0]) < LONG
        assert health(srv.url)["timed_out"] == 1 and chat(srv.url, max_tokens=4).status_code == 200


def test_a_full_queue_gets_503_and_a_hang_up_frees_the_model(model_dir):
    limits = ServeLimits(max_tokens=LONG, max_queue=2, timeout_s=600, generation_s=600)
    with BackgroundServer(model_dir, model_name="tiny", limits=limits) as srv:
        body = json.dumps({"messages": [{"role": "user", "content": "Count on."}], "max_tokens": LONG,
                           "ignore_eos": True}).encode()
        with socket.create_connection((srv.host, srv.port)) as sock:   # a client that will hang up
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            wait_for(lambda: health(srv.url)["running"] == 1, "the long request on the model")
            queued: dict = {}
            second = threading.Thread(target=lambda: queued.setdefault("reply", chat(srv.url, max_tokens=4)))
            second.start()
            wait_for(lambda: health(srv.url)["waiting"] == 1, "the second request in the queue")
            busy = chat(srv.url, max_tokens=4)
            assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
            assert health(srv.url)["busy"] == 1
        # the socket is closed: the server notices, stops that generation and serves the queued request
        second.join(timeout=300)
        assert queued["reply"].status_code == 200
        stats = health(srv.url)
        assert stats["cancelled"] == 1 and stats["last_cancelled_tokens"] < LONG and stats["running"] == 0


def test_sigterm_drains_then_stops_generation_and_exits(model_dir):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    proc = subprocess.Popen([sys.executable, "-m", "mathllava.cli", "serve", str(model_dir), "--port", str(port),
                             "--max-tokens", str(LONG), "--drain", "1", "--timeout", "600",
                             "--generation-limit", "600"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ)
    try:
        def up():
            try:
                return health(url)["status"] == "ok"
            except requests.ConnectionError:
                assert proc.poll() is None, proc.stdout.read()
                return False

        wait_for(up, "the server", limit=180)
        result: dict = {}
        client = threading.Thread(target=lambda: result.setdefault("reply", _try(lambda: long_request(url))))
        client.start()
        wait_for(lambda: health(url)["running"] == 1, "the long request on the model")
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
        took = time.monotonic() - signalled
        client.join(timeout=60)
        log = proc.stdout.read()
        assert code in (0, -signal.SIGTERM), log  # uvicorn re-raises the signal it handled
        assert "Cancel 1 running task(s), timeout graceful shutdown exceeded" in log
        assert "stopping the generation of a request cancelled at shutdown (after the 1 s drain)" in log
        assert took < 60, f"exit took {took:.1f} s\n{log}"
        assert not isinstance(result.get("reply"), requests.Response) or result["reply"].status_code != 200
    finally:
        if proc.poll() is None:
            proc.kill()


def _try(call):
    try:
        return call()
    except requests.RequestException as err:
        return err
