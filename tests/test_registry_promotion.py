"""Promotion through stages on a real MLflow server and registry: the comparison rule, alias moves
(challenger -> champion -> previous-champion), refusals, rollback, the audit trail, a change made
during a comparison, two concurrent `mathllava registry promote` processes, and the evaluator that
scores both versions on the same sets."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import free_port, unique_name

from mathllava.registry.promotion import (CHALLENGER, CHAMPION, PREVIOUS, Decision, PromotionConflict, compare,
                                          history, promote, show)


@pytest.fixture(scope="module")
def server(mlflow_server):
    return mlflow_server


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from mathllava.train.tiny import TinyModelConfig, init_tiny

    root = tmp_path_factory.mktemp("models")
    shape = dict(image_size=32, patch_size=16, vision_hidden=32, vision_layers=1, text_hidden=64, text_layers=1,
                 text_intermediate=128, vocab_size=400)
    return [init_tiny(root / f"m{seed}", TinyModelConfig(**shape, seed=seed), ["What is 1 + 2? Answer: 3"])
            for seed in (0, 1)]


EXPERIMENT = unique_name("promotion-tests")


def _register(uri, name, model_dir, challenger=True) -> str:
    import mlflow
    from mlflow.tracking import MlflowClient

    from mathllava.registry.versions import register_model_dir

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run():
        version, _ = register_model_dir(str(model_dir), name, {"heldout_accuracy": 1.0})
    if challenger:
        MlflowClient(uri).set_registered_model_alias(name, CHALLENGER, version)
    return version


def _aliases(uri, name):
    return {v.version: sorted(v.aliases) for v in show(name, uri) if v.aliases}


def scripted(scores):
    """Stands in for the model evaluation: known scores per version, so the test can say who wins."""
    def evaluate(client, name, versions):
        return {v: scores[v] for v in versions}
    return evaluate


def test_the_gate_needs_both_baselines_beaten_by_their_margins():
    from mathllava.registry.versions import gate

    assert gate(30.0, 20.0, 10.0).passed
    assert not gate(20.0, 20.0, 10.0).passed                                  # a tie with the frequent answer
    assert not gate(30.0, 20.0, 29.5, min_margin_over_base=1.0).passed         # base within the margin
    assert not gate(30.0, 25.0, 10.0, min_margin_over_frequent=5.0).passed
    assert gate(30.0, 25.0, 10.0, min_margin_over_frequent=4.9, min_margin_over_base=19.9).passed
    result = gate(5.0, 14.0, 1.0, min_margin_over_frequent=-100.0, min_margin_over_base=-100.0)
    assert result.passed and result.reasons[0] == "model 5.00 > frequent-answer 14.00 + -100.00"


def test_compare_applies_each_margin_strictly():
    assert compare({"mathv": 20.0}, None, {"mathv": 0.0}).promote
    win = compare({"mathv": 21.0, "heldout": 30.0}, {"mathv": 20.0, "heldout": 30.0}, {"mathv": 0.5, "heldout": -1.0})
    assert win.promote and win.scores["mathv"] == {"challenger": 21.0, "champion": 20.0}
    assert not compare({"mathv": 20.4}, {"mathv": 20.0}, {"mathv": 0.5}).promote           # under the margin
    tie = compare({"mathv": 20.0}, {"mathv": 20.0}, {"mathv": 0.0})
    assert not tie.promote and tie.reasons == ["mathv: challenger 20.00 <= champion 20.00 + margin 0.00"]
    assert compare({"mathv": 25.0, "heldout": 10.0}, {"mathv": 20.0, "heldout": 12.0},
                   {"mathv": 0.0, "heldout": -1.0}).promote is False                        # heldout fell 2 > 1
    missing = compare({"mathv": 25.0}, {"mathv": 20.0, "heldout": 1.0}, {"heldout": 0.0})
    assert not missing.promote and "heldout was not scored for both" in missing.reasons[0]


def test_promote_refuse_rollback_and_history(server, tiny_models, tmp_path, capsys):
    from mathllava.cli import main

    name, lock = unique_name("promo-flow"), tmp_path / "lock"
    v1 = _register(server, name, tiny_models[0])
    decision, _ = promote(name, scripted({v1: {"mathv": 10.0}}), {"mathv": 0.0}, lock, server)
    assert decision.promote and _aliases(server, name) == {v1: [CHAMPION]}

    v2 = _register(server, name, tiny_models[1])
    decision, entry = promote(name, scripted({v1: {"mathv": 10.0}, v2: {"mathv": 12.5}}), {"mathv": 1.0}, lock,
                              server, reason="nightly")
    assert decision.promote and entry["scores"] == {"mathv": {"challenger": 12.5, "champion": 10.0}}
    assert _aliases(server, name) == {v1: [PREVIOUS], v2: [CHAMPION]}

    v3 = _register(server, name, tiny_models[0])
    decision, entry = promote(name, scripted({v2: {"mathv": 12.5}, v3: {"mathv": 12.9}}), {"mathv": 1.0}, lock, server)
    assert not decision.promote and entry["event"] == "promotion-refused"
    assert _aliases(server, name) == {v1: [PREVIOUS], v2: [CHAMPION], v3: [CHALLENGER]}  # nothing moved

    assert main(["registry", "rollback", name, "--reason", "v2 regressed on MathVista", "--tracking-uri", server]) == 0
    assert _aliases(server, name) == {v1: [CHAMPION], v3: [CHALLENGER]}
    assert main(["registry", "rollback", name, "--reason", "again", "--tracking-uri", server]) == 2
    assert "no 'previous-champion' to roll back to" in capsys.readouterr().err

    assert main(["registry", "history", name, "--tracking-uri", server]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # one line per decision, on the version it was about, with every moved version's new stage
    assert [(e["event"], e["version"]) for e in events] == [
        ("promote", v1), ("promote", v2), ("promotion-refused", v3), ("rollback", v1)]
    assert [e["stages"] for e in events] == [{v1: "production"}, {v1: "archived", v2: "production"},
                                             {v3: "staging"}, {v1: "production", v2: "archived"}]
    assert events[1]["reason"] == "nightly" and events[1]["stage"] == "production"
    assert events[3]["reason"] == "v2 regressed on MathVista" and all(e["actor"] for e in events)

    assert main(["registry", "show", name, "--tracking-uri", server]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    # show agrees with history: v2, rolled back from, is archived (it holds no alias any more)
    assert [(r[0], r[1], r[2]) for r in rows] == [(f"v{v1}", "production", CHAMPION), (f"v{v2}", "archived", "-"),
                                                   (f"v{v3}", "staging", CHALLENGER)]


def test_a_change_during_the_comparison_moves_nothing(server, tiny_models, tmp_path):
    from mlflow.tracking import MlflowClient

    name = unique_name("promo-race")
    v1 = _register(server, name, tiny_models[0])
    promote(name, scripted({v1: {"mathv": 10.0}}), {"mathv": 0.0}, tmp_path / "lock", server)
    v2 = _register(server, name, tiny_models[1])
    v3 = _register(server, name, tiny_models[0], challenger=False)

    def evaluate_while_someone_else_promotes(client, model, versions):
        MlflowClient(server).set_registered_model_alias(name, CHAMPION, v3)   # a concurrent promotion lands
        return {v1: {"mathv": 10.0}, v2: {"mathv": 50.0}}

    with pytest.raises(PromotionConflict, match=rf"champion v{v1} -> v{v3}"):
        promote(name, evaluate_while_someone_else_promotes, {"mathv": 0.0}, tmp_path / "lock", server)
    assert _aliases(server, name) == {v2: [CHALLENGER], v3: [CHAMPION]}


def test_the_evaluator_scores_every_version_on_the_same_sets(server, tiny_models, tmp_path):
    from mlflow.tracking import MlflowClient

    from mathllava.registry.evaluate import scorer
    from mathllava.evaluation.settings import EvalSettings
    from mathllava.data.synthetic import GeneratorConfig, generate

    heldout = generate(tmp_path / "heldout", GeneratorConfig(n_images=6, seed=5, image_size=64, unclear_fraction=0.0))
    name = unique_name("promo-eval")
    versions = [_register(server, name, m) for m in tiny_models]
    evaluate = scorer(EvalSettings(math_v_dir=None, heldout_annotations=str(heldout), max_new_tokens=4), server)
    scores = evaluate(MlflowClient(server), name, versions)
    assert evaluate.sets == {"heldout": 6}
    assert set(scores) == set(versions) and all(set(s) == {"heldout"} for s in scores.values())
    assert all(0.0 <= s["heldout"] <= 100.0 for s in scores.values())


@pytest.mark.slow
def test_two_concurrent_promotions_leave_one_consistent_result(server, tiny_models, tmp_path):
    from mathllava.data.synthetic import GeneratorConfig, generate

    name = unique_name("promo-concurrent")
    v1 = _register(server, name, tiny_models[0])
    promote(name, scripted({v1: {"heldout": 0.0}}), {"heldout": 0.0}, tmp_path / "lock", server)
    v2 = _register(server, name, tiny_models[1])
    heldout = generate(tmp_path / "heldout", GeneratorConfig(n_images=4, seed=9, image_size=64, unclear_fraction=0.0))
    config = tmp_path / "run.yaml"
    # a margin of -100 lets the challenger win whatever two untrained models score, so both processes
    # want to promote v2 over v1: only one may
    config.write_text(yaml.safe_dump({"parameters": {"register": {"promotion": {
        "margins": {"heldout": -100.0}, "eval": {"math_v_dir": None, "heldout_annotations": str(heldout),
                                                  "max_new_tokens": 2}}}}}))
    env = {**os.environ, "MATHLLAVA_HOME": str(tmp_path / "home"), "MLFLOW_TRACKING_URI": server}
    command = [sys.executable, "-m", "mathllava.cli", "registry", "promote", name, "--config", str(config)]
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    errors = " ".join(err for _, _, err in results)
    assert codes[0] == 0 and codes[1] in (2, 3), results
    assert "the registry changed during the comparison" in errors or "has no 'challenger' version" in errors
    assert _aliases(server, name) == {v1: [PREVIOUS], v2: [CHAMPION]}
    promotions = [e for e in history(name, server) if e["event"] == "promote" and e["version"] == v2]
    assert len(promotions) == 1


def test_a_champion_that_was_not_scored_is_never_skipped(server, tiny_models, tmp_path):
    name = unique_name("promo-unscored")
    v1 = _register(server, name, tiny_models[0])
    promote(name, scripted({v1: {"mathv": 1.0}}), {"mathv": 0.0}, tmp_path / "lock", server)
    v2 = _register(server, name, tiny_models[1])
    only_challenger = lambda client, model, versions: {v2: {"mathv": 99.0}}  # noqa: E731
    decision, _ = promote(name, only_challenger, {"mathv": 0.0}, tmp_path / "lock", server)
    assert decision == Decision(False, [f"the champion v{v1} was not scored"])
    assert _aliases(server, name) == {v1: [CHAMPION], v2: [CHALLENGER]}


@pytest.mark.parametrize("action", ["show", "history", "promote", "rollback"])
def test_an_unknown_model_exits_2_naming_the_model_and_the_server(server, action, capsys):
    from mathllava.cli import main

    extra, name = ["--reason", "x"] if action == "rollback" else [], unique_name("no-such-model")
    assert main(["registry", action, name, "--tracking-uri", server, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: no registered model {name!r} at {server}"


@pytest.mark.parametrize("action", ["show", "history", "promote"])
def test_a_stopped_server_fails_in_seconds_in_one_line_naming_the_address_and_its_source(action, monkeypatch):
    """Nothing listens on the port: one line within 10 s (MLflow alone retried for minutes), naming the
    address and the variable it came from."""
    import time

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env["MLFLOW_PORT"] = str(port)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "mathllava.cli", "registry", action, "some-model"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert time.monotonic() - started < 10
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"no MLflow tracking server answers at http://127.0.0.1:{port} (set by MLFLOW_PORT)" in lines[0]
    env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{port}"
    done = subprocess.run([sys.executable, "-m", "mathllava.cli", "registry", action, "some-model"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert "(set by MLFLOW_TRACKING_URI)" in done.stderr and done.returncode == 2


def test_zenml_stages_follow_every_promote_and_rollback(server, tiny_models, tmp_path, capsys):
    """show, history and the ZenML model stages agree after each decision; the CLI's rollback tells ZenML
    itself (the `mathllava.stage_listeners` entry point), not only the next pipeline run."""
    from zenml.client import Client

    from mathllava.cli import main
    from mathllava_zenml.stages import mirror

    name, lock, client = unique_name("stage-flow"), tmp_path / "lock", Client()  # rerunnable in one state folder
    client.create_model(name=name)

    def link(version):
        zmv = client.create_model_version(model_name_or_id=name, name=f"run-{version}")
        from zenml import log_metadata
        log_metadata(metadata={"mlflow": {"registered_model": name, "version": version}},
                     model_name=name, model_version=zmv.name)

    def agree():
        from mathllava_zenml.stages import _stage

        zenml = {(mv.run_metadata or {})["mlflow"]["version"]: _stage(mv)
                 for mv in client.list_model_versions(model=name, size=100).items}
        registry = {row.version: row.stage for row in show(name, server)}
        assert zenml == registry
        return registry

    v1 = _register(server, name, tiny_models[0])
    link(v1)
    promote(name, scripted({v1: {"mathv": 10.0}}), {"mathv": 0.0}, lock, server)
    mirror(name, server)
    assert agree() == {v1: "production"}
    v2 = _register(server, name, tiny_models[1])
    link(v2)
    promote(name, scripted({v1: {"mathv": 10.0}, v2: {"mathv": 12.0}}), {"mathv": 0.0}, lock, server)
    mirror(name, server)
    assert agree() == {v1: "archived", v2: "production"}
    v3 = _register(server, name, tiny_models[0])
    link(v3)
    mirror(name, server)
    assert agree() == {v1: "archived", v2: "production", v3: "staging"}
    v4 = _register(server, name, tiny_models[1])   # a newer challenger: v3 holds no alias any more
    link(v4)
    mirror(name, server)
    assert agree() == {v1: "archived", v2: "production", v3: "none", v4: "staging"}
    capsys.readouterr()
    assert main(["registry", "rollback", name, "--reason", "v2 regressed", "--tracking-uri", server]) == 0
    assert f"zenml stages: v1 production, v2 archived, v3 none, v4 staging" in capsys.readouterr().out
    assert agree() == {v1: "production", v2: "archived", v3: "none", v4: "staging"}   # no pipeline run between
    assert main(["registry", "history", name, "--tracking-uri", server]) == 0
    last = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert last["event"] == "rollback" and last["stages"] == {v1: "production", v2: "archived"}


# ---------------------------------------------------------------- exact records, precedence and messages
def _bare_version(uri, name, alias=None, **fields) -> str:
    """A new version without weights (for the tests whose scorer is scripted)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, source="s3://bucket/none", await_creation_for=0, **fields).version
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return version


