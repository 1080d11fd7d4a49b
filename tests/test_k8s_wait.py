"""The launcher's wait and cleanup (launcher.wait, run, delete and their helpers) against a fake API
server, fast and without a cluster.

The kubernetes client is replaced at its boundary (CustomObjectsApi, CoreV1Api, watch.Watch) by a
one-job fake that answers as the API server does. Each watch on the job follows a script: it drops
its connection, delivers one MODIFIED, DELETED or ERROR event, stays quiet until its own timeout, or
is refused with an HTTP status. The launcher's clock is a fake one that moves only when a watch waits
or the launcher sleeps, so every timeout is exact and nothing really waits. The pod reporter is a
recording stand-in except in the two end-to-end tests of a dropped watch, which run the real one.
The real-API-server tests of the same code are in the cluster test files (slow)."""

from __future__ import annotations

import copy
import functools
import http.client
import json
import threading
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import pytest

from conftest import ROOT

API = object()   # the ApiClient handed to the launcher: every API object must be made from it
START = 1000.0   # the fake clock's first reading


def api_exception(status: int, reason: str = "Some Reason", body: dict | None = None):
    from kubernetes import client

    err = client.ApiException(status=status, reason=reason)
    if body is not None:
        err.body = json.dumps(body)
    return err


def protocol_error():
    import urllib3

    return urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead(0 bytes read)",
                                            http.client.IncompleteRead(b""))


class Clock:
    """time.monotonic and time.sleep for the launcher: sleeping moves the clock and is recorded."""

    def __init__(self):
        self.now = START
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


# --- the script of the job's watches (and lists) ---------------------------------------------------------

@dataclass
class Quiet:
    """No event: the watch ends after its own timeout_seconds."""


@dataclass
class Drop:
    """The connection drops (`error` while reading the stream) after `after` seconds."""
    error: BaseException
    after: float = 0.0


@dataclass
class Refuse:
    """The API server answers the call with HTTP `status` (after `after` seconds)."""
    status: int
    after: float = 0.0


@dataclass
class Event:
    """One event after `after` seconds: MODIFIED (the job changed by `change` first), DELETED or ERROR."""
    type: str
    change: Callable[[dict], None] | None = None
    after: float = 0.0


def condition(ctype: str, reason: str | None = None, message: str | None = None, status: str = "True"):
    """A change that adds a status condition (reason and message left out when None)."""
    def change(job):
        entry = {"type": ctype, "status": status, "lastTransitionTime": "2025-01-01T00:00:00Z"}
        entry.update({k: v for k, v in (("reason", reason), ("message", message)) if v is not None})
        job["status"]["conditions"].append(entry)
    return change


def replicas(**counts):
    """A change of the job's replica counts (what its progress line reports)."""
    def change(job):
        job["status"]["replicaStatuses"] = {"node": counts}
    return change


def pod(name: str, phase: str, reason: str = "Error", exit_code: int = 1):
    terminated = SimpleNamespace(reason=reason, exit_code=exit_code, message=None)
    state = SimpleNamespace(terminated=terminated if phase == "Failed" else None, waiting=None)
    return SimpleNamespace(metadata=SimpleNamespace(name=name),
                           status=SimpleNamespace(phase=phase, container_statuses=[SimpleNamespace(name="node",
                                                                                                   state=state)]))


class FakeReporter:
    """Stands in for launcher.PodReporter: records how it was made, started, stopped and joined."""

    def __init__(self, api, rendered, log):
        self.args = (api, rendered, log)
        self.started = False
        self.stop = threading.Event()
        self.joins: list[tuple] = []

    def start(self):
        self.started = True

    def join(self, *args, **kwargs):
        self.joins.append((args, kwargs))


