"""`run.py --set KEY=VALUE` (and `make run SET=...`): keys checked against the typed sections before anything
changes, values read as YAML and validated with the rest of the config, the merged config written once."""

import pytest
import yaml

from conftest import ROOT


def _sections():
    import run

    return run.sections()


def test_overrides_set_nested_keys_with_yaml_values():
    from mathllava.settings import apply_overrides

    params = {"train": {"seed": 0, "epochs": 3}, "select": {"sampling": {"target_size": 500}}}
    applied = apply_overrides(params, ["train.seed=1", "select.sampling.target_size=300",
                                       "select.sampling.proportions=[1, 1, 1, 1]", "model.base=null",
                                       "register.promotion.margins.mathv=0.5", "train.lr_scheduler=linear"],
                              _sections())
    assert params["train"] == {"seed": 1, "epochs": 3, "lr_scheduler": "linear"}   # the rest of the section stays
    assert params["select"]["sampling"] == {"target_size": 300, "proportions": [1, 1, 1, 1]}
    assert params["model"] == {"base": None}
    assert params["register"] == {"promotion": {"margins": {"mathv": 0.5}}}   # a free mapping takes new keys
    assert applied["train.seed"] == 1 and applied["train.lr_scheduler"] == "linear"


def test_a_key_named_once_deeper_in_its_section_stands_for_it():
    """The issue's own command line: `--set select.target_size=300` is select.sampling.target_size, the only
    key of that name in `select`; it is applied and recorded under its full path."""
    from mathllava.settings import apply_overrides

    params = {"select": {"sampling": {"target_size": 500, "seed": 7}}}
    assert apply_overrides(params, ["select.target_size=300"], _sections()) == {"select.sampling.target_size": 300}
    assert params == {"select": {"sampling": {"target_size": 300, "seed": 7}}}


@pytest.mark.parametrize("item, message", [
    ("select.seed=3", "--set select.seed: select has no key 'seed' "
                      "(did you mean select.scorer.seed or select.sampling.seed?)"),   # two of that name
    ("select.sampling.size=3", "--set select.sampling.size: select.sampling has no key 'size'"),
    ("trian.seed=1", "--set trian.seed: unknown section 'trian'"),
    ("train.sead=1", "--set train.sead: train has no key 'sead'"),
    ("train.seed.x=1", "--set train.seed.x: train.seed is a value, not a section with keys"),
    ("train.seed", "--set train.seed: expected KEY=VALUE"),
    ("train..seed=1", "expected a dotted key"),
    ("train.seed=[1", "--set train.seed: '[1' is not a YAML value"),
])
def test_a_bad_override_is_refused_by_its_key_and_nothing_changes(item, message):
    from mathllava.settings import apply_overrides

    params = {"train": {"seed": 0}}
    with pytest.raises(ValueError) as err:
        apply_overrides(params, ["train.epochs=9", item], _sections())   # the good one is not applied either
    assert message in str(err.value)
    assert params == {"train": {"seed": 0}}


def test_run_py_validates_override_values_with_the_typed_config(tmp_path, monkeypatch):
    import run

    monkeypatch.setenv("MATHLLAVA_HOME", str(tmp_path / "home"))
    config = str(ROOT / "configs" / "test.yaml")
    path, applied = run.with_overrides(config, ["train.seed=5", "select.sampling.target_size=120"])
    assert applied == {"train.seed": 5, "select.sampling.target_size": 120}
    merged = yaml.safe_load(open(path))
    original = yaml.safe_load(open(config))
    assert merged["parameters"]["train"]["seed"] == 5 and merged["parameters"]["select"]["sampling"]["target_size"] == 120
    original["parameters"]["train"]["seed"] = 5
    original["parameters"]["select"]["sampling"]["target_size"] = 120
    assert merged == original                              # nothing else moved
    assert run.with_overrides(config, ["train.seed=5", "select.sampling.target_size=120"])[0] == path  # same file
    run.check_config(path)
    bad, _ = run.with_overrides(config, ["train.epochs=-1"])
    with pytest.raises(SystemExit, match=r"error: configs/test.yaml with --set train.epochs=-1: train.epochs: "
                                         r"Input should be greater than 0"):
        run.check_config(bad, "configs/test.yaml with --set train.epochs=-1")
    with pytest.raises(SystemExit, match=r"did you mean select.scorer.seed or select.sampling.seed"):
        run.main(["--config", config, "--set", "select.seed=300"])
    for extra in ([], ["--set", "train.seed=1"]):   # one line, with or without overrides
        with pytest.raises(SystemExit, match=r"^error: configs/nope.yaml: no such config file$"):
            run.main(["--config", "configs/nope.yaml", *extra])
