"""Replies stored by request key, one JSON file per key, written atomically (a temporary file in the
same folder, fsynced, then renamed): a crash leaves either the whole reply or nothing, never a torn
file, so a rerun reads every reply it got and asks only for the rest."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def request_key(image_digest: str | None, prompt: str, generator: str, settings: dict[str, Any]) -> str:
    """sha256 of (image digest, prompt, generator identity, generation settings)."""
    blob = json.dumps({"image": image_digest, "prompt": prompt, "generator": generator, "settings": settings},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()  # pragma: no mutate (codec names are case-insensitive)


class ReplyCache:
    def __init__(self, root: str | Path, stale_after: float = 3600.0):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for tmp in self.root.glob("??/.*.tmp"):  # left by a killed run (a live one renames within seconds)
            try:
                if now - tmp.stat().st_mtime > stale_after:
                    tmp.unlink()
            except OSError:
                pass

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        """The stored entry ({"reply", "usage", ...}) or None; an unreadable file counts as absent."""
        path = self.path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) and entry.get("key") == key and "reply" in entry else None

    def put(self, key: str, entry: dict) -> None:
        path = self.path(key)
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:8]}-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({**entry, "key": key}, handle, ensure_ascii=False)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("??/*.json"))