class FakeCluster:
    """One job on a fake API server, its watches following `watches` and its lists `lists` (a list
    step is None for an answer, or a Refuse; once the script is spent every list answers). Records
    each list's time, each job watch's arguments, each delete with the job's state at that moment."""

    def __init__(self, rendered, clock: Clock, watches=(), lists=()):
        self.rendered, self.clock = rendered, clock
        self.watch_script, self.list_script = list(watches), list(lists)
        self.rv = 1
        self.job = copy.deepcopy(rendered.job)
        self.job.setdefault("metadata", {}).update(resourceVersion="1", uid="uid-1")
        self.job["status"] = {"conditions": []}
        condition("Created", "JobCreated", "created")(self.job)
        self.lists: list[float] = []            # the clock at each list of the job
        self.watches: list[dict] = []           # each job watch's keyword arguments
        self.deletes: list[str] = []            # the job's state (running | succeeded | failed | gone) at each delete
        self.config_map_deletes = 0
        self.config_map = None
        self.refuse: dict[str, int] = {}        # method name -> HTTP status it answers with
        self.pods: list = []
        self.pod_lists = 0
        self.reporters: list[FakeReporter] = []
        self.calls: list[str] = []              # every API method called, in order

    def api(self, api=None):
        assert api is API, f"an API object made from {api!r}, not from the launcher's ApiClient"
        return self

    def reporter(self, api, rendered, log):
        self.reporters.append(FakeReporter(api, rendered, log))
        return self.reporters[-1]

    def state(self) -> str:
        from mathllava.k8s.launcher import state_of

        return "gone" if self.job is None else state_of(self.job)[0]

    def _refused(self, method: str):
        self.calls.append(method)
        if method in self.refuse:
            raise api_exception(self.refuse[method], "Refused")

    def _bump(self):
        self.rv += 1
        self.job["metadata"]["resourceVersion"] = str(self.rv)

    def _check_api(self, group, version, namespace, plural):
        r = self.rendered
        assert (group, version, namespace, plural) == (*r.api[:2], r.namespace, r.api[2])

    # kubernetes.client.CustomObjectsApi
    def create_namespaced_custom_object(self, group, version, namespace, plural, body, **kw):
        self._refused("create_namespaced_custom_object")
        return copy.deepcopy(self.job)

    def get_namespaced_custom_object(self, group, version, namespace, plural, name, **kw):
        self._refused("get_namespaced_custom_object")
        return copy.deepcopy(self.job)

    def list_namespaced_custom_object(self, group, version, namespace, plural, **kw):
        self._check_api(group, version, namespace, plural)
        assert kw == {"field_selector": f"metadata.name={self.rendered.name}"}, kw
        self.calls.append("list_namespaced_custom_object")
        self.lists.append(self.clock.now)
        step = self.list_script.pop(0) if self.list_script else None
        if step is not None:
            self.clock.now += step.after
            raise api_exception(step.status)
        return {"metadata": {"resourceVersion": str(self.rv)},
                "items": [] if self.job is None else [copy.deepcopy(self.job)]}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, **kw):
        from kubernetes import client

        self._check_api(group, version, namespace, plural)
        assert name == self.rendered.name
        assert list(kw) == ["body"] and isinstance(kw["body"], client.V1DeleteOptions)
        assert kw["body"].propagation_policy == "Background", kw["body"]
        self._refused("delete_namespaced_custom_object")
        if self.job is None:
            raise api_exception(404, "Not Found")
        self.deletes.append(self.state())
        self.job = None

    # kubernetes.client.CoreV1Api
    def create_namespaced_config_map(self, namespace, body, **kw):
        self._refused("create_namespaced_config_map")
        self.config_map = body

    def patch_namespaced_config_map(self, name, namespace, body, **kw):
        self._refused("patch_namespaced_config_map")

    def delete_namespaced_config_map(self, name, namespace, **kw):
        assert (name, namespace, kw) == (f"{self.rendered.name}-config", self.rendered.namespace, {})
        self._refused("delete_namespaced_config_map")
        if self.config_map is None:
            raise api_exception(404, "Not Found")
        self.config_map_deletes += 1
        self.config_map = None

    def list_namespaced_pod(self, namespace, **kw):
        from mathllava.k8s.manifests import POD_SELECTOR

        assert namespace == self.rendered.namespace
        assert kw == {"label_selector": f"{POD_SELECTOR[self.rendered.kind]}={self.rendered.name}"}
        self.pod_lists += 1
        self._refused("list_namespaced_pod")
        return SimpleNamespace(items=list(self.pods))

    # kubernetes.watch.Watch().stream
    def stream(self, func, *args, **kwargs):
        if getattr(func, "__name__", None) == "list_namespaced_pod":   # the real pod reporter: a short quiet watch
            threading.Event().wait(0.02)
            return iter(())
        assert func == self.list_namespaced_custom_object, func
        self._check_api(*args)
        assert set(kwargs) == {"field_selector", "resource_version", "timeout_seconds", "_request_timeout"}, kwargs
        assert kwargs["field_selector"] == f"metadata.name={self.rendered.name}"
        self.watches.append(dict(kwargs, at=self.clock.now))
        assert self.watch_script, f"watch {len(self.watches)} was not in the script"
        step = self.watch_script.pop(0)
        if isinstance(step, Refuse):
            self.clock.now += step.after
            raise api_exception(step.status)
        return self._play(step, kwargs["timeout_seconds"])

    def _play(self, step, timeout_seconds):
        if isinstance(step, Quiet):
            self.clock.now += timeout_seconds
            return
        self.clock.now += step.after
        if isinstance(step, Drop):
            raise step.error
        if step.type == "ERROR":          # what the API server sends when the watched version is too old
            yield {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}
        elif step.type == "DELETED":
            gone, self.job = self.job, None
            self.rv += 1
            yield {"type": "DELETED", "object": gone}
        else:
            if step.change:
                step.change(self.job)
            self._bump()
            yield {"type": step.type, "object": copy.deepcopy(self.job)}
        raise AssertionError("the launcher read on after the event it watched for")


