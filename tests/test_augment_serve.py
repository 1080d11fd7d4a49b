"""Every model generator against a real OpenAI-compatible server on 127.0.0.1: `mathllava serve` with a
tiny model built in code. Its replies are untrained text, so the client, the cache and the strict
parser are what is exercised: every reply is counted as malformed, none half-parsed. The local
generator (the same checkpoint through the one generation path) gives the same replies, and the
consistency judge can be a second model behind its own endpoint."""

import json

import pytest

from augment_helpers import GENERATION_REQUESTS, JUDGE_REQUESTS, ScriptedServer, image_names, manifest, settings
from mathllava.augment import AugmentSettings, augment, prompts
from mathllava.settings import parse


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from mathllava.train.tiny import TinyModelConfig, init_tiny

    cfg = TinyModelConfig(image_size=32, patch_size=16, vision_hidden=32, vision_layers=1, text_hidden=48,
                          text_layers=1, text_intermediate=96, vocab_size=400, seed=1)
    seed = {"question": "What is x?", "choices": None, "answer": "1"}
    texts = [prompts.askimg(2, []), *(build(1, seed) for build in prompts.PROMPTS.values()), '{"questions": []}']
    return init_tiny(tmp_path_factory.mktemp("tiny-model") / "tiny-llava", cfg, texts)


@pytest.fixture(scope="module")
def serve(tiny):
    from mathllava.serve import BackgroundServer

    with BackgroundServer(tiny, model_name="tiny", device="cpu") as srv:
        yield srv


@pytest.fixture
def source(tmp_path):
    return manifest(tmp_path / "mysrc"), image_names(tmp_path / "mysrc")


PER_SEED = {"askimg": 2, "compq": 1, "rephq": 1, "simpq": 1}


def _replies(cache_dir) -> dict:
    entries = [json.loads(p.read_text()) for p in cache_dir.rglob("*.json")]
    return {(e["image"], e["prompt"]): e["reply"] for e in entries}


def _all_malformed(report):
    assert report["kept"] == 0 and report["dropped"] == {"malformed_reply": GENERATION_REQUESTS}
    assert sum(report["malformed"].values()) == GENERATION_REQUESTS
    assert {k.split(":")[1] for k in report["malformed"]} <= {"empty", "not_json", "bad_schema"}


def test_endpoint_and_local_generators_on_mathllava_serve(source, serve, tiny, tmp_path):
    rows, _ = source
    endpoint = {"generator": "endpoint", "per_seed": PER_SEED, "progress": False, "concurrency": 4,
                "endpoint": {"base_url": serve.url, "model": "tiny", "max_tokens": 12, "temperature": 0.0},
                "cache_dir": str(tmp_path / "endpoint")}
    curated, report = augment(rows, parse(AugmentSettings, endpoint, "parameters.augment"))
    assert report["generator"] == f"endpoint:tiny@127.0.0.1:{serve.port}"
    assert report["requests"] == GENERATION_REQUESTS and report["failed_requests"] == 0 and report["retries"] == 0
    assert report["requests_by_kind"] == {"askimg": 3, "compq": 3, "rephq": 3, "simpq": 3}   # no pair to judge
    assert report["completion_tokens"] > 0 and report["prompt_tokens"] > 0         # the server's usage
    _all_malformed(report)
    assert list(curated["id"]) == list(rows["id"])                                  # nothing half-parsed
    served = _replies(tmp_path / "endpoint")
    assert len(served) == GENERATION_REQUESTS and any(served.values())               # the model really answered

    local = {**endpoint, "generator": "local", "endpoint": None, "cache_dir": str(tmp_path / "local"),
             "local": {"model_dir": str(tiny), "device": "cpu", "max_tokens": 12}}
    _, local_report = augment(rows, parse(AugmentSettings, local, "parameters.augment"))
    assert local_report["generator"].startswith("local:tiny-llava:")
    assert local_report["requests"] == GENERATION_REQUESTS and local_report["completion_tokens"] > 0
    _all_malformed(local_report)
    assert _replies(tmp_path / "local") == served        # one generation path: the same replies over HTTP or not


def test_a_second_model_judges_the_pairs(source, serve, tmp_path):
    """Pairs from the scripted generator, judged by the tiny model behind `mathllava serve`."""
    rows, names = source
    with ScriptedServer(names) as generator:
        cfg = settings(generator.url, tmp_path / "cache", filters={"consistency": {
            "judge": "endpoint", "max_tokens": 8, "endpoint": {"base_url": serve.url, "model": "tiny"}}})
        curated, report = augment(rows, parse(AugmentSettings, cfg, "parameters.augment"))
        assert len(generator.received) == GENERATION_REQUESTS                   # the judge is asked elsewhere
    assert report["judge"] == f"endpoint:tiny@127.0.0.1:{serve.port}"
    assert report["requests_by_kind"]["judge"] == JUDGE_REQUESTS
    assert report["kept"] + report["dropped"]["inconsistent"] == JUDGE_REQUESTS
    judged = [json.loads(p.read_text()) for p in (tmp_path / "cache").rglob("*.json")]
    assert sum(e["kind"] == "judge" and e["generator"] == report["judge"] for e in judged) == JUDGE_REQUESTS
    assert len(curated) == 3 + report["kept"]
