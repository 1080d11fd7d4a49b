"""The training output folder's checks (`train/runner.py`): what a run is (`run.json`), which checkpoints are
whole, what a killed save left behind, and when a folder may be resumed. Each message is what the user reads."""

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from mathllava.train.config import TrainSettings
from mathllava.train.runner import (IDENTITY_IGNORED, RunConflict, _identity, check_output, checkpoint_step,
                                    complete_checkpoints, remove_torn_checkpoints, write_identity)
from mathllava.train.trainer import COMPLETE, SAVING


def _checkpoint(ckpts: Path, name: str, whole: bool) -> Path:
    folder = ckpts / name
    folder.mkdir(parents=True)
    (folder / "weights.bin").write_bytes(b"w")
    if whole:
        (folder / COMPLETE).write_text("")
    return folder


def test_the_identity_names_base_data_digest_image_root_and_the_settings_that_change_results(tmp_path, monkeypatch):
    for folder in ("base", "images"):
        (tmp_path / folder).mkdir()
    (tmp_path / "train.json").write_text('[{"id": 1}]')
    monkeypatch.chdir(tmp_path)
    settings = TrainSettings(epochs=2.0, encode_workers=3, logging_steps=7)
    identity = _identity(Path("base"), Path("train.json"), Path("images"), settings)
    assert set(identity) == {"base", "data", "data_sha256", "image_root", "settings"}
    assert identity["base"] == str(tmp_path / "base") and identity["image_root"] == str(tmp_path / "images")
    assert identity["data"] == str(tmp_path / "train.json")
    assert identity["data_sha256"] == hashlib.sha256(b'[{"id": 1}]').hexdigest()[:16]
    assert identity["settings"] == {k: v for k, v in settings.model_dump().items() if k not in IDENTITY_IGNORED}
    assert identity["settings"]["epochs"] == 2.0
    assert not set(identity["settings"]) & {"encode_workers", "logging_steps", "launcher", "device"}


def test_checkpoint_steps_come_from_trainer_names_only():
    assert checkpoint_step(Path("checkpoint-12")) == 12
    assert checkpoint_step(Path("checkpoint-best-5")) is None
    assert checkpoint_step(Path("checkpoint-")) is None
    assert checkpoint_step(Path("12")) is None               # not a checkpoint folder at all


def test_whole_checkpoints_are_ordered_by_step_not_by_name(tmp_path):
    ckpts = tmp_path / "checkpoints"
    assert complete_checkpoints(ckpts) == []                  # no folder yet
    for name, whole in (("checkpoint-9", True), ("checkpoint-10", True), ("checkpoint-100", False),
                        ("checkpoint-best-50", True), ("checkpoint-2", True)):
        _checkpoint(ckpts, name, whole)
    assert [p.name for p in complete_checkpoints(ckpts)] == ["checkpoint-2", "checkpoint-9", "checkpoint-10"]


def test_a_killed_save_is_cleaned_up_and_each_removal_is_named(tmp_path):
    ckpts = tmp_path / "checkpoints"
    assert remove_torn_checkpoints(ckpts) == []               # nothing there: nothing to do
    kept = _checkpoint(ckpts, "checkpoint-4", True)
    torn = _checkpoint(ckpts, "checkpoint-8", False)
    (ckpts / "checkpoint-notes").write_text("a file, not a checkpoint")
    (ckpts / SAVING / "checkpoint-12").mkdir(parents=True)
    (ckpts / SAVING / "checkpoint-12" / "weights.bin").write_bytes(b"partial")
    (ckpts / SAVING / "b-part").write_bytes(b"")
    assert remove_torn_checkpoints(ckpts) == [f"{SAVING}/b-part", f"{SAVING}/checkpoint-12", "checkpoint-8"]
    assert kept.is_dir() and not torn.exists() and not (ckpts / SAVING).exists()
    assert (ckpts / "checkpoint-notes").is_file()
    assert remove_torn_checkpoints(ckpts) == []