@functools.lru_cache(maxsize=None)
def _config():
    from mathllava.k8s.config import load_cluster_config

    return load_cluster_config(ROOT / "configs" / "k8s" / "train.yaml")


@pytest.fixture
def clock(monkeypatch):
    from mathllava.k8s import launcher

    fake = Clock()
    monkeypatch.setattr(launcher, "time", SimpleNamespace(monotonic=fake.monotonic, sleep=fake.sleep))
    return fake


@pytest.fixture
def make(monkeypatch, clock):
    """make(*watch steps, lists=(), kind=..., real_reporter=False): the fake cluster, patched in."""
    from kubernetes import client, watch

    from mathllava.k8s import launcher
    from mathllava.k8s.manifests import render

    def build(*watches, lists=(), kind="trainjob", real_reporter=False):
        rendered = render(_config(), "ns", kind=kind, name="run-1")
        fake = FakeCluster(rendered, clock, watches, lists)
        monkeypatch.setattr(client, "CustomObjectsApi", fake.api)
        monkeypatch.setattr(client, "CoreV1Api", fake.api)
        monkeypatch.setattr(watch, "Watch", lambda *a, **k: SimpleNamespace(stream=fake.stream))
        if not real_reporter:
            monkeypatch.setattr(launcher, "PodReporter", fake.reporter)
        return fake
    return build


def _wait(cluster, timeout_s=300.0):
    from mathllava.k8s.launcher import wait

    lines: list[str] = []
    return wait(API, cluster.rendered, timeout_s, lines.append), lines


def _outcome(outcome):
    return outcome.state, outcome.reason, outcome.message, outcome.pods


SUCCEED = Event("MODIFIED", condition("Complete", "JobSucceeded", "all nodes finished"))


# --- through a dropped watch, end to end (the real pod reporter) ------------------------------------------

def test_a_dropped_watch_through_wait_reconnects_and_returns_the_jobs_real_end(make, clock):
    cluster = make(Drop(protocol_error()), SUCCEED, real_reporter=True)
    outcome, lines = _wait(cluster, 30)
    assert (outcome.state, outcome.reason, outcome.message) == ("succeeded", "JobSucceeded", "all nodes finished")
    assert cluster.state() == "succeeded" and cluster.deletes == []   # wait never deletes; the job really ended
    assert len(cluster.watches) == 2 and len(cluster.lists) == 2     # listed again after the drop, watched again
    assert "(TrainJob/run-1: watch interrupted: ('Connection broken: IncompleteRead(0 bytes read)', " \
           "IncompleteRead(0 bytes read)); reconnecting)" in lines
    assert clock.sleeps == [2.0]


