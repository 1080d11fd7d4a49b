"""Registering a model folder, the weights digest that keeps identical weights from becoming a second
version, the gate's reasons, and aliases: on a real local MLflow server."""

import os

import pytest

from mathllava.registry.versions import (WEIGHTS_TAG, gate, identical_version, register_model_dir, set_alias,
                                         tag_with_run, weights_digest)


@pytest.fixture(scope="module")
def server(mlflow_server):
    return mlflow_server


@pytest.fixture
def tracking(server):
    import mlflow

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(server)
    yield server
    mlflow.set_tracking_uri(before)


def _model(folder, weights=b"\x01\x02", extra=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text('{"a": 1}')
    for name, data in (extra or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def test_the_weights_digest_covers_weight_files_only_by_name_and_bytes(tmp_path):
    """The same weights give the same digest wherever they lie; any weight byte or name changes it."""
    a = weights_digest(_model(tmp_path / "a"))
    assert len(a) == 64 and a == weights_digest(_model(tmp_path / "b"))
    copy = _model(tmp_path / "c")
    (copy / "config.json").write_text('{"a": 2}')              # not a weight file
    (copy / "tokenizer.json").write_text("{}")
    assert weights_digest(copy) == a
    assert weights_digest(_model(tmp_path / "d", b"\x01\x03")) != a
    renamed = _model(tmp_path / "e")
    (renamed / "model.safetensors").rename(renamed / "other.safetensors")
    assert weights_digest(renamed) != a
    for suffix in (".bin", ".pt"):
        more = _model(tmp_path / f"f{suffix}", extra={f"sub/extra{suffix}": b"x"})
        assert weights_digest(more) != a                       # nested weight files count, every kind
    # the file boundary counts: the same bytes split differently is other weights
    split = tmp_path / "g"
    split.mkdir()
    (split / "a.safetensors").write_bytes(b"\x01")
    (split / "b.safetensors").write_bytes(b"\x02")
    joined = tmp_path / "h"
    joined.mkdir()
    (joined / "a.safetensors").write_bytes(b"\x01\x02")
    (joined / "b.safetensors").write_bytes(b"")
    assert weights_digest(split) != weights_digest(joined)


def test_the_weights_digest_reads_large_files_whole(tmp_path):
    """Files over the 1 MiB read block: a change in the last byte is seen."""
    big = bytearray(os.urandom(3 * 1024 * 1024 + 5))
    first = weights_digest(_model(tmp_path / "a", bytes(big)))
    big[-1] ^= 0xFF
    assert weights_digest(_model(tmp_path / "b", bytes(big))) != first


def test_the_weights_digest_is_sha256_of_each_name_a_nul_and_the_bytes(tmp_path):
    """The digest's exact recipe: registered versions carry it as a tag, so a new release must compute the
    same value for the same weights, or identical weights would become a second version."""
    import hashlib

    folder = _model(tmp_path / "m", b"\x01\x02", extra={"sub/a.bin": b"xyz"})
    expected = hashlib.sha256(b"model.safetensors\0\x01\x02" + b"sub/a.bin\0xyz").hexdigest()
    assert weights_digest(folder) == expected


def test_the_weights_digest_reads_in_blocks_of_at_most_1_mib(tmp_path, monkeypatch):
    """A weight shard of many GiB is hashed without being read into memory whole."""
    import builtins

    from mathllava.registry import versions

    sizes = []

    def counting_open(*args, **kwargs):
        handle = builtins.open(*args, **kwargs)
        read = handle.read

        class Counted:
            def __enter__(self):
                handle.__enter__()
                return self

            def __exit__(self, *exc):
                return handle.__exit__(*exc)

            def read(self, size=-1):
                sizes.append(size)
                return read(size)

        return Counted()

    data = os.urandom(2 * 1024 * 1024 + 3)
    folder = _model(tmp_path / "m", data)
    expected = weights_digest(folder)
    monkeypatch.setattr(versions, "open", counting_open, raising=False)
    assert weights_digest(folder) == expected
    assert len(sizes) >= 4 and all(isinstance(n, int) and 0 < n <= 1 << 20 for n in sizes), sizes


def test_a_folder_without_weights_is_refused_by_name(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'empty'}: no weight files \(\.safetensors, \.bin, \.pt\)$"):
        weights_digest(tmp_path / "empty")


def test_register_identical_and_tag(tracking, tmp_path):
    """A registered folder becomes a version with its tags as text; the oldest version with the same
    digest is found; another pipeline run is recorded on it."""
    import mlflow
    from mlflow.tracking import MlflowClient

    name = f"versions-{os.urandom(3).hex()}"
    assert identical_version(name, "0" * 64) is None                 # no such model yet
    with pytest.raises(RuntimeError, match="^register_model_dir needs an active MLflow run$"):
        register_model_dir(str(_model(tmp_path / "m")), name, {})
    digest = weights_digest(_model(tmp_path / "m"))
    mlflow.set_experiment(name)   # this server's own experiment, whatever an earlier test left active
    with mlflow.start_run() as run:
        first, source = register_model_dir(str(tmp_path / "m"), name, {WEIGHTS_TAG: digest, "accuracy": 12.5},
                                           description="gate passed")
        second, _ = register_model_dir(str(tmp_path / "m"), name, {WEIGHTS_TAG: digest})
        third, _ = register_model_dir(str(_model(tmp_path / "n", b"\x09")), name,
                                      {WEIGHTS_TAG: weights_digest(tmp_path / "n")})
    assert (first, second, third) == ("1", "2", "3")
    client = MlflowClient()
    version = client.get_model_version(name, first)
    assert version.tags["accuracy"] == "12.5" and version.description == "gate passed"
    assert version.run_id == run.info.run_id and source.endswith("/artifacts/model") and version.source == source
    assert {a.path for a in client.list_artifacts(run.info.run_id, "model")} == {"model/config.json",
                                                                               "model/model.safetensors"}
    assert client.get_registered_model(name).description.startswith("Math-LLaVA-style models")
    assert identical_version(name, digest) == "1"                   # the oldest of the two
    assert identical_version(name, weights_digest(tmp_path / "n")) == "3"
    assert identical_version(name, "f" * 64) is None
    assert identical_version(f"{name}-other", digest) is None        # only this model's versions count
    assert not client.get_model_version(name, second).description     # none given: none recorded
    tag_with_run(name, "1", "run-b", "abc123")
    tags = client.get_model_version(name, "1").tags
    assert tags["also_produced_by.run-b"] == "abc123" and tags["last_produced_by"] == "run-b"
    assert "also_produced_by.run-b" not in client.get_model_version(name, "2").tags
    set_alias(name, "challenger", "2")
    assert client.get_model_version_by_alias(name, "challenger").version == "2"


@pytest.mark.parametrize("model, frequent, base, margins, passed, reasons", [
    (10.0, 5.0, 8.0, (0.0, 0.0), True, ["model 10.00 > frequent-answer 5.00 + 0.00", "model 10.00 > base 8.00 + 0.00"]),
    (10.0, 5.0, 8.0, (5.0, 0.0), False, ["model 10.00 <= frequent-answer 5.00 + 5.00", "model 10.00 > base 8.00 + 0.00"]),
    (10.0, 5.0, 8.0, (0.0, 2.5), False, ["model 10.00 > frequent-answer 5.00 + 0.00", "model 10.00 <= base 8.00 + 2.50"]),
    (10.0, 12.0, 11.0, (-3.0, -1.5), True, ["model 10.00 > frequent-answer 12.00 + -3.00",
                                             "model 10.00 > base 11.00 + -1.50"]),
])
def test_the_gate_says_which_side_of_each_margin_the_model_is(model, frequent, base, margins, passed, reasons):
    result = gate(model, frequent, base, *margins)
    assert result.passed is passed and result.reasons == reasons
