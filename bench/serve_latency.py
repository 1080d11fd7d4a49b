"""Latency of normal `mathllava serve` requests, alone and while hostile requests are in flight.

    python bench/serve_latency.py [--requests 60] [--clients 4] [--generation-limit 2]

A tiny model built in code (16K context) is served on 127.0.0.1. Normal requests ask for 16 tokens.
The hostile load runs in a loop for the whole second phase: a 2 MB prompt, a 50 MB body, a legal
request for 16,000 tokens (stopped by the per-request limit on the model) and a client that hangs
up mid-generation. Prints p50, p99 and the worst latency for each phase, and what the server
refused, cut and cancelled.
"""

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def normal_phase(url: str, n: int, clients: int) -> tuple[list[float], list[int]]:
    def one(_):
        started = time.monotonic()
        reply = requests.post(f"{url}/chat/completions", timeout=600,
                              json={"messages": [{"role": "user", "content": "What is 2 + 2?"}], "max_tokens": 16})
        return time.monotonic() - started, reply.status_code

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(n)))
    return [t for t, _ in results], [s for _, s in results]


def hostile_loop(url: str, stop: threading.Event, counts: dict) -> None:
    chat = f"{url}/chat/completions"
    while not stop.is_set():
        for name, call in (
            ("2 MB prompt", lambda: requests.post(chat, timeout=600, json={
                "messages": [{"role": "user", "content": "x " * 1_000_000}]})),
            ("50 MB body", lambda: requests.post(chat, timeout=600, data=b" " * (50 * 1024 * 1024))),
            ("16K tokens", lambda: requests.post(chat, timeout=600, json={
                "messages": [{"role": "user", "content": "Count on."}], "max_tokens": 16000, "ignore_eos": True})),
            ("hang-up", lambda: requests.post(chat, timeout=(10, 0.5), json={
                "messages": [{"role": "user", "content": "Count on."}], "max_tokens": 16000, "ignore_eos": True})),
        ):
            if stop.is_set():
                return
            try:
                status = call().status_code
            except requests.RequestException:
                status = "hung up"
            counts.setdefault(name, []).append(status)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--generation-limit", type=float, default=2.0)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from mathllava.serve import BackgroundServer, ServeLimits
    from mathllava.train.tiny import TinyModelConfig, init_tiny

    cfg = TinyModelConfig(image_size=32, patch_size=16, vision_hidden=32, vision_layers=1, text_hidden=48,
                          text_layers=1, text_intermediate=96, vocab_size=400, seed=1, max_positions=16384)
    with tempfile.TemporaryDirectory() as tmp:
        model = init_tiny(Path(tmp) / "tiny", cfg, ["What is 2 + 2? A B C D E 0 1 2 3"])
        limits = ServeLimits(max_tokens=16000, timeout_s=120, generation_s=args.generation_limit)
        with BackgroundServer(model, model_name="tiny", limits=limits) as srv:
            normal_phase(srv.url, 4, 1)  # warm-up
            calm, calm_status = normal_phase(srv.url, args.requests, args.clients)
            stop, counts = threading.Event(), {}
            hostile = threading.Thread(target=hostile_loop, args=(srv.url, stop, counts))
            hostile.start()
            time.sleep(0.5)
            loaded, loaded_status = normal_phase(srv.url, args.requests, args.clients)
            stop.set()
            hostile.join()
            health = requests.get(f"http://{srv.host}:{srv.port}/health", timeout=30).json()
    print(f"normal requests ({args.requests}, {args.clients} clients, 16 tokens each); "
          f"per-request limit on the model {args.generation_limit:g} s, deadline {limits.timeout_s:g} s")
    for label, times, statuses in (("alone", calm, calm_status), ("with hostile load", loaded, loaded_status)):
        ok = sum(s == 200 for s in statuses)
        print(f"  {label:18s} p50 {statistics.median(times) * 1000:7.0f} ms   p99 {percentile(times, 99) * 1000:7.0f} ms"
              f"   max {max(times) * 1000:7.0f} ms   answered {ok}/{len(statuses)}")
    print("hostile requests sent: " + ", ".join(f"{k} x{len(v)} -> {sorted(set(map(str, v)))}"
                                                for k, v in counts.items()))
    print(f"server: refused {health['refused']}, cut at a limit {health['timed_out']}, "
          f"cancelled on hang-up {health['cancelled']}, busy {health['busy']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