@pytest.mark.parametrize("cleanup", ["always", "on-success"])
def test_a_dropped_watch_never_gets_the_running_job_deleted(make, cleanup):
    from mathllava.k8s.launcher import run

    cluster = make(Drop(protocol_error()), SUCCEED, real_reporter=True)
    try:
        outcome = run(API, cluster.rendered, 30, cleanup, log=lambda line: None)
    except Exception as err:
        pytest.fail(f"the dropped watch ended the run ({type(err).__name__}: {err}); deletes: {cluster.deletes}")
    assert cluster.deletes.count("running") == 0, "the job was deleted while still running"
    assert outcome.ok and outcome.reason == "JobSucceeded"
    assert cluster.deletes == ["succeeded"]   # deleted once, after its end, per the cleanup policy


# --- outcomes ------------------------------------------------------------------------------------------

def test_success_through_a_watch_event(make):
    cluster = make(SUCCEED)
    outcome, lines = _wait(cluster)
    assert _outcome(outcome) == ("succeeded", "JobSucceeded", "all nodes finished", [])
    assert lines == ["TrainJob/run-1: Created", "TrainJob/run-1: Created; Complete"]
    assert cluster.lists == [START] and len(cluster.watches) == 1
    assert cluster.watches[0]["resource_version"] == "1"
    assert cluster.pod_lists == 0 and cluster.deletes == []
    # the pod reporter: made for this job with the same log, started, then stopped and joined (5 s at most)
    [reporter] = cluster.reporters
    assert reporter.args == (API, cluster.rendered, lines.append)
    assert reporter.started and reporter.stop.is_set() and reporter.joins == [((), {"timeout": 5})]


def test_success_already_at_the_first_list_and_without_reason(make):
    cluster = make()   # no watch at all
    condition("Succeeded")(cluster.job)
    outcome, lines = _wait(cluster)
    assert _outcome(outcome) == ("succeeded", "", "", []) and outcome.ok
    assert lines == ["TrainJob/run-1: Created; Succeeded"] and cluster.watches == []


def test_failure_reports_the_reason_and_only_the_failed_pods(make):
    cluster = make(Event("MODIFIED", condition("Failed", "BackoffLimitExceeded", "a pod failed")))
    cluster.pods = [pod("run-1-node-0-0", "Failed"), pod("run-1-node-0-1", "Running"),
                    pod("run-1-node-0-2", "Succeeded"), pod("run-1-node-0-3", "Failed", "OOMKilled", 137)]
    outcome, lines = _wait(cluster)
    assert _outcome(outcome) == ("failed", "BackoffLimitExceeded", "a pod failed",
                                 ["pod run-1-node-0-0: Failed (node: Error, exit code 1)",
                                  "pod run-1-node-0-3: Failed (node: OOMKilled, exit code 137)"])
    assert not outcome.ok and cluster.pod_lists == 1 and cluster.deletes == []
    assert lines[-1] == "TrainJob/run-1: Created; Failed"


def test_failure_without_a_reason_is_failed_and_pods_of_a_pytorchjob_are_found(make):
    cluster = make(Event("MODIFIED", condition("Failed")), kind="pytorchjob")
    cluster.pods = [pod("run-1-worker-0", "Failed")]
    outcome, lines = _wait(cluster)
    assert _outcome(outcome) == ("failed", "Failed", "", ["pod run-1-worker-0: Failed (node: Error, exit code 1)"])
    assert lines == ["PyTorchJob/run-1: Created", "PyTorchJob/run-1: Created; Failed"]


def test_failure_with_pods_not_listed_says_so(make):
    cluster = make(Event("MODIFIED", condition("Failed", "DeadlineExceeded")))
    cluster.refuse["list_namespaced_pod"] = 403
    outcome, _ = _wait(cluster)
    assert _outcome(outcome) == ("failed", "DeadlineExceeded", "", ["(pods not listed: (403)\nReason: Refused\n)"])


def test_deleted_before_the_first_list(make):
    cluster = make()
    cluster.job = None
    outcome, lines = _wait(cluster)
    assert _outcome(outcome) == ("failed", "Deleted", "TrainJob/run-1 was deleted before it finished", [])
    assert lines == [] and cluster.watches == [] and len(cluster.lists) == 1
    assert cluster.reporters[0].stop.is_set()


