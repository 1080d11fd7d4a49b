"""The augmentation reply cache on its own (src/mathllava/augment/cache.py), fast and without a server:

- the request key is a persistent on-disk contract: the same request always gives the same key,
  whatever the order of its settings and for non-ASCII prompts, and the key of a fixed request is pinned
  (changing the key's recipe orphans every cached reply, so it must be a deliberate change);
- an entry is a hit only for the key it was stored under, and only when it holds a reply;
- entries are UTF-8 JSON whatever the process locale (a cache written by one run is read by another);
- a put is atomic: its temporary file lies beside the entry (same filesystem, so the rename is atomic),
  a failed put raises its own error and leaves neither a temporary file nor a torn entry, and an
  interrupt right after the rename still surfaces as the interrupt with the entry complete;
- a run killed mid-write leaves a temporary file that is no entry; opening the cache removes such files
  once they are older than `stale_after` (one hour by default) and keeps fresher ones, which may belong
  to a live writer."""

from __future__ import annotations

import contextlib
import errno
import json
import locale
import os
import tempfile
import time

import pytest

from mathllava.augment.cache import ReplyCache, request_key

SETTINGS = {"temperature": 0.7, "max_tokens": 512, "seed": 0}
PROMPT = "Task: CompQ. Find ∠ABC in △ABC."
GENERATOR = "endpoint:qwen2-vl@http://127.0.0.1:8000/v1"
REPLY = "∠ABC = 40°, so △ABC is isosceles: AB = AC = 3√2."


def key_for(prefix: str) -> str:
    """A key shaped like request_key's (64 hex digits) starting with `prefix`."""
    return (prefix + "0" * 64)[:64]


@contextlib.contextmanager
def ascii_locale():
    """Run with LC_CTYPE=C, where Python's default text encoding is ASCII (unless in UTF-8 mode)."""
    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        yield
    finally:
        locale.setlocale(locale.LC_CTYPE, before)


def temp_files(cache: ReplyCache) -> list[str]:
    return sorted(p.name for p in cache.root.rglob("*") if p.is_file() and not p.name.endswith(".json"))


# --- the request key --------------------------------------------------------------------------------------

def test_request_key_is_pinned():
    # a changed recipe (field names, ordering, escaping, encoding) gives every request a new key and so
    # silently orphans every reply already paid for: this value may only change deliberately
    assert request_key("3f2a9c", PROMPT, GENERATOR, dict(SETTINGS)) == \
        "4b22debf9d01485bbd25a10485fdf9afc96ace177b604280425ad79d3e34a1ed"


def test_request_key_ignores_settings_order_and_covers_each_field():
    key = request_key("img", PROMPT, GENERATOR, dict(SETTINGS))
    reordered = dict(reversed(list(SETTINGS.items())))
    assert list(reordered) != list(SETTINGS)
    assert request_key("img", PROMPT, GENERATOR, reordered) == key
    assert len({key,
                request_key(None, PROMPT, GENERATOR, SETTINGS),
                request_key("img2", PROMPT, GENERATOR, SETTINGS),
                request_key("img", PROMPT + " ", GENERATOR, SETTINGS),
                request_key("img", PROMPT, GENERATOR + "x", SETTINGS)}) == 5
    with ascii_locale():                      # the key does not depend on the process locale
        assert request_key("img", PROMPT, GENERATOR, dict(SETTINGS)) == key


# --- get and put ------------------------------------------------------------------------------------------

def test_cache_folder_is_created_with_its_parents_and_reopened(tmp_path):
    root = tmp_path / "state" / "cache" / "augment"
    cache = ReplyCache(root)
    assert root.is_dir() and len(cache) == 0
    key = request_key("img", PROMPT, GENERATOR, SETTINGS)
    cache.put(key, {"reply": "r", "usage": [3, 4]})
    reopened = ReplyCache(root)               # a rerun opens the existing folder and finds the reply
    assert reopened.get(key) == {"reply": "r", "usage": [3, 4], "key": key} and len(reopened) == 1


def test_entries_sharing_a_folder_and_overwrites(tmp_path):
    cache = ReplyCache(tmp_path / "cache")
    first, second = key_for("ab1"), key_for("ab2")
    cache.put(first, {"reply": "one"})
    cache.put(second, {"reply": "two"})       # the same two-character folder as `first`
    cache.put(first, {"reply": "one again"})  # a later put for a key replaces its entry
    assert cache.get(first)["reply"] == "one again" and cache.get(second)["reply"] == "two"
    assert len(cache) == 2 and temp_files(cache) == []


@pytest.mark.parametrize("stored", [
    pytest.param({"reply": "r", "key": key_for("ab2")}, id="another-key"),   # copied or misplaced file
    pytest.param({"reply": "r"}, id="no-key"),
    pytest.param({"usage": [1, 2]}, id="no-reply"),
    pytest.param(["reply", "key"], id="not-an-object"),
    pytest.param("reply", id="a-string"),
])
def test_an_entry_that_is_not_this_keys_reply_is_a_miss(tmp_path, stored):
    cache = ReplyCache(tmp_path / "cache")
    key = key_for("ab1")
    cache.path(key).parent.mkdir(parents=True)
    cache.path(key).write_text(json.dumps(stored), encoding="utf-8")
    assert cache.get(key) is None