def _audit_tags(uri, name, version) -> dict:
    from mlflow.tracking import MlflowClient

    return {k: v for k, v in MlflowClient(uri).get_model_version(name, version).tags.items() if k.startswith("audit.")}


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """MLflow's default tracking URI (and $MLFLOW_TRACKING_URI) name another, empty store: a call that
    drops the URI it was given looks there and finds no model."""
    import mlflow

    before = mlflow.get_tracking_uri()
    other = (tmp_path / "elsewhere").as_uri()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    mlflow.set_tracking_uri(other)
    yield other
    mlflow.set_tracking_uri(before)


@pytest.fixture
def nine_hours_east():
    """Local time 9 hours ahead of UTC, so a stamp taken in local time would show."""
    import time

    old = os.environ.get("TZ")
    os.environ["TZ"] = "JST-9"
    time.tzset()
    yield
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


def _stamp(text):
    from datetime import datetime, timezone

    return datetime.strptime(text, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=timezone.utc)


def test_a_promotion_and_a_rollback_use_the_given_server_and_record_exactly_this(server, elsewhere, nine_hours_east,
                                                                                  tmp_path, monkeypatch):
    """Every call goes to the tracking URI it was given (not MLflow's default), the scorer gets that
    server's client and the versions challenger first, and each audit record holds these fields, as
    sorted JSON under audit.<UTC time>."""
    import re
    from datetime import datetime, timezone

    from mlflow.tracking import MlflowClient

    from mathllava.registry.promotion import require_model, rollback

    monkeypatch.setenv("MATHLLAVA_ACTOR", "tester@ci")
    name, lock, client = unique_name("promo-exact"), tmp_path / "lock", MlflowClient(server)
    run = client.create_run(client.create_experiment(unique_name("promo-exact"))).info.run_id
    v1 = _bare_version(server, name, CHAMPION, run_id=run, tags={"heldout_accuracy": "50.0"})
    v2 = _bare_version(server, name, CHALLENGER)
    require_model(name, server)   # found there, not in the default store
    calls = []

    def evaluate(client, model, versions):
        calls.append((client.tracking_uri, model, list(versions)))
        return {v1: {"mathv": 10.0, "heldout": 50.0}, v2: {"mathv": 12.0, "heldout": 49.5}}

    margins = {"mathv": 1.0, "heldout": -1.0}
    before = datetime.now(timezone.utc)
    decision, entry = promote(name, evaluate, margins, lock, server)
    after = datetime.now(timezone.utc)
    assert calls == [(server, name, [v2, v1])]
    scores = {"mathv": {"challenger": 12.0, "champion": 10.0}, "heldout": {"challenger": 49.5, "champion": 50.0}}
    assert decision == Decision(True, ["mathv: challenger 12.00 > champion 10.00 + margin 1.00",
                                       "heldout: challenger 49.50 > champion 50.00 + margin -1.00"], scores)
    assert re.fullmatch(r"\d{8}T\d{6}\.\d{6}Z", entry["time"]) and before <= _stamp(entry["time"]) <= after
    assert re.fullmatch(r"[0-9a-f]{32}", entry["decision"])
    assert entry == {"time": entry["time"], "actor": "tester@ci", "event": "promote", "challenger": v2, "champion": v1,
                     "scores": scores, "margins": margins, "reasons": decision.reasons, "reason": "",
                     "decision": entry["decision"], "stage": "production"}
    assert _audit_tags(server, name, v2) == {f"audit.{entry['time']}": json.dumps(entry, sort_keys=True)}
    [(key, raw)] = _audit_tags(server, name, v1).items()   # the champion it replaced: the same decision, archived
    archived = json.loads(raw)
    assert raw == json.dumps(archived, sort_keys=True) and key == f"audit.{archived['time']}"
    assert archived == {**entry, "time": archived["time"], "stage": "archived"}
    assert before <= _stamp(archived["time"]) < _stamp(entry["time"])   # recorded first

    rows = show(name, server)   # (MLflow gives "" as the run of a version registered without one)
    assert [(r.version, r.aliases, r.stage, r.run_id, r.tags) for r in rows] == [
        (v1, [PREVIOUS], "archived", run, {"heldout_accuracy": "50.0"}), (v2, [CHAMPION], "production", "", {})]
    [event] = history(name, server)
    assert event == {**entry, "version": v2, "time": archived["time"], "stages": {v1: "archived", v2: "production"}}

    with pytest.raises(ValueError, match=r"^a rollback needs a reason$"):
        rollback(name, " \t", lock, server)
    back = rollback(name, "v2 regressed", lock, server)
    assert re.fullmatch(r"[0-9a-f]{32}", back["decision"]) and back["decision"] != entry["decision"]
    assert back == {"time": back["time"], "actor": "tester@ci", "event": "rollback", "champion": v1, "rolled_back": v2,
                    "reason": "v2 regressed", "decision": back["decision"], "stage": "production"}
    assert _aliases(server, name) == {v1: [CHAMPION]}
    assert [(e["event"], e["version"]) for e in history(name, server)] == [("promote", v2), ("rollback", v1)]


