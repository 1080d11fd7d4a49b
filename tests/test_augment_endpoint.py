"""The model generators end to end over HTTP: a MathV360K-format source (real image files) augmented
through a scripted OpenAI-compatible server on 127.0.0.1 that answers with the recorded replies and
counts requests. Kept pairs and drops by reason, the reply cache, retries, the budget, the API key,
the LLaVA export with provenance, and a crash drill (SIGKILL mid-run, then a rerun)."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pandas as pd
import pytest

from augment_helpers import (EXPECTED_DROPPED, EXPECTED_KEPT, GENERATION_REQUESTS, JUDGE_REQUESTS, ScriptedServer,
                             image_names, manifest, settings)
from conftest import ROOT
from mathllava.augment import AugmentSettings, augment
from mathllava.augment.cache import ReplyCache
from mathllava.augment.clients import FatalEndpointError
from mathllava.formats import export_llava
from mathllava.settings import parse

TOTAL = GENERATION_REQUESTS + JUDGE_REQUESTS


@pytest.fixture
def source(tmp_path):
    rows = manifest(tmp_path / "mysrc")
    return rows, image_names(tmp_path / "mysrc")


def run(rows, cfg):
    return augment(rows, parse(AugmentSettings, cfg, "parameters.augment"))


def test_endpoint_augments_a_mathv360k_source_and_exports_provenance(source, tmp_path):
    rows, names = source
    with ScriptedServer(names) as server:
        curated, report = run(rows, settings(server.url, tmp_path / "cache"))
        assert len(server.received) == len(set(server.received)) == TOTAL
    new = curated[curated["aug_type"] != "original"]
    assert dict(Counter(new["aug_type"])) == EXPECTED_KEPT
    assert report["dropped"] == EXPECTED_DROPPED
    assert report["malformed"] == {"simpq:not_json": 1, "compq:bad_schema": 1, "askimg:empty": 1}
    assert report["requests"] == TOTAL and report["cache_hits"] == 0 and report["failed_requests"] == 0
    assert report["requests_by_kind"] == {"askimg": 3, "compq": 3, "rephq": 3, "simpq": 3, "judge": JUDGE_REQUESTS}
    assert report["tokens"] == TOTAL * 120 and report["kept"] == 7 and report["kept_ratio"] == round(7 / 18, 4)
    identity = f"endpoint:scripted@127.0.0.1:{server.httpd.server_port}"
    assert report["generator"] == report["judge"] == identity
    assert set(new["generator"]) == {identity} and curated.loc[:2, "generator"].isna().all()
    assert curated["id"].is_unique and list(curated["id"][:3]) == list(rows["id"])
    by_q = new.set_index("question")
    mc = by_q.loc["Which side is the longest?"]            # the option letter became the option's text
    assert (mc["answer"], json.loads(mc["choices"]), mc["question_type"]) == ("BC", ["AB", "BC", "CA"], "multi_choice")
    assert (by_q.loc["What is the value of the second bar?", "answer"],
            by_q.loc["What is the value of the second bar?", "precision"]) == ("3.50", 2)
    reph = by_q.loc["What value does the tallest bar show?"]
    assert (reph["answer"], reph["parent_id"], reph["aug_type"]) == ("7", "mysrc-bar", "rephrased")
    assert by_q.loc["How many circles?", "parent_id"] == "mysrc-count"
    # the curated rows export as LLaVA conversation records carrying their provenance
    records = json.loads(export_llava(curated.to_dict("records"), tmp_path / "export").read_text())
    assert len(records) == len(curated)
    harder = next(r for r in records if r["metadata"].get("aug_type") == "harder" and "removed" in r["metadata"]["question"])
    assert harder["metadata"]["parent_id"] == "mysrc-count" and harder["metadata"]["generator"] == identity
    assert harder["conversations"][1]["value"] == "2"
    mc_record = next(r for r in records if r["metadata"]["question"] == "Which side is the longest?")
    assert mc_record["conversations"][1]["value"] == "B" and "(B) BC" in mc_record["conversations"][0]["value"]
    assert "generator" not in next(r for r in records if r["id"] == "mysrc-bar")["metadata"]  # a seed


def test_a_rerun_asks_nothing_and_gives_the_same_rows(source, tmp_path):
    rows, names = source
    with ScriptedServer(names) as server:
        first, _ = run(rows, settings(server.url, tmp_path / "cache"))
        asked = len(server.received)
        second, report = run(rows, settings(server.url, tmp_path / "cache"))
        assert len(server.received) == asked == TOTAL              # zero requests the second time
    assert report["requests"] == 0 and report["cache_hits"] == TOTAL
    pd.testing.assert_frame_equal(first, second)
    assert len(ReplyCache(tmp_path / "cache")) == TOTAL


def test_retries_on_429_and_5xx_and_the_key_comes_from_the_environment(source, tmp_path, monkeypatch):
    rows, names = source
    monkeypatch.setenv("AUG_TEST_KEY", "sk-scripted")
    with ScriptedServer(names, api_key="sk-scripted") as server:
        server.failures = [429, 500, 503, 502]
        cfg = settings(server.url, tmp_path / "cache", endpoint={"api_key_env": "AUG_TEST_KEY"}, max_retries=2)
        curated, report = run(rows, cfg)
        assert set(server.auth) == {"Bearer sk-scripted"}           # the key, from the environment, as Bearer
        assert len(server.received) == TOTAL + 4 and len(set(server.answered)) == TOTAL
    assert report["retries"] == 4 and report["failed_requests"] == 0
    assert dict(Counter(curated["aug_type"])) == {"original": 3, **EXPECTED_KEPT}
    assert "sk-scripted" not in json.dumps(report) + "".join(p.read_text() for p in (tmp_path / "cache").rglob("*.json"))


def test_a_request_out_of_retries_is_counted_and_asked_again_next_run(source, tmp_path):
    rows, names = source
    with ScriptedServer(names) as server:
        server.failures = [500, 500]                              # one request: two attempts, both 500
        cfg = settings(server.url, tmp_path / "cache", max_retries=1, concurrency=1, filters={"consistency": {"enabled": False}})
        _, report = run(rows, cfg)
        assert report["failed_requests"] == 1 and report["requests"] == GENERATION_REQUESTS
        assert "HTTP 500" in report["errors"][0] or "500" in report["errors"][0]
        _, again = run(rows, cfg)
    assert again["requests"] == 1 and again["cache_hits"] == GENERATION_REQUESTS - 1 and again["failed_requests"] == 0


def test_a_wrong_key_stops_the_run_naming_the_endpoint(source, tmp_path, monkeypatch):
    rows, names = source
    monkeypatch.setenv("AUG_TEST_KEY", "sk-wrong")
    with ScriptedServer(names, api_key="sk-scripted") as server:
        with pytest.raises(FatalEndpointError, match=r"parameters.augment.endpoint .*HTTP 401"):
            run(rows, settings(server.url, tmp_path / "cache", endpoint={"api_key_env": "AUG_TEST_KEY"}))
    monkeypatch.delenv("AUG_TEST_KEY")
    with pytest.raises(ValueError, match=r"parameters.augment.endpoint.api_key_env: .*AUG_TEST_KEY is not set"):
        run(rows, settings("http://127.0.0.1:9/v1", tmp_path / "cache", endpoint={"api_key_env": "AUG_TEST_KEY"}))


def test_the_budget_stops_cleanly_keeping_what_was_done(source, tmp_path):
    rows, names = source
    with ScriptedServer(names) as server:
        cfg = settings(server.url, tmp_path / "cache", max_requests=5, concurrency=2)
        partial, report = run(rows, cfg)
        assert len(server.received) == 5
        assert report["stopped_by"] == "max_requests" and report["requests"] == 5
        # the 5 answered replies are kept in the cache; unasked generations are skipped, and the
        # pairs whose consistency check could not be asked are counted as unchecked, not kept
        assert report["skipped_budget"] == GENERATION_REQUESTS - 5 + report["dropped"].get("unchecked", 0)
        assert len(partial) == 3 + report["kept"] and len(ReplyCache(tmp_path / "cache")) == 5
        full, rest = run(rows, {**cfg, "max_requests": None})     # a rerun without the cap finishes the job
        assert rest["cache_hits"] == 5 and rest["requests"] == TOTAL - 5
        assert len(set(server.received)) == len(server.received) == TOTAL
        by_tokens = settings(server.url, tmp_path / "cache2", max_tokens=600, concurrency=1)
        _, tokens = run(rows, by_tokens)                          # 120 tokens a reply: 5 requests reach 600
        assert tokens["stopped_by"] == "max_tokens" and tokens["requests"] == 5 and tokens["tokens"] == 600
    assert dict(Counter(full["aug_type"])) == {"original": 3, **EXPECTED_KEPT}


DRIVER = """
import json, sys
import pandas as pd
from mathllava.augment import AugmentSettings, augment
rows = pd.read_pickle(sys.argv[1])
curated, report = augment(rows, AugmentSettings.model_validate(json.loads(open(sys.argv[2]).read())))
open(sys.argv[3], "w").write(json.dumps({"report": report, "kept": curated["aug_type"].value_counts().to_dict()}))
"""


@pytest.mark.slow
def test_crash_drill_no_request_is_asked_twice(source, tmp_path):
    """Kill the augmentation (SIGKILL) while requests are in flight, rerun it: every reply the server
    gave is asked for once over both runs. Only the requests in flight at the kill, whose replies
    never arrived, are sent again."""
    rows, names = source
    rows.to_pickle(tmp_path / "rows.pkl")
    (tmp_path / "driver.py").write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    with ScriptedServer(names) as server:
        (tmp_path / "cfg.json").write_text(json.dumps(settings(server.url, str(tmp_path / "cache"), concurrency=3)))
        args = [sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "rows.pkl"), str(tmp_path / "cfg.json"),
                str(tmp_path / "out.json")]
        server.hold_after = 7                      # from the 8th request on, the server keeps them waiting
        proc = subprocess.Popen(args, env=env)
        cache = tmp_path / "cache"
        hang_guard = time.monotonic() + 1800   # waits for events; the bound only turns a hang into a failure
        while not (len(server.answered) == 7 and server.held == 3 and len(list(cache.rglob("*.json"))) == 7):
            assert proc.poll() is None and time.monotonic() < hang_guard, "the run did not reach the held requests"
            time.sleep(0.05)
        in_flight = server.held                    # one per worker (concurrency 3)
        os.kill(proc.pid, signal.SIGKILL)          # mid-run: 7 replies stored, `in_flight` requests waiting
        proc.wait()
        assert not (tmp_path / "out.json").exists()
        server.abandon = True
        server.release()                           # the waiting requests are dropped unanswered
        while server.dropped < in_flight:          # every held handler has woken and dropped its request
            assert time.monotonic() < hang_guard, "the held requests were never dropped"
            time.sleep(0.05)
        server.hold_after, server.abandon = None, False
        subprocess.run(args, env=env, check=True, timeout=300)
        received, answered = Counter(server.received), Counter(server.answered)
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["report"]["cache_hits"] == 7 and out["report"]["requests"] == TOTAL - 7
    assert len(answered) == TOTAL and set(answered.values()) == {1}       # no reply was ever asked for twice
    assert all(json.loads(p.read_text())["reply"] is not None for p in cache.rglob("*.json"))   # none torn
    repeated = [k for k, n in received.items() if n > 1]
    assert len(repeated) == in_flight == 3 and all(received[k] == 2 for k in repeated)
    assert {k: v for k, v in out["kept"].items() if k != "original"} == EXPECTED_KEPT


@pytest.mark.slow
def test_the_pipeline_step_takes_the_endpoint_from_the_config(source, tmp_path):
    """`parameters.augment` of a run config, checked by run.py before any step runs, then the
    pipeline's augment step (its function, without an orchestrator) on a MathV360K-format source."""
    from pathlib import Path

    import mlflow
    import yaml
    from mlflow.tracking import MlflowClient

    import run as run_py
    from steps.augment import augment_questions

    rows, names = source
    config = yaml.safe_load((ROOT / "configs" / "test.yaml").read_text())
    path = tmp_path / "run.yaml"
    with ScriptedServer(names) as server:
        config["parameters"]["augment"] = {**settings(server.url, tmp_path / "cache"), "cache_dir": None}
        config["parameters"]["augment"]["endpoint"]["api_key"] = "sk-literal"
        path.write_text(yaml.safe_dump(config))
        with pytest.raises(SystemExit, match=r"run.yaml: augment.endpoint: .*literal `api_key`"):
            run_py.check_config(str(path))
        del config["parameters"]["augment"]["endpoint"]["api_key"]
        path.write_text(yaml.safe_dump(config))
        run_py.check_config(str(path))
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
        mlflow.set_experiment("augment-test")
        try:
            with mlflow.start_run() as mlrun:
                curated = augment_questions.entrypoint(
                    selection=rows, augment_cfg=AugmentSettings.model_validate(config["parameters"]["augment"]))
            logged = MlflowClient().get_run(mlrun.info.run_id).data.metrics
            report = json.loads(Path(MlflowClient().download_artifacts(mlrun.info.run_id, "augment/report.json",
                                                                       str(tmp_path))).read_text())
        finally:
            mlflow.set_tracking_uri("")
    assert {k: logged[f"augment/kept/{k}"] for k in EXPECTED_KEPT} == EXPECTED_KEPT
    assert {k: logged[f"augment/dropped/{k}"] for k in EXPECTED_DROPPED} == EXPECTED_DROPPED
    assert logged["augment/requests"] == TOTAL and logged["data/curated_rows"] == 10
    assert report["dropped"] == EXPECTED_DROPPED and report["kept"] == 7
    assert dict(Counter(curated["aug_type"])) == {"original": 3, **EXPECTED_KEPT}
    assert set(curated["generator"].dropna()) == {f"endpoint:scripted@127.0.0.1:{server.httpd.server_port}"}
    from mathllava.state import state_home

    assert len(ReplyCache(state_home() / "cache" / "augment")) >= TOTAL     # the state folder's reply cache
