"""The printed run summary says what the registry holds now, each score with its problem count, whether a
cached run did anything, and the exact command when a promotion was left to the user."""

from mathllava.runreport import RunFacts, next_command, summary_rows

URI = "http://127.0.0.1:5099"


def _facts(promotion, alias="challenger", aliases=("champion",), stage="production", registered_in=None, cached=()):
    acc = lambda m, b, f: {"model": {"accuracy": m}, "base": {"accuracy": b}, "frequent": {"accuracy": f}}  # noqa: E731
    return RunFacts(
        run="r2", validation={"rows": 900, "quarantined": 3, "reasons": {"too_small": 3}},
        cleaning={"dedup": {"removed": 59}, "contamination": {"removed": 1}},
        selection={"selected": 500, "dropped_unclear": 100, "within_tolerance": True,
                   "scorer": {"method": "learned", "complexity": {"exact": 0.88}},
                   "levels": {"0": {"selected": 95, "share": 0.19, "target_share": 0.2}}},
        curated_rows=2872, augmented_by_type={"original": 500, "harder": 373},
        training={"global_step": 540, "history": [{"loss": 7.2}, {"loss": 1.19}], "truncated": 0, "dropped": 0},
        evaluation={"heldout": {"problems": 216, **acc(21.3, 6.94, 16.2)},
                    "mathv": {"problems": 304, **acc(13.16, 0.0, 17.11)}},
        registration={"model_name": "mathllava-tiny", "version": "2", "alias": alias, "promotion": promotion,
                      "tracking_uri": URI, "mlflow_run_id": "abc"},
        model_dir="/state/artifacts/model_dir/xyz", aliases=list(aliases), stage=stage, tracking_uri=URI,
        cached_steps=list(cached), steps=12, registered_in=registered_in, overrides={"train.seed": 1})


def _text(facts):
    return dict(summary_rows(facts, "configs/local.yaml"))


def test_a_first_run_says_promoted_and_what_the_registry_holds_now():
    facts = _facts({"promoted": True, "wins": True, "auto": "first", "champion_before": None,
                    "reasons": ["no champion yet"], "scores": {"mathv": {"challenger": 6.67}}, "sets": {"mathv": 60}})
    rows = _text(facts)
    assert rows["registered"] == "mathllava-tiny v2: gate passed; now champion (production)"
    assert rows["promotion"].startswith("promoted by this run: v2 became champion, first champion")
    assert "on Math-V testmini, 60 problems" in rows["promotion"]
    assert rows["Math-V testmini"].startswith("304 problems, accuracy %: model 13.16")
    assert rows["held-out synthetic"].startswith("216 problems")
    assert rows["model"] == "/state/artifacts/model_dir/xyz"
    assert rows["overrides"] == "train.seed=1"
    assert "(all 12 steps ran)" in rows["run"]
    assert next_command(facts, "configs/local.yaml") is None


def test_a_winner_left_to_the_user_gets_the_exact_command():
    facts = _facts({"promoted": False, "wins": True, "auto": "first", "champion_before": "1",
                    "reasons": ["mathv: challenger 8.33 > champion 6.67 + margin 0.00"],
                    "scores": {"mathv": {"challenger": 8.33, "champion": 6.67}}, "sets": {"mathv": 60}},
                   aliases=("challenger",), stage="staging")
    rows = _text(facts)
    command = "mathllava registry promote mathllava-tiny --config configs/local.yaml --tracking-uri " + URI
    assert rows["registered"].endswith("now challenger (staging)")
    assert rows["promotion"].startswith("not promoted: v2 beats champion v1 on Math-V testmini, 60 problems "
                                        "(v2 8.33 vs v1 6.67), but register.promotion.auto is 'first'")
    assert rows["promotion"].endswith(f"To promote it: {command}")
    assert next_command(facts, "configs/local.yaml") == command


def test_a_loser_stays_challenger_with_no_command():
    facts = _facts({"promoted": False, "wins": False, "auto": "first", "champion_before": "1",
                    "reasons": ["mathv: challenger 5.00 <= champion 6.67 + margin 0.00"],
                    "scores": {"mathv": {"challenger": 5.0, "champion": 6.67}}, "sets": {"mathv": 60}},
                   aliases=("challenger",), stage="staging")
    assert _text(facts)["promotion"].startswith("not promoted: v2 stays challenger; it does not beat champion v1")
    assert next_command(facts) is None


def test_a_cached_rerun_does_not_repeat_the_first_runs_promotion():
    facts = _facts({"promoted": True, "wins": True, "auto": "first", "champion_before": None, "reasons": [],
                    "scores": {}, "sets": {"mathv": 60}}, registered_in="r1", cached=["register_model"] * 12)
    rows = _text(facts)
    assert "promoted" not in rows["promotion"]
    assert rows["promotion"].startswith("nothing was registered or compared now: run r1 registered v2")
    assert "(12 of 12 steps reused from the cache)" in rows["run"]


def test_a_failed_gate_says_so():
    facts = _facts(None, alias=None, aliases=(), stage="none")
    rows = _text(facts)
    assert rows["registered"] == "mathllava-tiny v2: gate failed; now none"
    assert rows["promotion"].startswith("not a candidate: the gate on the held-out split failed")


def test_a_cached_rerun_of_a_challenger_names_the_command():
    facts = _facts(None, aliases=("challenger",), stage="staging", registered_in="r1", cached=["x"])
    assert _text(facts)["promotion"].endswith("v2 is still challenger; to compare and promote it: mathllava registry "
                                              f"promote mathllava-tiny --config configs/local.yaml --tracking-uri {URI}")
    assert next_command(facts, "configs/local.yaml").startswith("mathllava registry promote mathllava-tiny")


def test_identical_weights_say_no_version_was_added():
    facts = _facts(None, alias=None)
    facts.registration["identical_to"] = "2"
    rows = _text(facts)
    assert rows["registered"] == "mathllava-tiny v2: the same weights, not registered again; now champion (production)"
    assert rows["promotion"] == ("nothing new to compare: this run's weights are identical to v2's, so no version was "
                                 "added; v2 is tagged with this run (also_produced_by.r2)")
    assert next_command(facts, "configs/local.yaml") is None
