"""Copy training inputs from s3:// (or any fsspec URI) into the container before training, and the
finished run back after it. Runs inside the job's pods (the image has s3fs; credentials come from
the environment, e.g. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL from a Secret).

    python -m mathllava.k8s.stage fetch s3://bucket/models/llava-1.5-7b /workspace/inputs/base
    python -m mathllava.k8s.stage upload /workspace/out/run s3://bucket/runs/run
"""

from __future__ import annotations

import argparse
import os
import sys


def _fs(uri: str):
    import fsspec

    options = {}
    if uri.startswith("s3://") and os.environ.get("AWS_ENDPOINT_URL"):
        options["client_kwargs"] = {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}
    return fsspec.core.url_to_fs(uri, **options)[0]


def fetch(uri: str, dest: str) -> None:
    fs = _fs(uri)
    if fs.isdir(uri):
        fs.get(uri.rstrip("/") + "/", dest.rstrip("/") + "/", recursive=True)
    else:
        os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
        fs.get(uri, dest)


def upload(src: str, uri: str) -> None:
    """A folder, or a single file, to `uri`."""
    if os.path.isdir(src):
        _fs(uri).put(src.rstrip("/") + "/", uri.rstrip("/") + "/", recursive=True)
    else:
        _fs(uri).put(src, uri)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mathllava.k8s.stage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["fetch", "upload"])
    parser.add_argument("source")
    parser.add_argument("target")
    args = parser.parse_args(argv)
    (fetch if args.action == "fetch" else upload)(args.source, args.target)
    print(f"{args.action}: {args.source} -> {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