def test_deleted_while_watched(make):
    cluster = make(Event("DELETED"), kind="pytorchjob")
    outcome, lines = _wait(cluster)
    assert _outcome(outcome) == ("failed", "Deleted", "PyTorchJob/run-1 was deleted before it finished", [])
    assert lines == ["PyTorchJob/run-1: Created"] and len(cluster.lists) == 1


# --- the timeout -----------------------------------------------------------------------------------------

def test_timeout_after_quiet_watches_names_the_last_progress(make, clock):
    cluster = make(Event("MODIFIED", replicas(active=2), after=10), Quiet(), Quiet())
    outcome, lines = _wait(cluster, 90)
    assert _outcome(outcome) == ("timeout", "Timeout", "no end within 90 s; last seen: Created; node: active 2", [])
    # 90 s left: a 60 s watch; at 10 s an event, 80 s left: 60 s; 20 s left: 20 s; then exactly 0 s left: the end
    assert [(w["at"] - START, w["timeout_seconds"], w["_request_timeout"]) for w in cluster.watches] == \
        [(0, 60, 70), (10, 60, 70), (70, 20, 30)]
    assert clock.now == START + 90 and clock.sleeps == []
    assert [w["resource_version"] for w in cluster.watches] == ["1", "2", "2"]
    assert lines == ["TrainJob/run-1: Created", "TrainJob/run-1: Created; node: active 2"]
    assert cluster.lists == [START] and cluster.deletes == []


def test_timeout_of_a_fraction_of_a_second(make, clock):
    cluster = make(Quiet())
    outcome, _ = _wait(cluster, 0.25)
    assert outcome.message == "no end within 0.25 s; last seen: Created"
    assert [(w["timeout_seconds"], w["_request_timeout"]) for w in cluster.watches] == [(1, 10.25)]


def test_timeout_already_spent_at_the_first_list(make):
    cluster = make()
    outcome, _ = _wait(cluster, 0)
    assert _outcome(outcome) == ("timeout", "Timeout", "no end within 0 s; last seen: Created", [])
    assert cluster.watches == []


def test_timeout_without_any_progress_line_says_submitted(make, monkeypatch):
    from mathllava.k8s import launcher

    monkeypatch.setattr(launcher, "progress_of", lambda job: "")   # a status that gives no account at all
    cluster = make(Quiet())
    outcome, lines = _wait(cluster, 5)
    assert outcome.message == "no end within 5 s; last seen: submitted" and lines == []


@pytest.mark.parametrize("remaining, timeout_seconds, request_timeout", [
    (0.5, 1, 10.5), (1, 1, 11), (1.25, 2, 11.25), (30, 30, 40), (30.5, 31, 40.5), (59.2, 60, 69.2),
    (60, 60, 70), (60.5, 60, 70), (100, 60, 70)])
def test_each_watch_lasts_the_remaining_time_rounded_up_within_a_minute(make, remaining, timeout_seconds,
                                                                         request_timeout):
    cluster = make(SUCCEED)
    _wait(cluster, remaining)
    [watched] = cluster.watches
    assert watched["timeout_seconds"] == timeout_seconds and isinstance(watched["timeout_seconds"], int)
    assert watched["_request_timeout"] == pytest.approx(request_timeout)


# --- reconnects ------------------------------------------------------------------------------------------

def test_progress_is_logged_once_per_change_and_each_watch_goes_on_from_the_last_version(make, clock):
    cluster = make(Event("MODIFIED", replicas(active=1)), Event("MODIFIED"), Quiet(),
                   Event("MODIFIED", replicas(active=2)), SUCCEED)
    outcome, lines = _wait(cluster)
    assert outcome.ok
    assert lines == ["TrainJob/run-1: Created", "TrainJob/run-1: Created; node: active 1",
                     "TrainJob/run-1: Created; node: active 2", "TrainJob/run-1: Created; Complete; node: active 2"]
    assert [w["resource_version"] for w in cluster.watches] == ["1", "2", "3", "3", "4"]
    assert cluster.lists == [START] and clock.sleeps == []


def test_an_error_event_relists_without_a_log_line_or_a_pause(make, clock):
    cluster = make(Event("ERROR", after=3), SUCCEED)
    cluster.rv = 7                          # the list answers with the server's newest version
    outcome, lines = _wait(cluster)
    assert outcome.ok and clock.sleeps == []
    assert cluster.lists == [START, START + 3]
    assert [w["resource_version"] for w in cluster.watches] == ["7", "7"]
    assert lines == ["TrainJob/run-1: Created", "TrainJob/run-1: Created; Complete"]