def test_history_puts_each_decision_on_the_version_it_was_about(server, tmp_path):
    """The challenger's record is the decision's (an older version promoted over a newer one, and a newer
    over an older one: whichever record the registry lists first); a record without a challenger is its
    own version's, and one naming a version without a record stays on the version that holds it."""
    from mlflow.tracking import MlflowClient

    from mathllava.registry.promotion import record

    name, lock, client = unique_name("promo-order"), tmp_path / "lock", MlflowClient(server)
    v1, v2 = _bare_version(server, name), _bare_version(server, name, CHALLENGER)
    promote(name, scripted({v2: {"mathv": 1.0}}), {"mathv": 0.0}, lock, server)
    client.set_registered_model_alias(name, CHALLENGER, v1)   # the older version challenges
    promote(name, scripted({v1: {"mathv": 5.0}, v2: {"mathv": 1.0}}), {"mathv": 0.0}, lock, server)
    v3 = _bare_version(server, name, CHALLENGER)               # a newer one
    promote(name, scripted({v1: {"mathv": 5.0}, v3: {"mathv": 9.0}}), {"mathv": 0.0}, lock, server)
    record(client, name, v1, {"event": "nominated", "stage": "staging"})   # as `mathllava experiment promote` does
    record(client, name, v2, {"event": "note", "challenger": "999", "decision": "d-1"})
    events = history(name, server)
    assert [(e["event"], e["version"], e.get("stage"), e["stages"]) for e in events] == [
        ("promote", v2, "production", {v2: "production"}),
        ("promote", v1, "production", {v1: "production", v2: "archived"}),
        ("promote", v3, "production", {v1: "archived", v3: "production"}),
        ("nominated", v1, "staging", {v1: "staging"}),
        ("note", v2, None, {v2: None})]


