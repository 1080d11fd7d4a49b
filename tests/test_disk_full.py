"""A full disk during a checkpoint: training on a small tmpfs, a real one where this machine lets a test
mount it, and ENOSPC raised at the write call otherwise (and always, for the error's wording)."""

import errno
import json
import subprocess
import uuid

import pytest

from mathllava.faults import DiskFull, as_disk_full, explain
from mathllava.train.config import TrainSettings
from mathllava.train.runner import run_training
from mathllava.train.tiny import TinyModelConfig, init_tiny

TINY = TinyModelConfig(image_size=32, patch_size=16, vision_hidden=32, vision_layers=1, text_hidden=64, text_layers=1,
                       text_intermediate=128, vocab_size=500)


@pytest.fixture(scope="module")
def base(tmp_path_factory, small_dataset):
    records = json.loads(small_dataset.read_text())
    return init_tiny(tmp_path_factory.mktemp("base") / "tiny", TINY,
                     [t["value"] for r in records for t in r["conversations"]])


def _settings(tmp_path) -> TrainSettings:
    return TrainSettings(max_steps=2, save_steps=1, batch_size=4, logging_steps=1, device="cpu",
                         cache_dir=str(tmp_path / "encoded"))


def _checkpoints(out):
    folder = out / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.fixture
def small_disk(tmp_path):
    """A 600 KiB tmpfs: room for the run's small files, not for a checkpoint of the tiny model."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the simulated test covers the save path")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_checkpoint_on_a_full_tmpfs_fails_in_one_line_and_leaves_no_checkpoint(base, small_dataset, tmp_path,
                                                                                  small_disk):
    out = small_disk / "run"
    with pytest.raises(DiskFull) as err:
        run_training(base, small_dataset, small_dataset.parent / "images", out, _settings(tmp_path))
    message = str(err.value)
    assert err.value.errno == errno.ENOSPC
    assert message.startswith("no space left on device writing ") and str(out / "checkpoints") in message
    assert "free there" in message and "\n" not in message
    assert _checkpoints(out) in ([], [".saving"])  # nothing named checkpoint-N: no folder looks complete
    assert explain(err.value) == f"error: {message}"


def test_enospc_at_the_write_call_leaves_no_checkpoint(base, small_dataset, tmp_path, monkeypatch):
    """torch.save of the optimizer state writes part of its file, then the disk is full."""
    import torch

    real_save = torch.save
    calls = []

    def full_disk(obj, f, *args, **kwargs):
        calls.append(str(f))
        if str(f).endswith("optimizer.pt"):
            with open(f, "wb") as handle:
                handle.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    out = tmp_path / "run"
    with pytest.raises(DiskFull) as err:
        run_training(base, small_dataset, small_dataset.parent / "images", out, _settings(tmp_path))
    assert any(c.endswith("optimizer.pt") for c in calls)
    assert f"{out / 'checkpoints' / '.saving' / 'checkpoint-1'}" in str(err.value)
    assert not [name for name in _checkpoints(out) if name.startswith("checkpoint-")]
    assert not list((out / "checkpoints" / ".saving").glob("*"))  # the torn part is removed, freeing its space
    # once there is space again, the run continues in the same folder (from scratch: nothing was saved)
    monkeypatch.setattr(torch, "save", real_save)
    result = run_training(base, small_dataset, small_dataset.parent / "images", out, _settings(tmp_path),
                          resume=True)
    assert result.summary["resumed_from"] is None
    assert (result.model_dir / "config.json").exists() and _checkpoints(out) == ["checkpoint-1", "checkpoint-2"]


def test_only_disk_faults_become_disk_full(tmp_path):
    torn = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1792 vs 1680")
    assert as_disk_full(torn, tmp_path) is None  # plenty of space here: a torn write for another reason
    wrapped = RuntimeError("step failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x" / "f.bin"))
    full = as_disk_full(wrapped, tmp_path)
    assert isinstance(full, DiskFull) and full.folder == str(tmp_path / "x")
    assert explain(wrapped).startswith(f"error: no space left on device writing {tmp_path / 'x'} (")  # the same rule
    no_space = Exception("IO error: No space left on device (os error 28)")   # as the Rust tokenizers raise it
    assert explain(no_space).startswith("error: no space left on device writing . (")
    assert as_disk_full(OSError(errno.EACCES, "denied"), tmp_path) is None
    assert explain(ValueError(f"bad {uuid.uuid4()}")) is None


def test_a_tracking_error_is_one_line_only_while_the_server_is_down():
    import logging

    from mathllava.faults import OneLineFaults

    uri = "http://127.0.0.1:5099"
    refused = ConnectionError("HTTPConnectionPool(host='127.0.0.1', port=5099): Max retries exceeded")
    step_error = RuntimeError("API request to endpoint /api/2.0/mlflow/experiments/get-by-name failed")
    step_error.__context__ = refused
    assert explain(step_error, uri, tracking_up=False).startswith(f"error: the MLflow tracking server at {uri} ")
    assert explain(step_error, uri, tracking_up=True) is None  # some other server refused: the traceback says which
    assert explain(ValueError("bad value"), uri, tracking_up=False) is None
    quiet = OneLineFaults(lambda err: explain(err, uri, tracking_up=False))
    failed = logging.LogRecord("zenml", logging.ERROR, __file__, 1, "Step %s failed.", ("evaluate",),
                               (RuntimeError, step_error, None))
    other = logging.LogRecord("zenml", logging.ERROR, __file__, 1, "Failed to run step `%s`: %s",
                              ("x", ValueError("bad value")), None)
    assert quiet.filter(failed) is False and quiet.seen.startswith("error: the MLflow tracking server")
    assert quiet.filter(other) is True
