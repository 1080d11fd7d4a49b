"""Faults at a boundary that no other test drives end to end, fast and without a server: the
augmentation reply cache. A request with another temperature, max_tokens or seed is another request
(its own key, a cache miss, a new call); the identical request is a hit. (The Kubernetes wait through
a dropped watch is in test_k8s_wait.py.)"""

from __future__ import annotations

import pytest

# --- the augmentation reply cache ------------------------------------------------------------------------

BASE = {"max_tokens": 512, "temperature": 0.7, "seed": 0}
CHANGED = [("temperature", 0.2), ("max_tokens", 256), ("seed", 1)]


@pytest.mark.parametrize("field, value", CHANGED)
def test_reply_cache_key_covers_each_generation_setting(tmp_path, field, value):
    from mathllava.augment.cache import ReplyCache, request_key
    from mathllava.augment.clients import EndpointClient
    from mathllava.augment.config import EndpointSettings
    from mathllava.augment.engine import Budget, Job, Stats, run_jobs

    # request_key itself: one setting changed alone is another key; the same request is the same key
    key = request_key("img", "Task: CompQ.", "endpoint:m@h", dict(BASE))
    assert request_key("img", "Task: CompQ.", "endpoint:m@h", dict(BASE)) == key
    assert request_key("img", "Task: CompQ.", "endpoint:m@h", {**BASE, field: value}) != key

    # the same through the real client settings and Job keys, against the reply cache on disk
    def job(temperature=0.7, seed=0, max_tokens=512):
        cfg = EndpointSettings(base_url="http://127.0.0.1:9/v1", model="m", temperature=temperature, seed=seed)
        client = EndpointClient(cfg)
        calls = []
        client.complete = lambda prompt, image, n: (calls.append(n) or f"reply at {n}", 3, 4)
        return Job("compq", "Task: CompQ.", None, "img", max_tokens, client), calls

    cache = ReplyCache(tmp_path / "cache")
    first, first_calls = job()
    assert run_jobs([first], cache, Budget(), Stats(), 1, False, "t") == {first.key: "reply at 512"}
    assert first_calls == [512] and len(cache) == 1

    same, same_calls = job()
    stats = Stats()
    assert same.key == first.key
    assert run_jobs([same], cache, Budget(), stats, 1, False, "t") == {first.key: "reply at 512"}
    assert same_calls == [] and stats.cache_hits == 1             # identical request: served from the cache

    other, other_calls = job(**{field: value})
    stats = Stats()
    assert other.key != first.key and cache.get(other.key) is None
    run_jobs([other], cache, Budget(), stats, 1, False, "t")
    assert len(other_calls) == 1 and stats.cache_hits == 0        # another setting: asked again, not the cached reply
    assert len(cache) == 2