def test_gone_410_relists_without_a_log_line_or_a_pause(make, clock):
    cluster = make(Refuse(410, after=1), SUCCEED, lists=[None, Refuse(410)])
    outcome, lines = _wait(cluster)
    assert outcome.ok and clock.sleeps == []
    assert cluster.lists == [START, START + 1, START + 1]
    assert len(cluster.watches) == 2
    assert lines == ["TrainJob/run-1: Created", "TrainJob/run-1: Created; Complete"]


@pytest.mark.parametrize("status", [0, 429, 500, 503])
def test_a_transient_refusal_of_the_watch_logs_pauses_and_relists(make, clock, status):
    cluster = make(Refuse(status, after=1), SUCCEED)
    outcome, lines = _wait(cluster)
    assert outcome.ok
    assert lines == ["TrainJob/run-1: Created", f"(TrainJob/run-1: API server answered {status}; reconnecting)",
                     "TrainJob/run-1: Created; Complete"]
    assert clock.sleeps == [2.0] and cluster.lists == [START, START + 3]
    assert [w["at"] for w in cluster.watches] == [START, START + 3]


def test_the_pause_is_the_time_left_when_under_two_seconds(make, clock):
    # the list refused twice: at 1.5 s left (a 1.5 s pause), then at 0 s left (none); then the timeout
    cluster = make(lists=[Refuse(429), Refuse(503)])
    outcome, lines = _wait(cluster, 1.5)
    assert clock.sleeps == [1.5, 0.0]
    assert _outcome(outcome) == ("timeout", "Timeout", "no end within 1.5 s; last seen: Created", [])
    assert lines == ["(TrainJob/run-1: API server answered 429; reconnecting)",
                     "(TrainJob/run-1: API server answered 503; reconnecting)", "TrainJob/run-1: Created"]


def test_the_pause_after_the_watch_is_refused_is_the_time_left_then(make, clock):
    cluster = make(Event("MODIFIED", after=8.75), Refuse(502))
    outcome, lines = _wait(cluster, 10)
    assert clock.sleeps == [1.25] and outcome.state == "timeout"
    assert len(cluster.lists) == 2


def test_no_pause_once_past_the_deadline(make, clock):
    # the watch refused after 1 s: the pause is the 0.5 s left before it; the next list, 1 s past the deadline
    cluster = make(Refuse(503, after=1), lists=[None, Refuse(500)])
    outcome, _ = _wait(cluster, 0.5)
    assert clock.sleeps == [0.5, 0.0] and outcome.state == "timeout" and len(cluster.lists) == 3


def test_a_dropped_connection_logs_pauses_and_relists(make, clock):
    cluster = make(Drop(ConnectionResetError("connection reset by peer"), after=1), SUCCEED)
    outcome, lines = _wait(cluster)
    assert outcome.ok
    assert lines == ["TrainJob/run-1: Created",
                     "(TrainJob/run-1: watch interrupted: connection reset by peer; reconnecting)",
                     "TrainJob/run-1: Created; Complete"]
    assert clock.sleeps == [2.0] and cluster.lists == [START, START + 3]


def test_a_dropped_connection_pauses_for_the_time_left_when_under_two_seconds(make, clock):
    cluster = make(Drop(TimeoutError("read timed out")))
    outcome, lines = _wait(cluster, 0.5)
    assert clock.sleeps == [0.5] and outcome.state == "timeout" and len(cluster.lists) == 2
    assert lines[1] == "(TrainJob/run-1: watch interrupted: read timed out; reconnecting)"


@pytest.mark.parametrize("status", [403, 404, 401])
def test_a_refusal_that_is_not_transient_ends_the_wait_with_the_servers_words(make, clock, status):
    from mathllava.k8s.errors import ClusterError

    cluster = make(Refuse(status))
    with pytest.raises(ClusterError) as raised:
        _wait(cluster)
    assert str(raised.value) == f"watching TrainJob/run-1: HTTP {status} Some Reason"
    assert raised.value.__suppress_context__ and clock.sleeps == [] and len(cluster.lists) == 1
    assert cluster.reporters[0].stop.is_set() and cluster.reporters[0].joins