def test_compare_decides_on_every_metric_and_says_which_side_each_is():
    first = compare({"mathv": 20.0, "other": 1.0}, None, {"mathv": 0.0, "heldout": 0.0})
    assert first == Decision(True, ["no champion yet: the challenger becomes the first"],
                             {"mathv": {"challenger": 20.0}})   # only the metrics with a margin
    # a metric that fails loses the comparison even when a later one passes
    lost = compare({"heldout": 10.0, "mathv": 25.0}, {"heldout": 12.0, "mathv": 20.0}, {"heldout": -1.0, "mathv": 0.0})
    assert lost == Decision(False, ["heldout: challenger 10.00 <= champion 12.00 + margin -1.00",
                                    "mathv: challenger 25.00 > champion 20.00 + margin 0.00"],
                            {"heldout": {"challenger": 10.0, "champion": 12.0},
                             "mathv": {"challenger": 25.0, "champion": 20.0}})
    missing = compare({"mathv": 25.0, "chart": 3.0}, {"mathv": 20.0}, {"mathv": 0.0, "heldout": 0.0, "chart": 0.0})
    assert missing == Decision(False, ["metric chart was not scored for both versions",
                                       "metric heldout was not scored for both versions"])


def test_nothing_to_promote_is_refused_by_name_and_moves_nothing(server, tmp_path):
    from mlflow.tracking import MlflowClient

    from mathllava.registry.promotion import compare_with_champion

    name, lock = unique_name("promo-nothing"), tmp_path / "lock"
    v1 = _bare_version(server, name, CHAMPION)
    with pytest.raises(ValueError, match=rf"^{name} has no 'challenger' version to promote$"):
        promote(name, scripted({}), {"mathv": 0.0}, lock, server)
    MlflowClient(server).set_registered_model_alias(name, CHALLENGER, v1)
    with pytest.raises(ValueError, match=rf"^{name} v{v1} is already the champion$"):
        compare_with_champion(name, scripted({}), {"mathv": 0.0}, server)
    assert _aliases(server, name) == {v1: [CHALLENGER, CHAMPION]} and history(name, server) == []