def test_torn_or_missing_entry_is_a_miss(tmp_path):
    cache = ReplyCache(tmp_path / "cache")
    key = key_for("cd")
    assert cache.get(key) is None
    cache.put(key, {"reply": "r"})
    text = cache.path(key).read_text(encoding="utf-8")
    cache.path(key).write_text(text[: len(text) // 2], encoding="utf-8")
    assert cache.get(key) is None


def test_entries_are_utf8_json_whatever_the_locale(tmp_path):
    cache = ReplyCache(tmp_path / "cache")
    key = request_key("img", PROMPT, GENERATOR, SETTINGS)
    cache.put(key, {"reply": REPLY})
    # the file is readable UTF-8 text (the reply as written, not \\u escapes), for people and other tools
    raw = cache.path(key).read_bytes()
    assert REPLY.encode("utf-8") in raw and json.loads(raw.decode("utf-8"))["reply"] == REPLY
    with ascii_locale():                      # a rerun under LANG=C reads it, and writes the same bytes
        assert cache.get(key) == {"reply": REPLY, "key": key}
        other = request_key("img2", PROMPT, GENERATOR, SETTINGS)
        cache.put(other, {"reply": REPLY})
        assert cache.get(other)["reply"] == REPLY
    assert REPLY.encode("utf-8") in cache.path(other).read_bytes()


def test_failed_put_raises_and_leaves_the_old_entry_and_no_temp_file(tmp_path, monkeypatch):
    cache = ReplyCache(tmp_path / "cache")
    key = key_for("ef")
    cache.put(key, {"reply": "old"})

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", disk_full)
        with pytest.raises(OSError) as raised:
            cache.put(key, {"reply": "new"})
    assert raised.value.errno == errno.ENOSPC
    assert cache.get(key) == {"reply": "old", "key": key}   # never a torn or half-replaced entry
    assert temp_files(cache) == [] and len(cache) == 1


def test_interrupt_right_after_the_rename_surfaces_as_the_interrupt(tmp_path, monkeypatch):
    cache = ReplyCache(tmp_path / "cache")
    key = key_for("ef")
    real_replace = os.replace

    def replace_then_ctrl_c(src, dst):
        real_replace(src, dst)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", replace_then_ctrl_c)
        with pytest.raises(KeyboardInterrupt):    # not a FileNotFoundError from cleaning up the renamed file
            cache.put(key, {"reply": "whole"})
    assert cache.get(key) == {"reply": "whole", "key": key} and temp_files(cache) == []


# --- a run killed mid-write, and the stale temporary files it leaves -------------------------------------

@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_run_killed_mid_write_leaves_no_entry_and_its_temp_file_is_cleaned_once_stale(tmp_path):
    root = tmp_path / "cache"
    elsewhere = tmp_path / "system-tmp"
    elsewhere.mkdir()
    cache = ReplyCache(root)
    earlier, key = (request_key(image, PROMPT, GENERATOR, SETTINGS) for image in ("img1", "img2"))
    cache.put(earlier, {"reply": "stored before the kill"})
    pid = os.fork()
    if pid == 0:                              # the run: killed after writing, before the rename
        try:
            tempfile.tempdir = str(elsewhere)  # where a temp file outside the cache folder would go
            os.fsync = lambda fd: os._exit(9)
            cache.put(key, {"reply": REPLY})
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 9, "the child was not killed mid-write"

    # the temp file sits beside its entry (same filesystem: the rename is atomic), and is no entry
    left = [p for p in root.rglob("*") if p.is_file() and p != cache.path(earlier)]
    assert [p.parent for p in left] == [cache.path(key).parent] and list(elsewhere.iterdir()) == []
    assert cache.get(key) is None and len(cache) == 1
    assert cache.get(earlier)["reply"] == "stored before the kill"

    # reopened at once it is kept (it could be a live writer's); once older than an hour it is removed
    ReplyCache(root)
    assert left[0].exists()
    hour_ago = time.time() - 3601
    os.utime(left[0], (hour_ago, hour_ago))
    ReplyCache(root)
    assert not left[0].exists()


NOW = 1_700_000_000.0


@pytest.mark.parametrize("age, stale_after, removed", [
    (0, 3600.0, False),
    (3599, 3600.0, False),
    (3600, 3600.0, False),       # exactly stale_after old: not yet older than it
    (3600.5, 3600.0, True),
    (7200, 3600.0, True),
    (3600.5, None, True),        # the default is one hour
    (3599, None, False),
    (61, 60.0, True),            # a shorter stale_after is honoured
    (59, 60.0, False),
])
def test_stale_temp_files_are_removed_at_open(tmp_path, monkeypatch, age, stale_after, removed):
    root = tmp_path / "cache"
    ReplyCache(root).put(key_for("ab"), {"reply": "kept"})
    old_entry = ReplyCache(root).path(key_for("ab"))
    tmp = root / "ab" / f".{key_for('ab')[:8]}-x1y2z3.tmp"
    tmp.write_text('{"reply": "ha', encoding="utf-8")
    mtime_ns = int((NOW - age) * 1e9)
    os.utime(tmp, ns=(mtime_ns, mtime_ns))
    os.utime(old_entry, ns=(0, 0))           # entries are never removed, however old
    with monkeypatch.context() as patch:
        patch.setattr(time, "time", lambda: NOW)
        cache = ReplyCache(root) if stale_after is None else ReplyCache(root, stale_after=stale_after)
    assert tmp.exists() is not removed
    assert cache.get(key_for("ab")) == {"reply": "kept", "key": key_for("ab")} and len(cache) == 1