@pytest.fixture()
def read_only_disk(tmp_path):
    """A tmpfs remounted read-only after it was filled: deletions there fail with EROFS."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")

    def freeze():
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)

    try:
        yield mount, freeze
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_cleanup_that_the_disk_refuses_does_not_stop_the_run(read_only_disk):
    """Best effort: a torn folder that cannot be deleted is reported and left; it is never resumed from."""
    mount, freeze = read_only_disk
    ckpts = mount / "checkpoints"
    _checkpoint(ckpts, "checkpoint-3", True)
    _checkpoint(ckpts, "checkpoint-6", False)
    (ckpts / SAVING / "checkpoint-9").mkdir(parents=True)
    freeze()
    assert remove_torn_checkpoints(ckpts) == [f"{SAVING}/checkpoint-9", "checkpoint-6"]
    assert (ckpts / "checkpoint-6").is_dir()
    assert [p.name for p in complete_checkpoints(ckpts)] == ["checkpoint-3"]


def test_the_identity_is_written_readably_into_a_new_nested_folder_and_rewritten(tmp_path):
    out = tmp_path / "runs" / "a"                              # parents do not exist yet
    identity = {"base": "/m/é", "data": "d", "settings": {"epochs": 1.0}}
    write_identity(out, identity)
    text = (out / "run.json").read_text(encoding="utf-8")
    assert json.loads(text) == identity
    assert text.splitlines()[1] == '  "base": "/m/\\u00e9",'   # indented two spaces: people read this file
    write_identity(out, {**identity, "data": "e"})            # the folder exists now
    assert json.loads((out / "run.json").read_text())["data"] == "e"
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]


def test_resume_says_which_fields_differ_including_ones_only_one_side_has(tmp_path):
    identity = {"base": "b", "data_sha256": "1", "settings": {"epochs": 2.0, "lr": 1e-4}}
    (tmp_path / "run.json").write_text(json.dumps({"base": "b", "data_sha256": "0", "old_field": 1,
                                                   "settings": {"epochs": 3.0, "lr": 1e-4, "gone": True}}))
    with pytest.raises(RunConflict) as err:
        check_output(tmp_path, identity, resume=True)
    assert str(err.value) == (f"{tmp_path} holds a run with other inputs or settings (data_sha256, old_field, "
                              "settings, settings.epochs, settings.gone); use another --out")


def test_resume_of_a_run_json_without_settings_lists_every_setting(tmp_path):
    identity = {"base": "b", "settings": {"epochs": 2.0, "lr": 1e-4}}
    (tmp_path / "run.json").write_text(json.dumps({"base": "b"}))
    with pytest.raises(RunConflict) as err:
        check_output(tmp_path, identity, resume=True)
    assert "(settings, settings.epochs, settings.lr)" in str(err.value)


def test_output_folder_states_and_what_each_gives(tmp_path):
    identity = {"base": "b", "settings": {"epochs": 2.0}}
    assert check_output(tmp_path / "new", identity, resume=True) is None        # nothing there
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    assert check_output(out, identity, resume=False) is None                    # an empty checkpoints folder
    _checkpoint(out / "checkpoints", "checkpoint-5", True)
    with pytest.raises(RunConflict) as err:
        check_output(out, identity, resume=True)
    assert str(err.value) == f"{out}/checkpoints holds checkpoints of an unknown run; use another --out"
    write_identity(out, identity)
    with pytest.raises(RunConflict) as err:
        check_output(out, identity, resume=False)
    assert str(err.value) == f"{out} already holds a training run; pass --resume to continue it or use another --out"
    for step, whole in ((15, True), (10, True), (20, False)):
        _checkpoint(out / "checkpoints", f"checkpoint-{step}", whole)
    assert check_output(out, identity, resume=True) == str(out / "checkpoints" / "checkpoint-15")
