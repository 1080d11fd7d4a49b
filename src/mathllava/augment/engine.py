"""Running requests: each one keyed and looked up in the reply cache first, the rest sent through a
bounded thread pool (the client retries 429, 5xx and transport errors with backoff), every reply
stored the moment it arrives, a budget in requests or tokens that stops the run cleanly (what is
done is kept, what is not is counted as skipped), a progress bar, and the counters of the report."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from .cache import ReplyCache, request_key
from .clients import FatalEndpointError


@dataclass
class Job:
    kind: str                 # askimg | compq | rephq | simpq | judge
    prompt: str
    image_path: str | None
    image_digest: str | None
    max_tokens: int
    client: Any
    key: str = ""

    def __post_init__(self):
        self.key = request_key(self.image_digest, self.prompt, self.client.identity,
                               self.client.settings(self.max_tokens))


class Budget:
    """Requests sent (cache hits are free) and tokens spent, against optional caps. A request is
    only sent after `acquire` reserves it, so the request cap is never passed; the token cap is
    checked before each request (the replies in flight when it is reached still arrive and count)."""

    def __init__(self, max_requests: int | None = None, max_tokens: int | None = None):
        self.max_requests, self.max_tokens = max_requests, max_tokens
        self.sent = self.tokens = 0
        self.stopped_by: str | None = None
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        with self._lock:
            if self.max_requests is not None and self.sent >= self.max_requests:
                self.stopped_by = self.stopped_by or "max_requests"
                return False
            if self.max_tokens is not None and self.tokens >= self.max_tokens:
                self.stopped_by = self.stopped_by or "max_tokens"
                return False
            self.sent += 1
            return True

    def spend(self, tokens: int) -> None:
        with self._lock:
            self.tokens += tokens


@dataclass
class Stats:
    cache_hits: int = 0
    failed: int = 0
    skipped_budget: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: list = field(default_factory=list)
    by_kind: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


def run_jobs(jobs: list[Job], cache: ReplyCache, budget: Budget, stats: Stats, concurrency: int,
             progress: bool, desc: str) -> dict[str, str]:
    """Replies by request key for the jobs that have one (cached or answered now). A key asked by
    several jobs is asked once."""
    from tqdm import tqdm

    unique = {job.key: job for job in jobs}
    replies: dict[str, str] = {}
    pending = []
    for key, job in unique.items():
        entry = cache.get(key)
        if entry is not None:
            replies[key] = entry["reply"]
            stats.add(cache_hits=1)
        else:
            pending.append(job)

    def work(job: Job) -> str | None:
        if not budget.acquire():
            stats.add(skipped_budget=1)
            return None
        try:
            reply, prompt_tokens, completion_tokens = job.client.complete(job.prompt, job.image_path, job.max_tokens)
        except FatalEndpointError:
            raise
        except Exception as err:  # retries spent: counted, not cached, asked again by the next run
            stats.add(failed=1)
            with stats._lock:
                if len(stats.errors) < 5:
                    stats.errors.append(f"{job.kind}: {type(err).__name__}: {err}"[:300])
            return None
        cache.put(job.key, {"reply": reply, "kind": job.kind, "generator": job.client.identity,
                            "image": job.image_digest, "prompt": job.prompt,
                            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}})
        budget.spend(prompt_tokens + completion_tokens)
        stats.add(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        with stats._lock:
            stats.by_kind[job.kind] += 1
        return reply

    if not pending:
        return replies
    bar = tqdm(total=len(pending), desc=desc, unit="req", disable=not progress, dynamic_ncols=True)
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="augment")
    try:
        futures = {pool.submit(work, job): job for job in pending}
        for future in as_completed(futures):
            reply = future.result()
            if reply is not None:
                replies[futures[future].key] = reply
            bar.update(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # an error or Ctrl-C: drop what has not started
        bar.close()
    return replies


class Clock:
    def __init__(self):
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.start
