"""Faults at two boundaries that no other test drives end to end, each fast and without a server:

- the augmentation reply cache: a request with another temperature, max_tokens or seed is another
  request (its own key, a cache miss, a new call); the identical request is a hit;
- the Kubernetes wait: a watch connection dropped by urllib3 (ProtocolError from the stream) is
  reconnected through `wait()` itself; it neither ends the wait nor gets the running job deleted,
  and the job's real end is what comes back. The kubernetes client is replaced at its boundary
  (CustomObjectsApi, CoreV1Api, watch.Watch) by a one-job fake that answers as the API server does."""

from __future__ import annotations

import copy
import threading
import time
from types import SimpleNamespace

import pytest

from conftest import ROOT

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


# --- the Kubernetes wait through a dropped watch ----------------------------------------------------------

class FakeCluster:
    """One job on a fake API server. The first watch on the job drops its connection (urllib3's
    ProtocolError while reading the stream); the operator finishes the job while the launcher
    reconnects, and the next watch delivers that as a MODIFIED event. Every delete is recorded with
    the job's state at that moment."""

    def __init__(self, rendered):
        from kubernetes import watch

        self.rendered, self.rv = rendered, 1
        self.job = copy.deepcopy(rendered.job)
        self.job.setdefault("metadata", {}).update(resourceVersion="1", uid="uid-1")
        self.job["status"] = {"conditions": [self._condition("Created", "JobCreated", "created")]}
        self.lists = self.job_watches = 0
        self.deletes: list[str] = []          # the job's state (running | succeeded | failed | gone) at each delete
        self.config_map = None
        self._real_watch = watch.Watch

    @staticmethod
    def _condition(ctype, reason, message):
        return {"type": ctype, "status": "True", "reason": reason, "message": message,
                "lastTransitionTime": "2025-01-01T00:00:00Z"}

    def state(self) -> str:
        from mathllava.k8s.launcher import state_of

        return "gone" if self.job is None else state_of(self.job)[0]

    def finish(self):
        self.rv += 1
        self.job["status"]["conditions"].append(self._condition("Complete", "JobSucceeded", "all nodes finished"))
        self.job["metadata"]["resourceVersion"] = str(self.rv)

    # kubernetes.client.CustomObjectsApi
    def create_namespaced_custom_object(self, group, version, namespace, plural, body, **kw):
        return copy.deepcopy(self.job)

    def get_namespaced_custom_object(self, group, version, namespace, plural, name, **kw):
        return copy.deepcopy(self.job)

    def list_namespaced_custom_object(self, group, version, namespace, plural, **kw):
        assert kw.get("field_selector") == f"metadata.name={self.rendered.name}"
        self.lists += 1
        return {"metadata": {"resourceVersion": str(self.rv)},
                "items": [] if self.job is None else [copy.deepcopy(self.job)]}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, **kw):
        self.deletes.append(self.state())
        self.job = None

    # kubernetes.client.CoreV1Api
    def create_namespaced_config_map(self, namespace, body, **kw):
        self.config_map = body

    def patch_namespaced_config_map(self, name, namespace, body, **kw):
        pass

    def delete_namespaced_config_map(self, name, namespace, **kw):
        self.config_map = None

    def list_namespaced_pod(self, namespace, **kw):
        return SimpleNamespace(items=[])

    # kubernetes.watch.Watch().stream
    def stream(self, func, *args, **kwargs):
        if func.__name__ == "list_namespaced_pod":   # the pod reporter: no pods, a short quiet watch
            threading.Event().wait(0.02)
            return iter(())
        assert func.__name__ == "list_namespaced_custom_object"
        self.job_watches += 1
        return self._dropped() if self.job_watches == 1 else self._finished()

    def _dropped(self):
        import http.client

        import urllib3

        raise urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead(0 bytes read)",
                                               http.client.IncompleteRead(b""))
        yield  # noqa: unreachable (a generator: the error comes while reading the stream, as it does)

    def _finished(self):
        assert self.state() == "running"
        self.finish()                         # the operator marks the job Complete meanwhile
        yield {"type": "MODIFIED", "object": copy.deepcopy(self.job)}


@pytest.fixture
def cluster(monkeypatch):
    from kubernetes import client, watch

    from mathllava.k8s import launcher
    from mathllava.k8s.config import load_cluster_config
    from mathllava.k8s.manifests import render

    rendered = render(load_cluster_config(ROOT / "configs" / "k8s" / "train.yaml"), "ns", name="run-1")
    fake = FakeCluster(rendered)
    monkeypatch.setattr(client, "CustomObjectsApi", lambda api=None: fake)
    monkeypatch.setattr(client, "CoreV1Api", lambda api=None: fake)
    monkeypatch.setattr(watch, "Watch", lambda *a, **k: SimpleNamespace(stream=fake.stream))
    fake.sleeps = []   # the reconnect's pause, recorded instead of slept
    monkeypatch.setattr(launcher, "time", SimpleNamespace(monotonic=time.monotonic, sleep=fake.sleeps.append))
    return fake


def test_a_dropped_watch_through_wait_reconnects_and_returns_the_jobs_real_end(cluster):
    from mathllava.k8s.launcher import wait

    lines = []
    outcome = wait(object(), cluster.rendered, 30, lines.append)
    assert (outcome.state, outcome.reason, outcome.message) == ("succeeded", "JobSucceeded", "all nodes finished")
    assert cluster.state() == "succeeded" and cluster.deletes == []   # wait never deletes; the job really ended
    assert cluster.job_watches == 2 and cluster.lists == 2            # listed again after the drop, watched again
    assert any("watch interrupted" in line and "Connection broken" in line for line in lines)
    assert len(cluster.sleeps) == 1


@pytest.mark.parametrize("cleanup", ["always", "on-success"])
def test_a_dropped_watch_never_gets_the_running_job_deleted(cluster, cleanup):
    from mathllava.k8s.launcher import run

    try:
        outcome = run(object(), cluster.rendered, 30, cleanup, log=lambda line: None)
    except Exception as err:
        pytest.fail(f"the dropped watch ended the run ({type(err).__name__}: {err}); deletes: {cluster.deletes}")
    assert cluster.deletes.count("running") == 0, "the job was deleted while still running"
    assert outcome.ok and outcome.reason == "JobSucceeded"
    assert cluster.deletes == ["succeeded"]   # deleted once, after its end, per the cleanup policy