def test_a_refused_list_carries_the_status_body(make, monkeypatch):
    from mathllava.k8s.errors import ClusterError

    cluster = make(kind="pytorchjob")
    refusal = api_exception(403, "Forbidden", {"message": 'pytorchjobs is forbidden: User "x" cannot watch',
                                              "reason": "Forbidden"})

    def refused(*args, **kwargs):
        raise refusal

    monkeypatch.setattr(cluster, "list_namespaced_custom_object", refused)
    with pytest.raises(ClusterError, match=r'^watching PyTorchJob/run-1 \(HTTP 403, Forbidden\): pytorchjobs is '
                                           r'forbidden: User "x" cannot watch$'):
        _wait(cluster)


def test_an_error_that_is_not_transient_propagates(make, clock):
    cluster = make(Drop(ValueError("not a watch event")))
    with pytest.raises(ValueError, match="not a watch event"):
        _wait(cluster)
    assert clock.sleeps == [] and len(cluster.lists) == 1 and cluster.reporters[0].stop.is_set()


# --- the helpers ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("error, transient", [
    (api_exception(0), True), (api_exception(429), True), (api_exception(500), True), (api_exception(503), True),
    (api_exception(1), False), (api_exception(428), False), (api_exception(430), False), (api_exception(499), False),
    (api_exception(410), False), (api_exception(404), False), (api_exception(403), False),
    (protocol_error(), True), (ConnectionResetError(), True), (TimeoutError(), True),
    (ValueError(), False), (KeyError("x"), False)])
def test_transient(error, transient):
    from mathllava.k8s.launcher import _transient

    assert _transient(error) is transient


def _c(ctype, status="True", **extra):
    return {"type": ctype, "status": status, **extra}


@pytest.mark.parametrize("job, expected", [
    ({}, ("running", "", "")),
    ({"status": None}, ("running", "", "")),
    ({"status": {}}, ("running", "", "")),
    ({"status": {"conditions": None}}, ("running", "", "")),
    ({"status": {"conditions": [_c("Created", reason="JobCreated")]}}, ("running", "", "")),
    ({"status": {"conditions": [_c("Complete", "False", reason="r")]}}, ("running", "", "")),
    ({"status": {"conditions": [{"type": "Complete"}]}}, ("running", "", "")),
    ({"status": {"conditions": [_c("Created"), _c("Complete", reason="JobSucceeded", message="done")]}},
     ("succeeded", "JobSucceeded", "done")),
    ({"status": {"conditions": [_c("Succeeded")]}}, ("succeeded", "", "")),
    ({"status": {"conditions": [_c("Failed")]}}, ("failed", "", "")),
    ({"status": {"conditions": [_c("Failed", reason="r", message="m"), _c("Complete", "False")]}},
     ("failed", "r", "m")),
    ({"status": {"conditions": [_c("Failed", reason="first"), _c("Complete", reason="latest")]}},
     ("succeeded", "latest", "")),
    ({"status": {"conditions": [_c("Complete", reason="first"), _c("Failed", message="latest")]}},
     ("failed", "", "latest")),
])
def test_state_of(job, expected):
    from mathllava.k8s.launcher import state_of

    assert state_of(job) == expected


@pytest.mark.parametrize("policy, deleted", [
    ("always", {"succeeded", "failed", "timeout"}), ("on-success", {"succeeded", "timeout"}), ("never", set()),
    ("", set()), ("Always", set())])
def test_should_delete(policy, deleted):
    from mathllava.k8s.launcher import Outcome, should_delete

    assert {s for s in ("succeeded", "failed", "timeout") if should_delete(policy, Outcome(s))} == deleted


def test_delete_removes_the_job_in_the_background_and_its_config_map(make):
    from mathllava.k8s.launcher import delete

    cluster = make()
    cluster.config_map = {"metadata": {"name": "run-1-config"}}
    delete(API, cluster.rendered)
    assert cluster.deletes == ["running"] and cluster.config_map_deletes == 1
    assert cluster.calls == ["delete_namespaced_custom_object", "delete_namespaced_config_map"]


