"""Image paths inside an image root: the one check that a record's path cannot leave its root,
shared by ingest, training data and the benchmarks."""

from __future__ import annotations

from pathlib import Path, PurePosixPath


class UnsafePathError(ValueError):
    pass


def resolve_image_path(image_root: Path, rel: str) -> Path:
    """The image file for a record's `image` field, refusing absolute paths and any path that
    leaves the image root (`..`, symlinks pointing outside, a sibling folder sharing the root's prefix)."""
    if not isinstance(rel, str) or not rel.strip():
        raise UnsafePathError("empty image path")
    if "\x00" in rel:
        raise UnsafePathError("image path contains a NUL byte")
    posix = PurePosixPath(rel.replace("\\", "/"))
    if posix.is_absolute() or (posix.parts and posix.parts[0].endswith(":")):
        raise UnsafePathError(f"absolute image path {rel!r}")
    if ".." in posix.parts:
        raise UnsafePathError(f"image path {rel!r} escapes the image root")
    root = Path(image_root).resolve()
    path = (root / Path(*posix.parts)).resolve()
    if root != path and root not in path.parents:
        raise UnsafePathError(f"image path {rel!r} resolves outside the image root")
    return path