def test_an_unknown_model_is_named_with_the_server_that_was_asked(server):
    import mlflow

    from mathllava.registry.promotion import require_model

    name, before = unique_name("no-such-model"), mlflow.get_tracking_uri()
    with pytest.raises(ValueError, match=rf"^no registered model '{name}' at {server}$"):
        require_model(name, server)
    assert show(name, server) == [] and history(name, server) == []
    mlflow.set_tracking_uri(server)   # no URI given: MLflow's default, named in the message
    try:
        with pytest.raises(ValueError, match=rf"^no registered model '{name}' at {server}$"):
            require_model(name)
    finally:
        mlflow.set_tracking_uri(before)


def test_the_actor_is_the_configured_one_else_user_at_host(monkeypatch):
    import getpass
    import socket

    from mathllava.registry.promotion import actor

    monkeypatch.setenv("MATHLLAVA_ACTOR", "pipeline run nightly-7")
    assert actor() == "pipeline run nightly-7"
    monkeypatch.setenv("MATHLLAVA_ACTOR", "")
    assert actor() == f"{getpass.getuser()}@{socket.gethostname()}"


def test_the_comparison_is_logged_as_a_table_and_a_chart_of_both_versions(monkeypatch):
    import matplotlib.pyplot as plt

    from mathllava import plots, tracking
    from mathllava.registry.promotion import as_dict, log_comparison

    logged, charts, real = [], [], plots.accuracy_bars

    def bars(named, title):
        charts.append((named, title, real(named, title)))
        return charts[-1][2]

    monkeypatch.setattr(tracking, "log_table", lambda data, name: logged.append((name, data)))
    monkeypatch.setattr(tracking, "log_figure", lambda fig, name: logged.append((name, fig)))
    monkeypatch.setattr(plots, "accuracy_bars", bars)
    log_comparison("3", "2", {"mathv": {"challenger": 21.0, "champion": 20.0},
                              "heldout": {"challenger": 40.0, "champion": 45.0}}, {"mathv": 0.5})
    [(named, title, fig)] = charts
    plt.close(fig)
    assert logged == [("registry/comparison.json", {"metric": ["heldout", "mathv"], "challenger v3": [40.0, 21.0],
                                                    "champion v2": [45.0, 20.0], "margin": [0.0, 0.5]}),
                      ("registry/comparison.png", fig)]
    assert named == {"challenger v3": {"heldout": 40.0, "mathv": 21.0}, "champion v2": {"heldout": 45.0, "mathv": 20.0}}
    assert title == "challenger vs champion, same sets"
    assert as_dict(Decision(True, ["r"], {"m": {"challenger": 1.0}})) == {
        "promote": True, "reasons": ["r"], "scores": {"m": {"challenger": 1.0}}}