def test_delete_of_what_is_already_gone_is_no_error(make):
    from mathllava.k8s.launcher import delete

    cluster = make()
    cluster.job = None     # both answer 404
    delete(API, cluster.rendered)
    assert cluster.deletes == [] and cluster.config_map_deletes == 0
    assert cluster.calls == ["delete_namespaced_custom_object", "delete_namespaced_config_map"]


def test_delete_refused_names_the_job_and_leaves_the_config_map(make):
    from mathllava.k8s.errors import ClusterError
    from mathllava.k8s.launcher import delete

    cluster = make(kind="pytorchjob")
    cluster.config_map = {}
    cluster.refuse["delete_namespaced_custom_object"] = 403
    with pytest.raises(ClusterError) as raised:
        delete(API, cluster.rendered)
    assert str(raised.value) == "deleting PyTorchJob/run-1: HTTP 403 Refused"
    assert raised.value.__suppress_context__ and cluster.config_map_deletes == 0


@pytest.mark.parametrize("status", [403, 500])
def test_delete_of_the_config_map_refused_raises_the_api_error(make, status):
    from kubernetes import client

    from mathllava.k8s.launcher import delete

    cluster = make()
    cluster.config_map = {}
    cluster.refuse["delete_namespaced_config_map"] = status
    with pytest.raises(client.ApiException) as raised:
        delete(API, cluster.rendered)
    assert raised.value.status == status and cluster.deletes == ["running"]


# --- run: submit, wait, clean up ----------------------------------------------------------------------------

ENDS = {"succeeded": SUCCEED, "failed": Event("MODIFIED", condition("Failed", "BackoffLimitExceeded")),
        "timeout": Quiet()}


@pytest.mark.parametrize("end", sorted(ENDS))
@pytest.mark.parametrize("cleanup", ["always", "on-success", "never"])
def test_run_deletes_after_the_end_per_policy(make, end, cleanup):
    from mathllava.k8s.launcher import run, should_delete

    cluster = make(ENDS[end])
    lines: list[str] = []
    outcome = run(API, cluster.rendered, 60, cleanup, log=lines.append)
    assert outcome.state == end
    deleted = should_delete(cleanup, outcome)
    assert deleted == (cleanup == "always" or (cleanup == "on-success" and end != "failed"))
    assert cluster.deletes == ([{"timeout": "running"}.get(end, end)] if deleted else [])
    assert cluster.config_map_deletes == int(deleted)
    assert lines[0] == "TrainJob/run-1 submitted in namespace ns"
    assert lines[1] == "TrainJob/run-1: Created"
    assert (lines[-1] == f"TrainJob/run-1 deleted (cleanup: {cleanup})") is deleted
    assert sum("deleted" in line for line in lines) == int(deleted)
    assert len(cluster.watches) == 1 and cluster.watches[0]["timeout_seconds"] == 60


@pytest.mark.parametrize("cleanup, deleted", [("always", True), ("on-success", True), ("never", False)])
@pytest.mark.parametrize("error", [KeyboardInterrupt(), Refuse(403)], ids=["interrupted", "refused"])
def test_run_cleans_up_when_the_wait_raises_unless_never(make, cleanup, deleted, error):
    from mathllava.k8s.errors import ClusterError
    from mathllava.k8s.launcher import run

    cluster = make(error if isinstance(error, Refuse) else Drop(error), kind="pytorchjob")
    lines: list[str] = []
    with pytest.raises(KeyboardInterrupt if isinstance(error, KeyboardInterrupt) else ClusterError):
        run(API, cluster.rendered, 60, cleanup, log=lines.append)
    assert cluster.deletes == (["running"] if deleted else [])
    assert cluster.config_map_deletes == int(deleted)
    assert lines == ["PyTorchJob/run-1 submitted in namespace ns", "PyTorchJob/run-1: Created"]


def test_run_that_is_refused_at_submit_waits_for_nothing(make):
    from mathllava.k8s.errors import ClusterError
    from mathllava.k8s.launcher import run

    cluster = make()
    cluster.refuse["create_namespaced_config_map"] = 403
    lines: list[str] = []
    with pytest.raises(ClusterError):
        run(API, cluster.rendered, 60, "always", log=lines.append)
    assert lines == [] and cluster.lists == [] and cluster.deletes == []
