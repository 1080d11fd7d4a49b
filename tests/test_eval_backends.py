"""Generation backends, `mathllava serve`, resumable runs and MLflow logging, on a tiny model built
in code and the real Math-V testmini problems."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import SHARED
from mathllava.evaluation.backends import HTTPStatusError, OpenAIChatBackend, Request, TransformersBackend
from mathllava.evaluation.benchmarks import get
from mathllava.evaluation.harness import RunMismatch, read_responses, run_benchmark

MATHV_DIR = SHARED / "math-v-testmini"
pytestmark = pytest.mark.skipif(not MATHV_DIR.exists(), reason="shared Math-V testmini not present")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from mathllava.train.tiny import TinyModelConfig, init_tiny

    problems = get("mathv").load(MATHV_DIR)
    cfg = TinyModelConfig(image_size=32, patch_size=16, vision_hidden=32, vision_layers=1, text_hidden=48,
                          text_layers=1, text_intermediate=96, vocab_size=400, seed=1)
    return init_tiny(tmp_path_factory.mktemp("tiny-model") / "tiny-llava", cfg,
                     [p["query"] for p in problems] + ["A B C D E 0 1 2 3"])


@pytest.fixture(scope="module")
def problems():
    return get("mathv").load(MATHV_DIR, limit=40)


@pytest.fixture(scope="module")
def server(model_dir):
    from mathllava.serve import BackgroundServer

    with BackgroundServer(model_dir, model_name="tiny") as srv:
        yield srv


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_local_and_http_backends_give_identical_predictions(model_dir, problems, server, tmp_path):
    benchmark = get("mathv")
    local = run_benchmark(benchmark, problems, TransformersBackend(model_dir, batch_size=8, max_new_tokens=8),
                          tmp_path / "local", progress=False)
    single = run_benchmark(benchmark, problems, TransformersBackend(model_dir, batch_size=1, max_new_tokens=8),
                           tmp_path / "single", progress=False)
    client = OpenAIChatBackend(server.url, "tiny", max_tokens=8, concurrency=4)
    remote = run_benchmark(benchmark, problems, client, tmp_path / "http", progress=False)
    keys = ("id", "response", "model_answer", "correct")
    by_local = [{k: line[k] for k in keys} for line in _lines(tmp_path / "local" / "predictions.jsonl")]
    assert by_local == [{k: line[k] for k in keys} for line in _lines(tmp_path / "http" / "predictions.jsonl")]
    assert by_local == [{k: line[k] for k in keys} for line in _lines(tmp_path / "single" / "predictions.jsonl")]
    assert local.scores == remote.scores == single.scores
    assert local.scores["-all"].startswith(f"{sum(line['correct'] for line in by_local)}/40=")
    assert client.retries_used == 0
    assert any(line["response"] for line in by_local)  # the model really generated text
    summary = json.loads((tmp_path / "http" / "summary.json").read_text())
    assert summary["generation"]["generated"] == 40 and summary["generation"]["problems_per_second"] > 0


def test_generation_follows_the_models_dtype_and_refuses_a_missing_gpu(model_dir, problems):
    """Inputs are cast to the model's dtype and moved to its device: a bf16 model answers the same
    requests (a float32 image into a bf16 vision tower would fail), and `cuda` without a GPU is a
    clear error, not a crash deep in torch."""
    import torch

    from mathllava import cli
    from mathllava.llava import resolve_device

    requests = [Request(p["query"], p["image_path"]) for p in problems[:6]] + [Request("What is 2 + 3?")]
    half = TransformersBackend(model_dir, batch_size=4, max_new_tokens=4, device="cpu", dtype=torch.bfloat16)
    assert half.model.dtype == torch.bfloat16
    seen = []
    generate = half.model.generate

    def spy(**inputs):
        seen.append({k: (v.device, v.dtype) for k, v in inputs.items() if isinstance(v, torch.Tensor)})
        return generate(**inputs)

    half.model.generate = spy
    replies = half.generate(requests)
    assert len(replies) == 7 and all(isinstance(r, str) for r in replies)
    assert len(seen) == 3  # two image batches, one text-only
    for inputs in seen:
        assert all(device == half.model.device for device, _ in inputs.values())
    assert [inputs["pixel_values"][1] for inputs in seen if "pixel_values" in inputs] == [torch.bfloat16] * 2
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no GPU is visible"):
            resolve_device("cuda")
        assert cli.main(["serve", str(model_dir), "--device", "cuda"]) == 2


class _StopAfter:
    """Wraps a real backend and raises KeyboardInterrupt after `n` replies (a Ctrl-C mid-run)."""

    def __init__(self, inner, n):
        self.inner, self.n, self.seen = inner, n, 0

    def describe(self):
        return self.inner.describe()

    def generate(self, requests, on_result=None):
        def forward(index, reply):
            on_result(index, reply)
            self.seen += 1
            if self.seen >= self.n:
                raise KeyboardInterrupt

        return self.inner.generate(requests, forward)


def test_interrupted_run_resumes_without_regenerating(model_dir, problems, tmp_path):
    benchmark = get("mathv")
    backend = TransformersBackend(model_dir, batch_size=4, max_new_tokens=8)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(benchmark, problems, _StopAfter(backend, 10), tmp_path / "run", chunk_size=8, progress=False)
    stored = read_responses(tmp_path / "run" / "responses.jsonl")
    assert len(stored) == 10
    with (tmp_path / "run" / "responses.jsonl").open("a") as f:
        f.write('{"pid": "99999", "respo')  # a line torn by a kill
    resumed = run_benchmark(benchmark, problems, backend, tmp_path / "run", chunk_size=8, progress=False)
    assert resumed.extra["generation"]["reused"] == 10
    assert resumed.extra["generation"]["generated"] == 30
    fresh = run_benchmark(benchmark, problems, backend, tmp_path / "fresh", progress=False)
    assert resumed.predictions == fresh.predictions
    # a different model or setting never mixes into the same folder
    other = TransformersBackend(model_dir, batch_size=4, max_new_tokens=5)
    with pytest.raises(RunMismatch):
        run_benchmark(benchmark, problems, other, tmp_path / "run", progress=False)


class _Flaky(BaseHTTPRequestHandler):
    failures_left = 2

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        if type(self).failures_left > 0:
            type(self).failures_left -= 1
            self.send_response(503)
            self.send_header("Retry-After", "0")
            self.end_headers()
            return
        body = json.dumps({"choices": [{"message": {"role": "assistant", "content": "42"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_http_client_retries_then_gives_up_or_fails_fast(server):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        client = OpenAIChatBackend(f"http://127.0.0.1:{httpd.server_port}/v1", "m", backoff=0.01, max_retries=3)
        assert client.generate([Request("q")]) == ["42"]
        assert client.retries_used == 2
    finally:
        httpd.shutdown()
    dead = OpenAIChatBackend(f"http://127.0.0.1:{httpd.server_port}/v1", "m", backoff=0.01, max_retries=2, timeout=2)
    with pytest.raises(RuntimeError, match="3 attempts"):
        dead.chat([{"role": "user", "content": "hi"}])
    wrong_model = OpenAIChatBackend(server.url, "not-served", backoff=0.01)
    with pytest.raises(HTTPStatusError) as err:
        wrong_model.chat([{"role": "user", "content": "hi"}])
    assert err.value.status == 404 and wrong_model.retries_used == 0  # client errors are not retried


def test_server_refuses_bad_requests(server):
    import requests

    url = f"{server.url}/chat/completions"

    def post(content, **extra):
        return requests.post(url, json={"model": "tiny", "messages": [{"role": "user", "content": content}], **extra},
                             timeout=30)

    remote = post([{"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}, {"type": "text", "text": "q"}])
    assert remote.status_code == 400 and "data:" in remote.json()["error"]["message"]
    corrupt = post([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAAbm90IGFuIGltYWdl"}}])
    assert corrupt.status_code == 400 and "decoded" in corrupt.json()["error"]["message"]
    assert post("q", max_tokens=0).status_code == 400
    no_user = requests.post(url, json={"messages": [{"role": "system", "content": "x"}]}, timeout=30)
    assert no_user.status_code == 400
    ok = post("What is 2 + 2?", max_tokens=4)
    assert ok.status_code == 200
    body = ok.json()
    assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] <= 4
    assert requests.get(f"{server.url}/models", timeout=10).json()["data"][0]["id"] == "tiny"


def test_llm_answer_extraction_through_an_openai_endpoint(server):
    from mathllava.evaluation import mathvista
    from mathllava.evaluation.llm_extract import ChatAnswerExtractor, build_prompt

    extractor = ChatAnswerExtractor(OpenAIChatBackend(server.url, "tiny", max_tokens=6))
    query = mathvista.build_query("How many dots?", "free_form", "integer")
    answer, method = mathvista.extract_answer("I count quite a few of them", "free_form", "integer", None, extractor, query)
    assert method == "llm" and extractor.calls == 1
    direct = OpenAIChatBackend(server.url, "tiny").chat(
        [{"role": "user", "content": build_prompt(query, "I count quite a few of them")}], max_tokens=extractor.max_tokens)
    assert answer == direct.strip()  # greedy and deterministic: the same prompt gives the same text
    prompt = build_prompt(query, "resp")
    assert prompt.count("Extracted answer:") == 6 and prompt.endswith("Model response: resp\n\nExtracted answer: ")
    # the quick rules come first: no LLM call when the response already is the answer
    assert mathvista.extract_answer("7", "free_form", "integer", None, extractor, query) == ("7", "rule")
    assert extractor.calls == 1
    broken = ChatAnswerExtractor(OpenAIChatBackend(server.url, "not-served"))
    assert mathvista.extract_answer("lots", "free_form", "integer", None, broken, query) == ("", "llm_error")


def test_results_logged_to_mlflow(model_dir, problems, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from mathllava.evaluation.harness import log_to_mlflow
    from mathllava.tracking import metric_name

    benchmark = get("mathv")
    judged = run_benchmark(benchmark, problems[:12], TransformersBackend(model_dir, max_new_tokens=4),
                           tmp_path / "out", progress=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("eval-test")
    with mlflow.start_run() as run:
        metrics = log_to_mlflow(benchmark, judged, tmp_path / "out")
    client = MlflowClient()
    logged = client.get_run(run.info.run_id).data.metrics
    assert logged["eval/mathv/accuracy"] == pytest.approx(judged.accuracy)
    subject = next(iter(judged.groups["subject"]))
    assert logged[metric_name("eval", "mathv", "subject", subject)] == pytest.approx(judged.groups["subject"][subject])
    assert set(metrics) <= set(logged)
    files = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation/mathv")}
    assert {"evaluation/mathv/accuracy_by_subject.png", "evaluation/mathv/accuracy_by_level.png",
            "evaluation/mathv/scores.json", "evaluation/mathv/predictions.jsonl"} <= files


def test_mathvista_run_from_testmini_json_with_images(model_dir, tmp_path):
    """MathVista loader (testmini.json + images folder) through the harness: the predictions file
    has the benchmark's per-pid layout and the scores its breakdowns."""
    from PIL import Image

    testmini = SHARED / "mathvista-testmini" / "testmini.json"
    if not testmini.exists():
        pytest.skip("shared MathVista annotations not present")
    benchmark = get("mathvista")
    with pytest.raises(FileNotFoundError, match="images.zip"):
        benchmark.load(testmini, limit=3)  # the images are not shipped with the annotations
    pids = list(json.loads(testmini.read_text()))[:6]
    (tmp_path / "images").mkdir()
    for pid in pids:  # stand-in pictures at the benchmark's own paths
        Image.new("RGB", (64, 48), (int(pid) * 30 % 255, 90, 160)).save(tmp_path / "images" / f"{pid}.jpg")
    problems = benchmark.load(testmini, limit=6, images_dir=tmp_path)
    assert [p["pid"] for p in problems] == pids and all(p["query"].startswith("Hint:") for p in problems)
    judged = run_benchmark(benchmark, problems, TransformersBackend(model_dir, max_new_tokens=6), tmp_path / "run",
                           progress=False)
    predictions = json.loads((tmp_path / "run" / "predictions.json").read_text())
    assert list(predictions) == pids
    assert {"query", "response", "extraction", "prediction", "true_false", "answer", "metadata"} <= set(predictions[pids[0]])
    scores = json.loads((tmp_path / "run" / "scores.json").read_text())
    assert scores["average"]["total"] == 6 and {"task", "skills", "source"} <= set(scores)
    assert judged.accuracy == float(scores["average"]["accuracy"])
    assert sum(judged.extra["extraction_methods"].values()) == 6


def test_metric_names_are_sections_joined_by_slashes():
    from mathllava.tracking import metric_name

    assert metric_name("eval", "mathv", "subject", "solid geometry") == "eval/mathv/subject/solid geometry"
    assert metric_name("data", "a/b:c") == "data/a_b_c"   # a part never opens a section of its own
    assert metric_name("", "train", "loss") == "train/loss"
