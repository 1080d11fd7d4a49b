"""The vLLM serving manifests are valid Kubernetes objects, the chat template builds the same prompt
as the local backend, and the evaluation job's config is accepted by `mathllava eval run`."""

import pytest
import yaml

from conftest import ROOT

VLLM = ROOT / "infra" / "vllm"


def _documents():
    for path in sorted(VLLM.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.name, doc


@pytest.mark.parametrize("version", ["1.30.0", "1.33.0"])
def test_manifests_validate_against_kubernetes_schemas(version):
    import kubernetes_validate

    kinds = []
    for name, doc in _documents():
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any schema error
        kinds.append(doc["kind"])
    assert {"Deployment", "Service", "PersistentVolumeClaim", "ConfigMap", "Job", "Namespace"} <= set(kinds)


def test_kustomization_lists_every_manifest():
    listed = set(yaml.safe_load((VLLM / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in VLLM.glob("*.yaml")} - {"kustomization.yaml"}


def test_deployment_requests_a_gpu_and_serves_the_template():
    deployment = next(doc for _, doc in _documents() if doc["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    args = dict(a.lstrip("-").split("=", 1) for a in container["args"])
    assert args["chat-template"].startswith("/templates/")
    service = next(doc for _, doc in _documents() if doc["kind"] == "Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_chat_template_matches_the_local_prompt():
    import jinja2

    from mathllava.conversation import prompt, render
    from mathllava.train.tiny import TinyModelConfig, build_processor, train_tokenizer

    processor = build_processor(train_tokenizer(["How many?"], 300), TinyModelConfig())

    config_map = next(doc for name, doc in _documents() if name == "chat-template.yaml")
    template = jinja2.Environment().from_string(config_map["data"]["llava-vicuna.jinja"])
    query = "Hint: Please answer the question.\nQuestion: How many?"
    with_image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}},
                                               {"type": "text", "text": query}]}]
    assert template.render(messages=with_image, add_generation_prompt=True) == prompt(processor, query)
    text_only = [{"role": "user", "content": query}]
    assert template.render(messages=text_only, add_generation_prompt=True) == prompt(processor, query, False)
    conversation = [*with_image, {"role": "assistant", "content": "12"}, {"role": "user", "content": "And then?"},
                    {"role": "assistant", "content": "B"}]
    assert template.render(messages=conversation) == render(processor, conversation, add_generation_prompt=False)
    assert render(processor, conversation, False).endswith("ASSISTANT: 12</s>USER: And then? ASSISTANT: B</s>")


def test_eval_job_config_is_accepted_by_the_cli(tmp_path):
    import argparse

    from mathllava import cli

    config_map = next(doc for name, doc in _documents() if doc["kind"] == "ConfigMap" and name == "eval-job.yaml")
    path = tmp_path / "eval.yaml"
    path.write_text(config_map["data"]["eval.yaml"])
    args = argparse.Namespace(config=str(path), **{k: None for k in list(cli.RUN_DEFAULTS) + ["benchmark", "data", "out"]})
    settings = cli._run_settings(args)
    assert settings["endpoint"].endswith("/v1") and settings["benchmark"] == "mathv"
    assert settings["model"] == "math-llava" and settings["temperature"] == 0.0
